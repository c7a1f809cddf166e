"""The Spark raw ledger (data_platform/engines/spark_raw.py): an earlier release's history, refused exports.

Its equality with the Postgres ledger is proven through the marts (test_engines_equal.py); here, the one
step only an existing Spark warehouse takes (versions written without previous_seen_on get it) and the
refusals of whole exports that test_duckdb_raw.py checks on DuckDB (exports dated after today, invoices
created after their export's date).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import date

import pytest
from conftest import PROJECT_ROOT, require_java
from test_ledger import BASE_ROWS, DAY_2, DAY_2_ROWS, DAY_3, DAY_3_ROWS, write_export
from test_pipeline import ORGANIZATIONS_CSV, write_fixture

from data_platform.load_errors import (
    NUL_BYTE,
    REQUIRED_VALUE_EMPTY,
    future_export,
    not_in_format,
    utc_today,
)
from data_platform.raw_tables import AMOUNT, CURRENCY

pytestmark = [pytest.mark.slow, pytest.mark.spark]

# One process: Spark's embedded metastore admits one at a time, and a session outlives its test.
SCRIPT = """
import sys
from data_platform.engines.spark_raw import SparkLedger, build_raw, session

build_raw(sys.argv[1])
spark = session()
columns = ("invoice_id", "version", "seen_on", "previous_seen_on")
written = sorted(tuple(row) for row in spark.table("raw.invoice_versions").select(*columns).collect())
earlier_release = spark.table("raw.invoice_versions").drop("previous_seen_on").localCheckpoint()
earlier_release.write.format("parquet").mode("overwrite").saveAsTable("raw.invoice_versions")
assert "previous_seen_on" not in spark.table("raw.invoice_versions").columns
SparkLedger(spark)
again = sorted(tuple(row) for row in spark.table("raw.invoice_versions").select(*columns).collect())
print(written == again, sum(row[3] is not None for row in again), again == sorted(set(again)))
"""


def test_a_history_from_an_earlier_release_gets_previous_seen_on(tmp_path):
    pytest.importorskip("pyspark")
    require_java()
    csv_dir = write_fixture(tmp_path / "csv", BASE_ROWS)
    write_export(csv_dir, DAY_2, DAY_2_ROWS)
    write_export(csv_dir, DAY_3, DAY_3_ROWS)
    env = {
        **os.environ,
        "SPARK_WAREHOUSE_DIR": str(tmp_path / "spark-warehouse"),
        "SPARK_METASTORE_DIR": str(tmp_path / "spark-metastore"),
    }
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(csv_dir)],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(PROJECT_ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    same, with_previous, distinct = result.stdout.split()[-3:]
    # the rebuilt column equals what the loader wrote, and the fixture has changed versions to check
    assert (same, distinct) == ("True", "True")
    assert int(with_previous) > 0


# Each build in its own csv folder, all in one warehouse: a refused build writes nothing.
REFUSALS_SCRIPT = """
import sys
from datetime import date
from data_platform.engines.spark_raw import build_raw, session
from data_platform.load_errors import LoadError

future_invoices, dated_2999, base, *bad_values = sys.argv[1:]
builds = [(future_invoices, None), (dated_2999, None), (base, date(2023, 1, 5))]
for csv_dir, today in builds + [(csv_dir, None) for csv_dir in bad_values]:
    try:
        print("loaded:", build_raw(csv_dir, **({"today": today} if today else {})))
    except LoadError as error:
        print("refused:", error)
