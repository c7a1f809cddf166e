{#-
    Use a model's custom schema as the real schema name (staging, intermediate, marts, seeds, audit),
    instead of dbt's default "<target schema>_<custom schema>". Nodes without a custom schema fall
    back to the target's schema.
-#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
