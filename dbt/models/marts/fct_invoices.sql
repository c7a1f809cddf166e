-- One row per invoice, in its current version, with its balance rule and its contribution to the
-- organization's balance. Incremental: a run replaces the invoices that a newer export added or changed
-- (on Spark, a table rebuilt each run: macros/engines/incremental_window.sql).
-- The unique index enforces the key in the database, so no full-table unique test is needed; the index
-- on version_seen_on finds a window's invoices (the window's tests). No other index: each one costs every
-- replaced invoice a write to a page of its own, which after a checkpoint is logged whole.
{{
    config(
        materialized=keyed_replace_materialization(),
        incremental_strategy=keyed_replace_strategy(),
        unique_key='invoice_id',
        indexes=postgres_indexes([
            {'columns': ['invoice_id'], 'unique': True},
            {'columns': ['version_seen_on']},
        ]),
    )
}}

with

-- Unfiltered: an incremental run finds its invoices through the window's versions and looks each one
-- up here by key (the staging view is flat for that). The current state has no index on its export day,
-- so that a day's status changes rewrite rows in place (HOT) instead of writing every index of it.
current_versions as (

    select * from {{ ref('stg_payments__invoices') }}

),

versions as (

    select * from {{ ref('int_invoice_versions_enriched') }}
    {% if is_incremental() %}
        where seen_on >= {{ ledger_window_start() }}
    {% endif %}

),

invoices as (

    select
        versions.*,
        current_versions.first_seen_on

    from versions
    inner join current_versions
        on
            versions.invoice_id = current_versions.invoice_id
            and versions.version = current_versions.current_version

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

        ---------- ledger
        version,
        first_seen_on,
        seen_on as version_seen_on,

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
