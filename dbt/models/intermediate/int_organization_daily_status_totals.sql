-- One row per organization, UTC day and invoice status: the invoice count and the summed USD amounts.
-- The one aggregate over the invoices: the daily fact sums it per day, dim_organizations per
-- organization and status. Incremental: a run recomputes only the trailing window
-- (macros/incremental_window.sql).
{{
    config(
        materialized='incremental',
        window_column='created_date',
        indexes=[
            {'columns': ['organization_id', 'created_date', 'status'], 'unique': True},
            {'columns': ['created_date']},
        ],
    )
}}

with

invoices as (

    select * from {{ ref('int_invoices_enriched') }}
    {% if is_incremental() %}
        where created_date >= {{ incremental_window_start('created_date') }}
    {% endif %}

),

totals as (

    select
        organization_id,
        created_date,
        status,
        count(*) as invoice_count,
        sum(invoiced_amount_usd) as invoiced_amount_usd,
        sum(paid_amount_usd) as paid_amount_usd,
        sum(balance_contribution_usd) as balance_change_usd

    from invoices
    group by organization_id, created_date, status

)

select * from totals
