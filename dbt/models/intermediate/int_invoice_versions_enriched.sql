-- One row per invoice version with its status's balance rule and its contribution to the organization's
-- balance. A view: the ledger entries and dim_invoices each read the versions they need from it.

with

versions as (

    select * from {{ ref('stg_payments__invoice_versions') }}

),

rules as (

    select * from {{ ref('invoice_enrichment') }}

),

enriched as (

    select
        versions.invoice_id,
        versions.version,
        versions.parent_invoice_id,
        versions.transaction_id,
        versions.organization_id,
        versions.invoice_type,
        versions.status,
        versions.currency,
        versions.payment_currency,
        versions.payment_method,
        versions.amount,
        versions.payment_amount,
        versions.fx_rate,
        versions.fx_rate_payment,
        versions.amount_usd,
        versions.payment_amount_usd,
        versions.created_at,
        versions.created_date,
        versions.seen_on,
        rules.description as status_description,
        rules.is_final,
        rules.invoiced_coefficient,
        rules.paid_coefficient,
        rules.invoiced_coefficient * versions.amount_usd as invoiced_amount_usd,
        rules.paid_coefficient * coalesce(versions.payment_amount_usd, 0) as paid_amount_usd

    from versions
    -- left join: a version whose status has no rule is kept (with null amounts) and fails the
    -- relationships test on stg_payments__invoice_versions.status, instead of vanishing from the balances
    left join rules
        on versions.status = rules.status

),

final as (

    select
        *,
        invoiced_amount_usd - paid_amount_usd as balance_contribution_usd

    from enriched

)

select * from final
