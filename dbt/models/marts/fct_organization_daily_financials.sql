-- One row per organization per day with ledger entries (new invoices, or changes to older invoices seen
-- in that day's export): the day's totals, the balance at the end of the day and the change versus the
-- end of the previous calendar day.
-- Windows run over the daily aggregate (one row per organization-day), never over the raw invoices.
-- Incremental: a run recomputes the days from the ledger window start
-- (macros/engines/incremental_window.sql), and each organization's running balance resumes from its last
-- stored balance before the window (macros/engines/opening_balances.sql), so the rows are identical to a
-- full refresh.
{{
    config(
        materialized='incremental',
        incremental_strategy=ledger_window_strategy(),
        window_column='balance_date',
        partition_by=ledger_window_partition('balance_date'),
        indexes=postgres_indexes([
            {'columns': ['organization_id', 'balance_date'], 'unique': True},
            {'columns': ['balance_date']},
        ]),
    )
}}

with

status_totals as (

    select * from {{ ref('int_organization_daily_status_totals') }}
    {% if is_incremental() %}
        where balance_date >= {{ ledger_window_start() }}
    {% endif %}

),

daily_totals as (

    select
        organization_id,
        balance_date,
        sum(new_invoice_count) as invoice_count,
        sum(changed_invoice_count) as changed_invoice_count,
        sum(invoiced_amount_usd) as invoiced_amount_usd,
        sum(paid_amount_usd) as paid_amount_usd,
        sum(balance_change_usd) as balance_change_usd,
        sum(status_change_usd) as status_change_usd

    from status_totals
    group by organization_id, balance_date

),

opening_balances as (

    {% if is_incremental() %}
        -- each organization's balance at the end of its last stored day before the window
        {{ opening_balances(this, 'daily_totals') }}
    {% else %}
        -- a full build starts every organization from zero, of the daily sums' type: the stored balances an
        -- incremental build resumes from have it (DuckDB and Spark decimals take the rules' places)
        select
            organization_id,
            0 * balance_change_usd as opening_balance_usd
        from daily_totals
        where false
    {% endif %}

),

running_balances as (

    select
        daily_totals.*,
        coalesce(opening_balances.opening_balance_usd, 0) as opening_balance_usd,
        coalesce(opening_balances.opening_balance_usd, 0) + sum(daily_totals.balance_change_usd) over (
            partition by daily_totals.organization_id
            order by daily_totals.balance_date
            rows between unbounded preceding and current row
        ) as balance_usd

    from daily_totals
    left join opening_balances
        on daily_totals.organization_id = opening_balances.organization_id

),

with_previous_balances as (

    select
        *,
        -- the balance is flat between activity days, so the previous activity day's closing balance is
        -- the balance at the end of the previous calendar day; before the first row, the opening balance
        coalesce(
            lag(balance_usd) over (partition by organization_id order by balance_date),
            opening_balance_usd
        ) as previous_balance_usd

    from running_balances

),

final as (

    select
        organization_id,
        balance_date,
        cast(invoice_count as bigint) as invoice_count,
        cast(changed_invoice_count as bigint) as changed_invoice_count,
        invoiced_amount_usd,
        paid_amount_usd,
        balance_change_usd,
        status_change_usd,
        balance_usd,
        previous_balance_usd,
        -- relative to the size of the previous balance, whatever its sign; undefined from zero
        {{ usd_ratio('balance_usd - previous_balance_usd', 'nullif(abs(previous_balance_usd), 0)') }}
            as balance_change_ratio

    from with_previous_balances

)

select * from final
