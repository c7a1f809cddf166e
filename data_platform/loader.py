"""Load the exports under the CSV directory into the raw ledger, each export once, atomically.

    python -m data_platform.loader [--csv-dir DIR] [--as-of YYYY-MM-DD] [--through YYYY-MM-DD]
                                   [--allow-empty] [--wait SECONDS]

Exports (exports.py) load in export-date order, each in its own transaction: stream the files into
staging tables (unlogged, created and dropped inside that transaction, so no other session sees
them) and check every value (staging.py; a dated snapshot only the records not in the latest
export's file, snapshot_diff.py), then write new and changed invoices as versions and the current
state, upsert the organizations and log the export (ledger.py). A failure, Ctrl-C or a killed
process rolls the export back: the raw tables stay exactly as they were. The ledger's tables are
only ever written, never dropped: readers and running dbt builds keep working.

Already loaded (same date, same checksums) -> skipped (export_dates.py). Same date with other content, a
date before the latest loaded export, a date after today (UTC), invoices created after their export's
date, or the same INVOICE_ID twice -> refused. An invoices file an earlier export loaded that changes
rows loaded again -> refused: the base export again under a new --as-of, an old folder copied to a new
date, or an old invoices.csv beside a new organizations.csv would undo what the exports since changed
(loaded again without changing anything, as the latest export's file, it loads; an organizations.csv
equal to an earlier one loads: an organization's state can return). A file that changes while it is read
(appended to, replaced) -> refused, so the next run loads it whole. An export with a header but no rows
is refused unless --allow-empty; once loaded, it is skipped like any other (later runs need no
--allow-empty). A server older than PostgreSQL 16 -> refused before anything is read.

Exit codes: 0 loaded (or nothing new), 1 bad input or a refused export, 2 database unreachable,
3 another loader run held the lock past --wait (nothing was loaded), 6 the database failed during the load
(the export being loaded rolled back, not at fault: run again once the database is back), 130
interrupted (Ctrl-C), 143 stopped by SIGTERM (rolled back as on Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path

import psycopg

from data_platform import export_dates, file_checksums, ledger, ledger_tables, refresh
from data_platform.csv_files import (
    BLOCK_SIZE,
    Progress,
    Unchanged,
    check_header,
    identity,
    refuse_cut_off,
)
from data_platform.db import (
    DEAD_CLIENT_CHECK,
    DatabaseUnavailable,
    check_for_dead_client,
    connect,
)
from data_platform.exports import (
    CSV_DIR_HELP,
    Export,
    csv_dir_default,
    date_argument,
    discover,
    refuse_misnamed_base,
)
from data_platform.load_errors import (
    ALLOW_EMPTY_HELP,
    ERROR_PREFIX,
    EXIT_BUSY,
    EXIT_DATABASE_FAILED,
    EXIT_DATABASE_UNAVAILABLE,
    LoaderBusy,
    LoadError,
    changed_while_read,
    header_only,
    printable,
    utc_today,
)
from data_platform.loader_lock import release_loader_lock, session_name, take_loader_lock
from data_platform.raw_tables import INVOICES, ORGANIZATIONS, LoadLogRow, TableSpec
from data_platform.snapshot_diff import worth_reading
from data_platform.staging import Staged, discard, stage
from data_platform.steps import say
from data_platform.wording import plural

PROGRESS_INTERVAL_SECONDS = 5.0
# pg_input_is_valid (PostgreSQL 16) lets the checks name a bad value's line and column
MINIMUM_SERVER_VERSION = 160000


NO_INVOICES = ledger.InvoiceCounts(0, 0, 0)
SKIPPED = "already loaded (same checksums), skipped"


@dataclass(frozen=True)
class ExportResult:
    export: Export
    export_date: date
    skipped: bool = False
    invoice_rows: int = 0
    invoices: ledger.InvoiceCounts = NO_INVOICES
    organization_rows: int = 0
    organizations_new: int = 0
    organizations_changed: int = 0
    seconds: float = 0.0
    note: str | None = None  # how the invoices were read against the previous export's file

    def summary(self) -> str:
        head = f"export {self.export_date} ({printable(str(self.export.source))})"
        if self.skipped:
            return f"{head}: {SKIPPED}"
        rows = self.invoice_rows + self.organization_rows
        rate = rows / self.seconds if self.seconds > 0 else 0.0
        organizations = (
            f", {plural(self.organization_rows, 'organization')} ({self.organizations_new:,} new, "
            f"{self.organizations_changed:,} changed)"
            if self.export.organizations
            else ""
        )
        counts = self.invoices
        note = f"; invoices {self.note}" if self.note else ""
        return (
            f"{head}: {plural(self.invoice_rows, 'invoice')} ({counts.new:,} new, "
            f"{counts.changed:,} changed, {counts.unchanged:,} unchanged){organizations} "
            f"in {self.seconds:.1f} s ({rate:,.0f} rows/s){note}"
        )


@dataclass(frozen=True)
class _File:
    spec: TableSpec
    path: Path
    header_bytes: int
    before: os.stat_result  # taken before its header was read

    @property
    def unchanged(self) -> Unchanged:
        """A load must be of one whole file: the next run, finding another one, would refuse the export."""
        return Unchanged({self.path: identity(self.before)})


def _checked_files(export: Export) -> list[_File]:
    """The export's files, each header checked."""
    checked = []
    for spec, path in ((ORGANIZATIONS, export.organizations), (INVOICES, export.invoices)):
        if path is None:
            continue
        try:
            before = path.stat()
        except OSError:
            before = None  # the header check names a missing or unreadable file
        header_bytes = check_header(spec, path)
        if before is None:  # it appeared while its header was read
            raise changed_while_read(path)
        checked.append(_File(spec, path, header_bytes, before))
    return checked


