"""The raw loader against a real Postgres: the ledger's schema, exact values, the command line."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path

import psycopg
import pytest
from conftest import PROJECT_ROOT, hold_the_loaders_lock, role_setting, wait_until
from loader_files import (
    BASE_DATE,
    BIG,
    INVOICE_LINES,
    ORG_LINES,
    SENTINEL,
    generate,
    invoice,
    snapshot,
    write,
    write_dir,
    write_export,
)

from data_platform.exports import Export
from data_platform.ledger import InvoiceCounts
from data_platform.loader import (
    ExportReporter,
    ExportResult,
    LoaderBusy,
    LoadError,
    ProgressReporter,
    load_exports,
)
from data_platform.loader_lock import session_name
from data_platform.steps import default_sigint

# --- the schema -------------------------------------------------------------------------------

CSV_INVOICE_COLUMNS = [
    ("invoice_id", "bigint", "NO"),
    ("parent_invoice_id", "bigint", "YES"),
    ("transaction_id", "bigint", "YES"),
    ("organization_id", "bigint", "NO"),
    ("type", "bigint", "YES"),
    ("status", "text", "NO"),
    ("currency", "text", "NO"),
    ("payment_currency", "text", "YES"),
    ("payment_method", "text", "YES"),
    ("amount", "numeric", "NO"),
    ("payment_amount", "numeric", "YES"),
    ("fx_rate", "numeric", "NO"),
    ("fx_rate_payment", "numeric", "YES"),
    ("created_at", "timestamp with time zone", "NO"),
]
CONTRACT_COLUMNS = {  # the raw tables dbt's sources read, written out (not derived from the specs)
    "invoices": [
        *CSV_INVOICE_COLUMNS,
        ("version", "integer", "NO"),
        ("first_seen_on", "date", "NO"),
        ("seen_on", "date", "NO"),
    ],
    "invoice_versions": [
        *CSV_INVOICE_COLUMNS,
        ("version", "integer", "NO"),
        ("seen_on", "date", "NO"),
        ("previous_seen_on", "date", "YES"),
    ],
    "organizations": [
        ("organization_id", "bigint", "NO"),
        ("first_payment_date", "date", "YES"),
        ("last_payment_date", "date", "YES"),
        ("legal_entity_country_code", "bigint", "YES"),
        ("count_total_contracts_active", "integer", "YES"),
        ("created_date", "timestamp with time zone", "YES"),
        ("seen_on", "date", "NO"),
    ],
    "load_log": [
        ("export_date", "date", "NO"),
        ("source", "text", "NO"),
        ("invoices_sha256", "text", "NO"),
        ("organizations_sha256", "text", "YES"),
        ("invoice_rows", "bigint", "NO"),
        ("invoices_new", "bigint", "NO"),
        ("invoices_changed", "bigint", "NO"),
        ("invoices_unchanged", "bigint", "NO"),
        ("organization_rows", "bigint", "NO"),
        ("organizations_new", "bigint", "NO"),
        ("organizations_changed", "bigint", "NO"),
        ("loaded_at", "timestamp with time zone", "NO"),
        ("duration_seconds", "numeric", "NO"),
    ],
    "file_checksums": [
        ("path", "text", "NO"),
        ("size_bytes", "bigint", "NO"),
        ("modified_ns", "bigint", "NO"),
        ("changed_ns", "bigint", "NO"),
        ("sha256", "text", "NO"),
    ],
}


def test_tables_have_the_contract_columns_keys_and_index(conn, baseline):
    rows = conn.execute(
        """
        select table_name, column_name, data_type, is_nullable
        from information_schema.columns
        where table_schema = 'raw'
        order by table_name, ordinal_position
        """
    ).fetchall()
    found: dict = {}
    for table, *column in rows:
        found.setdefault(table, []).append(tuple(column))
    assert found == CONTRACT_COLUMNS
    keys = conn.execute(
        """
        select conrelid::regclass::text, pg_get_constraintdef(oid)
        from pg_constraint where connamespace = 'raw'::regnamespace and contype = 'p' order by 1
        """
    ).fetchall()
    assert keys == [
        ("raw.file_checksums", "PRIMARY KEY (path)"),
        ("raw.invoice_versions", "PRIMARY KEY (seen_on, invoice_id)"),
        ("raw.invoices", "PRIMARY KEY (invoice_id)"),
        ("raw.load_log", "PRIMARY KEY (export_date)"),
        ("raw.organizations", "PRIMARY KEY (organization_id)"),
    ]
    # each table has its key only: the history's leads with the export day (what an incremental build
    # selects a new export's rows by, and where a day's entries append); a status change rewrites the
    # current state's row in place
    indexed = conn.execute(
        "select tablename, indexname from pg_indexes"
        " where schemaname = 'raw' and tablename in ('invoices', 'invoice_versions') order by 1, 2"
    ).fetchall()
    assert indexed == [("invoice_versions", "invoice_versions_pkey"), ("invoices", "invoices_pkey")]


def test_invoices_load_exact_values_as_version_1(conn, baseline):
    rows = conn.execute(
        "select invoice_id, parent_invoice_id, transaction_id, organization_id, type, status, currency,"
        " payment_currency, payment_method, amount, payment_amount, fx_rate, fx_rate_payment, created_at,"
        " version, first_seen_on, seen_on from raw.invoices order by invoice_id"
    ).fetchall()
    day = date.fromisoformat(BASE_DATE)
    assert rows == [
        (-(2**63), BIG, -7, 42, 2**63 - 1, "open", "USDC", None, None,
         Decimal("12.34"), None, Decimal("1.00010000"), None, datetime(2023, 7, 18, tzinfo=UTC), 1, day, day),
        (BIG, SENTINEL, SENTINEL, BIG, -1, "paid", "USD", "USD", "card", Decimal("100.00"), Decimal("100"),
         Decimal("1.00000000"), Decimal("1.00000000"), datetime(2023, 7, 17, 4, 0, 40, 96000, tzinfo=UTC),
         1, day, day),
        (2**63 - 1, SENTINEL, 123, 555, 3, "paid", "EUR", "EUR", "bank_transfer", Decimal("0.01"),
         Decimal("0.1"), Decimal("0.91234567"), Decimal("0.91234567"),
         datetime(2023, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), 1, day, day),
    ]  # fmt: skip
    # exact in the database itself too: ids never through a float, numerics keep the file's scale
    as_text = conn.execute(
        "select invoice_id::text, amount::text, payment_amount::text, fx_rate::text"
        " from raw.invoices order by invoice_id"
    ).fetchall()
    assert as_text == [
        ("-9223372036854775808", "12.34", None, "1.00010000"),
        ("9007199254740993", "100.00", "100", "1.00000000"),
        ("9223372036854775807", "0.01", "0.1", "0.91234567"),
    ]
    versions = conn.execute(
        "select invoice_id, version, seen_on from raw.invoice_versions order by 1"
    ).fetchall()
    assert versions == [(-(2**63), 1, day), (BIG, 1, day), (2**63 - 1, 1, day)]


def test_organizations_load_exact_values(conn, baseline):
    rows = conn.execute("select * from raw.organizations order by organization_id").fetchall()
    day = date.fromisoformat(BASE_DATE)
    assert rows[0] == (
        -(2**63),
        None,
        None,
        2**63 - 1,
        1,
        datetime(2021, 3, 8, 17, 35, 39, 400000, tzinfo=UTC),
        day,
    )
    assert rows[-1] == (
        BIG, date(2021, 3, 9), date(2023, 7, 17), -4611686018427387905, 3,
        datetime(2021, 3, 8, 17, 35, 39, tzinfo=UTC), day,
    )  # fmt: skip
    # CREATED_DATE written with 0 to 6 fractional digits, exact to the microsecond
    micros = {BIG: 0, -(2**63): 400000, 42: 440000, 43: 445000, 44: 445400, 45: 445420, 46: 445423}
    assert {row[0]: row[5].microsecond for row in rows} == micros


def test_load_log_row(conn, baseline, tmp_path):
    rows = conn.execute(
        "select export_date, source, length(invoices_sha256), length(organizations_sha256), invoice_rows,"
        " invoices_new, invoices_changed, invoices_unchanged, organization_rows, organizations_new,"
        " organizations_changed, duration_seconds >= 0 from raw.load_log"
    ).fetchall()
    assert rows == [
        (date.fromisoformat(BASE_DATE), str(tmp_path / "baseline"), 64, 64, 3, 3, 0, 0, 7, 7, 0, True)
    ]


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["LF", "CRLF"])
@pytest.mark.parametrize("final_newline", [True, False], ids=["final-newline", "no-final-newline"])
@pytest.mark.parametrize("bom", [False, True], ids=["", "BOM"])
def test_line_endings_final_newline_and_bom(conn, tmp_path, newline, final_newline, bom):
    directory = write_dir(tmp_path / "files")
    path = write(directory / "invoices.csv", INVOICE_LINES, newline=newline, final_newline=final_newline)
    if bom:
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    (result,) = load_exports(conn, directory)
    assert result.invoice_rows == 3
    # the last field of the last line is intact: no stray \r, nothing lost without a final newline
    last = conn.execute("select created_at, status from raw.invoices where invoice_id = %s", [2**63 - 1])
    assert last.fetchone() == (datetime(2023, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "paid")


@pytest.mark.parametrize("final_newline", [True, False], ids=["final-newline", "no-final-newline"])
@pytest.mark.parametrize("table", ["invoices", "organizations"])
def test_header_only_file_is_refused_and_loads_nothing(conn, tmp_path, baseline, table, final_newline):
    directory = write_export(tmp_path / "csv", "2024-01-02", [invoice(1)], [ORG_LINES[1]])
    path = directory / f"{table}.csv"
    write(
        path, {"invoices": INVOICE_LINES, "organizations": ORG_LINES}[table][:1], final_newline=final_newline
    )
    with pytest.raises(LoadError) as raised:
        load_exports(conn, tmp_path / "csv")
    assert raised.value.path == path
    assert "no data rows, only the header (pass --allow-empty --through 2024-01-02 if" in str(raised.value)
    assert snapshot(conn) == baseline


def test_the_advice_for_an_export_meant_empty_loads_no_later_truncated_one(conn, tmp_path):
    """--allow-empty alone allows every export of the run: a later day's invoices file cut to its header
    loaded as an empty export, and its real file was then refused for good (a loaded export is immutable)."""
    csv = write_export(tmp_path / "csv", "2024-01-02", [invoice(7, "2024-01-02T10:00:00Z")], []).parent.parent
    write_export(csv, "2024-01-03", [])  # truncated in transit: its header only
    with pytest.raises(LoadError, match=r"pass --allow-empty --through 2024-01-02 if") as refused:
        load_exports(conn, csv)
    assert refused.value.path == csv / "exports" / "2024-01-02" / "organizations.csv"
    loaded = load_exports(conn, csv, allow_empty=True, through=date(2024, 1, 2))  # as it says
    assert [result.export_date for result in loaded] == [date(2024, 1, 2)]
    with pytest.raises(LoadError, match=r"only the header \(pass --allow-empty --through 2024-01-03 if"):
        load_exports(conn, csv)  # the truncated day is still refused, and can still be fixed


def test_header_only_export_loads_with_allow_empty(conn, tmp_path, baseline):
    write_export(tmp_path / "csv", "2024-01-02", [])
    (result,) = load_exports(conn, tmp_path / "csv", allow_empty=True)
    assert (result.export_date, result.invoice_rows) == (date(2024, 1, 2), 0)
    assert conn.execute("select count(*) from raw.invoices").fetchone() == (3,)  # nothing emptied


@pytest.mark.parametrize("table", ["invoices", "organizations"])
def test_a_header_only_export_loaded_with_allow_empty_is_skipped_by_later_runs(
    conn, tmp_path, baseline, table
):
    # the daily runs never pass --allow-empty: the export loaded once must not stop the ones after it
    rows = {"invoices": [], "organizations": [invoice(1)]}[table]
    write_export(tmp_path / "csv", "2024-01-02", rows, [] if table == "organizations" else None)
    assert [r.skipped for r in load_exports(conn, tmp_path / "csv", allow_empty=True)] == [False]
    write_export(tmp_path / "csv", "2024-01-03", [invoice(2, "2024-01-03T10:00:00Z")])
    results = load_exports(conn, tmp_path / "csv")
    assert [(r.export_date, r.skipped) for r in results] == [
        (date(2024, 1, 2), True),
        (date(2024, 1, 3), False),
    ]
    # a header-only export not loaded yet is still refused
    write_export(tmp_path / "csv", "2024-01-04", [])
    with pytest.raises(LoadError, match="no data rows, only the header"):
        load_exports(conn, tmp_path / "csv")


def test_progress_reports_file_mib_and_percent(tmp_path, capsys):
    report = ProgressReporter(interval=0.0)
    report(tmp_path / "invoices.csv", 3 * 1024 * 1024, 4 * 1024 * 1024)
    assert "invoices.csv: 3 / 4 MiB (75%)" in capsys.readouterr().err
    quiet = ProgressReporter(interval=60.0)
    quiet(tmp_path / "invoices.csv", 1, 4)
    assert capsys.readouterr().err == ""


def test_missing_raw_schema_tells_to_apply_init_sql(database, conn, tmp_path):
    with database.connect("admin", autocommit=True) as admin:
        admin.execute("alter schema raw rename to raw_elsewhere")
        try:
            with pytest.raises(LoadError, match=r"schema raw does not exist .*apply init\.sql"):
                load_exports(conn, write_dir(tmp_path / "files"))
        finally:
            admin.execute("alter schema raw_elsewhere rename to raw")


def test_a_second_loader_is_refused_while_one_runs(database, conn, tmp_path):
    before = snapshot(conn)  # whether or not an earlier test created the ledger's tables
    with database.connect("transformer", autocommit=True) as other:
        hold_the_loaders_lock(other)
        busy = r"another loader run is in progress on this database \(waited 0s\)"
        with pytest.raises(LoaderBusy, match=busy):
            load_exports(conn, write_dir(tmp_path / "files"))
    assert snapshot(conn) == before


def test_a_load_gives_the_connection_its_application_name_and_client_check_back(conn, tmp_path):
    """A caller's connection kept after the load would otherwise go on under the loader's session name,
    which says a loader process holds the lock: pg_stat_activity would show a loader that is not running.
    The server's check of a dead client, which the load turns on, goes back to what it was too."""
    conn.execute("set application_name to 'my tool'")
    check = conn.execute("show client_connection_check_interval").fetchone()
    load_exports(conn, write_dir(tmp_path / "files"))
    assert conn.execute("select current_setting('application_name')").fetchone() == ("my tool",)
    assert conn.execute("show client_connection_check_interval").fetchone() == check


