"""The benchmark harness (bench/run.py) at a small size: every step runs, every measure and target is
reported, each target's `met` is the comparison of its value with its threshold (recomputed here from
the raw measures), the next day's marts equal a full rebuild's, and the loader's memory stays flat.

Timings are never asserted (they depend on the machine); memory is: the loader streams its files, so
its peak RSS on the full file stays under a fixed bound and grows by less than a fixed bound from a file
ten times smaller.
"""

from __future__ import annotations

import json
import operator
import statistics
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from conftest import ROLE_PASSWORD_ENV, ROLE_PASSWORDS, libpq_env

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT / "bench"))

import report  # noqa: E402  (bench/ is a folder of scripts, not a package)

INVOICES = 20_000
# The loader streams: its memory does not depend on the file's size.
LOADER_PEAK_RSS_BOUND_MB = 150
LOADER_RSS_GROWTH_BOUND_MB = 30
MEASURES = {
    "generation",
    "loader_vs_copy",
    "loader_rss",
    "snapshot_day",
    "pipeline_vs_floor",
    "next_day",
    "alert_query",
}


def _loader_over_copy(m):
    return m["loader_vs_copy"]["loader_best_seconds"] / m["loader_vs_copy"]["copy_best_seconds"]


def _pipeline_over_floor(m):
    floor = m["loader_vs_copy"]["copy_best_seconds"] + m["pipeline_vs_floor"]["floor_aggregate_seconds"]
    return m["pipeline_vs_floor"]["pipeline_seconds"] / floor


# target -> (direction, threshold from the measures, the value recomputed from the raw measures)
EXPECTED_TARGETS = {
    "generator_rows_per_second": (
        ">=",
        lambda m: 200_000,
        lambda m: m["generation"]["invoices"] / m["generation"]["seconds"],
    ),
    "loader_over_copy": ("<=", lambda m: 1.5, _loader_over_copy),
    "loader_peak_rss_mb": (
        "<=",
        lambda m: 150,
        lambda m: max(m["loader_rss"]["full_file"]["peak_rss_mb"], m["loader_rss"]["head"]["peak_rss_mb"]),
    ),
    "loader_rss_growth_mb": (
        "<=",
        lambda m: 30,
        lambda m: m["loader_rss"]["full_file"]["peak_rss_mb"] - m["loader_rss"]["head"]["peak_rss_mb"],
    ),
    "snapshot_load_seconds": (
        "<=",
        lambda m: 1.5 * m["snapshot_day"]["copy_seconds"] + 15,
        lambda m: m["snapshot_day"]["load_seconds"],
    ),
    "pipeline_over_floor": ("<=", lambda m: 2.0, _pipeline_over_floor),
    "export_load_seconds": ("<=", lambda m: 2.0, lambda m: m["next_day"]["export_load_seconds"]),
    "next_day_seconds": ("<=", lambda m: 15.0, lambda m: m["next_day"]["seconds"]),
    "full_pipeline_over_next_day": (
        ">=",
        lambda m: 10.0,
        lambda m: m["pipeline_vs_floor"]["pipeline_seconds"] / m["next_day"]["seconds"],
    ),
    "alert_query_median_ms": (
        "<=",
        lambda m: 100.0,
        lambda m: statistics.median(m["alert_query"]["runs_ms"]),
    ),
}
COMPARE = {">=": operator.ge, "<=": operator.le}


# the benchmark applies init.sql to the test server itself: its tests are marked server_wide
@pytest.fixture(scope="module")
def bench_run(admin_conninfo, tmp_path_factory):
    data_dir, results_dir = tmp_path_factory.mktemp("bench_data"), tmp_path_factory.mktemp("bench_results")
    result = subprocess.run(
        [
            sys.executable,
            str(PROJECT_ROOT / "bench" / "run.py"),
            *("--invoices", str(INVOICES), "--organizations", "500", "--repeat-alert-query", "3"),
            *("--data-dir", str(data_dir), "--results-dir", str(results_dir)),
        ],
        cwd=PROJECT_ROOT,
        env={**libpq_env(admin_conninfo), **ROLE_PASSWORD_ENV},  # the test server's superuser
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}"
    [json_path] = results_dir.glob(f"*-{INVOICES}-invoices.json")
    return result, json.loads(json_path.read_text()), results_dir


@pytest.mark.slow
@pytest.mark.server_wide
def test_every_measure_and_target_is_reported(bench_run):
    _, results, _ = bench_run
    assert set(results["measures"]) == MEASURES
    assert set(results["targets"]) == set(EXPECTED_TARGETS)
    assert set(results["postgres"]["settings"]) >= {"shared_buffers", "work_mem", "max_wal_size"}
    assert results["machine"]["cpu_count"] >= 1
    timings = results["model_timings"]
    for build in ("full_pipeline_build", "next_day_build", "full_rebuild_run"):
        assert any(node["unique_id"].startswith("model.") for node in timings[build]), build
    # the builds' own tests ran and were timed (the pipeline's run results, not the docs step's)
    assert any(node["unique_id"].startswith("test.") for node in timings["next_day_build"])
    # the alert query's warm-up run is not one of its timed runs
    alert = results["measures"]["alert_query"]
    assert len(alert["runs_ms"]) == alert["repeat"] == 3


