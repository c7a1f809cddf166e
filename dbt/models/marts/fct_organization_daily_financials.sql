-- One row per organization per day on which it had invoices: the day's totals, the balance at the end of
-- the day and the change versus the end of the previous calendar day.
-- Windows run over the daily aggregate (one row per organization-day), never over the raw invoices.

with

daily_balance_changes as (

    select * from {{ ref('int_organization_daily_balance_changes') }}

),

running_balances as (

    select
        organization_id,
        created_date as balance_date,
        invoice_count,
        invoiced_amount_usd,
        paid_amount_usd,
        balance_change_usd,
        sum(balance_change_usd) over (
            partition by organization_id
            order by created_date
            rows between unbounded preceding and current row
        ) as balance_usd

    from daily_balance_changes

),

with_previous_balances as (

    select
        *,
        -- the balance is flat between activity days, so the previous activity day's closing balance is
        -- the balance at the end of the previous calendar day; 0 before the first invoice
        coalesce(
            lag(balance_usd) over (partition by organization_id order by balance_date),
            0
        ) as previous_balance_usd

    from running_balances

),

final as (

    select
        organization_id,
        balance_date,
        invoice_count,
        invoiced_amount_usd,
        paid_amount_usd,
        balance_change_usd,
        balance_usd,
        previous_balance_usd,
        -- relative to the size of the previous balance, whatever its sign; undefined from zero
        (balance_usd - previous_balance_usd) / nullif(abs(previous_balance_usd), 0) as balance_change_ratio

    from with_previous_balances

)

select * from final
