"""The engines benchmark (bench/engines.py): DuckDB end to end at a tiny size, and the parts that decide
what it reports: the marts comparison and the deadline.

Postgres and Spark are left out here: the harness runs the same code for each engine, Postgres's build
is the pipeline's own (tested elsewhere), Spark's takes minutes. Timings are never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import date
from decimal import Decimal
from pathlib import Path

import psutil
import pytest
from process_support import python_waiting

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT / "bench"))

import engine_report  # noqa: E402  (bench/ is a folder of scripts, not a package)
import engine_run  # noqa: E402
import engines  # noqa: E402
import files  # noqa: E402
import procs  # noqa: E402

INVOICES = 2_000
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def duckdb_run(tmp_path_factory):
    pytest.importorskip("duckdb")
    data_dir, results_dir = tmp_path_factory.mktemp("engines_data"), tmp_path_factory.mktemp("engines_out")
    result = subprocess.run(
        [
            sys.executable,
            str(PROJECT_ROOT / "bench" / "engines.py"),
            *("--invoices", str(INVOICES), "--organizations", "100", "--engines", "duckdb"),
            *("--data-dir", str(data_dir), "--results-dir", str(results_dir)),
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}"
    [json_path] = results_dir.glob(f"*-{INVOICES}-invoices-engines.json")
    return json.loads(json_path.read_text()), results_dir, data_dir


@pytest.mark.slow
def test_duckdb_build_is_timed_in_parts_and_its_marts_summarised(duckdb_run):
    results, results_dir, data_dir = duckdb_run
    duckdb = results["engines"]["duckdb"]
    assert duckdb["status"] == "ok"
    assert duckdb["raw_layer_seconds"] > 0 and duckdb["dbt_seconds"] > 0
    assert set(duckdb["steps_seconds"]) == {"start-up", "raw ledger", "dbt build"}
    assert duckdb["seconds"] == pytest.approx(
        duckdb["raw_layer_seconds"] + duckdb["dbt_seconds"] + duckdb["other_seconds"], abs=0.01
    )
    assert duckdb["peak_pss_mb"] > 0 and duckdb["disk_bytes"] > 0
    # the daily build's nodes: models, seeds and data tests, no unit tests
    assert duckdb["dbt_nodes_by_type"]["model"] > 0 and duckdb["dbt_nodes_by_type"]["test"] > 0
    assert "unit_test" not in duckdb["dbt_nodes_by_type"]
    marts = duckdb["marts"]
    assert marts["fct_invoices_rows"] == INVOICES
    assert marts["fact_rows"] >= marts["latest_day_rows"] > 0
    assert results["checks"] == {"every_engine_finished": True, "marts_equal": True}
    assert results["machine"]["cpu_count"] >= 1 and results["versions"]["duckdb"]
    markdown = next(results_dir.glob(f"*-{INVOICES}-invoices-engines.md")).read_text()
    assert "| | DuckDB |" in markdown and "## The marts agree" in markdown
    # a successful run leaves only the cached data behind
    assert not list(data_dir.glob("engines_*"))


def _summary(**changes):
    summary = {
        "fact_rows": 1000,
        "latest_day": "2024-06-28",
        "latest_day_rows": 10,
        "latest_day_balance_usd": "1000.00",
        "all_days_balance_usd": "50000.00",
        "dim_organizations_rows": 10,
        "fct_invoices_rows": 100,
    }
    return summary | changes


def test_marts_comparison_wants_every_count_and_sum_equal_to_the_cent():
    comparison = engines.compare_marts(
        {
            "postgres": _summary(),
            "duckdb": _summary(),
            "spark": _summary(latest_day_balance_usd="1000.01"),
            "other": _summary(fct_invoices_rows=99),
        },
        "postgres",
    )
    verdicts = {name: result["equal"] for name, result in comparison["engines"].items()}
    assert verdicts == {"postgres": True, "duckdb": True, "spark": False, "other": False}
    assert comparison["engines"]["spark"]["differing"] == ["latest_day_balance_usd"]
    assert comparison["engines"]["spark"]["sum_differences_usd"] == {"latest_day_balance_usd": "0.01"}
    assert comparison["engines"]["other"]["differing"] == ["fct_invoices_rows"]
    assert comparison["all_equal"] is False


def test_a_build_past_its_deadline_is_killed_with_its_children(tmp_path):
    script = (
        "import subprocess, sys, time\n"
        "print('==> raw ledger: a step that never ends', flush=True)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    run = engine_run.run_tree(
        [sys.executable, "-c", script], env={}, log=tmp_path / "run.log", cwd=tmp_path, timeout=2
    )
    assert time.monotonic() - started < 30
    assert run.status == "timeout" and run.returncode != 0
    assert set(run.step_seconds()) == {"start-up", "raw ledger"}
    [child] = [int(line) for line in run.log.read_text().splitlines() if line.isdigit()]
    time.sleep(0.5)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    assert "killed after the 2 s timeout" in run.tail()


def test_the_report_renders_results_written_before_the_invoices_mart_was_renamed(tmp_path):
    """The report is rewritten from a results file by hand (engine_report.py RESULTS.json): the committed
    results name the invoices mart's rows dim_invoices_rows."""
    committed = PROJECT_ROOT / "bench" / "results" / "2026-12-06-50000-invoices-engines.json"
    assert "dim_invoices_rows" in committed.read_text()
    results = tmp_path / committed.name
    results.write_text(committed.read_text())
    rendered = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "bench" / "engine_report.py"), str(results)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rendered.returncode == 0, rendered.stderr
    assert "| fct_invoices rows | 50,000 | 50,000 | 50,000 |" in results.with_suffix(".md").read_text()


