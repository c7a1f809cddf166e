-- One row per organization per UTC day with invoices: the day's totals and balance change.
-- A table: the running balance in the fact is a window over this (much smaller) aggregate, and
-- dim_organizations sums it again, so the invoices are aggregated only once per build.
{{ config(materialized='table') }}

with

invoices as (

    select * from {{ ref('int_invoices_enriched') }}

),

daily as (

    select
        organization_id,
        created_date,
        count(*) as invoice_count,
        sum(invoiced_amount_usd) as invoiced_amount_usd,
        sum(paid_amount_usd) as paid_amount_usd,
        sum(balance_contribution_usd) as balance_change_usd

    from invoices
    group by organization_id, created_date

)

select * from daily
