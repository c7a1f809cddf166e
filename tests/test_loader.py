"""The raw loader against a real Postgres: exact values, atomic swap, and every bad-input case."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from conftest import PROJECT_ROOT

from data_platform.loader import LoadError, ProgressReporter, load_all, load_table
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


def write(path: Path, lines: list[str], *, newline: str = "\n", final_newline: bool = True) -> Path:
    path.write_bytes((newline.join(lines) + (newline if final_newline else "")).encode())
    return path


def write_dir(
    directory: Path, invoices: list[str] = INVOICE_LINES, organizations: list[str] = ORG_LINES
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    write(directory / "invoices.csv", invoices)
    write(directory / "organizations.csv", organizations)
    return directory


@pytest.fixture(scope="module")
def database(make_database):
    return make_database()


@pytest.fixture
def conn(database):
    # autocommit: every load is then its own top-level transaction, committed or rolled back,
    # exactly as in the CLI (inside an open transaction the loader would use a savepoint)
    with database.connect("transformer", autocommit=True) as connection:
        yield connection


@pytest.fixture
def baseline(conn, tmp_path) -> dict:
    """The good files loaded: what a failed load must leave exactly as it is."""
    load_all(conn, write_dir(tmp_path / "baseline"))
    return snapshot(conn)


def snapshot(conn: psycopg.Connection) -> dict:
    return {
        "invoices": conn.execute("select * from raw.invoices order by invoice_id").fetchall(),
        "organizations": conn.execute("select * from raw.organizations order by organization_id").fetchall(),
        "tables": conn.execute(
            "select table_name from information_schema.tables where table_schema = 'raw' order by 1"
        ).fetchall(),
    }


# --- happy path ------------------------------------------------------------------------------


CONTRACT_COLUMNS = [  # the raw tables of the shared contract, written out (not derived from the spec)
    ("invoices", "invoice_id", "bigint", "NO"),
    ("invoices", "parent_invoice_id", "bigint", "YES"),
    ("invoices", "transaction_id", "bigint", "YES"),
    ("invoices", "organization_id", "bigint", "NO"),
    ("invoices", "type", "bigint", "YES"),
    ("invoices", "status", "text", "NO"),
    ("invoices", "currency", "text", "NO"),
    ("invoices", "payment_currency", "text", "YES"),
    ("invoices", "payment_method", "text", "YES"),
    ("invoices", "amount", "numeric", "NO"),
    ("invoices", "payment_amount", "numeric", "YES"),
    ("invoices", "fx_rate", "numeric", "NO"),
    ("invoices", "fx_rate_payment", "numeric", "YES"),
    ("invoices", "created_at", "timestamp with time zone", "NO"),
    ("organizations", "organization_id", "bigint", "NO"),
    ("organizations", "first_payment_date", "date", "YES"),
    ("organizations", "last_payment_date", "date", "YES"),
    ("organizations", "legal_entity_country_code", "bigint", "YES"),
    ("organizations", "count_total_contracts_active", "integer", "YES"),
    ("organizations", "created_date", "timestamp with time zone", "YES"),
]


def test_columns_have_the_contract_types(conn, baseline):
    rows = conn.execute(
        """
        select table_name, column_name, data_type, is_nullable
        from information_schema.columns
        where table_schema = 'raw'
        order by table_name, ordinal_position
        """
    ).fetchall()
    assert rows == CONTRACT_COLUMNS


def test_numeric_and_time_columns_reject_nan_and_infinity_on_the_final_tables_too(conn, baseline):
    rows = conn.execute(
        """
        select conrelid::regclass::text, conname
        from pg_constraint
        where connamespace = 'raw'::regnamespace and contype = 'c'
        order by 1, 2
        """
    ).fetchall()
    assert rows == [
        ("raw.invoices", "amount_is_finite"),
        ("raw.invoices", "created_at_is_finite"),
        ("raw.invoices", "fx_rate_is_finite"),
        ("raw.invoices", "fx_rate_payment_is_finite"),
        ("raw.invoices", "payment_amount_is_finite"),
        ("raw.organizations", "created_date_is_finite"),
        ("raw.organizations", "first_payment_date_is_finite"),
        ("raw.organizations", "last_payment_date_is_finite"),
    ]


def test_invoices_load_exact_values(conn, baseline):
    rows = conn.execute(
        "select invoice_id, parent_invoice_id, transaction_id, organization_id, type, status, currency,"
        " payment_currency, payment_method, amount, payment_amount, fx_rate, fx_rate_payment, created_at"
        " from raw.invoices order by invoice_id"
    ).fetchall()
    assert rows == [
        (-(2**63), BIG, -7, 42, 2**63 - 1, "open", "USDC", None, None,
         Decimal("12.34"), None, Decimal("1.00010000"), None, datetime(2023, 7, 18, tzinfo=UTC)),
        (BIG, SENTINEL, SENTINEL, BIG, -1, "paid", "USD", "USD", "card", Decimal("100.00"), Decimal("100"),
         Decimal("1.00000000"), Decimal("1.00000000"), datetime(2023, 7, 17, 4, 0, 40, 96000, tzinfo=UTC)),
        (2**63 - 1, SENTINEL, 123, 555, 3, "paid", "EUR", "EUR", "bank_transfer", Decimal("0.01"),
         Decimal("0.1"), Decimal("0.91234567"), Decimal("0.91234567"),
         datetime(2023, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
    ]  # fmt: skip
    # exact in the database itself too: ids never through a float, numerics keep the file's scale
    # (Decimal("100") == Decimal("100.00") in Python, so compare the text)
    as_text = conn.execute(
        "select invoice_id::text, amount::text, payment_amount::text, fx_rate::text"
        " from raw.invoices order by invoice_id"
    ).fetchall()
    assert as_text == [
        ("-9223372036854775808", "12.34", None, "1.00010000"),
        ("9007199254740993", "100.00", "100", "1.00000000"),
        ("9223372036854775807", "0.01", "0.1", "0.91234567"),
    ]


def test_organizations_load_exact_values(conn, baseline):
    rows = conn.execute("select * from raw.organizations order by organization_id").fetchall()
    assert rows[0] == (
        -(2**63),
        None,
        None,
        2**63 - 1,
        1,
        datetime(2021, 3, 8, 17, 35, 39, 400000, tzinfo=UTC),
    )
    assert rows[-1] == (
        BIG,
        date(2021, 3, 9),
        date(2023, 7, 17),
        -4611686018427387905,
        3,
        datetime(2021, 3, 8, 17, 35, 39, tzinfo=UTC),
    )
    # CREATED_DATE written with 0 to 6 fractional digits, exact to the microsecond
    micros = {BIG: 0, -(2**63): 400000, 42: 440000, 43: 445000, 44: 445400, 45: 445420, 46: 445423}
    assert {row[0]: row[5].microsecond for row in rows} == micros


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["LF", "CRLF"])
@pytest.mark.parametrize("final_newline", [True, False], ids=["final-newline", "no-final-newline"])
@pytest.mark.parametrize("bom", [False, True], ids=["", "BOM"])
def test_line_endings_final_newline_and_bom(conn, tmp_path, newline, final_newline, bom):
    path = write(tmp_path / "invoices.csv", INVOICE_LINES, newline=newline, final_newline=final_newline)
    if bom:
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    result = load_table(conn, INVOICES, path)
    assert result.rows == 3
    # the last field of the last line is intact: no stray \r, nothing lost without a final newline
    last = conn.execute("select created_at, status from raw.invoices where invoice_id = %s", [2**63 - 1])
    assert last.fetchone() == (datetime(2023, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "paid")


@pytest.mark.parametrize("final_newline", [True, False], ids=["final-newline", "no-final-newline"])
@pytest.mark.parametrize("table", ["invoices", "organizations"])
def test_header_only_file_is_refused_and_loads_nothing(conn, tmp_path, baseline, table, final_newline):
    directory = write_dir(tmp_path / "files")
    path = directory / f"{table}.csv"
    write(
        path, {"invoices": INVOICE_LINES, "organizations": ORG_LINES}[table][:1], final_newline=final_newline
    )
    with pytest.raises(LoadError) as raised:
        load_all(conn, directory)
    assert raised.value.path == path
    assert f"no data rows, only the header: refusing to replace raw.{table} with an empty table" in str(
        raised.value
    )
    assert snapshot(conn) == baseline


def test_header_only_file_loads_zero_rows_with_allow_empty(conn, tmp_path, baseline):
    path = write(tmp_path / "invoices.csv", INVOICE_LINES[:1], final_newline=False)
    assert load_table(conn, INVOICES, path, allow_empty=True).rows == 0
    assert conn.execute("select count(*) from raw.invoices").fetchone() == (0,)


def test_rerun_is_safe_and_replaces_the_content(conn, tmp_path, baseline):
    directory = write_dir(tmp_path / "again")
    first = load_all(conn, directory)
    second = load_all(conn, directory)
    assert [r.rows for r in first] == [r.rows for r in second] == [7, 3]
    assert snapshot(conn) == baseline
    write_dir(tmp_path / "smaller", invoices=INVOICE_LINES[:2])
    load_all(conn, tmp_path / "smaller", only="invoices")
    assert conn.execute("select count(*) from raw.invoices").fetchone() == (1,)


def test_dependent_views_are_dropped_and_reported(conn, tmp_path, baseline):
    with conn.transaction():
        conn.execute("create view staging.v_invoices as select invoice_id from raw.invoices")
        conn.execute("create view staging.v_on_view as select * from staging.v_invoices")
        conn.execute("create view staging.v_orgs as select organization_id from raw.organizations")
    directory = write_dir(tmp_path / "files")
    results = load_all(conn, directory)
    dropped = {result.table: sorted(result.dropped_dependents) for result in results}
    assert dropped == {
        "raw.organizations": ["view staging.v_orgs"],  # one object: named in the notice itself
        "raw.invoices": ["view staging.v_invoices", "view staging.v_on_view"],  # several: in its detail
    }
    remaining = conn.execute("select count(*) from information_schema.views where table_schema = 'staging'")
    assert remaining.fetchone() == (0,)
    # nothing depends on the tables now; a first load's "does not exist, skipping" is no dependent
    conn.execute("drop table raw.invoices")
    assert [result.dropped_dependents for result in load_all(conn, directory)] == [(), ()]


def test_interrupted_load_leaves_previous_tables_untouched(conn, tmp_path, baseline):
    lines = [INVOICE_LINES[0]] + [
        f"{i},1,1,1,1,paid,USD,,,1.00,,1.00000000,,2023-01-01T00:00:00Z" for i in range(2000)
    ]
    path = write(tmp_path / "invoices.csv", lines)

    def interrupt(_path: Path, done: int, total: int) -> None:
        if done < total:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        load_table(conn, INVOICES, path, block_size=4096, progress=interrupt)
    assert snapshot(conn) == baseline


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
                load_all(conn, write_dir(tmp_path / "files"))
        finally:
            admin.execute("alter schema raw_elsewhere rename to raw")


# --- bad input -------------------------------------------------------------------------------


def replace(lines: list[str], line: int, old: str, new: str) -> list[str]:
    """Copy of `lines` with `old` -> `new` on physical line `line` (1-based, header = 1)."""
    changed = list(lines)
    assert old in changed[line - 1]
    changed[line - 1] = changed[line - 1].replace(old, new, 1)
    return changed


@dataclass(frozen=True)
class Bad:
    """A bad file and where its error must point: physical line (header = 1), column, value."""

    lines: list[str]
    line: int
    column: str | None
    value: str | None
    reason: str  # words the message must contain


BAD_INVOICES = {
    "misspelt header": Bad(
        replace(INVOICE_LINES, 1, "AMOUNT,", "AMOUNTS,"), 1, "AMOUNT", "AMOUNTS", "wrong header"
    ),
    "short header": Bad(replace(INVOICE_LINES, 1, ",CREATED_AT", ""), 1, None, None, "14 columns, found 13"),
    "lowercase header": Bad(
        [INVOICE_LINES[0].lower(), *INVOICE_LINES[1:]], 1, "INVOICE_ID", "invoice_id", "wrong header"
    ),
    "bad number": Bad(replace(INVOICE_LINES, 3, "12.34", "12.3x"), 3, "AMOUNT", "12.3x", "type numeric"),
    "id out of int64": Bad(
        replace(INVOICE_LINES, 4, "9223372036854775807,", "9223372036854775808,"),
        4, "INVOICE_ID", "9223372036854775808", "out of range for type bigint",
    ),
    "id as a float": Bad(replace(INVOICE_LINES, 3, ",-7,", ",-7.0,"), 3, "TRANSACTION_ID", "-7.0", "bigint"),
    "impossible timestamp": Bad(
        replace(INVOICE_LINES, 2, "2023-07-17T04", "2023-02-30T04"),
        2, "CREATED_AT", "2023-02-30T04:00:40.096Z", "out of range",
    ),
    "garbage timestamp": Bad(
        replace(INVOICE_LINES, 4, "2023-12-31T23:59:59.999999Z", "soon"), 4, "CREATED_AT", "soon", "timestamp"
    ),
    "empty required status": Bad(replace(INVOICE_LINES, 3, ",open,", ",,"), 3, "STATUS", "", "required"),
    "too few columns": Bad(
        replace(INVOICE_LINES, 3, ",USDC,", ","),
        3, None, INVOICE_LINES[2].replace(",USDC,", ","), "expected 14, found 13",
    ),
    "too many columns": Bad(
        replace(INVOICE_LINES, 2, "card,", "card,extra,"), 2, None, None, "expected 14, found 15"
    ),
    "blank line": Bad([*INVOICE_LINES[:3], "", INVOICE_LINES[3]], 4, None, None, "blank line"),
    "end-of-data marker": Bad([*INVOICE_LINES[:3], "\\.", INVOICE_LINES[3]], 4, None, "\\.", "end the data"),
    "invalid utf-8": Bad(replace(INVOICE_LINES, 3, "open", "op\udcffen"), 3, None, None, "UTF8"),
    # accepted by numeric / timestamptz input, rejected by the tables' CHECK constraints
    "NaN amount": Bad(
        replace(INVOICE_LINES, 3, "12.34", "NaN"), 3, "AMOUNT", "NaN", "NaN, Infinity and -Infinity"
    ),
    "nan in a nullable column": Bad(
        replace(INVOICE_LINES, 2, ",100,", ",nan,"), 2, "PAYMENT_AMOUNT", "nan", "are not accepted"
    ),
    "Infinity fx rate": Bad(
        replace(INVOICE_LINES, 4, ",0.91234567,0.91234567,", ",Infinity,0.91234567,"),
        4, "FX_RATE", "Infinity", "are not accepted (expected a decimal number",
    ),
    "-inf payment fx rate": Bad(
        replace(INVOICE_LINES, 4, ",0.91234567,2023", ",-inf,2023"),
        4, "FX_RATE_PAYMENT", "-inf", "not accepted",
    ),
    "value after a quoted comma": Bad(  # the value comes from the file's CSV fields, quoting honoured
        replace(INVOICE_LINES, 2, "card,100.00,", '"card,visa",-Infinity,'),
        2, "AMOUNT", "-Infinity", "not accepted",
    ),
    "infinite timestamp": Bad(
        replace(INVOICE_LINES, 2, "2023-07-17T04:00:40.096Z", "infinity"),
        2, "CREATED_AT", "infinity", "infinity and -infinity are not accepted (expected an ISO-8601",
    ),
}  # fmt: skip


def encode(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


@pytest.mark.parametrize("case", BAD_INVOICES, ids=list(BAD_INVOICES))
def test_bad_invoices_name_file_line_column_value_and_load_nothing(conn, tmp_path, baseline, case):
    bad = BAD_INVOICES[case]
    # a different, valid organizations file in the same run must not be swapped in either
    directory = write_dir(tmp_path / "files", organizations=ORG_LINES[:2])
    path = directory / "invoices.csv"
    path.write_bytes(encode(bad.lines))

    with pytest.raises(LoadError) as raised:
        load_all(conn, directory)

    error = raised.value
    message = str(error)
    assert (error.path, error.line) == (path, bad.line), message
    assert message.startswith(f"{path}, line {bad.line}")
    if bad.column is not None:
        assert error.column == bad.column and f"column {bad.column}" in message
    if bad.value is not None:
        assert error.value == bad.value and f'value "{bad.value}"' in message
    assert bad.reason in message
    assert "\n" not in message
    assert snapshot(conn) == baseline


BAD_ORGANIZATIONS = {
    "bad date": Bad(
        replace(ORG_LINES, 4, "2022-01-31", "2022-01-32"), 4, "LAST_PAYMENT_DATE", "2022-01-32", "date"
    ),
    "ambiguous date": Bad(  # Feb 3 or Mar 2? never guessed, whatever the server's datestyle
        replace(ORG_LINES, 5, "2022-01-01", "02/03/2022"), 5, "FIRST_PAYMENT_DATE", "02/03/2022", "date"
    ),
    "bad integer": Bad(
        replace(ORG_LINES, 2, ",3,", ",3.5,"), 2, "COUNT_TOTAL_CONTRACTS_ACTIVE", "3.5", "integer"
    ),
    "bad created date": Bad(
        replace(ORG_LINES, 8, "38.445423Z", "38.445423Q"),
        8, "CREATED_DATE", "2021-03-08T17:35:38.445423Q", "timestamp",
    ),
    "infinite date": Bad(
        replace(ORG_LINES, 4, "2022-01-31", "-infinity"), 4, "LAST_PAYMENT_DATE", "-infinity", "not accepted"
    ),
    "infinite created date": Bad(
        replace(ORG_LINES, 3, "2021-03-08T17:35:39.4Z", "Infinity"),
        3, "CREATED_DATE", "Infinity", "not accepted",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_ORGANIZATIONS, ids=list(BAD_ORGANIZATIONS))
def test_bad_organizations_name_file_line_column_value_and_load_nothing(conn, tmp_path, baseline, case):
    bad = BAD_ORGANIZATIONS[case]
    directory = write_dir(tmp_path / "files", organizations=bad.lines)
    with pytest.raises(LoadError) as raised:
        load_all(conn, directory)
    message = str(raised.value)
    path = directory / "organizations.csv"
    assert message.startswith(f'{path}, line {bad.line}, column {bad.column}, value "{bad.value}"'), message
    assert bad.reason in message
    assert snapshot(conn) == baseline


def test_mixed_line_endings_are_named(conn, tmp_path, baseline):
    path = tmp_path / "invoices.csv"
    # CRLF on the first data line, LF on the second
    path.write_bytes("\r\n".join(INVOICE_LINES[:3]).encode() + b"\n" + INVOICE_LINES[3].encode())
    with pytest.raises(
        LoadError, match=r"line 3: mixed line endings: this line ends with LF but line 2 ends with CRLF"
    ):
        load_table(conn, INVOICES, path)
    assert snapshot(conn) == baseline


def test_error_on_a_very_long_line_is_shortened(conn, tmp_path, baseline):
    lines = replace(INVOICE_LINES, 3, "USDC,,,", "USDC," + "x" * 100_000 + ",")
    path = tmp_path / "invoices.csv"
    path.write_bytes(encode(lines))
    with pytest.raises(LoadError, match="expected 14, found 13") as raised:
        load_table(conn, INVOICES, path)
    assert len(str(raised.value)) < 600
    assert snapshot(conn) == baseline


def test_empty_file(conn, tmp_path, baseline):
    path = write_dir(tmp_path / "files") / "invoices.csv"
    path.write_bytes(b"")
    with pytest.raises(
        LoadError, match=r"invoices\.csv: file is empty \(0 bytes\): expected at least the header"
    ):
        load_all(conn, path.parent)
    assert snapshot(conn) == baseline


def test_missing_file_and_directory(conn, tmp_path, baseline):
    directory = write_dir(tmp_path / "files")
    (directory / "organizations.csv").unlink()
    with pytest.raises(LoadError, match=r"organizations\.csv: file not found"):
        load_all(conn, directory)
    with pytest.raises(LoadError, match="CSV directory not found"):
        load_all(conn, tmp_path / "nowhere")
    assert snapshot(conn) == baseline


# --- the command line ------------------------------------------------------------------------


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "data_platform.loader", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_loads_both_files_from_csv_dir_env_and_names_dropped_views(database, tmp_path):
    directory = write_dir(tmp_path / "files")
    with database.connect("transformer") as conn:
        load_all(conn, directory)
        conn.execute("create view staging.stg_cli as select * from raw.invoices")
    result = run_cli({**database.env("transformer"), "CSV_DIR": str(directory)})
    assert result.returncode == 0, result.stderr
    assert "raw.organizations: 7 rows from" in result.stdout
    assert "raw.invoices: 3 rows from" in result.stdout
    assert result.stdout.count("rows/s") == 2
    assert "note: replacing raw.invoices dropped what depended on it: view staging.stg_cli" in result.stderr
    assert "MiB" not in result.stderr  # no progress lines for a small file
    assert database.query("select count(*) from raw.invoices") == [(3,)]


def test_cli_header_only_fails_unless_allow_empty_and_only_loads_one_table(database, tmp_path):
    with database.connect("transformer") as conn:
        load_all(conn, write_dir(tmp_path / "baseline"))
    directory = write_dir(tmp_path / "files", organizations=ORG_LINES[:1])
    (directory / "invoices.csv").unlink()  # not needed with --only organizations
    args = ("--csv-dir", str(directory), "--only", "organizations")

    refused = run_cli(database.env("transformer"), *args)
    assert refused.returncode == 1
    assert "organizations.csv: no data rows" in refused.stderr and "--allow-empty" in refused.stderr
    assert database.query("select count(*) from raw.organizations") == [(7,)]

    result = run_cli(database.env("transformer"), *args, "--allow-empty")
    assert result.returncode == 0, result.stderr
    assert "raw.organizations: 0 rows" in result.stdout
    assert "warning:" in result.stderr and "has a header but no rows" in result.stderr
    assert database.query("select count(*) from raw.organizations") == [(0,)]
    assert database.query("select count(*) from raw.invoices") == [(3,)]


def test_cli_bad_input_exits_1_with_the_location(database, tmp_path):
    directory = write_dir(tmp_path / "files", invoices=replace(INVOICE_LINES, 3, "12.34", "abc"))
    result = run_cli(database.env("transformer"), "--csv-dir", str(directory))
    assert result.returncode == 1
    assert f'error: {directory / "invoices.csv"}, line 3, column AMOUNT, value "abc"' in result.stderr
    assert "raw tables are unchanged" in result.stderr
    assert result.stdout == ""


def test_cli_cannot_connect_exits_2(database, tmp_path):
    env = {**database.env("transformer"), "PGHOST": str(tmp_path / "no-server-here"), "PGPORT": "1"}
    result = run_cli(env, "--csv-dir", str(write_dir(tmp_path / "files")))
    assert result.returncode == 2
    assert "cannot connect to" in result.stderr


@pytest.fixture(scope="module")
def big_csv_dir(tmp_path_factory) -> Path:
    """Big enough that COPY is still running when a signal lands (~60 MB)."""
    directory = write_dir(tmp_path_factory.mktemp("big"))
    row = ",1,1,1,1,paid,USD,USD,card,1.00,1.00,1.00000000,1.00000000,2023-01-01T00:00:00Z\n"
    with (directory / "invoices.csv").open("w") as file:
        file.write(INVOICE_LINES[0] + "\n")
        for start in range(0, 600_000, 100_000):
            file.write("".join(f"{i}{row}" for i in range(start, start + 100_000)))
    return directory


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "killed"])
def test_cli_interrupted_or_killed_mid_copy_rolls_back(database, tmp_path, big_csv_dir, signum):
    """A real signal while COPY streams: previous tables intact, no __loading table left behind.

    A killed loader runs no cleanup at all: the server rolls the transaction back when the
    connection drops, and the next run loads normally.
    """
    with database.connect("transformer") as conn:
        load_all(conn, write_dir(tmp_path / "baseline"))
        before = snapshot(conn)
    process = subprocess.Popen(
        [sys.executable, "-m", "data_platform.loader", "--csv-dir", str(big_csv_dir)],
        cwd=PROJECT_ROOT,
        env=database.env("transformer"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    copying = "select count(*) from pg_stat_activity where query like 'copy %invoices__loading%'"
    while database.query(copying) == [(0,)] and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    if signum == signal.SIGINT:
        assert process.returncode == 130, stderr
        assert "interrupted" in stderr
    else:
        assert process.returncode == -signal.SIGKILL
    while database.query(copying) != [(0,)] and time.monotonic() < deadline:
        time.sleep(0.01)  # the server notices the dropped connection and rolls back
    with database.connect("transformer") as conn:
        assert snapshot(conn) == before
        assert [result.rows for result in load_all(conn, write_dir(tmp_path / "next"))] == [7, 3]