def test_marts_comparison_takes_equal_decimals_as_equal_and_a_missing_sum_as_different():
    comparison = engines.compare_marts(
        {
            "postgres": _summary(latest_day_balance_usd="19.44"),
            "duckdb": _summary(latest_day_balance_usd="19.44000"),  # more places, the same amount
            "spark": _summary(latest_day_balance_usd="19.44", all_days_balance_usd=None),  # no sum at all
        },
        "postgres",
    )
    assert comparison["engines"]["duckdb"] == {"equal": True, "differing": [], "sum_differences_usd": {}}
    assert comparison["engines"]["spark"]["differing"] == ["all_days_balance_usd"]


def test_the_marts_summary_counts_the_latest_day_and_sums_balances():
    duckdb = pytest.importorskip("duckdb")
    with duckdb.connect() as conn:
        conn.execute(
            "create table fact as select organization_id, cast(balance_date as date) as balance_date,"
            " cast(balance_usd as decimal(18, 2)) as balance_usd from (values"
            " (1, '2024-06-27', 10.00), (1, '2024-06-28', 12.50), (2, '2024-06-28', -2.25))"
            " as t(organization_id, balance_date, balance_usd)"
        )
        conn.execute("create table organizations as select * from range(3)")
        conn.execute("create table invoices as select * from range(5)")
        row = conn.execute(engines.marts_summary_sql("fact", "organizations", "invoices")).fetchone()
    assert engines._summary(row) == {
        "fact_rows": 3,
        "latest_day": "2024-06-28",
        "latest_day_rows": 2,
        "latest_day_balance_usd": "10.25",
        "all_days_balance_usd": "20.25",
        "dim_organizations_rows": 3,
        "fct_invoices_rows": 5,
    }


# the pipeline's step lines of a Postgres build, as engine_run times them (seconds from its start)
POSTGRES_BUILD_STEPS = [
    (2.0, "loading the exports in /csv"),
    (6.0, "dbt build: rules, models and tests, rebuilt from scratch (first run)"),
    (16.0, "dbt docs generate"),
    (19.0, "pipeline finished"),
]


def test_a_build_is_measured_up_to_its_cut_in_raw_layer_dbt_and_other():
    # Postgres's build: cut where its docs step starts, so neither the docs' time nor their memory counts
    run = engine_run.TreeRun(
        status="ok",
        seconds=20.0,
        returncode=0,
        markers=[(1.0, "waiting for the database (up to 60s)"), *POSTGRES_BUILD_STEPS],
        peak_pss_bytes={
            "start-up": 50 * MIB,
            "loading the exports": 100 * MIB,
            "dbt build": 300 * MIB,
            "dbt docs generate": 900 * MIB,
        },
        server_peak_pss_bytes={"loading the exports": 200 * MIB, "dbt docs generate": 800 * MIB},
    )
    measured = engines._measure(run, 16.0, [])
    assert (measured["seconds"], measured["raw_layer_seconds"], measured["dbt_seconds"]) == (16.0, 4.0, 10.0)
    assert measured["other_seconds"] == 2.0
    assert (measured["peak_pss_mb"], measured["server_peak_pss_mb"]) == (300.0, 200.0)
    assert measured["process_seconds"] == 20.0


