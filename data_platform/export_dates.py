"""An export's date, and whether it may load as that date: inside the export's transaction, before (and,
for a file an earlier export loaded, after) its rows are applied.

Loaded already with the same files -> skipped. Refused: the same date with other files, a date before the
latest loaded export or after today, an undated (single-file) export dated after a dated export, and an
invoices file an earlier export loaded that changes rows loaded since.
"""

from __future__ import annotations

from datetime import date

import psycopg

from data_platform import file_checksums, ledger
from data_platform.engines.export_log import refuse_reloaded
from data_platform.exports import EXPORTS_FOLDER, Export, refuse_after_dated
from data_platform.load_errors import LoadError, future_export, undatable
from data_platform.raw_tables import ORGANIZATIONS
from data_platform.staging import Staged


def _refuse_date(conn: psycopg.Connection, export: Export, export_date: date, today: date) -> None:
    """Refuse an export from the future or older than the latest loaded one."""
    if export_date > today:
        raise future_export(export.source, export_date, today)
    latest = ledger.latest_export(conn)
    if latest is not None and export_date < latest:
        older = (
            f"export {export_date} is older than the latest loaded export {latest}: "
            "exports load in date order"
        )
        if export.date is None:  # the single-file export, dated by its newest invoice
            raise LoadError(export.source, f"{older}; put corrections in a new dated export")
        # a day that arrived late: removed, its rows would be lost; renamed to a later day, that folder
        # would take the place of that day's real export; its rows of invoices or organizations an export
        # since changed are older than what the warehouse holds, and would undo it
        raise LoadError(
            export.source,
            f"{older}, so it can no longer load. To keep its rows, add to the next export, before that one "
            f"loads, those whose invoice or organization no export since {export_date} changed (seen_on in "
            "raw.invoices and raw.organizations, if any, before that day; for one also in the next export, "
            "keep the next export's row): they are booked on that export's day. Then remove this folder. "
            f"Or restore a backup taken before {latest} loaded",
        )


def _checksums(conn: psycopg.Connection, export: Export) -> tuple[str, str | None]:
    """The sha256 of the export's invoices and organizations files (None: no organizations file)."""
    organizations = file_checksums.checksum(conn, export.organizations) if export.organizations else None
    return file_checksums.checksum(conn, export.invoices), organizations


def _already_loaded(
    conn: psycopg.Connection, export: Export, export_date: date, logged: ledger.LoggedExport
) -> bool:
    """True if the logged export has the same content; a LoadError if it differs."""
    invoices, organizations = _checksums(conn, export)
    if (invoices, organizations) == (logged.invoices_sha256, logged.organizations_sha256):
        return True
    raise _altered(export, export_date, logged, invoices, organizations)


def _altered(
    export: Export, export_date: date, logged: ledger.LoggedExport, invoices: str, organizations: str | None
) -> LoadError:
    if invoices == logged.invoices_sha256 and organizations is None and logged.organizations_sha256:
        # a clean-up of old days' files: "a different file" would send its reader looking for an edit
        return LoadError(
            export.source / ORGANIZATIONS.file_name,
            f"file not found, but export {export_date} was loaded with it (organizations checksum "
            f"{logged.organizations_sha256}, from {logged.source}): put it back as it was; an export's files "
            "are the record of what was loaded, so a loaded export's files stay in place, unchanged",
        )
    if invoices != logged.invoices_sha256:
        was = f"invoices checksum {logged.invoices_sha256}"
    elif logged.organizations_sha256 is None:
        was = "it had no organizations file"
    else:
        was = f"organizations checksum {logged.organizations_sha256}"
    loaded = f"export {export_date} was already loaded from a different file ({was}, from {logged.source})"
    # the single-file export, dated by its newest invoice: replaced by a later day's dump of every invoice
    if export.date is None:
        return LoadError(
            export.source,
            f"{loaded}; exports are immutable: put the files it loaded back here, and a later day's full "
            f"dump with no newer invoice in {EXPORTS_FOLDER}/YYYY-MM-DD/, named for the day it was exported",
        )
    return LoadError(
        export.source,
        f"{loaded}; exports are immutable: put its files back as they were loaded (or, if those are lost, "
        "move them out of the landing folder: the ledger keeps what they loaded), and corrections in a new "
        "dated export",
    )


def refuse_reloaded_file(conn: psycopg.Connection, export_date: date, invoices: Staged, changed: int) -> None:
    """Refuse an invoices file an earlier export loaded that changes rows loaded again: it would undo what
    the exports since changed (export_log.refuse_reloaded, which the engines' builders apply too, says why
    an organizations file is not judged so)."""
    if not changed:
        return
    logged = ledger.logged_exports(conn)
    loaded = {export.export_date: export.invoices_sha256 for export in logged}
    sources = {export.export_date: export.source for export in logged}
    refuse_reloaded(invoices.path, invoices.sha256, changed, export_date, loaded, sources)


def loaded_as(conn: psycopg.Connection, export: Export, today: date) -> date | None:
    """The date `export` was loaded as, if it was (skip it); a LoadError when it was loaded with other
    files, or when its folder's date cannot be loaded (an undated export's date is known only once its
    records are read: dated_by_content)."""
    if export.date is not None:
        logged = ledger.logged(conn, export.date)
        if logged and _already_loaded(conn, export, export.date, logged):
            return export.date
        _refuse_date(conn, export, export.date, today)
    elif ledger.latest_export(conn) is not None:  # the base export, dated by its content
        logged = ledger.logged_by_checksums(conn, *_checksums(conn, export))
        if logged:  # this very file was loaded before
            return logged.export_date
    return None


def dated_by_content(
    conn: psycopg.Connection, export: Export, invoices: Staged, organizations: Staged | None, today: date
) -> date:
    """An undated export's date, its latest invoice's created day, refused as a dated export's would be:
    the date of another loaded export, or before the latest one; and not before the dated exports
    (exports.refuse_after_dated)."""
    export_date = ledger.latest_day(conn)
    if export_date is None:
        raise undatable(export.invoices)
    if export_date > today:  # named by its line, not by a date the user never gave
        ledger.refuse_future_invoices(conn, invoices, today, dated_by_content=True)
    refuse_after_dated(export, export_date)
    logged = ledger.logged(conn, export_date)
    if logged:
        raise _altered(
            export, export_date, logged, invoices.sha256, organizations.sha256 if organizations else None
        )
    _refuse_date(conn, export, export_date, today)
    return export_date
