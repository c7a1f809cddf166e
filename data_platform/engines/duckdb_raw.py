"""The raw ledger in a DuckDB file, from the same CSV exports: `python -m data_platform.engines.duckdb_raw`.

DuckDB's read_csv reads each file with the raw layer's column types (raw_types.DUCKDB); the export's
rows are then diffed against the current state in SQL, as the Postgres loader does, inside one
transaction per export: raw.invoices (current), raw.invoice_versions (a version per changed invoice,
with seen_on and previous_seen_on), raw.organizations (upserted) and raw.load_log. Then
`DBT_TARGET=duckdb dbt build`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from data_platform import exports as export_discovery
from data_platform.csv_files import Unchanged, check_header, refuse_cut_off
from data_platform.engines.export_log import (
    Checksums,
    log_row,
    needs_load,
    refuse_empty,
    refuse_reloaded,
    refuse_undated,
)
from data_platform.engines.raw_types import (
    DUCKDB,
    DUCKDB_LOG_TYPES,
    column_types,
    refuse_values,
    value_check_columns,
)
from data_platform.exports import CSV_DIR_HELP, Export, csv_dir_default
from data_platform.load_errors import ALLOW_EMPTY_HELP, MAX_VALUE_CHARS, LoadError, future_invoices, utc_today
from data_platform.raw_tables import (
    FILL_PREVIOUS_SEEN_ON,
    INVOICES,
    ORGANIZATIONS,
    RAW_SCHEMA,
    TableSpec,
    load_log_columns,
)

# duckdb.DuckDBPyConnection; duckdb is imported where used: an optional dependency (the `engines` group)
Connection = Any

# the database file: its variable and default, as the dbt profile's duckdb target has them
DATABASE_VARIABLE, DEFAULT_DATABASE = "DUCKDB_PATH", "warehouse.duckdb"


def _definitions(spec: TableSpec, *extra: str) -> str:
    columns = [f"{name} {sql_type}" for name, sql_type in column_types(spec, DUCKDB).items()]
    return ", ".join([*columns, *extra])


def _create_tables(conn: Connection) -> None:
    conn.execute(f"create schema if not exists {RAW_SCHEMA}")
    invoice_columns = _definitions(INVOICES, "version integer not null")
    conn.execute(
        f"create table if not exists {RAW_SCHEMA}.invoices "
        f"({invoice_columns}, first_seen_on date not null, seen_on date not null)"
    )
    conn.execute(
        f"create table if not exists {RAW_SCHEMA}.invoice_versions "
        f"({invoice_columns}, seen_on date not null, previous_seen_on date)"
    )
    _add_previous_seen_on(conn)
    conn.execute(
        f"create table if not exists {RAW_SCHEMA}.organizations "
        f"({_definitions(ORGANIZATIONS, 'seen_on date not null')})"
    )
    conn.execute(
        f"create table if not exists {RAW_SCHEMA}.load_log ({', '.join(load_log_columns(DUCKDB_LOG_TYPES))})"
    )


def _add_previous_seen_on(conn: Connection) -> None:
    """A history written by an earlier release gets each version's previous_seen_on, once."""
    (has_column,) = conn.execute(
        "select count(*) > 0 from duckdb_columns() where schema_name = ? and table_name = 'invoice_versions'"
        " and column_name = 'previous_seen_on'",
        [RAW_SCHEMA],
    ).fetchone()
    if has_column:
        return
    conn.begin()  # the column comes filled or not at all
    conn.execute(f"alter table {RAW_SCHEMA}.invoice_versions add column previous_seen_on date")
    conn.execute(FILL_PREVIOUS_SEEN_ON.format(versions=f"{RAW_SCHEMA}.invoice_versions"))
    conn.commit()


def _logged(conn: Connection) -> dict[date, Checksums]:
    rows = conn.execute(
        f"select export_date, invoices_sha256, organizations_sha256 from {RAW_SCHEMA}.load_log"
    ).fetchall()
    return {day: Checksums(invoices, organizations) for day, invoices, organizations in rows}


def _sources(conn: Connection) -> dict[date, str]:
    return dict(conn.execute(f"select export_date, source from {RAW_SCHEMA}.load_log").fetchall())


def _read(conn: Connection, spec: TableSpec, path: Path, table: str) -> int:
    """The file's rows, typed, into a temporary table; returns the row count."""
    import duckdb

    check_header(spec, path)
    types = ", ".join(f"'{name}': '{sql_type}'" for name, sql_type in column_types(spec, DUCKDB).items())
    try:
        conn.execute(
            f"""create or replace temp table {table} as
            select * from read_csv(?, header = true, auto_detect = false, delim = ',', quote = '"',
                                   escape = '"', allow_quoted_nulls = false, columns = {{{types}}})""",
            [str(path)],
        )
    except duckdb.Error as error:
        raise LoadError(
            path, f"DuckDB cannot read it with the raw column types: {_reader_error(error)}"
        ) from None
    duplicate = conn.execute(
        f"select {spec.key.name}, count(*) from {table} group by all having count(*) > 1 limit 1"
    ).fetchone()
    if duplicate:
        raise LoadError(
            path,
            f"{spec.key.header} {duplicate[0]} appears {duplicate[1]} times: an export holds each one once",
            column=spec.key.header,
        )
    return conn.execute(f"select count(*) from {table}").fetchone()[0]


