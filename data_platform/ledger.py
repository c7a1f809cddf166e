"""The raw ledger's writes: one staged export becomes new versions, current state and a log row.

All of it runs inside the export's transaction, after staging.py has checked and typed the rows
into staging tables (unlogged, dropped with the transaction). Cost is proportional to the export:
the diff finds each incoming invoice by its primary key, only new and changed rows are written,
unchanged rows cost one lookup.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import psycopg
from psycopg import sql

from data_platform import file_checksums
from data_platform.ledger_tables import raw
from data_platform.load_errors import LoadError, future_invoices
from data_platform.raw_tables import (
    INVOICES,
    ORGANIZATIONS,
    RAW_SCHEMA,
    LoadLogRow,
    TableSpec,
)
from data_platform.staging import Staged, text_table, typed_table


@dataclass(frozen=True)
class LoggedExport:
    export_date: date
    invoices_sha256: str
    organizations_sha256: str | None
    source: str


def logged(conn: psycopg.Connection, export_date: date) -> LoggedExport | None:
    row = conn.execute(
        sql.SQL(
            "select export_date, invoices_sha256, organizations_sha256, source from {} where export_date = %s"
        ).format(raw("load_log")),
        [export_date],
    ).fetchone()
    return LoggedExport(*row) if row else None


def logged_exports(conn: psycopg.Connection) -> list[LoggedExport]:
    """Every export loaded, oldest first (one row a day: small)."""
    rows = conn.execute(
        sql.SQL(
            "select export_date, invoices_sha256, organizations_sha256, source from {} order by export_date"
        ).format(raw("load_log"))
    ).fetchall()
    return [LoggedExport(*row) for row in rows]


def logged_by_checksums(
    conn: psycopg.Connection, invoices: str, organizations: str | None
) -> LoggedExport | None:
    """The latest export loaded from files with these checksums."""
    row = conn.execute(
        sql.SQL(
            "select export_date, invoices_sha256, organizations_sha256, source from {}"
            " where invoices_sha256 = %s and organizations_sha256 is not distinct from %s"
            " order by export_date desc limit 1"
        ).format(raw("load_log")),
        [invoices, organizations],
    ).fetchone()
    return LoggedExport(*row) if row else None


def latest_invoices_file(conn: psycopg.Connection) -> file_checksums.KnownFile | None:
    """The file the latest export's invoices were loaded from, if it is still that very file
    (file_checksums) and the ledger holds invoices: a snapshot export is read against it."""
    row = conn.execute(
        sql.SQL(
            "select invoices_sha256 from {} where exists (select from {}) order by export_date desc limit 1"
        ).format(raw("load_log"), raw("invoices"))
    ).fetchone()
    return file_checksums.file_with(conn, row[0]) if row else None


def latest_export(conn: psycopg.Connection) -> date | None:
    return conn.execute(sql.SQL("select max(export_date) from {}").format(raw("load_log"))).fetchone()[0]


# --- checks on the staged invoices --------------------------------------------------------------


def latest_day(conn: psycopg.Connection) -> date | None:
    """The latest UTC day of CREATED_AT among the staged invoices (the load runs in UTC)."""
    return conn.execute(
        sql.SQL("select max(created_at)::date from {}").format(typed_table(INVOICES))
    ).fetchone()[0]


def refuse_future_invoices(
    conn: psycopg.Connection, staged: Staged, export_date: date, *, dated_by_content: bool = False
) -> None:
    """Invoices created after their export's date would move every watermark into the future
    (dated_by_content: load_errors.future_invoices)."""
    count, first = conn.execute(
        sql.SQL("select count(*), min(record) from {} where created_at >= %s").format(typed_table(INVOICES)),
        [export_date + timedelta(days=1)],
    ).fetchone()
    if not count:
        return
    (value,) = conn.execute(
        sql.SQL("select created_at from {} where record = %s").format(text_table(INVOICES)), [first]
    ).fetchone()
    raise future_invoices(
        staged.path,
        count,
        export_date,
        value=value,
        line=staged.line_of(first),
        dated_by_content=dated_by_content,
    )


def refuse_duplicates(conn: psycopg.Connection, staged: Staged) -> None:
    spec = staged.spec
    found = conn.execute(
        sql.SQL(
            """
            select {key}::text, array_agg(record order by record)
            from {table}
            group by {key}
            having count(*) > 1
            order by min(record)
            limit 1
            """
        ).format(key=sql.Identifier(spec.key.name), table=typed_table(spec))
    ).fetchone()
    if found is None:
        return
    key, records = found
    lines = [staged.line_of(record) for record in records[:5]]
    more = f" and {len(records) - 5} more" if len(records) > 5 else ""
    raise LoadError(
        staged.path,
        f"{spec.key.header} {key} appears {len(records)} times in this export, on lines "
        f"{', '.join(str(line) for line in lines)}{more}: an export holds each one once",
        line=lines[0],
        column=spec.key.header,
        value=key,
    )


# --- the writes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class InvoiceCounts:
    new: int
    changed: int
    unchanged: int


def _differs(spec: TableSpec, left: str, right: str) -> sql.Composable:
    return sql.SQL("({}) is distinct from ({})").format(spec.names(left), spec.names(right))


def apply_invoices(
    conn: psycopg.Connection, staged: Staged, export_date: date, *, new_tables: bool = False
) -> InvoiceCounts:
    """New invoices become version 1, changed ones their next version; unchanged ones cost nothing.
    An INVOICE_ID the export holds twice is refused. new_tables: the invoice tables were created in
    this transaction (ledger_tables.ensure_tables)."""
    (empty,) = conn.execute(
        sql.SQL("select not exists (select from {}) and not exists (select from {})").format(
            raw("invoices"), raw("invoice_versions")
        )
    ).fetchone()
    if empty:
        if staged.differing is not None:  # only what differs from a file the ledger no longer holds
            raise LoadError(staged.path, "an empty ledger cannot take a snapshot's differences: load again")
        return _insert_first_versions(conn, staged, export_date, new_tables)
    refuse_duplicates(conn, staged)
    return _apply_changes(conn, staged, export_date)


def _insert_first_versions(
    conn: psycopg.Connection, staged: Staged, export_date: date, new_tables: bool
) -> InvoiceCounts:
    """Into an empty ledger every invoice is new: nothing to diff, and no separate duplicate check, since
    a repeated INVOICE_ID breaks the primary keys (then named at its lines).

    Tables created by this very load (its first export) are filled without their indexes, which are
    then built from their own definitions, each in one sorted pass: maintaining the indexes row by row,
    each change logged, made a 12.7M-row first load's writes half as long again. No other session can
    see those tables yet, so none waits for them, depends on their indexes or sees them without one.
    Tables that already exist (emptied by hand) keep their indexes and get the rows in key order, so
    that the key indexes grow in order.
    """
    columns, day = INVOICES.names(), sql.Literal(export_date)
    tables = [raw("invoice_versions"), raw("invoices")]
    order = sql.SQL("" if new_tables else "order by invoice_id")
    try:
        with conn.transaction():  # a savepoint: the diagnosis below runs in the load transaction
            indexes = _drop_indexes(conn, tables) if new_tables else []
            conn.execute(
                sql.SQL("insert into {} ({}, version, seen_on) select {}, 1, {} from {} {}").format(
                    raw("invoice_versions"), columns, columns, day, typed_table(INVOICES), order
                )
            )
            conn.execute(
                sql.SQL(
                    "insert into {} ({}, version, first_seen_on, seen_on)"
                    " select {}, version, seen_on, seen_on from {}"
                ).format(raw("invoices"), columns, columns, raw("invoice_versions"))
            )
            for statement in indexes:
                conn.execute(statement)
    except psycopg.errors.UniqueViolation:
        refuse_duplicates(conn, staged)
        raise
    return InvoiceCounts(staged.rows, 0, 0)


def _drop_indexes(conn: psycopg.Connection, tables: list[sql.Identifier]) -> list[sql.Composable]:
    """Drop the tables' indexes, keys included; the statements that build them again, as the catalog
    defines them."""
    found = conn.execute(
        sql.SQL(
            """
            select index.indrelid::regclass::text, index.indexrelid::regclass::text,
                pg_get_indexdef(index.indexrelid), key.conname, pg_get_constraintdef(key.oid)
            from pg_index as index
            left join pg_constraint as key
                on key.conrelid = index.indrelid and key.conindid = index.indexrelid
            where index.indrelid = any(array[{}]::regclass[])
            order by 1, 2
            """
        ).format(sql.SQL(", ").join(sql.Literal(table.as_string(conn)) for table in tables))
    ).fetchall()
    builds = []
    for table, index, definition, key, key_definition in found:
        if key:
            conn.execute(
                sql.SQL("alter table {} drop constraint {}").format(sql.SQL(table), sql.Identifier(key))
            )
            builds.append(
                sql.SQL("alter table {} add constraint {} {}").format(
                    sql.SQL(table), sql.Identifier(key), sql.SQL(key_definition)
                )
            )
        else:
            conn.execute(sql.SQL("drop index {}").format(sql.SQL(index)))
            builds.append(sql.SQL(definition))
    return builds


# Fewest rows a page of raw.invoices holds (about 200 bytes a row): a low estimate of its rows.
MIN_ROWS_PER_PAGE = 30


def _is_small(conn: psycopg.Connection, rows: int) -> bool:
    """Whether the export is small beside the ledger: then its invoices are looked up by key.

    The file size decides, not the table's statistics: those lag behind loads (autovacuum analyzes
    later), and with stale ones the planner hashes the whole ledger to diff 30,000 rows.
    """
    (ledger_rows,) = conn.execute(
        "select pg_relation_size(%s::regclass) / current_setting('block_size')::int * %s",
        [f"{RAW_SCHEMA}.invoices", MIN_ROWS_PER_PAGE],
    ).fetchone()
    return rows * 10 < ledger_rows


def _current_rows_of_export(conn: psycopg.Connection) -> sql.Composable:
    """The current rows of a small export's invoices, copied into a temporary table by one bitmap scan.

    The invoices sit one per page, scattered over the whole ledger. Probed by key one at a time, each
    probe waits for its page; a bitmap scan requests its pages ahead (the server's
    effective_io_concurrency, compose.yaml): from a cold cache 0.6 s instead of 3.4 s for 30,000
    invoices of a 12.7M-invoice ledger, and the update below then finds those pages cached.
    """
    conn.execute("set local enable_indexscan to off")
    conn.execute(
        sql.SQL(
            """
            create temp table current_invoices on commit drop as
            select {columns}, version, seen_on from {invoices}
            where invoice_id = any(array(select invoice_id from {typed}))
            """
        ).format(columns=INVOICES.names(), invoices=raw("invoices"), typed=typed_table(INVOICES))
    )
    conn.execute("set local enable_indexscan to default")
    return sql.Identifier("current_invoices")


def _apply_changes(conn: psycopg.Connection, staged: Staged, export_date: date) -> InvoiceCounts:
    """The diff of the export against the current state, by key; only new and changed rows are written.
    Records not staged (snapshot_diff.py) are unchanged."""
    columns = INVOICES.names()
    small = _is_small(conn, staged.staged_rows)
    current = _current_rows_of_export(conn) if small else raw("invoices")
    # sorted by key: the primary-key indexes then grow in order instead of at random pages
    conn.execute(
        sql.SQL(
            """
            create temp table invoice_changes on commit drop as
            select
                {incoming},
                coalesce(current.version, 0) + 1 as version,
                current.seen_on as previous_seen_on
            from {typed} as incoming
            left join {current} as current on current.invoice_id = incoming.invoice_id
            where current.invoice_id is null or {differs}
            order by incoming.invoice_id
            """
        ).format(
            incoming=INVOICES.names("incoming"),
            typed=typed_table(INVOICES),
            current=current,
            differs=_differs(INVOICES, "incoming", "current"),
        )
    )
    if small:  # the update below finds each changed invoice by key (its page is cached by now)
        conn.execute("set local enable_hashjoin to off")
        conn.execute("set local enable_mergejoin to off")
    day = sql.Literal(export_date)
    conn.execute(
        sql.SQL(
            "insert into {} ({}, version, seen_on, previous_seen_on)"
            " select {}, version, {}, previous_seen_on from invoice_changes"
        ).format(raw("invoice_versions"), columns, columns, day)
    )
    conn.execute(
        sql.SQL(
            "insert into {} ({}, version, first_seen_on, seen_on)"
            " select {}, version, {}, {} from invoice_changes where version = 1"
        ).format(raw("invoices"), columns, columns, day, day)
    )
    conn.execute(
        sql.SQL(
            """
            update {invoices} as current
            set ({columns}, version, seen_on) = ({changed}, changed.version, {day})
            from invoice_changes as changed
            where changed.version > 1 and current.invoice_id = changed.invoice_id
            """
        ).format(invoices=raw("invoices"), columns=columns, changed=INVOICES.names("changed"), day=day)
    )
    new, changed = conn.execute(
        "select count(*) filter (where version = 1), count(*) filter (where version > 1) from invoice_changes"
    ).fetchone()
    return InvoiceCounts(new, changed, staged.rows - new - changed)


def apply_organizations(conn: psycopg.Connection, export_date: date) -> tuple[int, int]:
    """Upsert the export's organizations; (new, changed). Absent ones are kept."""
    columns = ORGANIZATIONS.names()
    updates = sql.SQL(", ").join(
        sql.SQL("{} = excluded.{}").format(sql.Identifier(c.name), sql.Identifier(c.name))
        for c in ORGANIZATIONS.columns[1:]
    )
    new, changed = conn.execute(
        sql.SQL(
            """
            with upserted as (
                insert into {organizations} as current ({columns}, seen_on)
                select {columns}, {day} from {typed}
                on conflict (organization_id) do update set {updates}, seen_on = excluded.seen_on
                where {differs}
                returning xmax = 0 as inserted
            )
            select count(*) filter (where inserted), count(*) filter (where not inserted) from upserted
            """
        ).format(
            organizations=raw("organizations"),
            columns=columns,
            day=sql.Literal(export_date),
            typed=typed_table(ORGANIZATIONS),
            updates=updates,
            differs=_differs(ORGANIZATIONS, "current", "excluded"),
        )
    ).fetchone()
    return new, changed


