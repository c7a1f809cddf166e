{#
    A `dbt run` or `dbt build` by hand may compute days with other rules or SQL than the pipeline's last
    successful build, and records nothing: the files may be put back as the record has them before the
    next pipeline run, which would then keep those days. So such a build marks the pipeline's build
    record (var build_record, raw.build_state; data_platform/refresh.py) as a full rebuild that has not
    succeeded: the pipeline's next build is a full one, and until it succeeds the alerter reads nothing.

    It does when it selects an incremental model (tables and views are rebuilt by every pipeline build
    anyway), whatever its window (LEDGER_WINDOW_START): one that starts after the newest export the record
    covers still sums its days into int_organization_status_totals, which keeps every day it summed, so the
    pipeline's next incremental build would not sum them again with its own rules. The pipeline's own
    builds (BUILD_RECORDED_BY_PIPELINE set, the var pipeline_build_variable: data_platform/refresh.py) are
    left alone: it marks and records them itself, and a pipeline build's success clears only its own
    mark, not one a build by hand set meanwhile.
#}
{% macro mark_unrecorded_rebuild() -%}
    {{ return(adapter.dispatch('mark_unrecorded_rebuild', 'data_platform')()) }}
{%- endmacro %}

{#- Only the Postgres warehouse keeps the record: elsewhere, nothing to run. -#}
{% macro default__mark_unrecorded_rebuild() -%}
{%- endmacro %}

{% macro postgres__mark_unrecorded_rebuild() -%}
    {%- set record = var('build_record') -%}
    {%- if execute and flags.WHICH in ('run', 'build') and env_var(var('pipeline_build_variable'), '') == ''
        and selects_incremental_model() %}
    do $$
    begin
        if to_regclass('{{ record }}') is null then
            return;  -- no pipeline build recorded here
        end if;
        if not has_table_privilege('{{ record }}', 'select')
            or not has_table_privilege('{{ record }}', 'update')
            or not has_table_privilege('{{ record }}', 'delete') then
            return;  -- not this role's record to mark
        end if;
        if exists (
            select from pg_attribute
            where attrelid = '{{ record }}'::regclass and attname = 'full_build_started_at' and not attisdropped
        ) then
            update {{ record }} set full_build_started_at = now();
        else
            -- a record from before the mark existed: with none, the next build is a full one too
            delete from {{ record }};
        end if;
    end
    $$
    {%- endif %}
{%- endmacro %}


{#- Whether the invocation's selection holds an incremental model (a model that keeps stored days). -#}
{% macro selects_incremental_model() -%}
    {%- for unique_id in selected_resources -%}
        {%- set node = graph.nodes.get(unique_id) -%}
        {%- if node is not none and node.resource_type == 'model'
            and node.config.materialized == 'incremental' -%}
            {{- return(true) -}}
        {%- endif -%}
    {%- endfor -%}
    {{- return(false) -}}
{%- endmacro %}
