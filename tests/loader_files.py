"""Small export files and database snapshots shared by the loader tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
from conftest import PROJECT_ROOT

from data_platform.raw_tables import INVOICES, ORGANIZATIONS

SENTINEL = 8817975702393619368
BIG = 2**53 + 1  # not representable as a float

ORG_LINES = [
    ",".join(ORGANIZATIONS.header),
    f"{BIG},2021-03-09,2023-07-17,-4611686018427387905,3,2021-03-08T17:35:39Z",
    "-9223372036854775808,,,9223372036854775807,1,2021-03-08T17:35:39.4Z",
    "42,2022-01-01,2022-01-31,7,12,2021-03-08T17:35:38.44Z",
    "43,2022-01-01,2022-01-31,7,1,2021-03-08T17:35:38.445Z",
    "44,2022-01-01,2022-01-31,7,1,2021-03-08T17:35:38.4454Z",
    "45,2022-01-01,2022-01-31,7,1,2021-03-08T17:35:38.44542Z",
    "46,2022-01-01,2022-01-31,7,1,2021-03-08T17:35:38.445423Z",
]
INVOICE_LINES = [
    ",".join(INVOICES.header),
    f"{BIG},{SENTINEL},{SENTINEL},{BIG},-1,paid,USD,USD,card,100.00,100,1.00000000,1.00000000,"
    "2023-07-17T04:00:40.096Z",
    f"-9223372036854775808,{BIG},-7,42,9223372036854775807,open,USDC,,,12.34,,1.00010000,,2023-07-18T00:00:00Z",
    f"9223372036854775807,{SENTINEL},123,555,3,paid,EUR,EUR,bank_transfer,0.01,0.1,0.91234567,0.91234567,"
    "2023-12-31T23:59:59.999999Z",
]
# the base export above is dated by its latest CREATED_AT
BASE_DATE = "2023-12-31"


def invoice(
    invoice_id: int, created_at: str = "2024-01-02T10:00:00Z", status: str = "open", amount="10.00"
) -> str:
    return f"{invoice_id},{SENTINEL},{SENTINEL},42,-1,{status},USD,,,{amount},,1.00000000,,{created_at}"


def write(path: Path, lines: list[str], *, newline: str = "\n", final_newline: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        (newline.join(lines) + (newline if final_newline else "")).encode("utf-8", "surrogateescape")
    )
    return path


@contextlib.contextmanager
def not_waiting_on_a_pipe(seconds: int = 30) -> Iterator[None]:
    """Fail with TimeoutError instead of hanging when the code inside opens a named pipe and waits for a
    writer (SIGALRM interrupts the open)."""

    def waited(*_):
        raise TimeoutError("it waited for a writer to the named pipe")

    previous = signal.signal(signal.SIGALRM, waited)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def settle(*paths: Path) -> None:
    """Date the files an hour back, as exports written well before the run: their checksums are
    remembered (file_checksums)."""
    an_hour_ago = time.time() - 3600
    for path in paths:
        os.utime(path, (an_hour_ago, an_hour_ago))


def write_dir(
    directory: Path, invoices: list[str] = INVOICE_LINES, organizations: list[str] = ORG_LINES
) -> Path:
    """The single-file (base) export: invoices.csv + organizations.csv in `directory`."""
    write(directory / "invoices.csv", invoices)
    write(directory / "organizations.csv", organizations)
    return directory


def write_export(
    csv_dir: Path, day: str, invoices: list[str], organizations: list[str] | None = None
) -> Path:
    """A dated export: csv_dir/exports/<day>/invoices.csv (+ organizations.csv); `invoices` without header."""
    folder = csv_dir / "exports" / day
    write(folder / "invoices.csv", [INVOICE_LINES[0], *invoices])
    if organizations is not None:
        write(folder / "organizations.csv", [ORG_LINES[0], *organizations])
    return folder


RAW_TABLES = ("invoices", "invoice_versions", "organizations", "load_log", "file_checksums")


def ledger_indexes(conn: psycopg.Connection) -> list[tuple]:
    """Every index and key of the raw tables, by table, name and definition."""
    return conn.execute(
        """
        select 'raw.' || tablename, indexname::text, indexdef from pg_indexes where schemaname = 'raw'
        union all
        select conrelid::regclass::text, conname::text, pg_get_constraintdef(oid) from pg_constraint
        where connamespace = 'raw'::regnamespace
        order by 1, 2, 3
        """
    ).fetchall()


def snapshot(conn: psycopg.Connection) -> dict:
    """The ledger: a failed load must leave it exactly as it was, a skipped export too.

    Not raw.file_checksums: a skipped export may remember a checksum there.
    """
    tables = [
        row[0]
        for row in conn.execute(
            "select table_name from information_schema.tables"
            " where table_schema = 'raw' and table_name <> 'file_checksums' order by 1"
        ).fetchall()
    ]
    state: dict = {"tables": tables, "indexes": ledger_indexes(conn)}
    for table in tables:
        state[table] = conn.execute(f"select * from raw.{table} order by 1, 2").fetchall()
    return state


def drop_ledger(conn: psycopg.Connection) -> None:
    """No ledger tables: the next load creates them, as a new warehouse's first load does."""
    conn.execute(f"drop table if exists {', '.join(f'raw.{table}' for table in RAW_TABLES)} cascade")


def reset_raw(conn: psycopg.Connection) -> None:
    """An empty ledger (the tables are kept, as in production)."""
    present = {
        row[0]
        for row in conn.execute("select table_name from information_schema.tables where table_schema = 'raw'")
    }
    for table in RAW_TABLES:
        if table in present:
            conn.execute(f"truncate raw.{table}")


def generate(directory: Path, invoices: int, *, end_date: str = "2024-06-28") -> Path:
    """A realistic base export from the project's generator (streams, so big files are cheap)."""
    subprocess.run(
        [
            sys.executable, "-m", "data_platform.generator", "--out", str(directory),
            "--invoices", str(invoices), "--organizations", "200", "--seed", "3",
            "--end-date", end_date, "--days", "60", "--no-scenario",
        ],
        cwd=PROJECT_ROOT, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return directory
