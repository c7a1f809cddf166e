-- Each later version of an invoice names its predecessor by the day it was seen (previous_seen_on), and
-- int_invoice_versions_enriched looks that predecessor up by the versions' key (seen_on, invoice_id) to
-- take its contribution back: it must be found, be the same invoice's version numbered one less, and be
-- seen on an earlier day; a version that names none must be the invoice's first (version 1). Reads the
-- window's rows of that model (every row on a full build), whose lookup already found each predecessor,
-- so a day costs no lookups of its own. Returns the versions that break it.

select
    invoice_id,
    version,
    seen_on,
    previous_seen_on,
    previous_version

from {{ ref('int_invoice_versions_enriched') }}
where
    seen_on >= {{ ledger_window_start() }}
    and (previous_seen_on is not null or version <> 1)
    and (
        previous_seen_on is null
        or previous_seen_on >= seen_on
        or previous_version is null
        or previous_version <> version - 1
    )