def test_other_work_is_the_machine_busy_time_the_build_did_not_spend():
    run = engine_run.TreeRun(
        status="ok",
        seconds=10.0,
        returncode=0,
        cpu_seconds=6.0,
        server_cpu_seconds=4.0,
        machine_busy_cpu_seconds=15.0,
    )
    summary = run.cpu_summary()
    assert (summary["build_cores_average"], summary["other_work_cores_average"]) == (1.0, 0.5)


def test_a_run_with_an_unfinished_engine_or_unequal_marts_fails_its_checks(tmp_path, monkeypatch):
    base = files.Dataset(tmp_path, {"files": {"invoices.csv": {"rows": 1, "bytes": 1}}})
    monkeypatch.setattr(engines.files, "base_dataset", lambda *args: (base, True))
    monkeypatch.setattr(engines, "environment", lambda: {"machine": {}, "versions": {}})
    builds = {
        "duckdb": {"status": "ok", "marts": _summary(fact_rows=999)},
        "postgres": {"status": "ok", "marts": _summary()},
        "spark": {"status": "timeout"},
    }
    for name, result in builds.items():
        monkeypatch.setitem(engines.BUILDERS, name, lambda context, result=result: dict(result))
    args = engines.parse_args(["--engines", "duckdb,postgres,spark", "--data-dir", str(tmp_path)])
    results = engines.measure(args, tmp_path / "work")
    # Postgres is the reference wherever it comes in the order
    assert results["marts_comparison"]["reference"] == "postgres"
    assert results["marts_comparison"]["engines"]["duckdb"]["differing"] == ["fact_rows"]
    assert results["checks"] == {"every_engine_finished": False, "marts_equal": False}


def test_the_report_gives_invoices_per_second_of_the_full_build():
    results = json.loads(
        (PROJECT_ROOT / "bench" / "results" / "2026-12-06-50000-invoices-engines.json").read_text()
    )
    [row] = [
        line
        for line in engine_report.markdown(results).splitlines()
        if line.startswith("| invoices per second")
    ]
    expected = [f"{50_000 / result['seconds']:,.0f}" for result in results["engines"].values()]
    assert row.split(" | ")[1:] == [*expected[:-1], expected[-1] + " |"]


def test_server_cpu_spent_before_the_build_is_not_counted(tmp_path):
    # a stand-in for the server: half a CPU second spent before the build, then idle during it
    burn = (
        "import sys, time\nend = time.process_time() + 0.5\nwhile time.process_time() < end:\n    pass\n"
        "print('busy before', flush=True)\nsys.stdin.read()\n"
    )
    with python_waiting(burn, "busy before") as server:
        run = engine_run.run_tree(
            [sys.executable, "-c", "import time; time.sleep(0.5)"],
            env={},
            log=tmp_path / "run.log",
            cwd=tmp_path,
            timeout=None,
            server_pid=server.pid,
        )
    assert run.status == "ok"
    assert run.server_cpu_seconds < 0.25


def test_postgres_is_measured_up_to_its_docs_step_and_the_docs_timed_apart(tmp_path, monkeypatch):
    """build_postgres without a server: the pipeline's run and the database's answers are given."""
    run = engine_run.TreeRun(
        status="ok",
        seconds=20.0,
        returncode=0,
        markers=POSTGRES_BUILD_STEPS,
    )
    answers = {
        "server_version": [("16.2",)],
        "with fact as": [(3, date(2024, 6, 28), 2, Decimal("10.25"), Decimal("20.25"), 3, 5)],
        "pg_database_size": [(123,)],
        "pg_total_relation_size": [("raw", 100)],
    }

    def query(bench, statement, params=None, *, role="transformer", database=None):
        return next((rows for text, rows in answers.items() if text in statement), [])

    server = procs.Server({}, {"transformer": "transformer", "alerter": "alerter"})
    monkeypatch.setattr(engines, "open_server", lambda data_dir: (server, "given"))
    monkeypatch.setattr(engines, "create_database", lambda server, name: name)
    monkeypatch.setattr(engines, "drop_database", lambda server, name: None)
    monkeypatch.setattr(engines.bootstrap, "psql_binary", lambda: "psql")
    monkeypatch.setattr(engines.Bench, "query", query)
    monkeypatch.setattr(engines, "run_tree", lambda *args, **kwargs: run)
    args = engines.parse_args(["--data-dir", str(tmp_path)])
    result = engines.build_postgres(engines.Run(args, files.Dataset(tmp_path, {"files": {}}), tmp_path))
    assert (result["seconds"], result["raw_layer_seconds"], result["dbt_seconds"]) == (16.0, 4.0, 10.0)
    assert result["docs_generate_seconds"] == 4.0
    assert result["marts"]["latest_day_rows"] == 2 and result["disk_bytes"] == 123