print("written:", session().catalog.tableExists("raw.load_log"))
"""


def test_exports_from_the_future_and_invoices_after_their_exports_date_are_refused(tmp_path):
    pytest.importorskip("pyspark")
    require_java()
    late_invoice = ["601,{s},{s},4,-7,open,USD,,,5.00,,1.00000000,,2023-01-10T00:00:00.000Z"]
    future_invoices = write_fixture(tmp_path / "future_invoices", BASE_ROWS)
    for day, rows in ((DAY_2, DAY_2_ROWS), (DAY_3, DAY_3_ROWS), ("2023-01-09", late_invoice)):
        write_export(future_invoices, day, rows)
    dated_2999 = write_export(write_fixture(tmp_path / "dated_2999", BASE_ROWS), "2999-01-01", late_invoice)
    base = write_fixture(tmp_path / "base", BASE_ROWS)  # dated 2023-01-06 by its invoices
    # values Spark's reader takes (as null, or an empty text) and the loader refuses
    valid = late_invoice[0].replace("2023-01-10", DAY_2)
    bad_values = {
        name: write_export(write_fixture(tmp_path / name, BASE_ROWS), DAY_2, [row])
        for name, row in (
            ("no_id", valid.replace("601", "", 1)),
            # in a required text (in an optional one Spark reads it as no value, which the loader refuses)
            ("quoted_empty", valid.replace("open", '""')),
            ("nul_byte", valid.replace("USD,,,", "USD,,ca\0rd,")),
            # stored, it would fail the models' positive tests in every later build
            ("zero_amount", valid.replace(",5.00,", ",0.00,")),
            # stored, it would fail the models' length_between tests in every later build
            ("short_payment_currency", valid.replace("USD,,,", "USD,US,,")),
            # a quoted line break in a CRLF file: Spark's whole-file reader would store it as LF
            ("crlf_inside", valid.replace("USD,,,", 'USD,,"ca\nrd",')),
            # Latin-1, read by Spark as U+FFFD: the loader refuses the bytes
            ("not_utf8", valid.replace("USD,,,", "USD,,caf\u00e9,")),
            # a value its type cannot hold: Spark's reader says which record
            ("not_a_number", valid.replace("601", "6o1", 1)),
            # the same in a CRLF file, with no line break in a value: not blamed on one
            ("crlf_not_a_number", valid.replace("601", "6o1", 1)),
            # both rows would become versions of one day, and the invoice would be current twice
            ("twice", f"{valid}\n{valid.replace('open', 'paid')}"),
            # with an organization whose id is empty: never matched, it would come back with every export
            ("organization_without_id", valid),
        )
    }
    organizations_without_id = bad_values["organization_without_id"] / "exports" / DAY_2 / "organizations.csv"
    organizations_without_id.write_text(ORGANIZATIONS_CSV.replace("\n2,", "\n,"))
    # the base export's invoices again, as the next export of the same build: it would undo DAY_2's changes
    copied_base = write_export(write_fixture(tmp_path / "copied_base", BASE_ROWS), DAY_2, DAY_2_ROWS)
    (copied_base / "exports" / DAY_3).mkdir()
    shutil.copy(copied_base / "invoices.csv", copied_base / "exports" / DAY_3 / "invoices.csv")
    bad_values["copied_base"] = copied_base
    crlf_invoices = bad_values["crlf_inside"] / "exports" / DAY_2 / "invoices.csv"
    crlf_invoices.write_bytes(crlf_invoices.read_bytes().replace(b"\n", b"\r\n"))
    crlf_not_a_number = bad_values["crlf_not_a_number"] / "exports" / DAY_2 / "invoices.csv"
    crlf_not_a_number.write_bytes(crlf_not_a_number.read_bytes().replace(b"\n", b"\r\n"))
    latin1_invoices = bad_values["not_utf8"] / "exports" / DAY_2 / "invoices.csv"
    latin1_invoices.write_bytes(latin1_invoices.read_bytes().replace("é".encode(), "é".encode("latin-1")))
    started_on = utc_today()
    env = {
        **os.environ,
        "SPARK_WAREHOUSE_DIR": str(tmp_path / "spark-warehouse"),
        "SPARK_METASTORE_DIR": str(tmp_path / "spark-metastore"),
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            REFUSALS_SCRIPT,
            *map(str, [future_invoices, dated_2999, base, *bad_values.values()]),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [
        line for line in result.stdout.splitlines() if line.startswith(("loaded:", "refused:", "written:"))
    ]
    assert len(lines) == 16, result.stdout[-3000:]
    # the messages of the Postgres loader and the DuckDB builder (test_duckdb_raw.py)
    late = future_invoices / "exports" / "2023-01-09" / "invoices.csv"
    assert lines[0].startswith(f'refused: {late}, column CREATED_AT, value "2023-01-10 00:00:00')
    assert lines[0].endswith(
        ": 1 invoice(s) created after the export date 2023-01-09 (the first is shown, INVOICE_ID 601): "
        "an export cannot hold invoices from its future; fix the export or its date"
    )
    # by default today is the UTC date (read from the message: the day may turn during the build)
    today = date.fromisoformat(lines[1].partition("after today (")[2][:10])
    assert today in (started_on, utc_today())
    assert (
        lines[1]
        == f"refused: {future_export(dated_2999 / 'exports' / '2999-01-01', date(2999, 1, 1), today)}"
    )
    assert lines[2] == f"refused: {future_export(base, date(2023, 1, 6), date(2023, 1, 5))}"
    for line, (name, column, reason) in zip(
        lines[3:8],
        [
            ("no_id", "INVOICE_ID", 'value "": ' + REQUIRED_VALUE_EMPTY),
            ("quoted_empty", "STATUS", 'value "": ' + REQUIRED_VALUE_EMPTY),
            ("nul_byte", "PAYMENT_METHOD", NUL_BYTE),  # no value shown
            ("zero_amount", "AMOUNT", not_in_format(AMOUNT.expected)),
            ("short_payment_currency", "PAYMENT_CURRENCY", not_in_format(CURRENCY.expected)),
        ],
        strict=True,
    ):
        invoices = bad_values[name] / "exports" / DAY_2 / "invoices.csv"
        where = f"column {column}, {reason}" if reason.startswith("value") else f"column {column}: {reason}"
        assert line.startswith(f"refused: {invoices}, {where} (1 row(s)"), line
    assert lines[8] == (
        f"refused: {crlf_invoices}: its lines end in CRLF and a quoted value holds a line break, which "
        "Spark's reader would store as LF (Postgres and DuckDB keep CRLF): give the file LF line endings, "
        "or load it on Postgres or DuckDB"
    )
    assert lines[9] == (
        f"refused: {latin1_invoices}, column PAYMENT_METHOD: bytes that are not UTF-8, or U+FFFD (the "
        "lowest INVOICE_ID 601): the file must be UTF-8, and Spark's reader would store U+FFFD in place of "
        "such bytes"
    )
    not_a_number = bad_values["not_a_number"] / "exports" / DAY_2 / "invoices.csv"
    assert lines[10].startswith(
        f"refused: {not_a_number}: Spark cannot read it with the raw column types: a record it cannot parse, "
        "read as '[null,"
    ), lines[10]
    assert lines[11].startswith(
        f"refused: {crlf_not_a_number}: Spark cannot read it with the raw column types: a record it cannot "
        "parse, read as '[null,"
    ), lines[11]
    twice = bad_values["twice"] / "exports" / DAY_2 / "invoices.csv"
    assert lines[12] == (
        f"refused: {twice}, column INVOICE_ID: INVOICE_ID 601 appears 2 times: an export holds each one once"
    )
    assert lines[13].startswith(
        f'refused: {organizations_without_id}, column ORGANIZATION_ID, value "": '
        f"{REQUIRED_VALUE_EMPTY} (1 row(s)"
    ), lines[13]
    copied = copied_base / "exports" / DAY_3 / "invoices.csv"
    assert lines[14].startswith(f"refused: {copied}: this file was already loaded as export 2023-01-06"), (
        lines[14]
    )
    assert lines[15] == "written: False"


def test_without_java_the_spark_tests_skip_except_in_ci_where_they_fail(monkeypatch):
    # CI runs every test: a runner that lost its Java would otherwise pass with the Spark tests skipped
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="Spark needs a Java runtime"):
        require_java()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="Spark needs a Java runtime"):
        require_java()


def test_a_java_error_is_told_by_its_java_exception_not_by_py4js_call():
    from data_platform.engines.spark_raw import _first_line

    py4j = (
        "An error occurred while calling o38.localCheckpoint.\n"
        ": org.apache.spark.SparkException: Job aborted due to stage failure: disk full\n"
        "\tat org.apache.spark.scheduler.DAGScheduler.failJobAndIndependentStages(DAGScheduler.scala:2898)\n"
    )
    assert _first_line(Exception(py4j)) == (
        "org.apache.spark.SparkException: Job aborted due to stage failure: disk full"
    )
    assert _first_line(Exception("plain\nmore")) == "plain"


def test_a_second_load_is_refused_at_once_while_one_holds_the_metastore(tmp_path, monkeypatch):
    # Derby's own lock made the second load retry for minutes and end in a Java stack trace
    from data_platform.engines.spark_raw import build_raw, one_load_at_a_time
    from data_platform.load_errors import LoadError

    monkeypatch.setenv("SPARK_METASTORE_DIR", str(tmp_path / "spark-metastore"))
    monkeypatch.setenv("SPARK_WAREHOUSE_DIR", str(tmp_path / "spark-warehouse"))
    csv_dir = write_fixture(tmp_path / "csv", BASE_ROWS)
    with one_load_at_a_time(), pytest.raises(LoadError) as refused:
        build_raw(csv_dir)
    assert str(refused.value) == (
        f"{tmp_path / 'spark-metastore'}: another Spark load or build is using this metastore "
        "(SPARK_METASTORE_DIR): run again when it has finished"
    )
    assert not (tmp_path / "spark-warehouse").exists()  # no session was started


def test_a_spark_build_holds_the_metastore_for_its_dbt_build_too(tmp_path, monkeypatch, capsys):
    # dbt's session is another JVM on the same Derby metastore: a second build, or a load during the
    # first's dbt build, is refused at once, not after minutes of Derby's retries
    from data_platform.engines import build
    from data_platform.engines.spark_raw import one_load_at_a_time

    monkeypatch.setenv("SPARK_METASTORE_DIR", str(tmp_path / "spark-metastore"))
    monkeypatch.setenv("SPARK_WAREHOUSE_DIR", str(tmp_path / "spark-warehouse"))
    csv_dir = write_fixture(tmp_path / "csv", BASE_ROWS)
    with one_load_at_a_time():
        assert build.run("spark", str(csv_dir)) == 1
    assert "another Spark load or build is using this metastore" in capsys.readouterr().err
    steps = []
    monkeypatch.setattr(build, "run_child", lambda command, env: steps.append(env) or 0)
    assert build.run("spark", str(csv_dir)) == 0
    # the steps are told the lock is held for them: each would else be refused by its own build
    assert [env.get("DATA_PLATFORM_SPARK_LOCK_HELD") for env in steps] == ["1", "1"]


MISNAMED_SCRIPT = """
import sys
from data_platform.engines.spark_raw import build_raw
from data_platform.load_errors import LoadError

try:
    print("loaded:", build_raw(sys.argv[1]))
except LoadError as error:
    print("refused:", error)
"""


def test_a_misnamed_single_file_export_is_refused_before_the_first_load(tmp_path):
    """As by the Postgres loader: passed over while the dated exports load, it could never load before
    them."""
    pytest.importorskip("pyspark")
    require_java()
    csv_dir = write_export(write_fixture(tmp_path / "csv", BASE_ROWS), DAY_2, DAY_2_ROWS)
    (csv_dir / "invoices.csv").rename(csv_dir / "INVOICES.CSV")
    (csv_dir / "organizations.csv").rename(csv_dir / "ORGANIZATIONS.CSV")
    env = {
        **os.environ,
        "SPARK_WAREHOUSE_DIR": str(tmp_path / "spark-warehouse"),
        "SPARK_METASTORE_DIR": str(tmp_path / "spark-metastore"),
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    result = subprocess.run(
        [sys.executable, "-c", MISNAMED_SCRIPT, str(csv_dir)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        f"refused: {csv_dir / 'INVOICES.CSV'}: looks like the single-file export's invoices.csv named "
        "otherwise" in result.stdout
    ), result.stdout[-3000:]
