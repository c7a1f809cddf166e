{#
    Postgres's view materialization: dbt's default, except that an existing view whose columns the new
    query keeps (same names, types and order; new ones only at the end) is replaced in place with
    `create or replace view`.

    dbt's default builds the new view under a temporary name, renames the old one away and drops it with
    cascade. The views built on it follow the rename and are dropped with it: intermediate's
    int_invoice_ledger_entries, built on staging's stg_payments__exports, was missing from the first node
    of every build to its own, and for good when the build stopped in between. Replaced in place, a view
    keeps its dependants, its grants and its comments. A view whose columns changed otherwise (Postgres
    refuses to replace it) goes dbt's default way.
#}
{%- materialization view, adapter='postgres' -%}

    {%- set existing_relation = load_cached_relation(this) -%}
    {%- set target_relation = this.incorporate(type='view') -%}
    {%- set intermediate_relation = make_intermediate_relation(target_relation) -%}
    {%- set preexisting_intermediate_relation = load_cached_relation(intermediate_relation) -%}
    {%- set backup_relation_type = 'view' if existing_relation is none else existing_relation.type -%}
    {%- set backup_relation = make_backup_relation(target_relation, backup_relation_type) -%}
    {%- set preexisting_backup_relation = load_cached_relation(backup_relation) -%}
    {%- set grant_config = config.get('grants') -%}

    {{ run_hooks(pre_hooks, inside_transaction=False) }}
    {{ drop_relation_if_exists(preexisting_intermediate_relation) }}
    {{ drop_relation_if_exists(preexisting_backup_relation) }}
    {{ run_hooks(pre_hooks, inside_transaction=True) }}

    {% call statement('main') -%}
        {{ get_create_view_as_sql(intermediate_relation, sql) }}
    {%- endcall %}

    {%- set in_place = existing_relation is not none and existing_relation.is_view
        and view_columns_extend(existing_relation, intermediate_relation) -%}
    {% if in_place %}
        {% call statement('replace_in_place') -%}
            {{ get_replace_view_sql(target_relation, sql) }}
        {%- endcall %}
        {{ drop_relation_if_exists(intermediate_relation) }}
    {% else %}
        {% if existing_relation is not none %}
            {% set existing_relation = load_cached_relation(existing_relation) %}
            {% if existing_relation is not none %}
                {{ adapter.rename_relation(existing_relation, backup_relation) }}
            {% endif %}
        {% endif %}
        {{ adapter.rename_relation(intermediate_relation, target_relation) }}
    {% endif %}

    {% set should_revoke = should_revoke(existing_relation, full_refresh_mode=True) %}
    {% do apply_grants(target_relation, grant_config, should_revoke=should_revoke) %}
    {% do persist_docs(target_relation, model) %}
    {{ run_hooks(post_hooks, inside_transaction=True) }}
    {{ adapter.commit() }}

    {% if not in_place %}
        {{ drop_relation_if_exists(backup_relation) }}
    {% endif %}
    {{ run_hooks(post_hooks, inside_transaction=False) }}

    {{ return({'relations': [target_relation]}) }}

{%- endmaterialization -%}


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
