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
from pathlib import Path

import psutil
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT / "bench"))

import engine_run  # noqa: E402  (bench/ is a folder of scripts, not a package)
import engines  # noqa: E402

INVOICES = 2_000


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
