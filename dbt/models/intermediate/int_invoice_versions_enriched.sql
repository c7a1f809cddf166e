-- One row per invoice version with its status's balance rule and its contribution to the organization's
-- balance; a version after the first also carries the previous version's organization, status and
-- contribution, which the ledger takes back on the version's day. Looking the previous versions up here,
-- by the versions' key, once per run, spares every reader of the ledger that lookup (at 12.7M invoices a
-- day's changed invoices sit one per page, scattered over the whole table). Incremental: a run replaces the
-- versions seen from the ledger window start on (macros/engines/incremental_window.sql); a rules change
-- rebuilds it in full. Keyed like the raw history, by (seen_on, invoice_id): the one index serves the
-- window's delete, and a run's versions land at its end instead of on a random page each.
{{
    config(
        materialized='incremental',
        incremental_strategy=ledger_window_strategy(),
        window_column='seen_on',
        partition_by=ledger_window_partition('seen_on'),
        indexes=postgres_indexes([
            {'columns': ['seen_on', 'invoice_id'], 'unique': True},
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

-- each changed version's previous version, in the window or before it (found by the versions' primary key,
-- seen_on + invoice_id)
previous_versions as (

    select
        later.invoice_id,
        later.version,
        earlier.version as previous_version,
        earlier.organization_id,
        earlier.status,
        earlier.amount_usd,
        earlier.payment_amount_usd

    from {{ ref('stg_payments__invoice_versions') }} as later
    inner join {{ ref('stg_payments__invoice_versions') }} as earlier
        on
            later.previous_seen_on = earlier.seen_on
            and later.invoice_id = earlier.invoice_id
    where
        later.previous_seen_on is not null
        {% if is_incremental() %}
            and later.seen_on >= {{ ledger_window_start() }}
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
        {{ rule_amounts('rules', 'versions') }},
        versions.previous_seen_on,
        previous_versions.previous_version,
        previous_versions.organization_id as previous_organization_id,
        previous_versions.status as previous_status,
        {{ rule_amounts('previous_rules', 'previous_versions', 'previous_') }}

    from versions
    -- left join: a version whose status has no rule is kept (with null amounts) and fails the
    -- relationships test on stg_payments__invoice_versions.status, instead of vanishing from the balances
    left join rules
        on versions.status = rules.status
    left join previous_versions
        on
            versions.invoice_id = previous_versions.invoice_id
            and versions.version = previous_versions.version
    left join rules as previous_rules
        on previous_versions.status = previous_rules.status

)

select * from enriched
