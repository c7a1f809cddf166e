-- One row per invoice with its balance rule and its contribution to the organization's balance.
-- A view: it is read once by dim_invoices and once by the daily aggregate, so storing it would only
-- write the 12.7M invoices one more time.

with

invoices as (

    select * from {{ ref('stg_payments__invoices') }}

),

rules as (

    select * from {{ ref('invoice_enrichment') }}

),

enriched as (

    select
        invoices.invoice_id,
        invoices.parent_invoice_id,
        invoices.transaction_id,
        invoices.organization_id,
        invoices.invoice_type,
        invoices.status,
        invoices.currency,
        invoices.payment_currency,
        invoices.payment_method,
        invoices.amount,
        invoices.payment_amount,
        invoices.fx_rate,
        invoices.fx_rate_payment,
        invoices.amount_usd,
        invoices.payment_amount_usd,
        invoices.created_at,
        invoices.created_date,
        rules.description as status_description,
        rules.is_final,
        rules.invoiced_coefficient,
        rules.paid_coefficient,
        rules.invoiced_coefficient * invoices.amount_usd as invoiced_amount_usd,
        rules.paid_coefficient * coalesce(invoices.payment_amount_usd, 0) as paid_amount_usd

    from invoices
    -- left join: an invoice whose status has no rule is kept (with null amounts) and fails the
    -- relationships test on stg_payments__invoices.status, instead of vanishing from the balances
    left join rules
        on invoices.status = rules.status

),

final as (

    select
        *,
        invoiced_amount_usd - paid_amount_usd as balance_contribution_usd

    from enriched

)

select * from final