def _refuse_values(conn: Connection, spec: TableSpec, path: Path, table: str) -> None:
    """What the loader refuses and the typed read took (raw_types.value_checks), in an export to load."""
    checks = ", ".join(value_check_columns(spec))
    refuse_values(path, spec, conn.execute(f"select {checks} from {table}").fetchone())


def _reader_error(error: Exception) -> str:
    """DuckDB's CSV error in one line: its first paragraph (where, the record, why), each line cut (the
    record's may be of any length); what follows is advice on the reader's options, which are not the
    user's to change, and their dump."""
    first_paragraph = str(error).split("\n\n", 1)[0]
    return "; ".join(
        line if len(line) <= MAX_VALUE_CHARS else line[:MAX_VALUE_CHARS] + "..."
        for line in first_paragraph.splitlines()
    )


def _differs(spec: TableSpec, left: str, right: str) -> str:
    return " or ".join(f"{left}.{c.name} is distinct from {right}.{c.name}" for c in spec.columns)


def _apply_invoices(conn: Connection, export_date: date) -> tuple[int, int]:
    names = ", ".join(c.name for c in INVOICES.columns)
    incoming = ", ".join(f"incoming.{c.name}" for c in INVOICES.columns)
    conn.execute(
        f"""create or replace temp table invoice_changes as
        select {incoming}, coalesce(current.version, 0) + 1 as version, current.seen_on as previous_seen_on
        from incoming_invoices as incoming
        left join {RAW_SCHEMA}.invoices as current on current.invoice_id = incoming.invoice_id
        where current.invoice_id is null or {_differs(INVOICES, "incoming", "current")}"""
    )
    day = [export_date]
    conn.execute(
        f"insert into {RAW_SCHEMA}.invoice_versions ({names}, version, seen_on, previous_seen_on) "
        f"select {names}, version, ?, previous_seen_on from invoice_changes",
        day,
    )
    # the current state: changed invoices leave, then every new version comes in
    conn.execute(
        f"""create or replace temp table replaced as
        select current.invoice_id, current.first_seen_on
        from {RAW_SCHEMA}.invoices as current
        inner join invoice_changes as changed on changed.invoice_id = current.invoice_id"""
    )
    conn.execute(f"delete from {RAW_SCHEMA}.invoices where invoice_id in (select invoice_id from replaced)")
    conn.execute(
        f"""insert into {RAW_SCHEMA}.invoices ({names}, version, first_seen_on, seen_on)
        select {", ".join(f"changed.{c.name}" for c in INVOICES.columns)}, changed.version,
               coalesce(replaced.first_seen_on, ?), ?
        from invoice_changes as changed
        left join replaced on replaced.invoice_id = changed.invoice_id""",
        [export_date, export_date],
    )
    return conn.execute(
        "select count(*) filter (where version = 1), count(*) filter (where version > 1) from invoice_changes"
    ).fetchone()


def _apply_organizations(conn: Connection, export_date: date) -> tuple[int, int]:
    names = ", ".join(c.name for c in ORGANIZATIONS.columns)
    conn.execute(
        f"""create or replace temp table organization_changes as
        select incoming.*, current.organization_id is null as is_new
        from incoming_organizations as incoming
        left join {RAW_SCHEMA}.organizations as current on current.organization_id = incoming.organization_id
        where current.organization_id is null or {_differs(ORGANIZATIONS, "incoming", "current")}"""
    )
    conn.execute(
        f"delete from {RAW_SCHEMA}.organizations "
        "where organization_id in (select organization_id from organization_changes)"
    )
    conn.execute(
        f"insert into {RAW_SCHEMA}.organizations ({names}, seen_on) "
        f"select {names}, ? from organization_changes",
        [export_date],
    )
    return conn.execute(
        "select count(*) filter (where is_new), count(*) filter (where not is_new) from organization_changes"
    ).fetchone()


