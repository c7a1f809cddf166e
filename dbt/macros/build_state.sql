{#
    A `dbt run` or `dbt build` that recomputes days the pipeline's last successful build covered (by hand,
    without LEDGER_WINDOW_START or with an earlier one) marks the pipeline's build record, raw.build_state
    (data_platform/refresh.py), as a full rebuild that has not succeeded. Its tables may now hold other
    rules' or SQL's numbers, and the files may be put back as the record has them before the next pipeline
    run, which must then rebuild in full; until then the alerter reads nothing. The pipeline's incremental
    builds start after those days and mark nothing; its full rebuilds are marked anyway, and their success
    clears the mark.
#}
{% macro mark_unrecorded_rebuild() -%}
    {{ return(adapter.dispatch('mark_unrecorded_rebuild', 'data_platform')()) }}
{%- endmacro %}

{#- Only the Postgres warehouse keeps the record: elsewhere, nothing to run. -#}
{% macro default__mark_unrecorded_rebuild() -%}
{%- endmacro %}

{% macro postgres__mark_unrecorded_rebuild() -%}
    {%- if flags.WHICH in ('run', 'build') %}
    do $$
    begin
        if to_regclass('raw.build_state') is not null then
            update raw.build_state set full_build_started_at = now()
            where last_export_date >= {{ ledger_window_start() }};
        end if;
    end
    $$
    {%- endif %}
{%- endmacro %}
