"""The same dbt project on DuckDB and on Spark gives Postgres's marts, row for row.

Postgres is built by init.sh (tests/conftest.py), the other engine by data_platform.engines.build: its
own raw ledger from the same CSV exports, the same seed, `dbt build` with every test. Compared: the daily
fact, the drivers mart and dim_organizations, money exactly (decimals of cents on every engine), ratios
(doubles outside Postgres) to 1e-12 of their size, the status counts and the top invoices as JSON values
(exactly: the JSON is what an alert shows), every other column exactly.
DuckDB's cases: the demo data (a single-file export, then the 2024-06-29 export that changes older
invoices), the rules edit (open -> 0,0) on it, and an incremental build: the base export first, then the
next one with only its days recomputed, which must equal Postgres's full build.
Spark's case: a shorter generated history (60 days, two dated exports after the base one).

Spark's tables are read back from the Parquet files it wrote (with DuckDB: no second JVM in the test
process). Spark in local mode takes minutes here: those tests are also marked `spark`.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal, localcontext
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, copy_project, require_java, run_pipeline
from psycopg.types.json import set_json_loads
from test_ledger import BASE_ROWS, DAY_2, write_export
from test_pipeline import SENTINEL, assert_succeeded, project_with_zero_rule, write_fixture

duckdb = pytest.importorskip("duckdb")

pytestmark = pytest.mark.slow

DEMO_CSV = PROJECT_ROOT / "csv_data"
# a double's quotient of the exact amounts is within 1e-16 of it, Postgres's numeric one within 1e-16 too
RATIO_TOLERANCE = 1e-12
MARTS = {
    "fct_organization_daily_financials": "organization_id, balance_date",
    "fct_organization_daily_drivers": "organization_id, balance_date, driver_kind",
    "dim_organizations": "organization_id",
    "fct_invoices": "invoice_id",
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


def dbt_on(engine: str, work: Path, *arguments: str, **extra_env: str) -> str:
    """`dbt <arguments>` on the engine's target of the project, its files in `work`; its stdout (a failed
    command fails the test)."""
    command = [str(Path(sys.executable).parent / "dbt"), *arguments, "--target", engine]
    command += ["--project-dir", str(PROJECT_ROOT / "dbt"), "--profiles-dir", str(PROJECT_ROOT / ".dbt")]
    result = subprocess.run(
        command, env=engine_env(engine, work, **extra_env), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-6000:]
    return result.stdout


def postgres_rows(database, table: str) -> tuple[list[str], list[tuple]]:
    with database.connect("admin") as conn:
        set_json_loads(parse_json, conn)  # the JSON's amounts as decimals, as every engine's are compared
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


def parse_json(text: str):
    """JSON with its numbers as decimals: a float cannot tell cents apart from about $1e14."""
    return json.loads(text, parse_float=Decimal)


def as_json(value):
    """Postgres's jsonb comes back parsed (by parse_json); DuckDB's json and Spark's JSON text as text."""
    return parse_json(value) if isinstance(value, str) else value


def same_value(column: str, expected, actual) -> bool:
    if expected is None or actual is None:
        return expected is None and actual is None
    if column == "invoice_count_by_status":
        return as_json(expected) == as_json(actual)
    if column == "top_invoices":
        return as_json(expected) == as_json(actual)
    if column.endswith("_usd"):
        # a float equal to the decimal (0.5, 250) would still be a double where a decimal belongs
        return isinstance(actual, Decimal) and expected == actual
    if column.endswith("_ratio"):
        return math.isclose(float(expected), float(actual), rel_tol=RATIO_TOLERANCE)
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


# amount, fx rate: each converted to USD as Postgres's round(amount / fx_rate, 2) does, the exact quotient
# rounded to the cent half away from zero; no amount (a payment's) is none in USD
TO_USD_CASES = {
    # in doubles 0.09 / 0.4 is 0.22499999999999998: rounded as it is, 0.22 where Postgres says 0.23
    "half_up": ("0.09", "0.40000000"),
    "half_down": ("-0.09", "0.40000000"),
    "tie": ("0.07", "0.40000000"),
    "plain": ("0.10", "0.40000000"),
    # just below a half cent (82395.69499999999...), which doubles nudged up to one would round to .70
    "below_half": ("77350.82", "0.93877259"),
    "below_half_2": ("107652.42", "0.90028379"),
    "below_half_3": ("180728.23", "150.15826053"),
    "negative_below_half": ("-77350.82", "0.93877259"),
    # a hair below a half cent (99447.52499999999981...): Postgres's numeric quotient rounded up to it
    "hair_below_half": ("137998787.78", "1387.65432101"),
    "hair_below_half_2": ("833612277.20", "12345.67891237"),
    # the loader's largest amount at its smallest rate: 27 digits of cents
    "largest": ("9999999999999999.99", "0.00000001"),
    "negative_largest": ("-9999999999999999.99", "0.00000001"),
    "largest_rate": ("0.01", "9999999999.99999999"),
    "zero": ("0.00", "0.93877259"),
    "none": (None, "0.40000000"),
}


