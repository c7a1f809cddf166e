-- The ledger adds up to the current state: per organization and status, the invoice count and balance
-- booked on the window's days (int_organization_daily_status_totals) equal what the window changed in the
-- invoices' current versions: the current versions first seen in the window (fct_invoices), minus, for
-- invoices that existed before it, the version that was current then. A full build's window holds every
-- day, so it compares the whole ledger with every current invoice; an incremental build reads only the
-- window's rows. A mismatch means a version was lost or booked twice. Returns the differing groups.

with

booked as (

    select
        organization_id,
        status,
        sum(net_invoice_count) as invoice_count,
        sum(balance_change_usd) as balance_usd

    from {{ ref('int_organization_daily_status_totals') }}
    where balance_date >= {{ ledger_window_start() }}
    group by organization_id, status

),

changed_invoices as (

    select
        invoice_id,
        organization_id,
        status,
        balance_contribution_usd

    from {{ ref('fct_invoices') }}
    where version_seen_on >= {{ ledger_window_start() }}

),

-- each changed invoice's version that was current before the window (none for a new invoice): the
-- predecessor of its first version in the window, which int_invoice_versions_enriched found by the versions'
-- key (tests/assert_invoice_versions_follow_their_predecessor.sql checks it is the previous version; its
-- unit tests check the contribution under today's rules), so an incremental build reads only the
-- window's versions and looks nothing up a second time
versions_before_window as (

    select
        previous_organization_id as organization_id,
        previous_status as status,
        previous_balance_contribution_usd as balance_contribution_usd

    from {{ ref('int_invoice_versions_enriched') }}
    where
        seen_on >= {{ ledger_window_start() }}
        and previous_seen_on < {{ ledger_window_start() }}

),

changes as (

    select
        organization_id,
        status,
        1 as invoice_count,
        balance_contribution_usd as balance_usd
    from changed_invoices

    union all

    select
        organization_id,
        status,
        -1 as invoice_count,
        -balance_contribution_usd as balance_usd
    from versions_before_window

),

current_changes as (

    select
        organization_id,
        status,
        sum(invoice_count) as invoice_count,
        sum(balance_usd) as balance_usd

    from changes
    group by organization_id, status

)

select
    coalesce(booked.organization_id, current_changes.organization_id) as organization_id,
    coalesce(booked.status, current_changes.status) as status,
    booked.invoice_count as booked_invoice_count,
    current_changes.invoice_count as current_invoice_count_change,
    booked.balance_usd as booked_balance_usd,
    current_changes.balance_usd as current_balance_usd_change

from booked
full outer join current_changes
    on
        booked.organization_id = current_changes.organization_id
        and booked.status = current_changes.status
where
    coalesce(booked.invoice_count, 0) <> coalesce(current_changes.invoice_count, 0)
    or coalesce(booked.balance_usd, 0) <> coalesce(current_changes.balance_usd, 0)