@pytest.mark.slow
@pytest.mark.server_wide
def test_met_is_the_comparison_of_value_and_threshold(bench_run):
    _, results, _ = bench_run
    measures = results["measures"]
    for key, (direction, threshold_of, value_of) in EXPECTED_TARGETS.items():
        target = results["targets"][key]
        threshold, value = threshold_of(measures), value_of(measures)
        assert target["comparison"] == direction, key
        assert target["threshold"] == pytest.approx(threshold, abs=1e-3), key
        assert target["value"] == pytest.approx(value, rel=1e-2, abs=2e-3), key
        assert target["met"] is COMPARE[direction](target["value"], threshold), key


@pytest.mark.slow
@pytest.mark.server_wide
def test_pipeline_times_exclude_the_docs_step(bench_run):
    _, results, _ = bench_run
    for measure, total_key in (("pipeline_vs_floor", "pipeline_seconds"), ("next_day", "seconds")):
        steps = results["measures"][measure]["steps_seconds"]
        assert steps["dbt docs generate"] > 0
        assert sum(steps.values()) - steps["dbt docs generate"] == pytest.approx(
            results["measures"][measure][total_key], abs=0.01
        )
    assert "alerts" in results["measures"]["next_day"]["steps_seconds"]
    assert "alerts" not in results["measures"]["pipeline_vs_floor"]["steps_seconds"]


@pytest.mark.slow
@pytest.mark.server_wide
def test_next_day_is_incremental_and_equals_a_full_rebuild(bench_run):
    _, results, _ = bench_run
    day = results["measures"]["next_day"]
    assert "days from 2024-06-29" in day["build_step"]
    # the export's own load is part of the day's load step
    assert 0 < day["export_load_seconds"] < day["steps_seconds"]["loading the exports"]
    assert day["invoices_new"] >= 1 and day["invoices_changed"] >= 1
    # the day finds the base files where the pipeline loaded them, so it skips them unread
    assert day["files_read_again"] == 0
    assert day["rows_differing"] == {
        "fct_organization_daily_financials": [0, 0],
        "fct_invoices": [0, 0],
        "dim_organizations": [0, 0],
    }
    assert results["checks"] == {
        "floor_matches_fact": True,
        "next_day_was_incremental": True,
        "next_day_matches_full_rebuild": True,
    }


@pytest.mark.slow
@pytest.mark.server_wide
def test_snapshot_day_loads_every_invoice_and_writes_only_the_changes(bench_run):
    _, results, _ = bench_run
    snapshot, day = results["measures"]["snapshot_day"], results["measures"]["next_day"]
    assert snapshot["invoice_rows"] == INVOICES + day["invoices_new"]
    assert (snapshot["invoices_new"], snapshot["invoices_changed"]) == (
        day["invoices_new"],
        day["invoices_changed"],
    )
    assert snapshot["invoices_unchanged"] == INVOICES - day["invoices_changed"]


@pytest.mark.slow
@pytest.mark.server_wide
def test_loader_memory_stays_flat(bench_run):
    _, results, _ = bench_run
    rss = results["measures"]["loader_rss"]
    assert rss["full_file"]["rows"] == INVOICES and rss["head"]["rows"] == INVOICES // 10
    assert rss["head"]["peak_rss_mb"] > 0, "the loader's memory was not sampled"
    assert rss["full_file"]["peak_rss_mb"] < LOADER_PEAK_RSS_BOUND_MB
    assert rss["full_file"]["peak_rss_mb"] - rss["head"]["peak_rss_mb"] < LOADER_RSS_GROWTH_BOUND_MB


@pytest.mark.slow
@pytest.mark.server_wide
def test_markdown_is_written_and_every_database_dropped(bench_run, admin_conninfo):
    result, results, results_dir = bench_run
    [md_path] = results_dir.glob(f"*-{INVOICES}-invoices.md")
    markdown = md_path.read_text()
    assert "| measure | value | floor / target | ratio | met? |" in markdown
    assert markdown.strip() in result.stdout
    with psycopg.connect(admin_conninfo) as conn:
        left = conn.execute(
            "select datname from pg_database where datname like %s", [results["parameters"]["database"] + "%"]
        ).fetchall()
    assert left == [], f"benchmark databases left behind: {left}"


def _measures(**changes: float) -> dict:
    """Measures with every target's value set from `changes` (the others: zero)."""
    measures = {target.path[0]: {} for target in report.TARGETS}
    for target in report.TARGETS:
        measures[target.path[0]][target.path[1]] = changes.get(target.key, 0)
    measures["snapshot_day"]["load_bound_seconds"] = changes.get("snapshot_bound", 20.0)
    return measures


