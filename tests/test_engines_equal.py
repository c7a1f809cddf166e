"""The same dbt project on DuckDB and on Spark gives Postgres's marts, row for row.

Postgres is built by init.sh (tests/conftest.py), the other engine by data_platform.engines.build: its
own raw ledger from the same CSV exports, the same seed, `dbt build` with every test. Compared: the daily
fact, the drivers mart and dim_organizations, money to the cent, ratios to 1e-9, the status counts and
the top invoices as JSON values (exactly: the JSON is what an alert shows), every other column exactly.
DuckDB's cases: the demo data (a single-file export, then the 2024-06-29 export that changes older
invoices), the rules edit (open -> 0,0) on it, and an incremental build: the base export first, then the
next one with only its days recomputed, which must equal Postgres's full build.
Spark's case: a shorter generated history (60 days, two dated exports after the base one).

Spark's tables are read back from the Parquet files it wrote (with DuckDB: no second JVM in the test
process). Spark in local mode takes minutes here: those tests are also marked `spark`.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, run_pipeline
from test_ledger import BASE_ROWS, DAY_2, write_export
from test_pipeline import assert_succeeded, project_with_zero_rule, write_fixture

duckdb = pytest.importorskip("duckdb")

pytestmark = pytest.mark.slow

DEMO_CSV = PROJECT_ROOT / "csv_data"
CENT = Decimal("0.005")
RATIO_TOLERANCE = 1e-9
MARTS = {
    "fct_organization_daily_financials": "organization_id, balance_date",
    "fct_organization_daily_drivers": "organization_id, balance_date, driver_kind",
    "dim_organizations": "organization_id",
}


def engine_env(engine: str, work: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DBT_", "LEDGER_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        DBT_TARGET=engine,
        DUCKDB_PATH=str(work / "warehouse.duckdb"),
        SPARK_WAREHOUSE_DIR=str(work / "spark-warehouse"),
        SPARK_METASTORE_DIR=str(work / "spark-metastore"),
        DBT_TARGET_PATH=str(work / "target"),
        DBT_LOG_PATH=str(work / "logs"),
        DBT_SEND_ANONYMOUS_USAGE_STATS="false",
    )
    env.update(extra)
    return env


def build_on(engine: str, project: Path, csv_dir: Path, work: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "data_platform.engines.build", engine, "--csv-dir", str(csv_dir)],
        cwd=project,
        env=engine_env(engine, work),
        capture_output=True,
        text=True,
        # a guard against a hang, not a speed limit: the Spark build takes about 2 minutes alone, but
        # shares the cores with the other xdist worker, and a busy 2-core machine is several times slower
        timeout=1800 if engine == "spark" else 900,
    )
    assert result.returncode == 0, f"{engine} build failed\n{result.stdout[-6000:]}\n{result.stderr[-4000:]}"


def postgres_rows(database, table: str) -> tuple[list[str], list[tuple]]:
    with database.connect("admin") as conn:
        cursor = conn.execute(f"select * from marts.{table} order by {MARTS[table]}")
        return [column.name for column in cursor.description], cursor.fetchall()


def duckdb_rows(work: Path, table: str) -> tuple[list[str], list[tuple]]:
    with duckdb.connect(str(work / "warehouse.duckdb"), read_only=True) as conn:
        cursor = conn.execute(f"select * from marts.{table} order by {MARTS[table]}")
        return [column[0] for column in cursor.description], cursor.fetchall()


def spark_rows(work: Path, table: str) -> tuple[list[str], list[tuple]]:
    files = work / "spark-warehouse" / "marts.db" / table / "**" / "*.parquet"
    with duckdb.connect() as conn:
        conn.execute("set timezone = 'UTC'")
        cursor = conn.execute(
            f"select * from read_parquet('{files}', hive_partitioning = true) order by {MARTS[table]}"
        )
        return [column[0] for column in cursor.description], cursor.fetchall()


def as_json(value):
    """Postgres's jsonb comes back parsed; DuckDB's json and Spark's JSON text as text."""
    return json.loads(value) if isinstance(value, str) else value


def same_value(column: str, expected, actual) -> bool:
    if expected is None or actual is None:
        return expected is None and actual is None
    if column == "invoice_count_by_status":
        return as_json(expected) == as_json(actual)
    if column == "top_invoices":
        # in the JSON the other engines write too: unrounded doubles would read 19.439999999999998
        return as_json(expected) == as_json(actual)
    if column.endswith("_usd"):
        return abs(Decimal(expected) - Decimal(str(actual))) < CENT
    if column.endswith("_ratio"):
        return abs(float(expected) - float(actual)) <= RATIO_TOLERANCE
    if isinstance(expected, datetime):
        # Spark's Parquet timestamps are UTC instants without a zone
        return expected == (actual if actual.tzinfo else actual.replace(tzinfo=UTC))
    if isinstance(expected, date):
        return expected == (actual.date() if isinstance(actual, datetime) else actual)
    return expected == actual


