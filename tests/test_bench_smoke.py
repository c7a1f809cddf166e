"""Smoke test of the benchmark harness (bench/run.py) at a small size: every step runs, every measure
is reported, and the incremental build gives the full rebuild's rows. Timings are not asserted here:
the benchmark reports them, it does not test them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from conftest import ROLE_PASSWORD_ENV, libpq_env

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MEASURES = {"generation", "loader_vs_copy", "loader_rss", "pipeline_vs_floor", "incremental", "alert_query"}
TARGETS = {
    "generator_rows_per_second",
    "loader_to_copy_ratio",
    "loader_peak_rss_mb",
    "pipeline_to_floor_ratio",
    "incremental_build_seconds",
    "full_to_incremental_ratio",
    "alert_query_median_ms",
}


def server_env(admin_conninfo: str) -> dict[str, str]:
    """Our environment with the PG* variables of the test server's superuser (no second server)."""
    return {**libpq_env(admin_conninfo), **ROLE_PASSWORD_ENV}


@pytest.fixture(scope="module")
def bench_run(admin_conninfo, tmp_path_factory):
    data_dir, results_dir = tmp_path_factory.mktemp("bench_data"), tmp_path_factory.mktemp("bench_results")
    result = subprocess.run(
        [
            sys.executable,
            str(PROJECT_ROOT / "bench" / "run.py"),
            *("--invoices", "200000", "--organizations", "2000", "--append-invoices", "2000"),
            *("--repeat-alert-query", "3", "--data-dir", str(data_dir), "--results-dir", str(results_dir)),
        ],
        cwd=PROJECT_ROOT,
        env=server_env(admin_conninfo),
        capture_output=True,
        text=True,
        timeout=600,
    )
    return result, data_dir, results_dir


def test_harness_runs_every_step(bench_run):
    result, _, _ = bench_run
    assert result.returncode == 0, f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}"


def test_results_have_every_measure_and_target(bench_run):
    _, _, results_dir = bench_run
    [json_path] = results_dir.glob("*-200000-invoices.json")
    results = json.loads(json_path.read_text())
    assert set(results["measures"]) == MEASURES
    assert set(results["targets"]) == TARGETS
    for target in results["targets"].values():
        assert isinstance(target["met"], bool) and target["value"] is not None
    assert results["measures"]["incremental"]["results_match"] is True
    assert results["measures"]["pipeline_vs_floor"]["floor_matches_fact"] is True
    assert results["machine"]["cpu_count"] == os.cpu_count()
    assert set(results["postgres"]["settings"]) >= {"shared_buffers", "work_mem", "max_wal_size"}
    assert results["model_timings"]["full_refresh_build"], "no per-model timings from run_results.json"
    # the loader's memory was actually sampled
    assert results["measures"]["loader_rss"]["full_file"]["peak_rss_mb"] > 0


def test_markdown_is_written_and_printed(bench_run):
    result, _, results_dir = bench_run
    [md_path] = results_dir.glob("*-200000-invoices.md")
    markdown = md_path.read_text()
    assert "| measure | value | floor / target | ratio | met? |" in markdown
    assert "## Notes" in markdown
    assert markdown.strip() in result.stdout


def test_generated_files_are_cached_and_the_database_dropped(bench_run, admin_conninfo):
    _, data_dir, results_dir = bench_run
    marker = json.loads((data_dir / "200000_2000_1" / "dataset.json").read_text())
    assert marker["files"]["invoices.csv"]["rows"] == 200000
    appended = json.loads((data_dir / "200000_2000_1_append2000" / "dataset.json").read_text())
    assert appended["files"]["invoices.csv"]["rows"] == 202000
    [json_path] = results_dir.glob("*.json")
    database = json.loads(json_path.read_text())["parameters"]["database"]
    with psycopg.connect(admin_conninfo) as conn:
        left = conn.execute("select 1 from pg_database where datname = %s", [database]).fetchall()
    assert left == [], f"the benchmark database {database} was not dropped"
