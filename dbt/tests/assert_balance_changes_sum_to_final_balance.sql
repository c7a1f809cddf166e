-- Invariant: each organization's balance on its latest day in fct_organization_daily_financials (its daily
-- balance changes summed, resumed from its stored balance on an incremental build) equals its balance_usd
-- in dim_organizations (its ledger summed per status by int_organization_status_totals, which adds each
-- build's new days to its own stored totals). The two sums share no step after the daily status totals,
-- so a wrong stored balance or total on either side shows here. A full build checks every organization,
-- those without invoices against 0; an incremental build checks the organizations its window changed.
-- Returns the organizations where the numbers disagree.

with

window_days as (

    select * from {{ ref('fct_organization_daily_financials') }}
    where balance_date >= {{ ledger_window_start() }}

),

last_days as (

    select
        organization_id,
        max(balance_date) as last_balance_date

    from window_days
    group by organization_id

),

final_balances as (

    select
        last_days.organization_id,
        window_days.balance_usd as final_balance_usd

    from last_days
    inner join window_days
        on
            last_days.organization_id = window_days.organization_id
            and last_days.last_balance_date = window_days.balance_date

),

organizations as (

    select * from {{ ref('dim_organizations') }}
    {% if ledger_window_is_set() %}
        where organization_id in (select last_days.organization_id from last_days)
    {% endif %}

),

compared as (

    select
        coalesce(final_balances.organization_id, organizations.organization_id) as organization_id,
        coalesce(final_balances.final_balance_usd, 0) as final_balance_usd,
        organizations.balance_usd as dim_balance_usd

    from final_balances
    full outer join organizations
        on final_balances.organization_id = organizations.organization_id

)

select * from compared
where dim_balance_usd is distinct from final_balance_usd