def assert_same_marts(database, other_rows) -> None:
    for table in MARTS:
        columns, expected = postgres_rows(database, table)
        other_columns, actual = other_rows(table)
        # by name: Spark moves a partition column to the end
        assert sorted(other_columns) == sorted(columns), table
        positions = [other_columns.index(column) for column in columns]
        actual = [tuple(row[position] for position in positions) for row in actual]
        assert len(actual) == len(expected), f"{table}: {len(actual)} rows, Postgres has {len(expected)}"
        for expected_row, actual_row in zip(expected, actual, strict=True):
            differing = [
                (column, e, a)
                for column, e, a in zip(columns, expected_row, actual_row, strict=True)
                if not same_value(column, e, a)
            ]
            assert not differing, f"{table} row {expected_row[:2]}: (column, Postgres, other) {differing}"


@pytest.fixture(scope="module")
def demo_postgres(make_database):
    database = make_database()
    assert_succeeded(run_pipeline(database, DEMO_CSV, RUN_ALERTS="false"))
    return database


@pytest.fixture(scope="module")
def rules_edit(make_database, tmp_path_factory):
    """Postgres built by a project whose rules count open invoices as 0,0; the project for the others."""
    project = project_with_zero_rule(tmp_path_factory.mktemp("zero_open_rule"), "open")
    database = make_database()
    assert_succeeded(run_pipeline(database, DEMO_CSV, project_root=project, RUN_ALERTS="false"))
    return database, project


