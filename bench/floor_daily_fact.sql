-- The floor for the daily fact: marts.fct_organization_daily_financials of a single export, computed
-- in one hand-written statement straight from the invoices as `psql \copy` loaded them
-- (bench_floor.invoices) and the rules seed, with no ledger, no staging, no intermediate tables, no
-- indexes and no tests. bench/run.py times it and checks it gives the mart's rows.
-- With one export every invoice is a first version booked on its created day, so the day's changes of
-- older invoices are zero. Same expressions as the dbt models (round(amount / fx_rate, 2) per invoice,
-- then the coefficients), so the numeric results are identical, not just close.

create table bench_floor.daily_fact as

with

daily_totals as (

    select
        invoices.organization_id,
        (invoices.created_at at time zone 'utc')::date as balance_date,
        count(*) as invoice_count,
        sum(rules.invoiced_coefficient * round(invoices.amount / invoices.fx_rate, 2)) as invoiced_amount_usd,
        sum(rules.paid_coefficient * coalesce(round(invoices.payment_amount / invoices.fx_rate, 2), 0))
            as paid_amount_usd

    from bench_floor.invoices as invoices
    left join seeds.invoice_enrichment as rules
        on invoices.status = rules.status
    group by 1, 2

),

running_balances as (

    select
        *,
        invoiced_amount_usd - paid_amount_usd as balance_change_usd,
        sum(invoiced_amount_usd - paid_amount_usd) over (
            partition by organization_id
            order by balance_date
            rows between unbounded preceding and current row
        ) as balance_usd

    from daily_totals

),

with_previous_balances as (

    select
        *,
        coalesce(
            lag(balance_usd) over (partition by organization_id order by balance_date), 0
        ) as previous_balance_usd

    from running_balances

)

select
    organization_id,
    balance_date,
    invoice_count,
    0::bigint as changed_invoice_count,
    invoiced_amount_usd,
    paid_amount_usd,
    balance_change_usd,
    0::numeric as status_change_usd,
    balance_usd,
    previous_balance_usd,
    (balance_usd - previous_balance_usd) / nullif(abs(previous_balance_usd), 0) as balance_change_ratio

from with_previous_balances;
