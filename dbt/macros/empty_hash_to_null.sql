{#-
    The raw id columns hold the hash of an empty value (var empty_hash_sentinel, set in
    dbt_project.yml) where the source had no id. Return the column with that sentinel turned into null.
-#}
{% macro empty_hash_to_null(column_name) -%}
    nullif({{ column_name }}, {{ var('empty_hash_sentinel') }})
{%- endmacro %}