def _refuse_empty(files: list[_File], export_date: date | None) -> None:
    """Refuse a file with a header but no data rows (unless --allow-empty)."""
    for file in files:
        if file.before.st_size == file.header_bytes:
            raise header_only(file.path, file.spec.name, export_date)


def load_export(
    conn: psycopg.Connection,
    export: Export,
    *,
    allow_empty: bool = False,
    block_size: int = BLOCK_SIZE,
    progress: Progress | None = None,
    today: date | None = None,
) -> ExportResult:
    """Load one export in one transaction, or skip it if it is already loaded."""
    today = today or utc_today()
    files = _checked_files(export)
    started = time.perf_counter()
    with conn.transaction():
        # Timestamps without an offset do not pass the format checks anyway; UTC makes days UTC days.
        conn.execute("set local timezone to 'UTC'")
        conn.execute("set local datestyle to 'ISO, YMD'")
        new_tables = ledger_tables.ensure_tables(conn)
        loaded_as = export_dates.loaded_as(conn, export, today)
        if loaded_as is not None:
            return ExportResult(export, loaded_as, skipped=True)
        # only once it is known not to be loaded yet: an export loaded with --allow-empty is skipped by
        # the runs after it, which never pass it
        if not allow_empty:
            _refuse_empty(files, export.date)
        for file in files:
            refuse_cut_off(file.path)
        staged = _stage_files(conn, export, files, block_size, progress)
        invoices = staged[INVOICES.name]
        organizations = staged.get(ORGANIZATIONS.name)
        export_date = export.date or export_dates.dated_by_content(
            conn, export, invoices, organizations, today
        )
        ledger.refuse_future_invoices(conn, invoices, export_date)
        if organizations:
            ledger.refuse_duplicates(conn, organizations)

        counts = ledger.apply_invoices(conn, invoices, export_date, new_tables=new_tables)
        export_dates.refuse_reloaded_file(conn, export_date, invoices, counts.changed)
        org_new, org_changed = ledger.apply_organizations(conn, export_date) if organizations else (0, 0)
        for file in files:
            discard(conn, file.spec)
        ledger.refresh_statistics(conn, counts.new + counts.changed)
        result = ExportResult(
            export,
            export_date,
            invoice_rows=invoices.rows,
            invoices=counts,
            organization_rows=organizations.rows if organizations else 0,
            organizations_new=org_new,
            organizations_changed=org_changed,
            note=invoices.note,
        )
        # the logged time covers all of the load's work; only the commit comes after it
        _log(conn, result, invoices, organizations, time.perf_counter() - started)
    return replace(result, seconds=time.perf_counter() - started)


