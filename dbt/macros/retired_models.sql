{#
    Models this project no longer builds, by their old name and the model that replaced them. dbt leaves a
    renamed model's old table in place, where readers would go on reading numbers that are no longer
    updated; a `dbt run` or `dbt build` drops it, in the schema of its replacement, so that they fail
    instead. Only a table is dropped (what the old model left; a view of that name is someone's
    compatibility view), and never what others built on it: on Postgres a table that others' objects
    depend on (views, foreign keys, functions) is left, with a warning naming them, as is one a session
    holds (it waits 5 s for its lock at most).
#}
{% macro retired_models() -%}
    {{ return({
        'dim_invoices': 'fct_invoices',
    }) }}
{%- endmacro %}

{% macro drop_retired_models() -%}
    {%- if execute and flags.WHICH in ('run', 'build') -%}
        {%- for old_name, replacement in retired_models().items() -%}
            {%- set model = graph.nodes['model.data_platform.' ~ replacement] -%}
            {%- set relation = adapter.get_relation(
                database=model.database, schema=model.schema, identifier=old_name) -%}
            {%- if relation is not none and relation.is_table -%}
                {%- do drop_retired_table(relation, replacement) -%}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro %}

{% macro drop_retired_table(relation, replacement) -%}
    {{ return(adapter.dispatch('drop_retired_table', 'data_platform')(relation, replacement)) }}
{%- endmacro %}

{% macro default__drop_retired_table(relation, replacement) -%}
    {%- do log('dropping ' ~ relation ~ ', now ' ~ replacement, info=true) -%}
    {%- do adapter.drop_relation(relation) -%}
{%- endmacro %}

{#- The drop restricts: what others built on the table (views, foreign keys, functions) keeps it, and the
    warning quotes Postgres's list of them; the outcome comes back through a transaction-local setting,
    as a DO block returns nothing. The project's own views on it go with it: the stored failures, in its
    tests' schemas, of the tests the old model had (dbt never drops the view of a test that is gone); kept
    when the table is. -#}
{% macro postgres__drop_retired_table(relation, replacement) -%}
    {%- set tests_schemas = graph.nodes.values() | selectattr('resource_type', 'equalto', 'test')
        | selectattr('package_name', 'equalto', project_name) | map(attribute='schema') | unique | list -%}
    {%- set quoted_schemas = [] -%}
    {%- for schema in tests_schemas -%}
        {%- do quoted_schemas.append("'" ~ schema | replace("'", "''") ~ "'") -%}
    {%- endfor -%}
    {%- set kept = run_query(
        "do $$ declare previous text := current_setting('lock_timeout'); dependents text;"
        ~ " stored_failures regclass; begin"
        ~ " perform set_config('lock_timeout', '5s', true);"
        ~ " for stored_failures in select distinct rewrite.ev_class::regclass"
        ~ " from pg_depend as dependency"
        ~ " join pg_rewrite as rewrite on rewrite.oid = dependency.objid"
        ~ " join pg_class as dependent on dependent.oid = rewrite.ev_class"
        ~ " join pg_namespace as namespace on namespace.oid = dependent.relnamespace"
        ~ " where dependency.classid = 'pg_rewrite'::regclass and dependency.refclassid = 'pg_class'::regclass"
        ~ " and dependency.refobjid = '" ~ relation.include(database=false) ~ "'::regclass"
        ~ " and dependent.oid <> dependency.refobjid and dependent.relkind = 'v'"
        ~ " and namespace.nspname = any(array[" ~ quoted_schemas | join(', ') ~ "]::text[])"
        ~ " loop execute format('drop view %s', stored_failures); end loop;"
        ~ " drop table " ~ relation ~ ";"
        ~ " perform set_config('lock_timeout', previous, true);"
        ~ " perform set_config('data_platform.retired_table_kept', '', true);"
        ~ " exception"
        ~ " when lock_not_available then"
        ~ " perform set_config('data_platform.retired_table_kept', 'held', true);"
        ~ " when dependent_objects_still_exist then"
        ~ " get stacked diagnostics dependents = pg_exception_detail;"
        ~ " perform set_config('data_platform.retired_table_kept', dependents, true);"
        ~ " end $$;"
        ~ " select current_setting('data_platform.retired_table_kept', true)"
    ).columns[0].values()[0] -%}
    {%- set left = relation ~ " is no longer updated (its model is now " ~ replacement ~ ")"
        ~ " and is not dropped" -%}
    {%- if not kept -%}
        {%- do log('dropped ' ~ relation ~ ', now ' ~ replacement, info=true) -%}
    {%- elif kept == 'held' -%}
        {%- do exceptions.warn(left ~ " yet: a session holds it. The next run tries again.") -%}
    {%- elif kept -%}
        {%- do exceptions.warn(
            left ~ ": " ~ kept.splitlines() | join('; ') ~ ". Point them at " ~ replacement
            ~ ", then drop it (or drop it with them: drop table " ~ relation ~ " cascade)."
        ) -%}
    {%- endif -%}
{%- endmacro %}
