-- One row per invoice, with its balance rule and its contribution to the organization's balance.
-- Incremental: a run recomputes the invoices of the trailing window (macros/incremental_window.sql).
{{
    config(
        materialized='incremental',
        window_column='created_date',
        indexes=[{'columns': ['created_date']}],
    )
}}

with

invoices as (

    select * from {{ ref('int_invoices_enriched') }}
    {% if is_incremental() %}
        where created_date >= {{ incremental_window_start('created_date') }}
    {% endif %}

),

final as (

    select

        ----------  ids
        invoice_id,
        parent_invoice_id,
        transaction_id,
        organization_id,
        invoice_type,

        ---------- text
        status,
        currency,
        payment_currency,
        payment_method,

        ---------- numerics
        amount,
        payment_amount,
        fx_rate,
        fx_rate_payment,
        amount_usd,
        payment_amount_usd,

        ---------- timestamps
        created_at,
        created_date,

        ---------- balance rule and contribution
        status_description,
        is_final,
        invoiced_coefficient,
        paid_coefficient,
        invoiced_amount_usd,
        paid_amount_usd,
        balance_contribution_usd

    from invoices

)

select * from final