def _stage_files(
    conn: psycopg.Connection, export: Export, files: list[_File], block_size: int, progress: Progress | None
) -> dict[str, Staged]:
    """Each file staged and checked, by its table's name; its checksum remembered."""
    # a dated snapshot is read against the latest export's file (an undated one is dated by all of its
    # records, so every one is staged)
    previous = ledger.latest_invoices_file(conn) if export.date is not None else None
    staged = {}
    for file in files:
        spec, path, header = file.spec, file.path, file.header_bytes
        against = previous if spec is INVOICES and previous and worth_reading(path, previous) else None
        with file.unchanged.reading():
            staged[spec.name] = stage(
                conn, spec, path, header, block_size=block_size, progress=progress, previous=against
            )
        # the next run asks whether this export was loaded: it need not read the file again
        file_checksums.remember(conn, path, file.before, staged[spec.name].sha256)
    return staged


def _log(
    conn: psycopg.Connection,
    result: ExportResult,
    invoices: Staged,
    organizations: Staged | None,
    seconds: float,
) -> None:
    """The export's row in the load log."""
    ledger.log_export(
        conn,
        LoadLogRow(
            export_date=result.export_date,
            source=result.export.logged_source,
            invoices_sha256=invoices.sha256,
            organizations_sha256=organizations.sha256 if organizations else None,
            invoice_rows=result.invoice_rows,
            invoices_new=result.invoices.new,
            invoices_changed=result.invoices.changed,
            invoices_unchanged=result.invoices.unchanged,
            organization_rows=result.organization_rows,
            organizations_new=result.organizations_new,
            organizations_changed=result.organizations_changed,
            loaded_at=datetime.now(UTC),
            duration_seconds=round(seconds, 3),
        ),
    )


WAITED_FOR_THE_LOCK = "interrupted while it waited for the loader's lock"
ROLLED_BACK = "the export being loaded was rolled back"
# the start of the note a database error raised during an export gets, followed by the export's label
WHILE_LOADING = "while loading "


def load_exports(
    conn: psycopg.Connection,
    csv_dir: Path | str,
    *,
    as_of: date | None = None,
    through: date | None = None,
    allow_empty: bool = False,
    block_size: int = BLOCK_SIZE,
    progress: Progress | None = None,
    today: date | None = None,
    report=None,
    wait: float = 0.0,
) -> list[ExportResult]:
    """Load every export under csv_dir in date order; `conn` must be in autocommit mode.

    Each export commits on its own: when a later one fails, the earlier ones stay loaded.
    `report` is called with each ExportResult as soon as it is done. Another loader run holding the
    lock is waited for up to `wait` seconds, then LoaderBusy.
    """
    if not conn.autocommit:
        raise ValueError("load_exports needs an autocommit connection: each export commits on its own")
    if conn.info.server_version < MINIMUM_SERVER_VERSION:
        raise LoadError(
            None,
            f"the loader needs PostgreSQL {MINIMUM_SERVER_VERSION // 10000} or later; "
            f"this server runs {conn.execute('show server_version').fetchone()[0]}",
        )
    exports = discover(csv_dir, as_of, through)
    try:
        take_loader_lock(conn, wait)
    except KeyboardInterrupt as interrupt:
        interrupt.add_note(WAITED_FOR_THE_LOCK)  # nothing was loading: main says so
        raise
    named, checking = None, False
    try:
        named = conn.execute("select current_setting('application_name')").fetchone()[0]
        conn.execute("select set_config('application_name', %s, false)", [session_name(os.getpid())])
        checking = check_for_dead_client(conn)
        if refresh.latest_export(conn) is None:
            refuse_misnamed_base(csv_dir)
        results = []
        for export in exports:
            try:
                result = load_export(
                    conn,
                    export,
                    allow_empty=allow_empty,
                    block_size=block_size,
                    progress=progress,
                    today=today,
                )
            except psycopg.Error as error:
                error.add_note(f"{WHILE_LOADING}{export.label}")  # main names the export that rolled back
                raise
            results.append(result)
            if report:
                report(result)
        return results
    finally:
        if not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            release_loader_lock(conn)
            if named is not None:
                conn.execute("select set_config('application_name', %s, false)", [named])
            if checking:
                conn.execute(f"reset {DEAD_CLIENT_CHECK}")


