{#
    Models this project no longer builds, by their old name and the model that replaced them. dbt leaves a
    renamed model's old table in place, where readers would go on reading numbers that are no longer
    updated; a `dbt run` or `dbt build` drops it, in the schema of its replacement, so that they fail
    instead. Only a table is dropped (what the old model left; a view of that name is someone's
    compatibility view), and never what others built on it: on Postgres a table that views still read is
    left, with a warning naming them, as is one a reader holds (it waits 5 s for its lock at most).
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

{% macro postgres__drop_retired_table(relation, replacement) -%}
    {%- set readers = run_query(
        "select distinct reader.oid::regclass::text from pg_depend as dependency"
        ~ " inner join pg_rewrite as rule on dependency.classid = 'pg_rewrite'::regclass"
        ~ " and rule.oid = dependency.objid"
        ~ " inner join pg_class as reader on rule.ev_class = reader.oid"
        ~ " where dependency.refobjid = '" ~ relation ~ "'::regclass and reader.oid <> dependency.refobjid"
        ~ " order by 1"
    ).columns[0].values() -%}
    {%- set left = relation ~ " is no longer updated (its model is now " ~ replacement ~ ")"
        ~ " and is not dropped" -%}
    {%- if readers | length > 0 -%}
        {%- do exceptions.warn(
            left ~ ": " ~ readers | join(', ') ~ " read it. Point them at " ~ replacement
            ~ ", then drop it (or drop it with them: drop table " ~ relation ~ " cascade)."
        ) -%}
        {%- do return(none) -%}
    {%- endif -%}
    {%- do log('dropping ' ~ relation ~ ', now ' ~ replacement, info=true) -%}
    {%- set still_there = run_query(
        "do $$ declare previous text := current_setting('lock_timeout'); begin"
        ~ " perform set_config('lock_timeout', '5s', true); drop table " ~ relation ~ ";"
        ~ " perform set_config('lock_timeout', previous, true);"
        ~ " exception when lock_not_available then null; end $$;"
        ~ " select to_regclass('" ~ relation ~ "') is not null"
    ).columns[0].values()[0] -%}
    {%- if still_there -%}
        {%- do exceptions.warn(left ~ " yet: a session holds it. The next run tries again.") -%}
    {%- endif -%}
{%- endmacro %}
