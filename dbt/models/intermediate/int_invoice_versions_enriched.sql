-- One row per invoice version with its status's balance rule and its contribution to the organization's
-- balance. A table, not a view: the ledger finds each changed invoice's previous version by its key, and
-- Postgres cannot look a key up through a view built of CTEs (it scans every version instead: at 12.7M
-- invoices, seconds per model on every next day). Incremental: a run replaces the versions seen from the
-- ledger window start on (macros/engines/incremental_window.sql); a rules change rebuilds it in full.
{{
    config(
        materialized='incremental',
        incremental_strategy=ledger_window_strategy(),
        window_column='seen_on',
        partition_by=ledger_window_partition('seen_on'),
        indexes=postgres_indexes([
            {'columns': ['invoice_id', 'version'], 'unique': True},
            {'columns': ['seen_on']},
        ]),
    )
}}

with

versions as (

    select * from {{ ref('stg_payments__invoice_versions') }}
    {% if is_incremental() %}
        where seen_on >= {{ ledger_window_start() }}
    {% endif %}

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
