"""The benchmark's measurements, each on the databases it needs (see bench/README.md for the method).

The loader can load an export only once per database (a second load of the same export is a no-op), so
every timed load runs on a fresh database, and so does every `psql \\copy` it is compared with.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import files
import psycopg
from procs import StepFailed, Timed, step_seconds
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool
from workspace import FLOOR_SCHEMA, Bench, progress

from data_platform.alerts.config import DEFAULT_THRESHOLD
from data_platform.alerts.detect import alerts_query, latest_day

FLOOR_SQL = Path(__file__).with_name("floor_daily_fact.sql")
HEAD_FRACTION = 0.1
ALERT_THRESHOLD = DEFAULT_THRESHOLD  # the alerter's own
# A full-snapshot export may cost this much more than `\copy` of it, plus the fixed allowance below.
SNAPSHOT_COPY_FACTOR = 1.5
SNAPSHOT_ALLOWANCE_SECONDS = 15.0
# the daily fact's columns, as bench/floor_daily_fact.sql computes them
FACT_COLUMNS = (
    "organization_id, balance_date, invoice_count, changed_invoice_count, invoiced_amount_usd, "
    "paid_amount_usd, balance_change_usd, status_change_usd, balance_usd, previous_balance_usd, "
    "balance_change_ratio"
)
# the marts an incremental next day must leave exactly as a full rebuild computes them
COMPARED_MARTS = ("fct_organization_daily_financials", "fct_invoices", "dim_organizations")
DOCS_STEP = "dbt docs generate"
BUILD_STEP = "dbt build"


def _seconds(value: float) -> float:
    return round(value, 3)


def _ratio(numerator: float, denominator: float) -> float | None:
    """Ratios are computed from the rounded seconds the results show, so anyone can recompute them."""
    return round(numerator / denominator, 3) if denominator else None


def _mb(timed: Timed) -> float:
    return round(timed.peak_rss_mb or 0, 1)


# --- loader vs copy, loader memory ----------------------------------------------------------------


def loader_vs_copy(bench: Bench, base: files.Dataset) -> tuple[dict[str, Any], dict[str, Any]]:
    """The loader against `psql \\copy` of the same files (a fresh database each, best of two), and the
    loader's peak memory on the full file and on its first 10%."""
    head = files.head_dataset(base, HEAD_FRACTION, bench.work / "head")
    progress(f"loader on the first {HEAD_FRACTION:.0%} of the invoices (peak RSS), fresh database")
    with bench.fresh_database("head") as database:
        head_run = bench.load(head.directory, "load-head", database)
    loader_runs, copy_runs = [], []
    for attempt in (1, 2):  # alternate, so neither always runs on a colder cache
        progress(f"psql \\copy of the base files, run {attempt} of 2, fresh database")
        with bench.fresh_database(f"copy{attempt}") as database:
            copy_runs.append(bench.copy(base, f"copy-{attempt}", database))
        progress(f"loader on the base files, run {attempt} of 2, fresh database")
        with bench.fresh_database(f"load{attempt}") as database:
            loader_runs.append(bench.load(base.directory, f"load-{attempt}", database))

    loader_best = _seconds(min(r.seconds for r in loader_runs))
    copy_best = _seconds(min(r.seconds for r in copy_runs))
    rows = base.total_rows
    loader = {
        "rows": rows,
        "loader_seconds": [_seconds(r.seconds) for r in loader_runs],
        "copy_seconds": [_seconds(r.seconds) for r in copy_runs],
        "loader_best_seconds": loader_best,
        "copy_best_seconds": copy_best,
        "loader_rows_per_second": round(rows / loader_best),
        "copy_rows_per_second": round(rows / copy_best),
        "loader_over_copy": _ratio(loader_best, copy_best),  # time ratio: 1.0 = as fast as COPY
    }
    full_peak = max(_mb(r) for r in loader_runs)
    rss = {
        "full_file": {
            "rows": base.rows(files.INVOICES),
            "bytes": base.bytes(files.INVOICES),
            "peak_rss_mb": full_peak,
            "runs_mb": [_mb(r) for r in loader_runs],
        },
        "head": {
            "rows": head.rows(files.INVOICES),
            "bytes": head.bytes(files.INVOICES),
            "peak_rss_mb": _mb(head_run),
        },
        "peak_rss_mb": max(full_peak, _mb(head_run)),
        "growth_mb": round(full_peak - _mb(head_run), 1),
    }
    return loader, rss