def log_export(conn: psycopg.Connection, row: LoadLogRow) -> None:
    conn.execute(
        sql.SQL("insert into {} ({}) values ({})").format(
            raw("load_log"),
            sql.SQL(", ").join(map(sql.Identifier, row.names())),
            sql.SQL(", ").join(sql.Placeholder() for _ in row.names()),
        ),
        row.values(),
    )


# An export that writes less than this share of the ledger only refreshes the export-day statistics
# (autovacuum analyzes a table once a tenth of it has changed, too).
FULL_ANALYZE_SHARE = 0.1
# Rows sampled per 100 of statistics target: 10 samples 3,000 rows, enough to see a day among ~1,000.
EXPORT_DAY_STATISTICS_TARGET = 10


def refresh_statistics(conn: psycopg.Connection, invoices_written: int) -> None:
    """Analyze what the next build plans its incremental queries from.

    Without statistics that know the new export's day (autovacuum analyzes later, if at all), Postgres
    estimates one row for it and scans the whole ledger once per new version. A big export (the first
    one, a large share of the ledger) gets every column analyzed. A daily export changes no other column's
    distribution noticeably, so only the history's `seen_on` is sampled again (the builds find a day's
    invoices through their versions), from a small sample: a full sample of a 12.7M-row ledger reads tens
    of thousands of random pages, seconds of a next day's few.
    """
    (ledger_rows,) = conn.execute(
        "select reltuples from pg_class where oid = %s::regclass", [f"{RAW_SCHEMA}.invoices"]
    ).fetchone()
    small = raw("organizations"), raw("load_log")
    ledgers = raw("invoices"), raw("invoice_versions")
    if ledger_rows <= 0 or invoices_written >= FULL_ANALYZE_SHARE * ledger_rows:  # -1: never analyzed
        conn.execute(sql.SQL("analyze {}").format(sql.SQL(", ").join([*ledgers, *small])))
        return
    conn.execute(sql.SQL("analyze {}").format(sql.SQL(", ").join(small)))
    # for the rest of the load transaction only: columns without a target of their own use this one
    conn.execute(f"set local default_statistics_target to {EXPORT_DAY_STATISTICS_TARGET}")
    conn.execute(sql.SQL("analyze {} (seen_on)").format(raw("invoice_versions")))