# --- command line -----------------------------------------------------------------------------


class ProgressReporter:
    """Prints MiB done / total to stderr every few seconds; silent for files quicker than that."""

    def __init__(self, interval: float = PROGRESS_INTERVAL_SECONDS):
        self.interval = interval
        self.path: Path | None = None
        self.started = self.next_report = 0.0

    def __call__(self, path: Path, done: int, total: int) -> None:
        now = time.monotonic()
        if path != self.path:
            self.path, self.started, self.next_report = path, now, now + self.interval
        if now < self.next_report:
            return
        self.next_report = now + self.interval
        mib, elapsed = 1024 * 1024, max(now - self.started, 1e-6)
        say(
            f"  {printable(path.name)}: {done / mib:,.0f} / {total / mib:,.0f} MiB "
            f"({100 * done / max(total, 1):.0f}%), {done / mib / elapsed:,.0f} MiB/s",
            sys.stderr,
        )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (0 <= value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `timeout`, a supervisor) arrived. A KeyboardInterrupt, as Ctrl-C is: psycopg then
    cancels the running statement, so the server rolls back at once instead of finishing it for a client
    that is gone (its session would hold the loader's lock meanwhile)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum: int, _frame) -> None:
    raise Terminated(signum)


# true whether the error came before any export (a missing folder) or in one, which rolled back
NOTHING_MORE_LOADED = "nothing more was loaded (an export loads whole or not at all)"
# the database's failure is no export's: removing the export it was loading would have the next run load
# the later ones, and refuse that one for ever as older than the latest loaded export
RUN_AGAIN = "run again once the database is back or fixed"
# errors of the data, not of the database (a constraint a DBA added, a value the format checks let through,
# a field past the server's limits): the same export would fail again, so it is refused like bad input
REFUSED_DATA = (psycopg.DataError, psycopg.IntegrityError, psycopg.errors.ProgramLimitExceeded)


def database_failed(error: psycopg.Error) -> str:
    """Why the load stopped when the database failed: its error, and the export that rolled back."""
    # the server's message without the statement's position; a lost connection's (libpq's) spans lines
    said = printable(error.diag.message_primary or " ".join(str(error).split()))
    notes = getattr(error, "__notes__", ())
    loading = [note.removeprefix(WHILE_LOADING) for note in notes if note.startswith(WHILE_LOADING)]
    if not loading:  # before the first export: taking the lock, say
        return f"the database failed: {said}\n{NOTHING_MORE_LOADED}; no export is at fault: {RUN_AGAIN}"
    return (
        f"the database failed while loading {printable(loading[-1])}: {said}\n"
        "nothing of that export or the later ones was loaded (it rolled back); the export is not at fault: "
        f"do not remove it; {RUN_AGAIN}"
    )


def _interrupted(error: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM a database error was raised in the handling of (a rollback after it, say):
    the load was interrupted, not failed by the database."""
    while error is not None:
        if isinstance(error, KeyboardInterrupt):
            return error
        error = error.__context__
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="data-platform-load",
        description="Load the exports (invoices.csv + organizations.csv, and exports/<YYYY-MM-DD>/) "
        "into the raw ledger, each export once, in date order.",
    )
    parser.add_argument(
        "--csv-dir",
        type=Path,
        default=Path(csv_dir_default()),
        help=CSV_DIR_HELP,
    )
    parser.add_argument(
        "--as-of",
        type=date_argument,
        help="export date of the single-file export (default: the latest CREATED_AT day in it)",
    )
    parser.add_argument(
        "--through",
        type=date_argument,
        help="load the dated export folders up to this day only, leaving later ones for a later run "
        "(the daily profile's export sensor judged the folders up to this day complete)",
    )
    parser.add_argument(
        "--allow-empty",
        action="store_true",
        help=ALLOW_EMPTY_HELP,
    )
    parser.add_argument(
        "--wait",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help=f"wait this long for another loader run to finish (default 0: exit {EXIT_BUSY} at once)",
    )
    return parser


class ExportReporter:
    """Prints each export's line as it is done, the exports already loaded one line for each run of them:
    a daily run skips every export of the months before, and those lines would bury the day's. That line
    comes once the next export starts to load (its first progress), or at the end."""

    def __init__(self, progress: Progress):
        self.skipped: list[ExportResult] = []
        self._progress = progress

    def __call__(self, result: ExportResult) -> None:
        if result.skipped:
            self.skipped.append(result)
            return
        self.flush()
        say(result.summary())

    def progress(self, path: Path, done: int, total: int) -> None:
        self.flush()
        self._progress(path, done, total)

    def flush(self) -> None:
        if len(self.skipped) == 1:
            say(self.skipped[0].summary())
        elif self.skipped:
            first, last = self.skipped[0].export_date, self.skipped[-1].export_date
            say(f"{len(self.skipped):,} exports {first} to {last}: {SKIPPED}")
        self.skipped = []


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    report = ExportReporter(ProgressReporter())
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        with connect(autocommit=True) as conn:
            try:
                load_exports(
                    conn,
                    args.csv_dir,
                    as_of=args.as_of,
                    through=args.through,
                    allow_empty=args.allow_empty,
                    progress=report.progress,
                    report=report,
                    wait=args.wait,
                )
            finally:
                report.flush()  # before an error's lines, which a caller reads last
    except DatabaseUnavailable as error:
        say(f"{ERROR_PREFIX}{error}", sys.stderr)
        return EXIT_DATABASE_UNAVAILABLE
    except LoaderBusy as error:
        say(f"{ERROR_PREFIX}{error}", sys.stderr)
        return EXIT_BUSY
    except LoadError as error:
        say(f"{ERROR_PREFIX}{error}", sys.stderr)
        say(NOTHING_MORE_LOADED, sys.stderr)
        return 1
    except psycopg.Error as error:
        interrupt = _interrupted(error)
        if interrupt is not None:
            return _stopped(interrupt)
        if isinstance(error, REFUSED_DATA):  # the export's values, refused by a rule of the database's
            say(f"{ERROR_PREFIX}the load failed in the database: {printable(str(error).strip())}", sys.stderr)
            say(NOTHING_MORE_LOADED, sys.stderr)
            return 1
        say(f"{ERROR_PREFIX}{database_failed(error)}", sys.stderr)
        return EXIT_DATABASE_FAILED
    except KeyboardInterrupt as interrupt:
        return _stopped(interrupt)
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)  # a caller in this process (a test) keeps its own
    return 0


def _stopped(interrupt: KeyboardInterrupt) -> int:
    waited = WAITED_FOR_THE_LOCK in getattr(interrupt, "__notes__", ())
    what = "nothing was loaded (it was waiting for another loader run)" if waited else ROLLED_BACK
    say(f"interrupted: {what}", sys.stderr)
    return 128 + (interrupt.signum if isinstance(interrupt, Terminated) else signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
