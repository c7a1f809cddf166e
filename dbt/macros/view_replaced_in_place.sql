{#
    Postgres's view materialization: dbt's default, except that an existing view whose columns the new
    query keeps (same names, types and order; new ones only at the end) is replaced in place with
    `create or replace view`.

    dbt's default builds the new view under a temporary name, renames the old one away and drops it with
    cascade. The views built on it follow the rename and are dropped with it: intermediate's
    int_invoice_ledger_entries, built on staging's stg_payments__exports, was missing from the first node
    of every build to its own, and for good when the build stopped in between. Replaced in place, a view
    keeps its dependants, its grants and its comments. Any other model (a new view, a view whose columns
    changed otherwise, which Postgres refuses to replace) is built by dbt's default materialization
    itself (materialization_view_default).
#}
{%- materialization view, adapter='postgres' -%}

    {%- set existing_relation = load_cached_relation(this) -%}
    {%- if not view_replaceable_in_place(existing_relation, sql) -%}
        {{ return(materialization_view_default()) }}
    {%- endif -%}
    {%- set target_relation = this.incorporate(type='view') -%}
    {%- set grant_config = config.get('grants') -%}

    {{ run_hooks(pre_hooks, inside_transaction=False) }}
    {{ run_hooks(pre_hooks, inside_transaction=True) }}
    {% call statement('main') -%}
        {{ get_replace_view_sql(target_relation, sql) }}
    {%- endcall %}
    {% do apply_grants(target_relation, grant_config, should_revoke=should_revoke(existing_relation, True)) %}
    {% do persist_docs(target_relation, model) %}
    {{ run_hooks(post_hooks, inside_transaction=True) }}
    {{ adapter.commit() }}
    {{ run_hooks(post_hooks, inside_transaction=False) }}

    {{ return({'relations': [target_relation]}) }}

{%- endmaterialization -%}


{#- Whether the existing relation is a view that `sql` can replace in place: the new query's columns, built
    into a probe view that is dropped again, keep the view's (view_columns_extend). -#}
{% macro view_replaceable_in_place(existing_relation, sql) -%}
    {%- if existing_relation is none or not existing_relation.is_view -%}
        {{ return(false) }}
    {%- endif -%}
    {%- set probe = make_intermediate_relation(existing_relation, '__dbt_probe') -%}
    {% call statement('probe') -%}
        drop view if exists {{ probe }};
        {{ get_create_view_as_sql(probe, sql) }}
    {%- endcall %}
    {%- set replaceable = view_columns_extend(existing_relation, probe) -%}
    {% call statement('drop_probe') -%}
        drop view {{ probe }}
    {%- endcall %}
    {{ return(replaceable) }}
{%- endmacro %}


{#- Whether `candidate`'s columns are `existing`'s, in order, with any new ones after them: what
    `create or replace view` accepts. Compared as Postgres compares them (name, type, type modifier,
    collation), from the catalog: information_schema's type names leave out some differences Postgres
    refuses (timestamp(0) against timestamp, integer[] against bigint[], a collation), and a refused
    replace would fail the model on every run. -#}
{% macro view_columns_extend(existing, candidate) -%}
    {%- set old_columns = view_column_identities(existing) -%}
    {%- set new_columns = view_column_identities(candidate) -%}
    {{ return(new_columns[:(old_columns | length)] == old_columns) }}
{%- endmacro %}

{% macro view_column_identities(relation) -%}
    {%- set columns = run_query(
        "select attname, atttypid::bigint, atttypmod, attcollation::bigint from pg_catalog.pg_attribute"
        ~ " where attrelid = '" ~ relation ~ "'::regclass and attnum > 0 and not attisdropped"
        ~ " order by attnum"
    ) -%}
    {{ return(columns.rows | map('list') | list) }}
{%- endmacro %}
