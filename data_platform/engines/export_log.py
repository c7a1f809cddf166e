"""Which exports an engine's raw ledger still needs, from its load log: the loader's rules, engine-free.

An export is loaded once: the same date with the same files again is a no-op, the same date with other
files is refused, and so is an export older than the newest one loaded (its changes would land before
days already booked), and files already loaded as an earlier export that is not the newest one (loaded
again they would undo the exports since; header-only invoices are alike whatever their day). A file that
changes while it is read, a header-only file (unless allowed) and invoices created after their export's
date are refused as by the Postgres loader (data_platform/loader.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

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


@dataclass(frozen=True)
class Stamps:
    """The export's files as they were before they were read (None: missing), to refuse one that changed
    while it was read (appended to, replaced) as the Postgres loader does: loaded in part, the export would
    be skipped by every later run."""

    before: dict[Path, tuple[int, int, int, int] | None]

    @classmethod
    def of(cls, export: Export) -> Stamps:
        paths = [path for path in (export.organizations, export.invoices) if path is not None]
        return cls({path: _identity(path) for path in paths})

    def refuse_changed(self) -> None:
        for path, before in self.before.items():
            if _identity(path) != before:
                raise LoadError(
                    path,
                    "changed while it was read: land an export in one step (copy into a dot-named folder, "
                    "then mv)",
                )


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        stat = path.stat()
    except OSError:  # missing or unreadable: its reader names it
        return None
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def refuse_empty(path: Path, rows: int, name: str, *, allow_empty: bool) -> None:
    """Refuse a file with a header but no data rows unless allowed (the loader's --allow-empty)."""
    if rows == 0 and not allow_empty:
        raise LoadError(
            path,
            f"no data rows, only the header (pass --allow-empty if an export without {name} is intended)",
        )


def refuse_undated(export: Export, export_date: date | None) -> date:
    if export_date is None:
        raise LoadError(export.invoices, "cannot date an export without invoices: pass --as-of YYYY-MM-DD")
    return export_date


def refuse_future_invoices(
    export: Export, export_date: date, count: int, first: tuple[int, str] | None
) -> None:
    """Invoices created after their export's date would move every watermark into the future; `count` of
    them, `first`: (INVOICE_ID, CREATED_AT) of one."""
    if not count:
        return
    invoice_id, created_at = first or (None, None)
    raise LoadError(
        export.invoices,
        f"{count:,} invoice(s) created after the export date {export_date} (the first is shown, "
        f"INVOICE_ID {invoice_id}): an export cannot hold invoices from its future; fix the export or its "
        "date",
        column="CREATED_AT",
        value=created_at,
    )


def needs_load(
    export: Export,
    export_date: date,
    checksums: Checksums,
    logged: dict[date, Checksums],
    *,
    invoice_rows: int,
    sources: dict[date, str] | None = None,
) -> bool:
    """True when the export is new; False when it was loaded with these files; LoadError otherwise.
    `sources`: each logged export's source, for the messages."""
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
    earlier = max(
        (day for day, logged_checksums in logged.items() if logged_checksums == checksums), default=None
    )
    if invoice_rows and earlier is not None and earlier != newest:
        source = (sources or {}).get(earlier)
        raise LoadError(
            export.source,
            f"these files were already loaded as export {earlier}{f' (from {source})' if source else ''}: "
            f"loaded again as export {export_date} they would undo what the exports since changed; an export "
            "loads once (put corrections in a new dated export)",
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
