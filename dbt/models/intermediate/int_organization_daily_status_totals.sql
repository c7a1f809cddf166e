-- One row per organization, booking day and invoice status: the ledger entries summed. The one aggregate
-- over the ledger: the daily fact sums it per day, dim_organizations per organization and status.
-- Incremental: a run recomputes the days from the ledger window start on
-- (macros/engines/incremental_window.sql); every entry booked on those days comes from an export seen on
-- or after it.
{{
    config(
        materialized='incremental',
        incremental_strategy=ledger_window_strategy(),
        window_column='balance_date',
        partition_by=ledger_window_partition('balance_date'),
        indexes=postgres_indexes([
            {'columns': ['organization_id', 'balance_date', 'status'], 'unique': True},
            {'columns': ['balance_date']},
        ]),
    )
}}

with

entries as (

    select * from {{ ref('int_invoice_ledger_entries') }}
    {% if is_incremental() %}
        where
            seen_on >= {{ ledger_window_start() }}
            and booking_date >= {{ ledger_window_start() }}
    {% endif %}

),

totals as (

    select
        organization_id,
        booking_date as balance_date,
        status,
        cast(sum(invoice_count) as bigint) as net_invoice_count,
        count(*) filter (where version = 1) as new_invoice_count,
        cast(sum(changed_invoice_count) as bigint) as changed_invoice_count,
        sum(invoiced_amount_usd) as invoiced_amount_usd,
        sum(paid_amount_usd) as paid_amount_usd,
        sum(balance_change_usd) as balance_change_usd,
        coalesce(sum(balance_change_usd) filter (where version > 1), 0) as status_change_usd

    from entries
    group by organization_id, booking_date, status

)

select * from totals
