-- Invariant: for every organization with days in the window, its balance on its latest day in
-- fct_organization_daily_financials is its balance before the window plus the sum of its daily balance
-- changes in the window, and equals its balance_usd in dim_organizations. A full build's window holds
-- every day (the balance before it is 0), so every organization is checked, those without invoices
-- against 0; an incremental build checks the organizations its window changed. Returns the organizations
-- where the numbers disagree.

with

window_days as (

    select * from {{ ref('fct_organization_daily_financials') }}
    where balance_date >= {{ ledger_window_start() }}

),

change_sums as (

    select
        organization_id,
        sum(balance_change_usd) as sum_of_changes_usd,
        min(balance_date) as first_balance_date,
        max(balance_date) as last_balance_date

    from window_days
    group by organization_id

),

organizations as (

    select * from {{ ref('dim_organizations') }}
    {% if ledger_window_is_set() %}
        where organization_id in (select change_sums.organization_id from change_sums)
    {% endif %}

),

final_balances as (

    select
        change_sums.organization_id,
        first_days.previous_balance_usd + change_sums.sum_of_changes_usd as expected_balance_usd,
        last_days.balance_usd as final_balance_usd

    from change_sums
    inner join window_days as first_days
        on
            change_sums.organization_id = first_days.organization_id
            and change_sums.first_balance_date = first_days.balance_date
    inner join window_days as last_days
        on
            change_sums.organization_id = last_days.organization_id
            and change_sums.last_balance_date = last_days.balance_date

),

compared as (

    select
        coalesce(final_balances.organization_id, organizations.organization_id) as organization_id,
        coalesce(final_balances.expected_balance_usd, 0) as expected_balance_usd,
        coalesce(final_balances.final_balance_usd, 0) as final_balance_usd,
        organizations.balance_usd as dim_balance_usd

    from final_balances
    full outer join organizations
        on final_balances.organization_id = organizations.organization_id

)

select * from compared
where
    {{ usd_differs('expected_balance_usd', 'final_balance_usd') }}
    or {{ usd_differs('dim_balance_usd', 'final_balance_usd') }}
