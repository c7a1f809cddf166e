-- Each later version of an invoice names its predecessor by the day it was seen (previous_seen_on), and the
-- ledger and its checks look that predecessor up by the versions' key (seen_on, invoice_id): it must be the
-- same invoice's version numbered one less, seen on an earlier day; a version that names none must be the
-- invoice's first (version 1). Reads the window's versions (every version on a full build) and looks up
-- only the predecessors they name. Returns the versions that break it.

with

-- the versions that name a predecessor, and first versions numbered other than 1
checked_versions as (

    select
        invoice_id,
        version,
        seen_on,
        previous_seen_on

    from {{ ref('stg_payments__invoice_versions') }}
    where
        seen_on >= {{ ledger_window_start() }}
        and (previous_seen_on is not null or version <> 1)

)

select
    checked_versions.invoice_id,
    checked_versions.version,
    checked_versions.seen_on,
    checked_versions.previous_seen_on,
    predecessors.version as predecessor_version

from checked_versions
left join {{ ref('stg_payments__invoice_versions') }} as predecessors
    on
        checked_versions.previous_seen_on = predecessors.seen_on
        and checked_versions.invoice_id = predecessors.invoice_id
where
    checked_versions.previous_seen_on is null
    or checked_versions.previous_seen_on >= checked_versions.seen_on
    or predecessors.version is null
    or predecessors.version <> checked_versions.version - 1