def to_usd_as_shown(engine: str, work: Path) -> dict[str, Decimal | None]:
    """Each TO_USD_CASES amount through the to_usd macro on the engine, as text (no float on the way)."""
    select = ", ".join(
        f"cast({{{{ to_usd('cast({amount or 'null'} as decimal(18, 2))', "
        f"'cast({rate} as decimal(18, 8))') }}}} as string) as {name}"
        for name, (amount, rate) in TO_USD_CASES.items()
    )
    output = dbt_on(
        engine, work, "show", "--inline", f"select {select}", "--output", "json", "--log-format", "json"
    )
    shown = next(
        json.loads(json.loads(line)["data"]["preview"]) for line in output.splitlines() if '"preview"' in line
    )
    return {name: None if value is None else Decimal(value) for name, value in shown[0].items()}


@pytest.mark.parametrize("engine", ["duckdb", pytest.param("spark", marks=pytest.mark.spark)])
def test_to_usd_rounds_the_exact_quotient_half_away_from_zero(engine, tmp_path, request):
    if engine == "spark":
        request.getfixturevalue("spark_available")
    expected = {
        name: None if amount is None else exact_usd(Decimal(amount), Decimal(rate))
        for name, (amount, rate) in TO_USD_CASES.items()
    }
    assert to_usd_as_shown(engine, tmp_path) == expected


def exact_usd(amount: Decimal, rate: Decimal) -> Decimal:
    with localcontext(prec=60):  # the quotient exact well past the cent, so its rounding is too
        return (amount / rate).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def test_duckdb_s_fast_to_usd_equals_the_exact_one_on_random_and_near_half_cent_amounts(tmp_path):
    """DuckDB rounds the doubles' quotient unless a half cent is near it: amounts of every size at every
    rate, and amounts a cent around an exact half cent, agree with the exact quotient rounded."""
    compiled = dbt_on(
        "duckdb",
        tmp_path,
        "compile",
        "--quiet",
        "--inline",
        "select a, f, {{ to_usd('a', 'f') }} as usd from amounts",
    )
    generator = random.Random(5)

    def any_rate() -> Decimal:
        return Decimal(generator.randint(1, 10 ** generator.choice([8, 10, 12, 18]) - 1)).scaleb(-8)

    rows = []
    for _ in range(60000):
        digits = generator.choice([2, 4, 6, 10, 14, 18])
        rows.append((Decimal(generator.randint(-(10**digits) + 1, 10**digits - 1)).scaleb(-2), any_rate()))
    for _ in range(20000):
        rate = any_rate()
        half_cent = Decimal(generator.randint(0, 10 ** generator.choice([3, 6, 10, 14]))) + Decimal("0.005")
        amount = (half_cent * rate).quantize(Decimal("0.01")) + Decimal(generator.choice([-1, 0, 1])) / 100
        if abs(amount) < Decimal("1e16"):
            rows.append((generator.choice([-1, 1]) * amount, rate))
    with duckdb.connect() as conn:
        conn.execute("create table amounts (a decimal(18, 2), f decimal(18, 8))")
        conn.executemany("insert into amounts values (?, ?)", rows)
        converted = conn.execute(compiled).fetchall()
    assert len(converted) == len(rows)
    wrong = [(a, f, usd) for a, f, usd in converted if usd != exact_usd(a, f)]
    assert wrong == []