WAITING_LOADER = (
    "select pid from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'"
    " and query like '%load_log%'"
)


def kill_a_loader_waiting_on_its_log(database, csv_dir: Path, **env: str) -> tuple[int, int]:
    """Start the loader on `csv_dir` while the caller holds a lock on raw.load_log, and kill it outright
    once its statement waits for that lock: (its pid, its backend's pid)."""
    process = start_loader(database, csv_dir, env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not database.query(WAITING_LOADER):
        assert process.poll() is None and time.monotonic() < deadline, "the loader did not wait"
        time.sleep(0.02)
    (backend,) = database.query(WAITING_LOADER)[0]
    process.kill()
    process.wait(timeout=60)
    return process.pid, backend


def test_a_loader_killed_while_its_statement_runs_leaves_no_statement_behind(database, conn, tmp_path):
    """kill -9 (the OOM killer) cannot cancel the loader's statement, and the server notices a dead client
    only when it next writes to it: the statement went on, holding the loader's lock, and the next run was
    refused. The server's check of its client ends it within seconds, here while it still waits."""
    csv_dir = write_dir(tmp_path / "csv")
    load_exports(conn, csv_dir)
    write_export(csv_dir, "2024-01-02", [invoice(1)])
    with database.connect("admin") as admin:
        admin.execute("lock table raw.load_log in access exclusive mode")
        _, backend = kill_a_loader_waiting_on_its_log(database, csv_dir, PGOPTIONS="")
        running = f"select 1 from pg_stat_activity where pid = {backend}"
        wait_until(lambda: not database.query(running), "the killed loader's statement to end")
        admin.rollback()
    assert [r.skipped for r in load_exports(conn, csv_dir)] == [True, False]


def test_a_loader_killed_while_its_statement_runs_is_named_as_gone(database, conn, tmp_path):
    """With the server's check of a dead client turned off (PGOPTIONS), kill -9 leaves the loader's session
    running its statement, holding the lock: the next run says so, rather than that another run is in
    progress. The statement is held here on a lock, so the session outlives the process."""
    csv_dir = write_dir(tmp_path / "csv")
    load_exports(conn, csv_dir)
    write_export(csv_dir, "2024-01-02", [invoice(1)])
    before = snapshot(conn)
    with database.connect("admin") as admin:
        admin.execute("lock table raw.load_log in access exclusive mode")
        pid, backend = kill_a_loader_waiting_on_its_log(
            database, csv_dir, PGOPTIONS="-c client_connection_check_interval=0"
        )
        deadline = time.monotonic() + 60
        with pytest.raises(LoaderBusy) as busy:
            load_exports(conn, csv_dir)
        assert str(busy.value).startswith(
            f"the loader run holding the lock (process {pid}) has ended, but its database session "
            f"(backend {backend}) is still running its statement, started "
        )
        assert str(busy.value).endswith(
            "s ago, and rolls its export back when that ends (tens of seconds on a large export): nothing "
            "was loaded; run again in a moment, or with --wait SECONDS"
        )
        admin.rollback()
    while database.query(f"select 1 from pg_stat_activity where pid = {backend}"):
        assert time.monotonic() < deadline, "the killed loader's session did not end"
        time.sleep(0.05)
    assert snapshot(conn) == before
    assert [r.skipped for r in load_exports(conn, csv_dir)] == [True, False]


def test_a_loader_told_to_wait_loads_once_the_other_run_ends(database, conn, tmp_path, capsys):
    other = database.connect("transformer", autocommit=True)
    hold_the_loaders_lock(other)
    release = threading.Timer(1.0, other.close)  # the other run ends: its session, and lock, go
    release.start()
    try:
        results = load_exports(conn, write_dir(tmp_path / "files"), wait=30)
    finally:
        release.cancel()
        other.close()
    assert [result.skipped for result in results] == [False]
    assert "another loader run is in progress: waiting up to 30s" in capsys.readouterr().err


# --- the command line ------------------------------------------------------------------------


def test_a_loader_interrupted_while_it_waits_for_the_lock_says_nothing_was_loading(database, tmp_path):
    """It said the export being loaded was rolled back, while it had loaded nothing."""
    with database.connect("transformer", autocommit=True) as other:
        hold_the_loaders_lock(other)
        process = subprocess.Popen(
            [*LOADER, "--csv-dir", str(write_dir(tmp_path / "files")), "--wait", "60"],
            cwd=PROJECT_ROOT,
            env=database.env("transformer"),
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=default_sigint,
        )
        assert process.stderr.readline() == "another loader run is in progress: waiting up to 60s\n"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert stderr == "interrupted: nothing was loaded (it was waiting for another loader run)\n"


LOADER = (sys.executable, "-m", "data_platform.loader")


def start_loader(database, csv_dir: Path, env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    """The loader command on `csv_dir` in a process of its own, as the transformer (with `env` added)."""
    return subprocess.Popen(
        [*LOADER, "--csv-dir", str(csv_dir)],
        cwd=PROJECT_ROOT,
        env={**database.env("transformer"), **(env or {})},
        **popen,
    )


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*LOADER, *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_exports_already_loaded_are_said_before_the_next_one_starts_to_load(tmp_path, capsys):
    """Not after it: its progress would come first, and a loader killed during it would never say them."""
    said = []
    report = ExportReporter(lambda path, done, total: said.append(capsys.readouterr().out))
    for day in (1, 2):
        export = Export(tmp_path, tmp_path / "invoices.csv", None, date(2024, 1, day))
        report(ExportResult(export, date(2024, 1, day), skipped=True))
    assert capsys.readouterr().out == ""
    report.progress(tmp_path / "exports" / "2024-01-03" / "invoices.csv", 1, 2)
    assert said == ["2 exports 2024-01-01 to 2024-01-02: already loaded (same checksums), skipped\n"]
    report.flush()
    assert capsys.readouterr().out == ""  # once


def test_summary_counts_one_invoice_and_one_organization_in_the_singular(tmp_path):
    export = Export(tmp_path, tmp_path / "invoices.csv", tmp_path / "organizations.csv", date(2024, 1, 2))
    result = partial(ExportResult, export, date(2024, 1, 2))
    one = result(
        invoice_rows=1,
        invoices=InvoiceCounts(1, 0, 0),
        organization_rows=1,
        organizations_new=1,
        seconds=0.5,
    )
    assert one.summary() == (
        f"export 2024-01-02 ({tmp_path}): 1 invoice (1 new, 0 changed, 0 unchanged), "
        "1 organization (1 new, 0 changed) in 0.5 s (4 rows/s)"
    )
    many = result(
        invoice_rows=1234,
        invoices=InvoiceCounts(1000, 200, 34),
        organization_rows=0,
        seconds=2.0,
    )
    assert many.summary().startswith(
        f"export 2024-01-02 ({tmp_path}): 1,234 invoices (1,000 new, 200 changed, 34 unchanged), "
        "0 organizations (0 new, 0 changed) in 2.0 s"
    )


def test_cli_prints_one_line_per_export_and_already_loaded(database, conn, tmp_path):
    directory = write_dir(tmp_path / "files")
    write_export(directory, "2024-01-02", [invoice(1), INVOICE_LINES[1].replace(",paid,", ",refunded,")])
    result = run_cli({**database.env("transformer"), "CSV_DIR": str(directory)})
    assert result.returncode == 0, result.stderr
    base, dated = result.stdout.splitlines()
    assert base.startswith(
        f"export {BASE_DATE} ({directory}): 3 invoices (3 new, 0 changed, 0 unchanged), "
        "7 organizations (7 new, 0 changed) in "
    )
    assert dated.startswith(
        f"export 2024-01-02 ({directory / 'exports' / '2024-01-02'}): "
        "2 invoices (1 new, 1 changed, 0 unchanged) in "
    )
    assert len(result.stdout.splitlines()) == 2 and result.stdout.count("rows/s") == 2
    assert "MiB" not in result.stderr  # no progress lines for a small file

    # the exports already loaded say so in one line: a daily run skips those of every day before
    write_export(directory, "2024-01-03", [invoice(2)])
    again = run_cli(database.env("transformer"), "--csv-dir", str(directory))
    assert again.returncode == 0, again.stderr
    skipped, loaded = again.stdout.splitlines()
    assert skipped == f"2 exports {BASE_DATE} to 2024-01-02: already loaded (same checksums), skipped"
    assert loaded.startswith(f"export 2024-01-03 ({directory / 'exports' / '2024-01-03'}): 1 invoice ")
    # one alone is named with its folder
    only = run_cli(database.env("transformer"), "--csv-dir", str(directory), "--through", BASE_DATE)
    assert only.returncode == 0, only.stderr
    assert only.stdout == f"export {BASE_DATE} ({directory}): already loaded (same checksums), skipped\n"


def test_cli_as_of_dates_the_single_file_export(database, conn, tmp_path):
    directory = write_dir(tmp_path / "files")
    result = run_cli(database.env("transformer"), "--csv-dir", str(directory), "--as-of", "2024-02-01")
    assert result.returncode == 0, result.stderr
    assert database.query("select export_date::text from raw.load_log") == [("2024-02-01",)]
    bad = run_cli(database.env("transformer"), "--csv-dir", str(directory), "--as-of", "2024-2-1")
    assert bad.returncode == 2 and "expected a date as YYYY-MM-DD" in bad.stderr  # argparse usage error


def test_cli_bad_input_exits_1_with_the_location(database, conn, tmp_path):
    directory = write_dir(
        tmp_path / "files", invoices=[*INVOICE_LINES[:2], INVOICE_LINES[2].replace("12.34", "abc")]
    )
    result = run_cli(database.env("transformer"), "--csv-dir", str(directory))
    assert result.returncode == 1
    assert (
        f'error: {directory / "invoices.csv"}, line 3, column AMOUNT, value "abc": not in the export'
        in result.stderr
    )
    assert "expected a decimal over 0 with exactly 2 places" in result.stderr
    assert result.stderr.endswith("\nnothing more was loaded (an export loads whole or not at all)\n")
    assert result.stdout == ""
    # a folder that is not there: no export had started, and the note stays true
    missing = run_cli(database.env("transformer"), "--csv-dir", str(tmp_path / "nowhere"))
    assert (missing.returncode, missing.stderr.splitlines()[-1]) == (
        1,
        "nothing more was loaded (an export loads whole or not at all)",
    )


def test_cli_cannot_connect_exits_2(database, tmp_path):
    env = {**database.env("transformer"), "PGHOST": str(tmp_path / "no-server-here"), "PGPORT": "1"}
    result = run_cli(env, "--csv-dir", str(write_dir(tmp_path / "files")))
    assert result.returncode == 2
    assert "cannot connect to" in result.stderr


@pytest.fixture(scope="module")
def big_export(tmp_path_factory) -> Path:
    """A generated export big enough that COPY is still running when a signal lands."""
    return generate(tmp_path_factory.mktemp("big"), 400_000)


def fail_the_database_under_a_loader(database, csv_dir: Path, how: str) -> subprocess.CompletedProcess:
    """The loader run on `csv_dir` while the database fails under its first export to write raw.invoices:
    its session ended (a server restart, pg_terminate_backend: the connection is lost) or every new
    transaction of the transformer read-only (the server refusing the writes)."""
    if how == "read-only":
        with role_setting(database, "transformer", "default_transaction_read_only", "on"):
            return run_cli(database.env("transformer"), "--csv-dir", str(csv_dir))
    with database.connect("admin") as admin:
        admin.execute("lock table raw.invoices in access exclusive mode")
        process = start_loader(database, csv_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            waiting = (
                "select pid from pg_stat_activity where wait_event_type = 'Lock' and application_name = %s"
            )
            name = session_name(process.pid)
            wait_until(
                lambda: process.poll() is not None or database.query(waiting, [name]), "the loader to wait"
            )
            database.query(
                "select pg_terminate_backend(pid) from pg_stat_activity where application_name = %s", [name]
            )
            stdout, stderr = process.communicate(timeout=60)
        finally:
            process.kill()  # not left to load into the module's database once the lock goes
            admin.rollback()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.parametrize("how", ["terminated", "read-only"])
def test_cli_a_database_failing_mid_load_exits_6_and_says_the_export_is_not_at_fault(
    database, conn, tmp_path, how
):
    """A database failing under a load exited 1 with "the load failed in the database", as a refused
    export does, and the pipeline then said to fix or remove the export: removed, the next run loaded the
    later ones and refused it for ever as older than the latest loaded export. Nothing of it was loaded
    and it is sound: it is to be loaded again."""
    csv_dir = write_dir(tmp_path / "csv")
    load_exports(conn, csv_dir)
    folder = write_export(csv_dir, "2024-01-02", [invoice(1)])
    write_export(csv_dir, "2024-01-03", [invoice(2)])
    before = snapshot(conn)
    result = fail_the_database_under_a_loader(database, csv_dir, how)
    assert result.returncode == 6, result.stderr
    said = {
        "terminated": "terminating connection due to administrator command",
        "read-only": "cannot execute CREATE TABLE in a read-only transaction",
    }[how]
    assert result.stderr.splitlines()[-2:] == [
        f"error: the database failed while loading export 2024-01-02 ({folder}): {said}",
        "nothing of that export or the later ones was loaded (it rolled back); the export is not at fault: "
        "do not remove it; run again once the database is back or fixed",
    ], result.stderr
    assert result.stdout == f"export {BASE_DATE} ({csv_dir}): already loaded (same checksums), skipped\n"
    assert snapshot(conn) == before
    # run again once the database is back: both load
    assert [r.skipped for r in load_exports(conn, csv_dir)] == [True, False, False]


def test_cli_values_a_database_rule_refuses_are_the_export_s_to_fix(database, conn, tmp_path):
    """Not a failure of the database: loaded again, the export would be refused again."""
    csv_dir = write_dir(tmp_path / "csv")
    load_exports(conn, csv_dir)
    write_export(csv_dir, "2024-01-02", [invoice(1, amount="5000.00")])
    with database.connect("admin", autocommit=True) as admin:
        admin.execute("alter table raw.invoice_versions add constraint below_1000 check (amount < 1000)")
    try:
        result = run_cli(database.env("transformer"), "--csv-dir", str(csv_dir))
    finally:
        with database.connect("admin", autocommit=True) as admin:
            admin.execute("alter table raw.invoice_versions drop constraint below_1000")
    assert result.returncode == 1, result.stderr
    assert "error: the load failed in the database: new row for relation" in result.stderr
    assert 'violates check constraint "below_1000"' in result.stderr
    assert result.stderr.splitlines()[-1] == "nothing more was loaded (an export loads whole or not at all)"


@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["ctrl-c", "terminated", "killed"]
)
def test_cli_interrupted_or_killed_mid_copy_changes_nothing(database, conn, tmp_path, big_export, signum):
    """A real signal while COPY streams: every raw table and the load log exactly as before. SIGTERM
    (`kill`, `timeout`) is taken as Ctrl-C is: the statement is cancelled, the message says so, and the
    exit code is 128 + 15.

    A killed loader runs no cleanup at all: the server rolls the transaction back when the
    connection drops, and the next run loads normally.
    """
    csv_dir = tmp_path / "csv"
    write_dir(csv_dir)
    load_exports(conn, csv_dir)
    write_export(csv_dir, "2024-01-02", [invoice(1)])
    load_exports(conn, csv_dir)
    before = snapshot(conn)
    folder = csv_dir / "exports" / "2024-06-28"
    folder.mkdir(parents=True)
    (folder / "invoices.csv").symlink_to(big_export / "invoices.csv")
    process = start_loader(
        database,
        csv_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,  # whatever the test run inherited (`nohup ... &` ignores Ctrl-C)
    )
    deadline = time.monotonic() + 30
    copying = "select count(*) from pg_stat_activity where query like 'copy %incoming_invoices_text%'"
    while database.query(copying) == [(0,)] and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    if signum != signal.SIGKILL:
        assert process.returncode == 128 + signum, stderr
        assert "interrupted: the export being loaded was rolled back" in stderr
    else:
        assert process.returncode == -signal.SIGKILL
    while database.query(copying) != [(0,)] and time.monotonic() < deadline:
        time.sleep(0.01)  # the server notices the dropped connection and rolls back
    assert snapshot(conn) == before
    (folder / "invoices.csv").unlink()
    write(folder / "invoices.csv", [INVOICE_LINES[0], invoice(2, "2024-06-28T00:00:00Z")])
    assert [r.skipped for r in load_exports(conn, csv_dir)] == [True, True, False]


def test_error_is_psycopg_free(conn, tmp_path, baseline):
    """Database errors other than bad input are not disguised as LoadErrors."""
    with conn.transaction():
        conn.execute("revoke insert on raw.load_log from transformer")
    try:
        write_export(tmp_path / "csv", "2024-01-02", [invoice(1)])
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            load_exports(conn, tmp_path / "csv")
    finally:
        conn.execute("grant insert on raw.load_log to transformer")
    assert snapshot(conn) == baseline


def test_the_old_snapshot_layout_is_named_not_mixed_in(database, conn, tmp_path, baseline):
    with database.connect("admin", autocommit=True) as admin:
        admin.execute("alter table raw.invoices rename to invoices_ledger")
        admin.execute("create table raw.invoices (invoice_id bigint not null)")
        try:
            with pytest.raises(
                LoadError, match=r"raw\.invoices has the old snapshot layout \(no version column\)"
            ):
                load_exports(conn, write_dir(tmp_path / "files"))
        finally:
            admin.execute("drop table raw.invoices")
            admin.execute("alter table raw.invoices_ledger rename to invoices")
    assert snapshot(conn) == baseline
