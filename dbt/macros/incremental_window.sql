{#
    Incremental models here rebuild a window of days instead of merging keys: every row whose date is on
    or after the window start is deleted and recomputed from the ledger. Unlike delete+insert on a unique
    key, this also removes rows that no longer exist, so an incremental run equals a full refresh.

    The window start is the LEDGER_WINDOW_START environment variable: the pipeline (data_platform/refresh.py)
    sets it to the day after the newest export the last successful build covered. The ledger books nothing
    from a newer export before that day, so the days before it are final. Unset (a hand-run `dbt build`),
    the window starts at -infinity: everything is recomputed, slower but always exact. An environment
    variable rather than a dbt var: a changed var makes dbt re-parse the whole project on every run.
#}

{% macro ledger_window_start() -%}
    '{{ env_var("LEDGER_WINDOW_START", "-infinity") }}'::date
{%- endmacro %}


{% macro get_incremental_replace_window_sql(arg_dict) %}
{%- set target = arg_dict['target_relation'] -%}
{%- set new_rows = arg_dict['temp_relation'] -%}
{%- set window_column = config.require('window_column') -%}
{%- set columns = get_quoted_csv(arg_dict['dest_columns'] | map(attribute='name')) -%}

delete from {{ target }}
where {{ window_column }} >= {{ ledger_window_start() }};

insert into {{ target }} ({{ columns }})
select {{ columns }}
from {{ new_rows }};
{% endmacro %}