# Each table the models write and its key, as the models' configs and docs give it: the columns of its one
# unique index (the views add no rows of their own: the staging views are 1:1 with the raw tables, whose
# primary keys hold their keys)
TABLE_KEYS = {
    "intermediate.int_invoice_versions_enriched": ["invoice_id", "seen_on"],
    "intermediate.int_organization_daily_status_totals": ["balance_date", "organization_id", "status"],
    "intermediate.int_organization_status_totals": ["organization_id", "status"],
    "marts.dim_alert_routes": ["priority"],
    "marts.dim_organizations": ["organization_id"],
    "marts.fct_invoices": ["invoice_id"],
    "marts.fct_organization_daily_drivers": ["balance_date", "driver_kind", "organization_id"],
    "marts.fct_organization_daily_financials": ["balance_date", "organization_id"],
}


def test_every_table_the_models_write_has_its_key_enforced_in_postgres(demo_postgres):
    """Keys held by a unique index, not by a test that scans every row: each table's unique indexes
    (whole-table, on plain columns, which are what holds a key) are one, on exactly its key's columns; a
    table not listed in TABLE_KEYS fails too."""
    unique_keys = demo_postgres.query(
        """
        select
            tables.relnamespace::regnamespace::text || '.' || tables.relname,
            array(
                select attname from pg_attribute
                where attrelid = tables.oid and attnum = any(indexes.indkey)
                order by attname
            )
        from pg_class as tables
        left join pg_index as indexes
            on indexes.indrelid = tables.oid and indexes.indisunique
            and indexes.indpred is null and indexes.indexprs is null
        where tables.relkind = 'r' and tables.relnamespace::regnamespace::text in ('intermediate', 'marts')
        """
    )
    assert sorted(unique_keys) == sorted(TABLE_KEYS.items())


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
    """A changed invoice moves the balance by the difference of two USD amounts (55.56 - 40.00, which
    doubles made 15.560000000000002): the drivers' top invoices read as Postgres's."""
    # invoice 11 (open 40.00 USD) is now 50.00 EUR at 0.9 EUR per USD: 55.56
    amount_change = "11,{s},{s},1,-7,open,EUR,,,50.00,,0.90000000,,2022-11-01T10:00:00.000Z"
    csv_dir = write_export(write_fixture(tmp_path / "csv", BASE_ROWS), DAY_2, [amount_change])
    database = make_database()
    assert_succeeded(run_pipeline(database, csv_dir, RUN_ALERTS="false"))
    build_on("duckdb", PROJECT_ROOT, csv_dir, tmp_path)
    assert_same_marts(database, lambda table: duckdb_rows(tmp_path, table))


# Amounts whose doubles drift in their last bits (CENTS_DAY_ROWS below, exported on 2024-03-11):
#   org 1: 1 paid 0.30 with 0.20 received (+0.10: 0.09999999999999998 in doubles), 2-5 open 0.10 each:
#          the new invoices' top three tie at 0.10, so by id: 1, 2, 3
#   org 2: 10 open 99,999,999,999.99 USD, then touched (a payment method, no balance change) beside ten
#          small new invoices: its booking and reversal summed with them lost cents in doubles
#   org 2: 20 open 77,350.82 EUR at 0.93877259, USD 82,395.6949999999947: $82,395.69
CENTS_ROWS = [
    f"1,{SENTINEL},{SENTINEL},1,-7,paid,USD,USD,card,0.30,0.20,1.00000000,1.00000000,2024-03-10T12:00:00.000Z",
    *(
        f"{i},{SENTINEL},{SENTINEL},1,-7,open,USD,,,0.10,,1.00000000,,2024-03-10T12:00:00.000Z"
        for i in range(2, 6)
    ),
    f"10,{SENTINEL},{SENTINEL},2,-7,open,USD,,,99999999999.99,,1.00000000,,2024-03-10T12:00:00.000Z",
    f"20,{SENTINEL},{SENTINEL},2,-7,open,EUR,,,77350.82,,0.93877259,,2024-03-10T13:00:00.000Z",
    # org 3: payment methods a CSV quotes, read as the loader's COPY reads them: a doubled quote is one
    # quote (here before a comma), a line break stays in the value, a backslash is a plain character
    *(
        f"{40 + i},{SENTINEL},{SENTINEL},3,-7,open,USD,,{method},1.00,,1.00000000,,2024-03-10T14:00:00.000Z"
        for i, method in enumerate(['"a ""quoted"", comma"', '"two\nlines"', '"ends\\"', '"""lead"'])
    ),
]
#   org 1: 1 and 2 paid in full (-0.10 each: a tie the payments list by id, 1 first); 5 processing 0.30
#          with 0.20 received: still +0.10, a change of exactly 0, in no list of top invoices
CENTS_DAY = "2024-03-11"
CENTS_DAY_ROWS = [
    "1,{s},{s},1,-7,paid,USD,USD,card,0.30,0.30,1.00000000,1.00000000,2024-03-10T12:00:00.000Z",
    "2,{s},{s},1,-7,paid,USD,USD,card,0.10,0.10,1.00000000,1.00000000,2024-03-10T12:00:00.000Z",
    "5,{s},{s},1,-7,processing,USD,USD,card,0.30,0.20,1.00000000,1.00000000,2024-03-10T12:00:00.000Z",
    "10,{s},{s},2,-7,open,USD,,card,99999999999.99,,1.00000000,,2024-03-10T12:00:00.000Z",
    *(
        f"{30 + i},{{s}},{{s}},2,-7,open,USD,,,0.{i + 2:02d},,1.00000000,,2024-03-11T0{i % 10}:00:00.000Z"
        for i in range(10)
    ),
]


