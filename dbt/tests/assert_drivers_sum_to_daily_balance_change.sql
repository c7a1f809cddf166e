-- Invariant: the drivers of an organization's day (fct_organization_daily_drivers) sum to that day's
-- balance_change_usd in fct_organization_daily_financials, and each has a row where the other has one:
-- the alerts explain a day's move with these drivers. Both are built from the ledger on their own (the
-- fact through the daily status totals), so a lost or doubled entry in either shows here. Reads the
-- window's days of both (every day on a full build). Returns the organization-days that disagree.

with

driver_sums as (

    select
        organization_id,
        balance_date,
        sum(balance_change_usd) as drivers_change_usd

    from {{ ref('fct_organization_daily_drivers') }}
    where balance_date >= {{ ledger_window_start() }}
    group by organization_id, balance_date

),

daily_changes as (

    select
        organization_id,
        balance_date,
        balance_change_usd

    from {{ ref('fct_organization_daily_financials') }}
    where balance_date >= {{ ledger_window_start() }}

)

select
    coalesce(daily_changes.organization_id, driver_sums.organization_id) as organization_id,
    coalesce(daily_changes.balance_date, driver_sums.balance_date) as balance_date,
    daily_changes.balance_change_usd,
    driver_sums.drivers_change_usd

from daily_changes
full outer join driver_sums
    on
        daily_changes.organization_id = driver_sums.organization_id
        and daily_changes.balance_date = driver_sums.balance_date
-- nulls compare as values: a day only one side has differs
where daily_changes.balance_change_usd is distinct from driver_sums.drivers_change_usd
