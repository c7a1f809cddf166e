"""Benchmark the warehouse at a chosen size, in one run.

    .venv/bin/python bench/run.py [--invoices 12700000] [--organizations 21806] [--seed 1]
        [--new-invoices K] [--changed-invoices M] [--data-dir bench/data] [--results-dir bench/results]
        [--repeat-alert-query 7] [--keep]

Measures (see bench/README.md): the generator's speed; the loader against `psql \\copy` (a fresh database
each, best of two) and its peak memory on the full file and on its first 10%; a full-snapshot next day's
load against `\\copy` of it; the full pipeline (init.sh, FULL_REFRESH, no alerts) against a floor of
`\\copy` plus one hand-written aggregate; the next day (a dated export of new and changed invoices)
through init.sh end to end, and that its marts equal a full rebuild's; the alert query's latency.

The server: the one the PG* variables name (a superuser connection) when PGHOST or PGDATABASE is set,
else an embedded server in <data-dir>/pgdata. Databases bench_<timestamp>[_<label>] are created on it,
bootstrapped with init.sql, and dropped at the end unless --keep.

Writes <results-dir>/<date>-<invoices>-invoices.json and .md and prints the markdown. Exit code 0 when
every step ran and the checks held (the floor computes the mart's rows, the next day was incremental
and equals a full rebuild); missed targets are reported, not errors. 1 when a step failed or a check
did not hold.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import sys
from datetime import datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psutil
import psycopg

# this checkout's data_platform first, not the one the shared virtual environment was installed from
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import files
import measures
import report
from procs import StepFailed
from workspace import Bench, create_database, drop_database, new_database_name, open_server, progress, publish

from data_platform import bootstrap

SETTINGS = (
    "shared_buffers",
    "work_mem",
    "maintenance_work_mem",
    "max_wal_size",
    "effective_io_concurrency",
    "wal_level",
    "max_parallel_workers_per_gather",
    "effective_cache_size",
    "synchronous_commit",
)
# The next day's export at the real size (12.7M invoices); smaller runs scale both with --invoices.
REAL_NEW_INVOICES, REAL_CHANGED_INVOICES = 10_000, 20_000


def environment(bench: Bench, server_kind: str) -> dict[str, Any]:
    with bench.connect("admin") as conn:
        settings = {
            name: conn.execute("select current_setting(%s)", [name]).fetchone()[0] for name in SETTINGS
        }
        pg_version = conn.execute("select current_setting('server_version')").fetchone()[0]
    return {
        "machine": {
            "cpu_count": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
            "platform": platform.platform(),
            "load_average_at_start": [round(load, 2) for load in os.getloadavg()],
        },
        "postgres": {"version": pg_version, "server": server_kind, "settings": settings},
        "versions": {
            "python": platform.python_version(),
            **{
                package: version(package) for package in ("dbt-core", "dbt-postgres", "psycopg", "sqlalchemy")
            },
        },
    }


def method_notes(results: dict[str, Any]) -> list[str]:
    p = results["parameters"]
    return [
        "One run: the steps below run in this order on the same files; every timed load runs on a fresh "
        "database (an export loads once per database), the pipeline and the next day on one database.",
        "Generator: wall time of `python -m data_platform.generator` (invoices + organizations), rows/s "
        "counted on invoices; cached files report the time of their own generation.",
        "Loader vs COPY: `python -m data_platform.loader` (wall time, its process) against "
        "`psql \\copy ... (format csv, header true)` of the same two files into empty tables with the CSV's "
        "columns (no key, no index), each on a fresh database, twice, alternating; the best of two counts.",
        f"Loader memory: peak resident memory of the loader process (psutil RSS polled every 50 ms and the "
        f"kernel's high-water mark VmHWM), on the full file and on its first {measures.HEAD_FRACTION:.0%}.",
        f"Full-snapshot next day: on a fresh database holding the base export, the loader loads one dated "
        f"export ({files.NEXT_DAY}) with every invoice (the base rows with the day's changes applied, plus "
        "the new ones) and organizations.csv; `psql \\copy` of the same files into empty tables on that "
        "database. One run each. Between the two loads, an untimed `vacuum (analyze)` and `checkpoint` "
        "stand for the day in which autovacuum and the timed checkpoints would have processed the first "
        "load.",
        "Full pipeline: `init.sh` with FULL_REFRESH=true, RUN_ALERTS=false (wait, load, seed, build with "
        "tests) on a landing folder holding the base files, as csv_data/ would, without its "
        "`dbt docs generate` step (timed apart). Floor: the best `\\copy` time above "
        "plus `bench/floor_daily_fact.sql` (one `create table as` over the copied invoices and the rules "
        "seed), which must give the mart's rows (EXCEPT ALL both ways).",
        f"Next day: the generator's export for {files.NEXT_DAY} ({p['new_invoices']:,} new and "
        f"{p['changed_invoices']:,} changed invoices, plus the scenario's changes) added to the pipeline's "
        "landing folder (the base files keep their paths, so the loader skips them by their remembered "
        "checksums, as every day in production), through `init.sh` with its defaults (the pipeline "
        "decides incremental; alerts to the console), "
        "without its docs step; before it, an untimed `vacuum (analyze)` and `checkpoint` stand for the "
        "day between (autovacuum's work on the freshly built tables, the timed checkpoints' writes). "
        "The fact, fct_invoices and dim_organizations are then compared with `dbt run --full-refresh` "
        "over the same raw tables (EXCEPT ALL both ways). The export's load: its `duration_seconds` in "
        "raw.load_log (the loader's time for it up to the commit).",
        f"Alert query: `alerts_query(latest, latest, 0.5)` executed and fetched through SQLAlchemy as the "
        f"alerter after the next day, median of {p['repeat_alert_query']} runs after one warm-up run.",
        "Per-model timings: `execution_time` of each node in dbt's run_results.json of the pipeline's "
        "`dbt build` (copied before the docs step overwrites it) and of the rebuild's `dbt run`.",
    ]


# --- the command --------------------------------------------------------------------------------


def _scaled(real: int, invoices: int) -> int:
    return max(1, round(real * invoices / files.REAL_INVOICES))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    files.add_dataset_arguments(parser)
    parser.add_argument(
        "--new-invoices",
        type=files.at_least_one,
        help=f"new invoices in the next day's export (default {REAL_NEW_INVOICES:,} x --invoices / 12.7M)",
    )
    parser.add_argument(
        "--changed-invoices",
        type=files.at_least_one,
        help=f"changed older invoices in it (default {REAL_CHANGED_INVOICES:,} scaled the same way)",
    )
    parser.add_argument(
        "--repeat-alert-query", type=files.at_least_one, default=7, help="timed runs of the alert query"
    )
    parser.add_argument("--keep", action="store_true", help="keep the main database and the work folder")
    args = parser.parse_args(argv)
    if args.new_invoices is None:
        args.new_invoices = _scaled(REAL_NEW_INVOICES, args.invoices)
    if args.changed_invoices is None:
        args.changed_invoices = _scaled(REAL_CHANGED_INVOICES, args.invoices)
    args.data_dir, args.results_dir = args.data_dir.resolve(), args.results_dir.resolve()
    return args


def measure(bench: Bench, args: argparse.Namespace, server_kind: str) -> dict[str, Any]:
    results: dict[str, Any] = {
        "date": datetime.now().date().isoformat(),
        "started_at": datetime.now().isoformat(timespec="seconds"),
        "command": shlex.join(["bench/run.py", *sys.argv[1:]]),
        "parameters": {
            "invoices": args.invoices,
            "organizations": args.organizations,
            "seed": args.seed,
            "new_invoices": args.new_invoices,
            "changed_invoices": args.changed_invoices,
            "end_date": files.END_DATE,
            "next_day": files.NEXT_DAY,
            "days": files.DAYS,
            "repeat_alert_query": args.repeat_alert_query,
            "database": bench.database,
        },
        **environment(bench, server_kind),
    }
    logs = bench.work / "logs"
    progress(f"data: {args.invoices:,} invoices, {args.organizations:,} organizations, seed {args.seed}")
    base, reused = files.base_dataset(args.data_dir, args.invoices, args.organizations, args.seed, logs)
    progress(f"{'reused' if reused else 'generated'} {base.directory}")
    day = files.next_day_dataset(base, args.new_invoices, args.changed_invoices, logs)
    snapshot = files.snapshot_dataset(base, day)
    progress(f"next day in {day.directory}, full snapshot in {snapshot.directory}")
    generation = base.marker["generation"]
    m: dict[str, Any] = {
        "generation": {
            "invoices": args.invoices,
            "seconds": generation["seconds"],
            "rows_per_second": generation["rows_per_second"],
            "reused": reused,
            "generated_at": generation["generated_at"],
            "files": base.marker["files"],
        }
    }
    m["loader_vs_copy"], m["loader_rss"] = measures.loader_vs_copy(bench, base)
    m["snapshot_day"] = measures.snapshot_day(bench, base, snapshot)
    landing = files.landing_folder(base, bench.work / "csv_data")
    m["pipeline_vs_floor"], build_nodes = measures.pipeline_vs_floor(
        bench, base, landing, m["loader_vs_copy"]["copy_best_seconds"]
    )
    m["next_day"], next_day_nodes, rebuild_nodes = measures.next_day(
        bench, landing, day, m["pipeline_vs_floor"]["pipeline_seconds"]
    )
    m["alert_query"] = measures.alert_query(bench, args.repeat_alert_query)
    results["measures"] = m
    results["model_timings"] = {
        "full_pipeline_build": build_nodes,
        "next_day_build": next_day_nodes,
        "full_rebuild_run": rebuild_nodes,
    }
    results["targets"] = report.evaluate(m)
    results["checks"] = {
        "floor_matches_fact": m["pipeline_vs_floor"]["floor_matches_fact"],
        "next_day_was_incremental": m["next_day"]["incremental"],
        "next_day_matches_full_rebuild": m["next_day"]["results_match"],
    }
    results["method"] = method_notes(results)
    results["finished_at"] = datetime.now().isoformat(timespec="seconds")
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        server, server_kind = open_server(args.data_dir)
        database = create_database(server, new_database_name())
    except (psycopg.Error, RuntimeError) as error:
        print(f"bench: cannot prepare the database: {error}", file=sys.stderr)
        return 1
    work = args.data_dir / f"run_{database}"
    bench = Bench(server, database, work, bootstrap.psql_binary())
    progress(f"database {database} ({server_kind}); logs in {work / 'logs'}")
    succeeded = False
    try:
        results = measure(bench, args, server_kind)
        failed = publish(results, report.write(results, args.results_dir))
        if failed:
            progress(f"FAILED checks: {', '.join(failed)} (see the JSON for the details)")
        succeeded = not failed
    except (StepFailed, psycopg.Error) as error:
        progress(f"FAILED: {error}")
    finally:
        if args.keep:
            progress(f"kept database {database} and {work}")
        else:
            drop_database(server, database)
            if succeeded:
                shutil.rmtree(work, ignore_errors=True)
            else:
                progress(f"logs kept in {work}")
    return 0 if succeeded else 1


if __name__ == "__main__":
    sys.exit(main())