@pytest.mark.parametrize(
    ("key", "met_value", "missed_value"),
    [
        ("generator_rows_per_second", 200_000, 199_999),
        ("loader_over_copy", 1.5, 1.501),
        ("loader_rss_growth_mb", 30, 30.1),
        ("snapshot_load_seconds", 20.0, 20.001),
        ("pipeline_over_floor", 2.0, 2.01),
        ("export_load_seconds", 2.0, 2.001),
        ("next_day_seconds", 15.0, 15.01),
        ("full_pipeline_over_next_day", 10.0, 9.99),
        ("alert_query_median_ms", 100.0, 100.1),
    ],
)
def test_evaluate_compares_each_value_with_its_threshold(key, met_value, missed_value):
    assert report.evaluate(_measures(**{key: met_value}))[key]["met"] is True
    assert report.evaluate(_measures(**{key: missed_value}))[key]["met"] is False


def test_a_second_run_of_the_day_never_overwrites_the_first(tmp_path):
    results = {"date": "2026-12-01", "parameters": {"invoices": 100}}
    first, _ = report.write(results, tmp_path, render=lambda r: "first\n")
    second, second_md = report.write(results, tmp_path, render=lambda r: "second\n")
    (tmp_path / "2026-12-01-100-invoices-run3.md").write_text("a run renamed by hand\n")
    fourth, _ = report.write(results, tmp_path, render=lambda r: "fourth\n")
    assert first.name == "2026-12-01-100-invoices.json"
    assert first.with_suffix(".md").read_text() == "first\n"
    assert (second.name, second_md.read_text()) == ("2026-12-01-100-invoices-run2.json", "second\n")
    assert fourth.name == "2026-12-01-100-invoices-run4.json"


@pytest.mark.parametrize(
    "option",
    ["--invoices", "--organizations", "--new-invoices", "--changed-invoices", "--repeat-alert-query"],
)
def test_every_count_option_must_be_at_least_one(option, capsys):
    import run

    with pytest.raises(SystemExit) as stopped:
        run.parse_args([option, "0"])
    assert stopped.value.code == 2
    assert f"argument {option}: must be at least 1" in capsys.readouterr().err


def test_the_settings_are_read_from_compose_postgres_command(tmp_path):
    import workspace

    assert workspace.compose_postgres_settings()["max_wal_size"] == "4GB"  # the project's compose.yaml
    compose = tmp_path / "compose.yaml"
    compose.write_text(
        "services:\n  postgres:\n    command: postgres -c max_wal_size=2GB -c work_mem=64MB -p 5433\n"
    )
    assert workspace.compose_postgres_settings(compose) == {"max_wal_size": "2GB", "work_mem": "64MB"}
    compose.write_text("services:\n  postgres:\n    image: postgres:16\n")
    assert workspace.compose_postgres_settings(compose) == {}


@pytest.mark.server_wide
def test_settings_are_applied_to_the_server_and_a_restart_only_or_unknown_one_is_refused(admin_conninfo):
    import workspace
    from procs import StepFailed

    def current(name):
        with psycopg.connect(admin_conninfo, autocommit=True) as conn:
            return conn.execute("select current_setting(%s)", [name]).fetchone()[0]

    def reset(name):
        with psycopg.connect(admin_conninfo, autocommit=True) as conn:
            conn.execute(f"alter system reset {name}")
            conn.execute("select pg_reload_conf()")

    before = current("max_wal_size")
    other = "3GB" if before != "3GB" else "2GB"
    with pytest.raises(StepFailed, match=r"need a restart: shared_buffers$"):
        workspace.apply_settings(admin_conninfo, {"shared_buffers": "129MB", "max_wal_size": other})
    with pytest.raises(StepFailed, match=r"unknown: no_such_setting$"):
        workspace.apply_settings(admin_conninfo, {"no_such_setting": "1", "max_wal_size": other})
    with psycopg.connect(admin_conninfo, autocommit=True) as conn:  # refused before anything changed
        altered = conn.execute(
            "select count(*) from pg_file_settings where sourcefile like '%postgresql.auto.conf'"
            " and name in ('max_wal_size', 'shared_buffers', 'no_such_setting')"
        ).fetchone()[0]
    assert altered == 0
    try:
        workspace.apply_settings(admin_conninfo, {"max_wal_size": other})  # returns once sessions see it
        assert current("max_wal_size") == other
    finally:
        reset("max_wal_size")


def test_differences_count_the_rows_each_side_has_more_of(make_database, tmp_path):
    """The floor's and the next day's checks: a row the mart holds twice and its match once is a
    difference."""
    import workspace
    from procs import Server

    database = make_database()
    env = libpq_env(database.admin_conninfo)
    server = Server(
        {name: env[name] for name in ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD")}, ROLE_PASSWORDS
    )
    bench = workspace.Bench(server, database.name, tmp_path, "psql")
    with database.connect("transformer", autocommit=True) as conn:
        conn.execute("create table marts.left_rows as select * from (values (1), (1), (2), (2)) as t(n)")
        conn.execute("create table marts.right_rows as select * from (values (1), (2), (3)) as t(n)")
    # left has one more 1 and one more 2, right has a 3
    assert bench.differences("marts.left_rows", "marts.right_rows") == [2, 1]