def snapshot_day(bench: Bench, base: files.Dataset, snapshot: files.Dataset) -> dict[str, Any]:
    """A full-snapshot next day: on a fresh database holding the base export, load one dated export
    with every invoice; compare with `psql \\copy` of the same files into empty tables."""
    with bench.fresh_database("snapshot") as database:
        progress("snapshot day: loading the base export (not timed), fresh database")
        bench.load(base.directory, "snapshot-load-base", database)
        settle_seconds = bench.settle(database)
        progress(f"snapshot day: loading the full-snapshot export for {files.NEXT_DAY}")
        load = bench.load(snapshot.directory, "snapshot-load", database)
        progress("snapshot day: psql \\copy of the same files into empty tables")
        copy = bench.copy(snapshot, "snapshot-copy", database)
        log = bench.query(
            "select invoice_rows, invoices_new, invoices_changed, invoices_unchanged from raw.load_log "
            "where export_date = %s",
            [files.NEXT_DAY],
            database=database,
        )
    if not log:
        raise StepFailed(f"the loader logged no export for {files.NEXT_DAY} (see its log)")
    load_seconds, copy_seconds = _seconds(load.seconds), _seconds(copy.seconds)
    invoice_rows, new, changed, unchanged = (int(value) for value in log[0])
    return {
        "rows": snapshot.total_rows,
        "invoice_rows": invoice_rows,
        "invoices_new": new,
        "invoices_changed": changed,
        "invoices_unchanged": unchanged,
        "load_seconds": load_seconds,
        "load_peak_rss_mb": _mb(load),
        "copy_seconds": copy_seconds,
        "load_over_copy": _ratio(load_seconds, copy_seconds),
        "load_bound_seconds": round(SNAPSHOT_COPY_FACTOR * copy_seconds + SNAPSHOT_ALLOWANCE_SECONDS, 3),
        "settle_seconds": settle_seconds,
    }


# --- the pipeline, its floor and the next day -----------------------------------------------------


class BuildTimings:
    """Keeps the `dbt build` run_results.json of a pipeline run: the pipeline overwrites it with the docs
    generation's, so it is copied when the docs step's line appears (dbt writes its run results only
    when it finishes, seconds later)."""

    def __init__(self, bench: Bench, name: str):
        self.source = bench.work / "dbt" / "target" / "run_results.json"
        self.copy = bench.work / f"run_results-{name}.json"

    def on_step(self, text: str) -> None:
        if text.startswith(DOCS_STEP) and self.source.exists():
            shutil.copyfile(self.source, self.copy)

    def nodes(self) -> list[dict[str, Any]]:
        """The build's nodes, slowest first ([] when the copy is not the build's)."""
        try:
            run_results = json.loads(self.copy.read_text())
        except (OSError, ValueError):
            return []
        if run_results.get("args", {}).get("which") != "build":
            return []
        return node_timings(run_results)


