{#
    Incremental models here rebuild a trailing window instead of merging keys: every row whose date is
    on or after the window start is deleted and recomputed from the sources. Unlike delete+insert on a
    unique key, this also removes rows whose source invoices changed day or status, so an incremental
    run and a full refresh give identical tables for any change inside the window.

    The window starts `incremental_lookback_days` (dbt_project.yml) before the latest date already in
    the model, so invoices that arrive up to that many days late are still counted. Older corrections
    need `dbt build --full-refresh`.
#}

{% macro incremental_window_start(date_column) -%}
    (
        select coalesce(max({{ date_column }}), '-infinity'::date)
            - {{ var('incremental_lookback_days') | int }}
        from {{ this }}
    )
{%- endmacro %}


{% macro get_incremental_replace_window_sql(arg_dict) %}
{%- set target = arg_dict['target_relation'] -%}
{%- set new_rows = arg_dict['temp_relation'] -%}
{%- set window_column = config.require('window_column') -%}
{%- set columns = get_quoted_csv(arg_dict['dest_columns'] | map(attribute='name')) -%}
{#- a literal (not the subquery) lets the planner use the index on the window column for the delete;
    the target is unchanged since the new rows were computed, so both see the same window start -#}
{%- set window_query = 'select ' ~ incremental_window_start(window_column) -%}
{%- set window_start = run_query(window_query).columns[0].values()[0] -%}

delete from {{ target }}
where {{ window_column }} >= '{{ window_start }}'::date;

insert into {{ target }} ({{ columns }})
select {{ columns }}
from {{ new_rows }};
{% endmacro %}