@pytest.fixture(scope="module")
def cents(make_database, tmp_path_factory):
    """Postgres built from the CENTS exports; their CSV folder."""
    csv_dir = write_export(
        write_fixture(tmp_path_factory.mktemp("cents"), CENTS_ROWS), CENTS_DAY, CENTS_DAY_ROWS
    )
    database = make_database()
    assert_succeeded(run_pipeline(database, csv_dir, RUN_ALERTS="false"))
    return database, csv_dir


def test_the_cents_case_is_what_its_comments_say(cents):
    database, _ = cents
    [top] = database.query(
        "select top_invoices from marts.fct_organization_daily_drivers "
        "where organization_id = 1 and balance_date = '2024-03-10' and driver_kind = 'new_invoices'"
    )
    assert [entry["invoice_id"] for entry in top[0]] == [1, 2, 3]
    payments = database.query(
        "select invoice_count, top_invoices from marts.fct_organization_daily_drivers "
        "where organization_id = 1 and balance_date = %s and driver_kind = 'payments'",
        (CENTS_DAY,),
    )
    assert [(count, [entry["invoice_id"] for entry in top]) for count, top in payments] == [(3, [1, 2])]
    assert database.query("select amount_usd from marts.fct_invoices where invoice_id = 20") == [
        (Decimal("82395.69"),)
    ]
    methods = database.query(
        "select payment_method from marts.fct_invoices where organization_id = 3 order by 1"
    )
    assert sorted(method for (method,) in methods) == sorted(
        ['a "quoted", comma', "two\nlines", "ends\\", '"lead']
    )


@pytest.mark.parametrize("engine", ["duckdb", pytest.param("spark", marks=pytest.mark.spark)])
def test_an_engine_books_every_cent_as_postgres_does(cents, engine, tmp_path, request):
    """Ties, a change of exactly 0 and a large balance beside small ones: the same to the last digit."""
    if engine == "spark":
        request.getfixturevalue("spark_available")
    database, csv_dir = cents
    build_on(engine, PROJECT_ROOT, csv_dir, tmp_path)
    assert_same_marts(
        database, lambda table: (duckdb_rows if engine == "duckdb" else spark_rows)(tmp_path, table)
    )


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
    dbt_on("duckdb", tmp_path, "build", LEDGER_WINDOW_START="2024-06-29")
    # dbt's "incremental model" line names the configured materialization only; the SQL the build ran
    # shows each incremental model's rows replaced in the table the first build left, not a new table
    ran = sql_ran_for_incremental_models(tmp_path)
    assert sorted(ran) == sorted(INCREMENTAL_DELETES)
    for model, delete in INCREMENTAL_DELETES.items():
        assert ran[model].startswith(f"delete from {model} {delete}"), ran[model][:400]
    assert_same_marts(demo_postgres, lambda table: duckdb_rows(tmp_path, table))


# What an incremental run of each incremental model deletes before it inserts the recomputed rows (a full
# build creates the table anew instead): a window model its days from the window start, a keyed model the
# rows of the keys it recomputed.
WINDOW_DELETE = "where {} >= cast('2024-06-29' as date);"
INCREMENTAL_DELETES = {
    "intermediate.int_invoice_versions_enriched": WINDOW_DELETE.format("seen_on"),
    "intermediate.int_organization_daily_status_totals": WINDOW_DELETE.format("balance_date"),
    "marts.fct_organization_daily_financials": WINDOW_DELETE.format("balance_date"),
    "marts.fct_organization_daily_drivers": WINDOW_DELETE.format("balance_date"),
    "intermediate.int_organization_status_totals": "as dbt_incremental_target using",
    "marts.fct_invoices": "where ( invoice_id) in (",
}