def load_export(
    conn: Connection, export: Export, *, allow_empty: bool = False, today: date | None = None
) -> date | None:
    """Load one export in one transaction; its date, or None when it was loaded already. allow_empty: load
    header-only files (the Postgres loader's --allow-empty); today: the UTC date no export may be after
    (default: today's)."""
    today = today or utc_today()
    started = time.monotonic()
    unchanged = Unchanged.now(export.files)  # before any file is read
    conn.execute("begin")
    try:
        with unchanged.reading():
            invoice_rows = _read(conn, INVOICES, export.invoices, "incoming_invoices")
        export_date = (
            export.date
            or conn.execute("select cast(max(created_at) as date) from incoming_invoices").fetchone()[0]
        )
        checksums = Checksums.of(export)
        unchanged.check()  # the checksums are of the rows read
        if export_date is not None and not needs_load(
            export,
            export_date,
            checksums,
            _logged(conn),
            today=today,
        ):
            conn.execute("rollback")
            return None
        refuse_empty(export.invoices, invoice_rows, INVOICES.name, allow_empty=allow_empty)
        refuse_cut_off(export.invoices)
        _refuse_values(conn, INVOICES, export.invoices, "incoming_invoices")
        export_date = refuse_undated(export, export_date)
        _refuse_future_invoices(conn, export, export_date)
        organization_rows = 0
        organizations = (0, 0)
        if export.organizations:
            with unchanged.reading():
                organization_rows = _read(conn, ORGANIZATIONS, export.organizations, "incoming_organizations")
            refuse_empty(export.organizations, organization_rows, ORGANIZATIONS.name, allow_empty=allow_empty)
            refuse_cut_off(export.organizations)
            _refuse_values(conn, ORGANIZATIONS, export.organizations, "incoming_organizations")
            organizations = _apply_organizations(conn, export_date)
        new, changed = _apply_invoices(conn, export_date)
        logged, sources = _logged(conn), _sources(conn)
        earlier = {day: c.invoices for day, c in logged.items()}
        refuse_reloaded(export.invoices, checksums.invoices, changed, export_date, earlier, sources)
        log = log_row(
            export,
            export_date,
            checksums,
            invoice_rows=invoice_rows,
            invoices=(new, changed),
            organization_rows=organization_rows,
            organizations=organizations,
            started=started,
        )
        conn.execute(
            f"insert into {RAW_SCHEMA}.load_log ({', '.join(log.names())}) "
            f"values ({', '.join('?' for _ in log.names())})",
            list(log.values()),
        )
        unchanged.check()
        conn.execute("commit")
    except BaseException:
        conn.execute("rollback")
        raise
    return export_date


def _refuse_future_invoices(conn: Connection, export: Export, export_date: date) -> None:
    after = [export_date + timedelta(days=1)]
    (count,) = conn.execute("select count(*) from incoming_invoices where created_at >= ?", after).fetchone()
    first = conn.execute(
        "select invoice_id, cast(created_at as varchar) from incoming_invoices where created_at >= ? "
        "order by created_at, invoice_id limit 1",
        after,
    ).fetchone()
    if count:
        invoice_id, created_at = first
        raise future_invoices(export.invoices, count, export_date, value=created_at, invoice_id=invoice_id)


def build_raw(
    database: Path | str, csv_dir: Path | str, *, allow_empty: bool = False, today: date | None = None
) -> list[date]:
    """Load every pending export under csv_dir into the DuckDB file; the dates loaded. allow_empty: load
    header-only files (else refused, as by the Postgres loader); today: as in load_export."""
    import duckdb

    exports = export_discovery.discover(csv_dir)  # before the file is made: no exports, no warehouse
    with duckdb.connect(str(database)) as conn:
        # the UTC day of a timestamp, as in Postgres's load
        conn.execute("set timezone = 'UTC'")
        _create_tables(conn)
        if not _logged(conn):  # as the Postgres loader: a misnamed base can load only first
            export_discovery.refuse_misnamed_base(csv_dir)
        loaded = []
        for export in exports:
            export_date = load_export(conn, export, allow_empty=allow_empty, today=today)
            if export_date is not None:
                loaded.append(export_date)
        return loaded


@contextlib.contextmanager
def _noting_sigint() -> Iterator[list[int]]:
    """Within it Ctrl-C (or engines.build passing on its stop) raises KeyboardInterrupt as by default, and is
    noted in the list given: during a query DuckDB turns it into a RuntimeError("Query interrupted")."""
    seen: list[int] = []

    def interrupt(signum: int, _frame) -> None:
        seen.append(signum)
        raise KeyboardInterrupt

    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler:  # ignored (nohup), or a caller's own
        yield seen
        return
    signal.signal(signal.SIGINT, interrupt)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_platform.engines.duckdb_raw", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--csv-dir", default=csv_dir_default(), help=CSV_DIR_HELP)
    parser.add_argument(
        "--database",
        default=os.environ.get(DATABASE_VARIABLE) or DEFAULT_DATABASE,
        help=f"the DuckDB file (default: ${DATABASE_VARIABLE} or {DEFAULT_DATABASE})",
    )
    parser.add_argument(
        "--allow-empty",
        action="store_true",
        help=ALLOW_EMPTY_HELP,
    )
    args = parser.parse_args(argv)
    import duckdb

    try:
        with _noting_sigint() as interrupted:
            loaded = build_raw(args.database, args.csv_dir, allow_empty=args.allow_empty)
    except LoadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except BaseException as error:
        if not (interrupted or isinstance(error, KeyboardInterrupt)):
            if isinstance(error, duckdb.IOException):  # the file: another process holds it, a full disk...
                print(f"error: the DuckDB file {args.database}: {error}", file=sys.stderr)
                return 1
            raise
        print(
            "interrupted: the export being loaded was rolled back (each export loads whole or not at all)",
            file=sys.stderr,
        )
        return 130
    days = ", ".join(day.isoformat() for day in loaded) or "none (all loaded already)"
    print(f"{args.database}: exports loaded: {days}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
