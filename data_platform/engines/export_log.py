"""Which exports an engine's raw ledger still needs, from its load log: the loader's rules, engine-free.

An export is loaded once: the same date with the same files again is a no-op, the same date with other
files is refused, and so is an export dated after today (UTC), an export older than the newest one
loaded (its changes would land before days already booked), a single-file export dated on or after a
dated export (exports.refuse_after_dated), and an invoices file an earlier export
loaded that would change rows if loaded again (it would undo what the exports since changed). A file that
changes while it is read, a header-only file (unless allowed) and invoices created after their export's
date are refused as by the Postgres loader (data_platform/loader.py), which applies refuse_reloaded too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from data_platform.csv_files import sha256_of
from data_platform.exports import EXPORTS_FOLDER, Export, refuse_after_dated
from data_platform.load_errors import LoadError, future_export, header_only, reloaded, undatable
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


def refuse_empty(path: Path, rows: int, name: str, *, allow_empty: bool) -> None:
    """Refuse a file with a header but no data rows unless allowed (the loader's --allow-empty)."""
    if rows == 0 and not allow_empty:
        raise header_only(path, name)


def refuse_undated(export: Export, export_date: date | None) -> date:
    if export_date is None:
        raise undatable(export.invoices, f"put its files in {EXPORTS_FOLDER}/YYYY-MM-DD/ to date it")
    return export_date


def needs_load(
    export: Export,
    export_date: date,
    checksums: Checksums,
    logged: dict[date, Checksums],
    *,
    today: date,
) -> bool:
    """True when the export is new; False when it was loaded with these files; LoadError otherwise.
    `today`: the UTC date no export may be after."""
    if export_date in logged:
        if logged[export_date] == checksums:
            return False
        raise LoadError(
            export.source,
            f"export {export_date} was loaded before from other files (checksums differ): "
            "a loaded export never changes; rebuild the raw layer from scratch to replace it",
        )
    refuse_after_dated(export, export_date)
    if export_date > today:
        raise future_export(export.source, export_date, today)
    newest = max(logged, default=None)
    if newest is not None and export_date < newest:
        raise LoadError(
            export.source,
            f"export {export_date} is older than the newest loaded export {newest}: exports load in "
            "date order; rebuild the raw layer from scratch to insert it",
        )
    return True


def refuse_reloaded(
    path: Path,
    checksum: str | None,
    changed: int,
    export_date: date,
    loaded: dict[date, str],
    sources: dict[date, str],
) -> None:
    """Refuse an invoices file an earlier export loaded when loading it again changes rows of the current
    state: a later export changed them, and this would undo it (an old export folder copied under a new
    date, or its invoices.csv beside new organizations). Loaded again without changing anything (the latest
    export's file), it loads. Organizations files are not judged so (below).
    changed: the rows it changes; loaded: each logged export's invoices checksum; sources: each logged
    export's source, for the message."""
    # Only the invoices file tells a copy from a new export. A day's invoices file holds that day's new
    # invoices and changes, so one byte for byte an earlier day's is that day's file again (the records carry
    # no change time: a copy and a genuine revert look alike, and a copy would silently undo payments). An
    # organizations file is a small snapshot of a state that can genuinely come back (contracts 12 -> 13 ->
    # 12): refusing it as a copy blocked that export and every later one. A copied folder is caught by its
    # invoices file whenever those change rows.
    if not changed or checksum is None:
        return
    earlier = max((day for day, logged in loaded.items() if logged == checksum), default=None)
    if earlier is not None:
        raise reloaded(path, earlier, sources.get(earlier), export_date)


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
        source=export.logged_source,
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