def sql_ran_for_incremental_models(work: Path) -> dict[str, str]:
    """{schema.model: the SQL dbt last ran for it (target/run)} for the models dbt's manifest in `work` says
    are incremental; lowercased, runs of spaces made one, the model's table named schema.model."""
    target = work / "target"
    ran = {}
    for node in json.loads((target / "manifest.json").read_text())["nodes"].values():
        if node["resource_type"] == "model" and node["config"]["materialized"] == "incremental":
            model = f"{node['schema']}.{node['name']}"
            sql = (target / "run" / "data_platform" / node["original_file_path"]).read_text()
            table = f'"warehouse"."{node["schema"]}"."{node["name"]}"'
            ran[model] = " ".join(sql.split()).lower().replace(table, model)
    return ran


def test_duckdb_equals_postgres_after_a_rules_edit(rules_edit, demo_postgres, tmp_path):
    database, project = rules_edit
    # the edit changes the balances, so equal marts are not equal by accident
    assert postgres_rows(database, "dim_organizations") != postgres_rows(demo_postgres, "dim_organizations")
    build_on("duckdb", project, DEMO_CSV, tmp_path)
    assert_same_marts(database, lambda table: duckdb_rows(tmp_path, table))


def project_with_fractional_rules(destination: Path) -> Path:
    """A copy of the project whose rules count a quarter of paid invoices' payments as still owed and an
    eighth of open invoices' amounts, its coefficients' tests widened to take them."""
    project = copy_project(destination)
    seed = project / "dbt" / "seeds" / "invoice_enrichment.csv"
    rules = seed.read_text()
    edited = rules.replace(",true,1,1\n", ",true,1,0.75\n", 1).replace(",false,1,0\n", ",false,0.125,0\n", 1)
    assert edited.count("0.75") == 1 and edited.count("0.125") == 1, edited
    seed.write_text(edited)
    tests = project / "dbt" / "seeds" / "_seeds.yml"
    assert tests.read_text().count("values: [-1, 0, 1]") == 2
    tests.write_text(tests.read_text().replace("values: [-1, 0, 1]", "values: [-1, 0, 1, 0.75, 0.125]"))
    return project


def test_duckdb_equals_postgres_with_fractional_rules(make_database, tmp_path):
    """A fractional coefficient's amounts have more than two decimal places: exact on every engine, in the
    top invoices' JSON too."""
    project = project_with_fractional_rules(tmp_path / "project")
    database = make_database()
    assert_succeeded(run_pipeline(database, DEMO_CSV, project_root=project, RUN_ALERTS="false"))
    finer = database.query(
        "select count(*) from marts.fct_organization_daily_drivers, jsonb_array_elements(top_invoices) top"
        " where (top ->> 'balance_change_usd')::numeric <> round((top ->> 'balance_change_usd')::numeric, 2)"
    )
    assert finer[0][0] > 0, "no top invoice's amount has more than two decimal places"
    (tmp_path / "duckdb").mkdir()
    build_on("duckdb", project, DEMO_CSV, tmp_path / "duckdb")
    assert_same_marts(database, lambda table: duckdb_rows(tmp_path / "duckdb", table))
    # the JSON text as an analyst reads it: cents as Postgres shows them, a finer amount exact, no zeros
    # of the decimal type past them (equal as numbers either way)
    columns, rows = duckdb_rows(tmp_path / "duckdb", "fct_organization_daily_drivers")
    texts = " ".join(str(row[columns.index("top_invoices")]) for row in rows)
    amounts = re.findall(r'"balance_change_usd":(-?[0-9.]+)', texts)
    assert amounts and all(re.fullmatch(r"-?[0-9]+\.[0-9]{2}([0-9]*[1-9])?", amount) for amount in amounts)
    assert any(len(amount.split(".")[1]) > 2 for amount in amounts)


@pytest.fixture(scope="module")
def spark_available() -> None:
    """Skips without pyspark or Java (fails without Java in CI); module-wide, so that it runs before
    short_history's build."""
    pytest.importorskip("pyspark")
    require_java()


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
