{#-
    The select of each organization's balance at the end of its last stored day before the ledger window,
    for the organizations of `window_organizations` (a relation or CTE with an organization_id column):
    where an incremental run of the daily fact resumes each running balance.
-#}
{% macro opening_balances(stored_rows, window_organizations) -%}
    {{ return(adapter.dispatch('opening_balances', 'data_platform')(stored_rows, window_organizations)) }}
{%- endmacro %}

{#- the latest stored row per organization, by a window function over the stored days -#}
{% macro default__opening_balances(stored_rows, window_organizations) %}
        select
            ranked.organization_id,
            ranked.balance_usd as opening_balance_usd

        from (
            select
                stored.organization_id,
                stored.balance_usd,
                row_number() over (
                    partition by stored.organization_id order by stored.balance_date desc
                ) as recency
            from {{ stored_rows }} as stored
            where
                stored.balance_date < {{ ledger_window_start() }}
                and stored.organization_id in (select organization_id from {{ window_organizations }})
        ) as ranked
        where ranked.recency = 1
{% endmacro %}

{#- Postgres: one index probe per organization (the unique index on organization_id, balance_date)
    instead of a scan of every stored day -#}
{% macro postgres__opening_balances(stored_rows, window_organizations) %}
        select
            window_organizations.organization_id,
            last_stored.balance_usd as opening_balance_usd

        from (select distinct organization_id from {{ window_organizations }}) as window_organizations
        cross join lateral (
            select stored_rows.balance_usd
            from {{ stored_rows }} as stored_rows
            where
                stored_rows.organization_id = window_organizations.organization_id
                and stored_rows.balance_date < {{ ledger_window_start() }}
            order by stored_rows.balance_date desc
            limit 1
        ) as last_stored
{% endmacro %}
