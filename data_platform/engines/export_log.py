"""Which exports an engine's raw ledger still needs, from its load log: the loader's rules, engine-free.

An export is loaded once: the same date with the same files again is a no-op, the same date with other
files is refused, and so is an export older than the newest one loaded (its changes would land before
days already booked).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime

from data_platform.csv_files import sha256_of
from data_platform.exports import Export
from data_platform.load_errors import LoadError
from data_platform.raw_tables import LoadLogRow


@dataclass(frozen=True)
class Checksums:
    invoices: str
    organizations: str | None

    @classmethod
    def of(cls, export: Export) -> Checksums:
        return cls(
            sha256_of(export.invoices), sha256_of(export.organizations) if export.organizations else None
        )


def needs_load(
    export: Export, export_date: date, checksums: Checksums, logged: dict[date, Checksums]
) -> bool:
    """True when the export is new; False when it was loaded with these files; LoadError otherwise."""
    if export_date in logged:
        if logged[export_date] == checksums:
            return False
        raise LoadError(
            export.source,
            f"export {export_date} was loaded before from other files (checksums differ): "
            "a loaded export never changes; rebuild the raw layer from scratch to replace it",
        )
    newest = max(logged, default=None)
    if newest is not None and export_date < newest:
        raise LoadError(
            export.source,
            f"export {export_date} is older than the newest loaded export {newest}: exports load in "
            "date order; rebuild the raw layer from scratch to insert it",
        )
    return True


def log_row(
    export: Export,
    export_date: date,
    checksums: Checksums,
    *,
    invoice_rows: int,
    invoices: tuple[int, int],
    organization_rows: int,
    organizations: tuple[int, int],
    started: float,
) -> LoadLogRow:
    """The load log's row for an export; `invoices`, `organizations`: (new, changed) rows, `started`: its
    time.monotonic() when the load began."""
    new, changed = invoices
    return LoadLogRow(
        export_date=export_date,
        source=str(export.source),
        invoices_sha256=checksums.invoices,
        organizations_sha256=checksums.organizations,
        invoice_rows=invoice_rows,
        invoices_new=new,
        invoices_changed=changed,
        invoices_unchanged=invoice_rows - new - changed,
        organization_rows=organization_rows,
        organizations_new=organizations[0],
        organizations_changed=organizations[1],
        loaded_at=datetime.now(UTC),
        duration_seconds=time.monotonic() - started,
    )