def node_timings(run_results: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [
        {"unique_id": r["unique_id"], "status": r["status"], "execution_time": round(r["execution_time"], 3)}
        for r in run_results["results"]
    ]
    return sorted(nodes, key=lambda node: node["execution_time"], reverse=True)


def _pipeline(bench: Bench, csv_dir: Path, name: str, **settings: str) -> tuple[Timed, dict, list]:
    """init.sh on `csv_dir`: its timing, each step's seconds, and the build's dbt nodes."""
    timings = BuildTimings(bench, name)
    timed = bench.pipeline(csv_dir, name, on_step=timings.on_step, **settings)
    return timed, step_seconds(timed.markers, timed.seconds), timings.nodes()


def _build_step(timed: Timed) -> str:
    return next((text for _, text in timed.markers if text.startswith(BUILD_STEP)), "")


def pipeline_vs_floor(
    bench: Bench, base: files.Dataset, landing: files.Dataset, copy_seconds: float
) -> tuple[dict, list]:
    """The full pipeline (init.sh, FULL_REFRESH, no alerts; docs timed apart) on the landing folder
    against its floor: `\\copy` of the base files plus one hand-written aggregate that computes the same
    daily fact."""
    progress("full pipeline: init.sh with FULL_REFRESH=true, RUN_ALERTS=false")
    timed, steps, nodes = _pipeline(
        bench, landing.directory, "pipeline", FULL_REFRESH="true", RUN_ALERTS="false"
    )
    docs_seconds = steps.get(DOCS_STEP, 0.0)
    pipeline_seconds = _seconds(timed.seconds - docs_seconds)

    progress("floor: \\copy into empty tables, then bench/floor_daily_fact.sql")
    bench.copy(base, "floor-copy", bench.database)
    aggregate = bench.psql_file(FLOOR_SQL, "floor-fact")
    differing = bench.differences(
        "marts.fct_organization_daily_financials", f"{FLOOR_SCHEMA}.daily_fact", FACT_COLUMNS
    )
    bench.query(
        f"drop table {FLOOR_SCHEMA}.daily_fact, {FLOOR_SCHEMA}.invoices, {FLOOR_SCHEMA}.organizations"
    )
    floor_seconds = _seconds(copy_seconds + _seconds(aggregate.seconds))
    measure = {
        "pipeline_seconds": pipeline_seconds,
        "docs_generate_seconds": _seconds(docs_seconds),
        "steps_seconds": steps,
        "build_step": _build_step(timed),
        "floor_copy_seconds": copy_seconds,
        "floor_aggregate_seconds": _seconds(aggregate.seconds),
        "floor_seconds": floor_seconds,
        "ratio": _ratio(pipeline_seconds, floor_seconds),
        "floor_matches_fact": not any(differing),
        "floor_rows_differing": differing,
    }
    return measure, nodes


def next_day(
    bench: Bench, landing: files.Dataset, day: files.Dataset, pipeline_seconds: float
) -> tuple[dict, list, list]:
    """The next day through init.sh end to end (load, seed, build with tests, alerts; docs apart) on the
    pipeline's database and landing folder, with the day's export added, then its marts against a full
    rebuild from the same exports."""
    progress("the day between: vacuum (analyze) and a checkpoint (a day of autovacuum and checkpoints)")
    settle_seconds = bench.settle()
    files.add_export(landing, day)
    progress(f"next day: init.sh on the base files plus exports/{files.NEXT_DAY} (incremental, alerts on)")
    timed, steps, nodes = _pipeline(bench, landing.directory, "next-day", RUN_ALERTS="true")
    # each file's checksum is remembered by its path: a file hashed under two paths was read again
    [(files_read_again,)] = bench.query("select count(*) - count(distinct sha256) from raw.file_checksums")
    docs_seconds = steps.get(DOCS_STEP, 0.0)
    seconds = _seconds(timed.seconds - docs_seconds)
    build_step = _build_step(timed)
    loaded = bench.query(
        "select invoice_rows, invoices_new, invoices_changed, duration_seconds from raw.load_log"
        " where export_date = %s",
        [files.NEXT_DAY],
    )
    for mart in COMPARED_MARTS:
        bench.query(f"create table {FLOOR_SCHEMA}.{mart}_incremental as select * from marts.{mart}")

    progress("full rebuild of the same exports: dbt run --full-refresh (models only)")
    rebuild, run_results = bench.dbt("rebuild", "run", "--full-refresh")
    rebuild_nodes = node_timings(json.loads(run_results.read_text()))
    differing = {
        mart: bench.differences(f"marts.{mart}", f"{FLOOR_SCHEMA}.{mart}_incremental")
        for mart in COMPARED_MARTS
    }
    for mart in COMPARED_MARTS:
        bench.query(f"drop table {FLOOR_SCHEMA}.{mart}_incremental")
    if not loaded:
        raise StepFailed(f"the loader logged no export for {files.NEXT_DAY} (see its log)")
    rows, new, changed, load_seconds = loaded[0]
    measure = {
        "day": files.NEXT_DAY,
        "export_invoice_rows": int(rows),
        "invoices_new": int(new),
        "invoices_changed": int(changed),
        "export_load_seconds": _seconds(float(load_seconds)),
        "seconds": seconds,
        "docs_generate_seconds": _seconds(docs_seconds),
        "steps_seconds": steps,
        "build_step": build_step,
        "incremental": "rebuilt from scratch" not in build_step and bool(build_step),
        "full_pipeline_over_next_day": _ratio(pipeline_seconds, seconds),
        "settle_seconds": settle_seconds,
        "files_read_again": int(files_read_again),
        "full_rebuild_run_seconds": _seconds(rebuild.seconds),
        "rows_differing": differing,
        "results_match": not any(any(pair) for pair in differing.values()),
    }
    return measure, nodes, rebuild_nodes


# --- the alert query ------------------------------------------------------------------------------


def alert_query(bench: Bench, repeat: int) -> dict[str, Any]:
    """The alert script's query on the latest day, as the alerter, through SQLAlchemy."""
    progress(f"alert query latency ({repeat} runs after a warm-up)")
    conninfo = bench.server.conninfo("alerter", bench.database)
    engine = create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(conninfo), poolclass=NullPool
    )
    timings, rows = [], 0
    with engine.connect() as conn:
        latest = latest_day(conn)
        query = alerts_query(latest, latest, ALERT_THRESHOLD, False)
        for attempt in range(repeat + 1):
            started = time.perf_counter()
            rows = len(conn.execute(query).fetchall())
            if attempt:  # the first run warms the cache and is not counted
                timings.append((time.perf_counter() - started) * 1000)
        conn.rollback()
    engine.dispose()
    return {
        "latest_day": latest.isoformat() if latest else None,
        "threshold": str(ALERT_THRESHOLD),
        "rows": rows,
        "repeat": repeat,
        "runs_ms": [round(ms, 2) for ms in timings],
        "median_ms": round(statistics.median(timings), 2),
    }
