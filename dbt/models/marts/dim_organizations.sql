-- One row per organization seen in either file: organizations.csv, the invoices, or both.
{{
    config(
        indexes=postgres_indexes([
            {'columns': ['organization_id'], 'unique': True},
        ]),
    )
}}

with

organizations as (

    select * from {{ ref('stg_payments__organizations') }}

),

totals_by_status as (

    select * from {{ ref('int_organization_status_totals') }}

),

invoice_summaries as (

    select
        organization_id,
        cast(sum(invoice_count) as bigint) as invoice_count,
        -- keys are the statuses present in the data, so the object follows seed and data changes
        {{ status_counts_object('status', 'invoice_count', 'invoice_count <> 0') }}
            as invoice_count_by_status,
        sum(invoiced_amount_usd) as invoiced_amount_usd,
        sum(paid_amount_usd) as paid_amount_usd,
        sum(balance_usd) as balance_usd,
        min(first_invoice_date) as first_invoice_date,
        max(last_invoice_date) as last_invoice_date

    from totals_by_status
    group by organization_id

),

final as (

    select

        ----------  ids
        coalesce(organizations.organization_id, invoice_summaries.organization_id) as organization_id,

        ---------- booleans
        organizations.organization_id is null as is_missing_from_organizations_file,

        ---------- from organizations.csv
        organizations.first_payment_date,
        organizations.last_payment_date,
        organizations.legal_entity_country_code,
        organizations.count_total_contracts_active,
        organizations.organization_created_at,

        ---------- from the invoices (zero when the organization has none)
        coalesce(invoice_summaries.invoice_count, 0) as invoice_count,
        coalesce(
            invoice_summaries.invoice_count_by_status, {{ empty_status_counts() }}
        ) as invoice_count_by_status,
        coalesce(invoice_summaries.invoiced_amount_usd, 0) as invoiced_amount_usd,
        coalesce(invoice_summaries.paid_amount_usd, 0) as paid_amount_usd,
        coalesce(invoice_summaries.balance_usd, 0) as balance_usd,
        invoice_summaries.first_invoice_date,
        invoice_summaries.last_invoice_date

    from organizations
    full outer join invoice_summaries
        on organizations.organization_id = invoice_summaries.organization_id

)

select * from final
