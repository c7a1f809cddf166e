{#-
    dbt's own macro, extended: a data test's `where` config may say `__ledger_window_start__`, replaced
    here by ledger_window_start() (the test configs in YAML cannot call the project's macros). The tests
    then check only the ledger window on an incremental build, in every engine's date syntax.
-#}
{% macro get_where_subquery(relation) -%}
    {%- set where = config.get('where') -%}
    {%- if where -%}
        {%- set where = where | replace('__ledger_window_start__', ledger_window_start()) -%}
        {%- set filtered -%}
            (select * from {{ relation }} where {{ where }}) dbt_subquery
        {%- endset -%}
        {%- do return(filtered) -%}
    {%- else -%}
        {%- do return(relation) -%}
    {%- endif -%}
{%- endmacro %}
