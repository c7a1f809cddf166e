-- The ledger adds up to the current state: per organization and status, the net invoice count and the
-- balance booked in int_organization_daily_status_totals equal those of the invoices' current versions in
-- dim_invoices. A mismatch means a version was lost or booked twice. Incremental builds check the
-- organizations with entries in the window (a full refresh checks all). Returns the differing groups.

with

window_organizations as (

    select distinct organization_id
    from {{ ref('int_organization_daily_status_totals') }}
    where balance_date >= {{ ledger_window_start() }}

),

booked as (

    select
        totals.organization_id,
        totals.status,
        sum(totals.net_invoice_count) as invoice_count,
        sum(totals.balance_change_usd) as balance_usd

    from {{ ref('int_organization_daily_status_totals') }} as totals
    where totals.organization_id in (select window_organizations.organization_id from window_organizations)
    group by totals.organization_id, totals.status

),

current_invoices as (

    select
        invoices.organization_id,
        invoices.status,
        count(*) as invoice_count,
        sum(invoices.balance_contribution_usd) as balance_usd

    from {{ ref('dim_invoices') }} as invoices
    where invoices.organization_id in (select window_organizations.organization_id from window_organizations)
    group by invoices.organization_id, invoices.status

)

select
    coalesce(booked.organization_id, current_invoices.organization_id) as organization_id,
    coalesce(booked.status, current_invoices.status) as status,
    booked.invoice_count as booked_invoice_count,
    current_invoices.invoice_count as current_invoice_count,
    booked.balance_usd as booked_balance_usd,
    current_invoices.balance_usd as current_balance_usd

from booked
full outer join current_invoices
    on
        booked.organization_id = current_invoices.organization_id
        and booked.status = current_invoices.status
where
    coalesce(booked.invoice_count, 0) <> coalesce(current_invoices.invoice_count, 0)
    or {{ usd_differs('coalesce(booked.balance_usd, 0)', 'coalesce(current_invoices.balance_usd, 0)') }}
