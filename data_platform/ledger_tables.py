"""The raw ledger's tables: created when missing, and an earlier release's brought up to date, in the
transaction of the load that first needs them (the tables' definitions are raw_tables.py's)."""

from __future__ import annotations

import psycopg
from psycopg import sql

from data_platform.load_errors import LoadError
from data_platform.raw_tables import (
    FILL_PREVIOUS_SEEN_ON,
    LEDGER_RELATIONS,
    RAW_SCHEMA,
    RETIRED_INDEXES,
    VERSIONS_KEY,
    create_statements,
)


def raw(name: str) -> sql.Identifier:
    return sql.Identifier(RAW_SCHEMA, name)


def ensure_tables(conn: psycopg.Connection) -> bool:
    """Create the raw schema's ledger tables if missing and bring an earlier release's up to date (in the
    caller's transaction); whether the two invoice tables are new, and so seen by no other session until
    that transaction commits."""
    schema = conn.execute("select 1 from pg_namespace where nspname = %s", [RAW_SCHEMA]).fetchone()
    if not schema:
        try:
            with conn.transaction():
                conn.execute(sql.SQL("create schema {}").format(sql.Identifier(RAW_SCHEMA)))
        except psycopg.errors.InsufficientPrivilege:
            raise LoadError(
                None,
                f"schema {RAW_SCHEMA} does not exist and {conn.info.user} may not create it: "
                "apply init.sql to this database first (psql -f init.sql)",
            ) from None
    # the catalog, not information_schema: that one hides tables the loader may not read
    legacy = conn.execute(
        """
        select 1 from pg_attribute
        where attrelid = to_regclass(%s) and attnum > 0 and not attisdropped
        having count(*) filter (where attname = 'version') = 0 and count(*) > 0
        """,
        [f"{RAW_SCHEMA}.invoices"],
    ).fetchone()
    if legacy:
        raise LoadError(
            None,
            f"{RAW_SCHEMA}.invoices has the old snapshot layout (no version column); the ledger "
            f"keeps history in new tables: drop the old ones once (drop table {RAW_SCHEMA}.invoices, "
            f"{RAW_SCHEMA}.organizations cascade) and load again",
        )
    missing = {
        name
        for (name,) in conn.execute(
            "select name from unnest(%s::text[]) as name where to_regclass(%s || '.' || name) is null",
            [list(LEDGER_RELATIONS), RAW_SCHEMA],
        )
    }
    if missing:  # `if not exists` would also lock the tables and notify about each one
        for statement in create_statements():
            conn.execute(statement)
    for (index,) in conn.execute(
        "select name from unnest(%s::text[]) as name where to_regclass(%s || '.' || name) is not null",
        [list(RETIRED_INDEXES), RAW_SCHEMA],
    ).fetchall():
        conn.execute(sql.SQL("drop index {}").format(sql.Identifier(RAW_SCHEMA, index)))
    _key_versions_by_day(conn)
    _remember_change_times(conn)
    return {"invoices", "invoice_versions"} <= missing


def _has_column(conn: psycopg.Connection, table: str, column: str) -> bool:
    """Whether the raw table has the column (the catalog: an earlier release's table may lack it)."""
    (found,) = conn.execute(
        "select exists (select from pg_attribute where attrelid = %s::regclass"
        " and attname = %s and not attisdropped)",
        [f"{RAW_SCHEMA}.{table}", column],
    ).fetchone()
    return found


def _remember_change_times(conn: psycopg.Connection) -> None:
    """Give raw.file_checksums of an earlier release its change time column. Its rows, remembered without
    one, are forgotten: the checksums are a cache, and each file is read once more on its next load."""
    if _has_column(conn, "file_checksums", "changed_ns"):
        return
    checksums = raw("file_checksums")
    conn.execute(sql.SQL("delete from {}").format(checksums))
    conn.execute(sql.SQL("alter table {} add column changed_ns bigint not null").format(checksums))


def _key_versions_by_day(conn: psycopg.Connection) -> None:
    """Give a history written by an earlier release, keyed by (invoice_id, version), its previous_seen_on
    and today's key (VERSIONS_KEY): once, in the load's transaction, so a failed load leaves the old
    layout. The table is locked until that commit (the key's build reads every version: tens of seconds
    at 12.7M invoices), so readers wait for this one load. The old key goes first (its seen_on index is
    retired before this runs), so that the rows the backfill rewrites update no index."""
    if _has_column(conn, "invoice_versions", "previous_seen_on"):
        return
    versions = raw("invoice_versions")
    (old_key,) = conn.execute(
        "select conname from pg_constraint where conrelid = %s::regclass and contype = 'p'",
        [f"{RAW_SCHEMA}.invoice_versions"],
    ).fetchone()
    conn.execute(
        sql.SQL("alter table {} drop constraint {}, add column previous_seen_on date").format(
            versions, sql.Identifier(old_key)
        )
    )
    # the predecessor found by a hash join: the old key is gone
    conn.execute(sql.SQL(FILL_PREVIOUS_SEEN_ON).format(versions=versions))
    conn.execute(sql.SQL("alter table {} add {}").format(versions, sql.SQL(VERSIONS_KEY)))
