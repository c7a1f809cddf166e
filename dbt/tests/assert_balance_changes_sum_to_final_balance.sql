-- Invariant: for every organization, the sum of its daily balance changes equals its balance on its
-- latest day in fct_organization_daily_financials and its balance_usd in dim_organizations
-- (0 for an organization without invoices). Returns the organizations where they disagree.

with

daily_financials as (

    select * from {{ ref('fct_organization_daily_financials') }}

),

organizations as (

    select * from {{ ref('dim_organizations') }}

),

change_sums as (

    select
        organization_id,
        sum(balance_change_usd) as sum_of_changes_usd,
        max(balance_date) as last_balance_date

    from daily_financials
    group by organization_id

),

final_balances as (

    select
        change_sums.organization_id,
        change_sums.sum_of_changes_usd,
        daily_financials.balance_usd as final_balance_usd

    from change_sums
    inner join daily_financials
        on
            change_sums.organization_id = daily_financials.organization_id
            and change_sums.last_balance_date = daily_financials.balance_date

),

compared as (

    select
        coalesce(final_balances.organization_id, organizations.organization_id) as organization_id,
        coalesce(final_balances.sum_of_changes_usd, 0) as sum_of_changes_usd,
        coalesce(final_balances.final_balance_usd, 0) as final_balance_usd,
        organizations.balance_usd as dim_balance_usd

    from final_balances
    full outer join organizations
        on final_balances.organization_id = organizations.organization_id

)

select * from compared
where
    {{ usd_differs('sum_of_changes_usd', 'final_balance_usd') }}
    or {{ usd_differs('dim_balance_usd', 'sum_of_changes_usd') }}