def test_duckdb_rounds_an_exact_half_cent_away_from_zero_as_postgres_does(tmp_path):
    # in doubles 0.09 / 0.4 is 0.22499999999999998: rounded as it is, 0.22 where Postgres says 0.23
    amounts = {
        "up": ("0.09", "0.23"),
        "down": ("-0.09", "-0.23"),
        "tie": ("0.07", "0.18"),
        "plain": ("0.10", "0.25"),
    }
    select = ", ".join(
        f"{{{{ to_usd('cast({amount} as decimal(18, 2))', 'cast(0.4 as decimal(18, 8))') }}}} as {name}"
        for name, (amount, _) in amounts.items()
    )
    command = [str(Path(sys.executable).parent / "dbt"), "show", "--inline", f"select {select}"]
    command += ["--project-dir", str(PROJECT_ROOT / "dbt"), "--profiles-dir", str(PROJECT_ROOT / ".dbt")]
    command += ["--target", "duckdb", "--output", "json", "--log-format", "json"]
    result = subprocess.run(
        command,
        env=engine_env("duckdb", tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    shown = next(
        json.loads(json.loads(line)["data"]["preview"])
        for line in result.stdout.splitlines()
        if '"preview"' in line
    )
    assert {name: Decimal(str(value)) for name, value in shown[0].items()} == {
        name: Decimal(usd) for name, (_, usd) in amounts.items()
    }


def test_every_table_the_models_write_has_its_key_enforced_in_postgres(demo_postgres):
    """Keys held by a unique index, not by a test that scans every row (the views add no rows of their own:
    the staging views are 1:1 with the raw tables, whose primary keys hold their keys)."""
    unkeyed = demo_postgres.query(
        """
        select relnamespace::regnamespace::text || '.' || relname
        from pg_class as tables
        where relkind = 'r' and relnamespace::regnamespace::text in ('intermediate', 'marts')
            and not exists (select from pg_index where indrelid = tables.oid and indisunique)
        order by 1
        """
    )
    assert unkeyed == []


def test_postgres_keeps_its_only_configs(demo_postgres):
    # grants, column comments and indexes are configured for Postgres alone (macros/engines, dbt_project.yml)
    [(comment, column_comment, indexes, alerter_reads)] = demo_postgres.query(
        """
        select obj_description('marts.fct_organization_daily_financials'::regclass),
               col_description('marts.fct_organization_daily_financials'::regclass, 1),
               (select count(*) from pg_indexes where schemaname = 'marts'
                  and tablename = 'fct_organization_daily_financials'),
               has_table_privilege('alerter', 'marts.fct_organization_daily_financials', 'select')
        """
    )
    assert comment.startswith("One row per organization per UTC day")
    assert column_comment
    assert indexes == 2
    assert alerter_reads


def test_duckdb_equals_postgres_on_the_demo_data(demo_postgres, tmp_path):
    build_on("duckdb", PROJECT_ROOT, DEMO_CSV, tmp_path)
    assert_same_marts(demo_postgres, lambda table: duckdb_rows(tmp_path, table))


def test_duckdb_equals_postgres_when_an_invoice_s_amount_changes(make_database, tmp_path):
    """A changed invoice moves the balance by the difference of two USD amounts, which doubles leave
    unrounded (55.56 - 40.00 = 15.560000000000002): the drivers' top invoices still read as Postgres's."""
    # invoice 11 (open 40.00 USD) is now 50.00 EUR at 0.9 EUR per USD: 55.56
    amount_change = "11,{s},{s},1,-7,open,EUR,,,50.00,,0.90000000,,2022-11-01T10:00:00.000Z"
    csv_dir = write_export(write_fixture(tmp_path / "csv", BASE_ROWS), DAY_2, [amount_change])
    database = make_database()
    assert_succeeded(run_pipeline(database, csv_dir, RUN_ALERTS="false"))
    build_on("duckdb", PROJECT_ROOT, csv_dir, tmp_path)
    assert_same_marts(database, lambda table: duckdb_rows(tmp_path, table))


def test_duckdb_equals_postgres_after_an_incremental_build(demo_postgres, tmp_path):
    # the base export alone, built in full; then the next export, with only its days recomputed
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    for name in ("invoices.csv", "organizations.csv"):
        shutil.copy2(DEMO_CSV / name, csv_dir / name)
    build_on("duckdb", PROJECT_ROOT, csv_dir, tmp_path)
    shutil.copytree(DEMO_CSV / "exports", csv_dir / "exports")
    from data_platform.engines.duckdb_raw import build_raw

    assert build_raw(tmp_path / "warehouse.duckdb", csv_dir) == [date(2024, 6, 29)]
    dbt = shutil.which("dbt", path=str(Path(sys.executable).parent)) or "dbt"
    result = subprocess.run(
        [
            dbt,
            "build",
            "--project-dir",
            str(PROJECT_ROOT / "dbt"),
            "--profiles-dir",
            str(PROJECT_ROOT / ".dbt"),
        ],
        env=engine_env("duckdb", tmp_path, LEDGER_WINDOW_START="2024-06-29"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:]
    assert "incremental model marts.fct_organization_daily_financials" in result.stdout
    assert_same_marts(demo_postgres, lambda table: duckdb_rows(tmp_path, table))


def test_duckdb_equals_postgres_after_a_rules_edit(rules_edit, demo_postgres, tmp_path):
    database, project = rules_edit
    # the edit changes the balances, so equal marts are not equal by accident
    assert postgres_rows(database, "dim_organizations") != postgres_rows(demo_postgres, "dim_organizations")
    build_on("duckdb", project, DEMO_CSV, tmp_path)
    assert_same_marts(database, lambda table: duckdb_rows(tmp_path, table))


@pytest.fixture(scope="module")
def spark_available() -> None:
    """Skips without pyspark or Java; module-wide, so that it runs before short_history's build."""
    pytest.importorskip("pyspark")
    if shutil.which("java") is None:
        pytest.skip("Spark needs a Java runtime (java on PATH)")


# The generator's exports, as the demo's, over 60 days instead of 1,096: Spark writes a partition per day
# of each day-window model, and the demo's 1,097 days took its build 4.5 minutes. Two dated exports follow
# the base one, so the ledger's sequence is compared too.
SHORT_HISTORY = shlex.split("--invoices 3000 --organizations 60 --seed 7 --end-date 2024-06-28 --days 60")


@pytest.fixture(scope="module")
def short_history(spark_available, make_database, tmp_path_factory):
    """Postgres built by init.sh from a short generated history, for the Spark comparison; its CSV folder."""
    from data_platform.generator import main as generate

    csv_dir = tmp_path_factory.mktemp("short_history")
    assert generate(["--out", str(csv_dir), *SHORT_HISTORY]) == 0
    assert generate(["--out", str(csv_dir), *SHORT_HISTORY, "--next-days", "2"]) == 0
    database = make_database()
    assert_succeeded(run_pipeline(database, csv_dir, RUN_ALERTS="false"))
    return database, csv_dir


# Only one build: engines.build always builds in full, so on Spark a rules edit would run the same code
# with other seed values (the rules edit is compared on DuckDB).
@pytest.mark.spark
def test_spark_equals_postgres_on_a_generated_history(short_history, tmp_path):
    database, csv_dir = short_history
    assert len(database.query("select distinct export_date from raw.load_log")) == 3
    build_on("spark", PROJECT_ROOT, csv_dir, tmp_path)
    assert_same_marts(database, lambda table: spark_rows(tmp_path, table))
