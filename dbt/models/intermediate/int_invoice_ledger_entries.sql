-- The ledger: what each invoice version adds to its organization's balance, and on which day.
-- A version books its own contribution (entry_kind 'booking'); a version after the first also takes back
-- the previous version's contribution on the same day (entry_kind 'reversal'), so an old invoice paid
-- today moves today's balance and leaves the days already reported untouched.
-- A first version books on its created day, unless an earlier export had already closed that day (the
-- invoice arrived late): then it books on the day of the export that first saw it.

-- Each CTE reads the versions once: Postgres then inlines it and pushes an incremental build's filter
-- on seen_on down to the index (a CTE read twice is materialised whole, every version of every invoice).

with

versions as (

    select * from {{ ref('int_invoice_versions_enriched') }}

),

changed_versions as (

    select * from {{ ref('int_invoice_versions_enriched') }}
    where version > 1

),

exports as (

    select * from {{ ref('stg_payments__exports') }}

),

bookings as (

    select
        versions.invoice_id,
        versions.version,
        'booking' as entry_kind,
        versions.organization_id,
        versions.status,
        versions.seen_on,
        case
            when
                versions.version = 1
                and (
                    exports.previous_export_date is null
                    or versions.created_date > exports.previous_export_date
                )
                then versions.created_date
            else versions.seen_on
        end as booking_date,
        1 as invoice_count,
        case when versions.version > 1 then 1 else 0 end as changed_invoice_count,
        versions.invoiced_amount_usd,
        versions.paid_amount_usd,
        versions.balance_contribution_usd as balance_change_usd

    from versions
    left join exports
        on versions.seen_on = exports.export_date

),

-- the previous version's contribution, taken back (int_invoice_versions_enriched carries it)
reversals as (

    select
        invoice_id,
        version,
        'reversal' as entry_kind,
        previous_organization_id as organization_id,
        previous_status as status,
        seen_on,
        seen_on as booking_date,
        -1 as invoice_count,
        -- an invoice that moved to another organization also changed for the one it left
        case when previous_organization_id <> organization_id then 1 else 0 end as changed_invoice_count,
        -previous_invoiced_amount_usd as invoiced_amount_usd,
        -previous_paid_amount_usd as paid_amount_usd,
        -previous_balance_contribution_usd as balance_change_usd

    from changed_versions

),

final as (

    select * from bookings
    union all
    select * from reversals

)

select * from final
