{#
    Models this project no longer builds, by their old name and the model that replaced them. dbt leaves a
    renamed model's old table in place, where readers would go on reading numbers that are no longer
    updated; a `dbt run` or `dbt build` drops it, in the schema of its replacement, so that they fail
    instead. Dropping is dbt's own (on Postgres with cascade, like dbt's rebuilds).
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
            {%- if relation is not none -%}
                {%- do log('dropping ' ~ relation ~ ', now ' ~ replacement, info=true) -%}
                {%- do adapter.drop_relation(relation) -%}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro %}
