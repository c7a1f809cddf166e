"""Benchmark the warehouse at a chosen size, in one run on one fresh database.

    .venv/bin/python bench/run.py [--invoices 12700000] [--organizations 21806] [--seed 1]
        [--append-invoices 10000] [--data-dir bench/data] [--results-dir bench/results]
        [--repeat-alert-query 7] [--keep]

Measures (see bench/README.md): the generator's speed; the loader against `psql \\copy`; the loader's
peak memory on the full file and on its first 10%; the full pipeline (init.sh: load, seed, build with
tests) against a floor of `\\copy` plus one hand-written `create table as`; an incremental build after
one appended day against a full rebuild, and that both give the same rows; the alert query's latency.

The server: the one the PG* variables name (a superuser connection) when PGHOST or PGDATABASE is set,
else an embedded server in <data-dir>/pgdata. A database bench_<timestamp> is created on it, bootstrapped
with init.sql, and dropped at the end unless --keep.

Writes <results-dir>/<date>-<invoices>-invoices.json and .md and prints the markdown. Exit code 0 when
every step ran and the incremental rows equal the full rebuild's (missed targets are reported, not
errors); 1 when a step failed or results differ.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path
from typing import Any

import files
import psutil
import psycopg
import report
from procs import ROOT, Server, StepFailed, Timed, dbt_command, loader_command, psql_command, run
from psycopg import sql
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from data_platform import bootstrap
from data_platform.alerts.detect import alerts_query, latest_day

FLOOR_SQL = Path(__file__).with_name("floor_daily_fact.sql")
FLOOR_SCHEMA = "bench_floor"
HEAD_FRACTION = 0.1
ALERT_THRESHOLD = Decimal("0.5")
SETTINGS = (
    "shared_buffers",
    "work_mem",
    "maintenance_work_mem",
    "max_wal_size",
    "wal_level",
    "max_parallel_workers_per_gather",
    "effective_cache_size",
    "synchronous_commit",
)
# the daily fact's columns, as bench/floor_daily_fact.sql computes them
FACT_COLUMNS = (
    "organization_id, balance_date, invoice_count, invoiced_amount_usd, paid_amount_usd, "
    "balance_change_usd, balance_usd, previous_balance_usd, balance_change_ratio"
)
# (mart, copy of it after the incremental build) compared with the full rebuild
COMPARED = {
    "fact": ("marts.fct_organization_daily_financials", "bench_floor.fact_incremental"),
    "dim_organizations": ("marts.dim_organizations", "bench_floor.dim_organizations_incremental"),
}
_started = time.monotonic()


def progress(message: str) -> None:
    print(f"[bench {time.monotonic() - _started:7.1f}s] {message}", file=sys.stderr, flush=True)


# --- the database -------------------------------------------------------------------------------


def open_server(data_dir: Path) -> tuple[Server, str]:
    """The server to benchmark on, and a word on where it came from."""
    passwords = {
        role: os.environ.get(f"{role.upper()}_PASSWORD", role) for role in ("transformer", "alerter")
    }
    if os.environ.get("PGHOST") or os.environ.get("PGDATABASE"):
        admin = {name: value for name, value in os.environ.items() if name.startswith("PG")}
        maintenance = admin.pop("PGDATABASE", None) or "postgres"
        return Server(admin, passwords, maintenance), "external (PG* variables)"
    progress(f"starting the embedded Postgres in {data_dir / 'pgdata'}")
    variables = bootstrap.start_embedded_server(data_dir / "pgdata", "postgres")
    variables.pop("PGDATABASE")
    return Server(variables, passwords), f"embedded (pgserver, {data_dir / 'pgdata'})"


@dataclass
class Bench:
    """One benchmark run: the server, its fresh database and a work folder for logs and dbt output."""

    server: Server
    database: str
    work: Path
    psql: str

    def env(self, role: str = "transformer", **extra: str) -> dict[str, str]:
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        env = self.server.env(
            role,
            self.database,
            PATH=path,
            DBT_TARGET_PATH=str(self.work / "dbt" / "target"),
            DBT_LOG_PATH=str(self.work / "dbt" / "logs"),
            DBT_SEND_ANONYMOUS_USAGE_STATS="false",
            **extra,
        )
        env.pop("SLACK_WEBHOOK_URL", None)
        return env

    def connect(self, role: str = "transformer") -> psycopg.Connection:
        return psycopg.connect(self.server.conninfo(role, self.database), autocommit=True)

    def query(self, statement: str | sql.Composable, role: str = "transformer") -> list[tuple]:
        with self.connect(role) as conn:
            cursor = conn.execute(statement)
            return cursor.fetchall() if cursor.description else []

    def log(self, name: str) -> Path:
        return self.work / "logs" / f"{name}.log"

    def load(self, dataset: files.Dataset, name: str) -> Timed:
        return run(loader_command(dataset.directory), env=self.env(), log=self.log(name), sample_rss=True)

    def dbt(self, name: str, *arguments: str) -> tuple[Timed, list[dict[str, Any]]]:
        """Run a dbt command; return its timing and its nodes from run_results.json, slowest first."""
        timed = run(dbt_command(*arguments), env=self.env(), log=self.log(name))
        return timed, node_timings(self.work / "dbt" / "target" / "run_results.json")


def node_timings(run_results: Path) -> list[dict[str, Any]]:
    results = json.loads(run_results.read_text())["results"]
    nodes = [
        {"unique_id": r["unique_id"], "status": r["status"], "execution_time": round(r["execution_time"], 3)}
        for r in results
    ]
    return sorted(nodes, key=lambda node: node["execution_time"], reverse=True)


def create_database(server: Server) -> str:
    name = f"bench_{datetime.now():%Y%m%d_%H%M%S}"
    with psycopg.connect(server.conninfo("admin", server.maintenance_database), autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        # init.sql sets the roles' passwords from these variables (cluster-wide roles)
        env = {**os.environ, **{f"{r.upper()}_PASSWORD": p for r, p in server.passwords.items()}}
        bootstrap.apply_init_sql(server.conninfo("admin", name), env)
        with psycopg.connect(server.conninfo("admin", name), autocommit=True) as conn:
            conn.execute(
                sql.SQL("create schema {} authorization transformer").format(sql.Identifier(FLOOR_SCHEMA))
            )
    except BaseException:
        drop_database(server, name)
        raise
    return name


def drop_database(server: Server, name: str) -> None:
    with psycopg.connect(server.conninfo("admin", server.maintenance_database), autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


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
        },
        "postgres": {"version": pg_version, "server": server_kind, "settings": settings},
        "versions": {
            "python": platform.python_version(),
            **{
                package: version(package) for package in ("dbt-core", "dbt-postgres", "psycopg", "sqlalchemy")
            },
        },
    }


# --- the measurements ---------------------------------------------------------------------------


def floor_copy(bench: Bench, dataset: files.Dataset, name: str) -> Timed:
    """`psql \\copy` of both files into fresh tables shaped like the raw ones (only the copy is timed)."""
    commands = []
    for file_name in files.FILES:
        table = file_name.removesuffix(".csv")
        floor_table = sql.Identifier(FLOOR_SCHEMA, table)
        bench.query(sql.SQL("drop table if exists {}").format(floor_table))
        bench.query(sql.SQL("create table {} (like {})").format(floor_table, sql.Identifier("raw", table)))
        path = str(dataset.path[file_name]).replace("'", "''")
        commands += ["-c", f"\\copy {FLOOR_SCHEMA}.{table} from '{path}' with (format csv, header true)"]
    timed = run(psql_command(bench.psql, *commands), env=bench.env(), log=bench.log(name))
    # dropped at once, so their autovacuum does not run during the next measurement
    bench.query(
        sql.SQL("drop table {}.invoices, {}.organizations").format(*[sql.Identifier(FLOOR_SCHEMA)] * 2)
    )
    copied = sum(int(rows) for rows in re.findall(r"^COPY (\d+)$", timed.output, re.MULTILINE))
    if copied != dataset.total_rows:
        raise StepFailed(f"psql \\copy reported {copied:,} rows, the files hold {dataset.total_rows:,}")
    return timed


def measure_loader(bench: Bench, base: files.Dataset) -> tuple[dict[str, Any], dict[str, Any]]:
    """Measures 1 and 5: loader vs `psql \\copy` (best of two each) and the loader's peak RSS."""
    head = files.head_dataset(base, HEAD_FRACTION, bench.work / "head")
    progress(f"loader on the first {HEAD_FRACTION:.0%} of the invoices (peak RSS)")
    head_run = bench.load(head, "load-head")
    loader_runs, floor_runs = [], []
    for attempt in (1, 2):  # alternate, so neither always runs on a colder cache
        progress(f"psql \\copy floor, run {attempt} of 2")
        floor_runs.append(floor_copy(bench, base, f"floor-copy-{attempt}"))
        progress(f"loader, run {attempt} of 2")
        loader_runs.append(bench.load(base, f"load-{attempt}"))

    rows = base.total_rows
    loader_best = min(r.seconds for r in loader_runs)
    floor_best = min(r.seconds for r in floor_runs)
    loader = {
        "rows": rows,
        "loader_seconds": [round(r.seconds, 3) for r in loader_runs],
        "floor_seconds": [round(r.seconds, 3) for r in floor_runs],
        "loader_best_seconds": round(loader_best, 3),
        "floor_best_seconds": round(floor_best, 3),
        "loader_rows_per_second": round(rows / loader_best),
        "floor_rows_per_second": round(rows / floor_best),
        "ratio": round(floor_best / loader_best, 3),  # = loader rows/s over floor rows/s
    }
    full_peak = max(r.peak_rss_mb or 0 for r in loader_runs)
    rss = {
        "full_file": {
            "rows": base.rows("invoices.csv"),
            "bytes": base.marker["files"]["invoices.csv"]["bytes"],
            "peak_rss_mb": round(full_peak, 1),
            "runs_mb": [round(r.peak_rss_mb or 0, 1) for r in loader_runs],
        },
        "head": {
            "rows": head.rows("invoices.csv"),
            "bytes": head.marker["files"]["invoices.csv"]["bytes"],
            "peak_rss_mb": round(head_run.peak_rss_mb or 0, 1),
            "runs_mb": [round(head_run.peak_rss_mb or 0, 1)],
        },
        "peak_rss_mb": round(max(full_peak, head_run.peak_rss_mb or 0), 1),
        "growth_ratio": round(full_peak / head_run.peak_rss_mb, 3) if head_run.peak_rss_mb else None,
    }
    return loader, rss


def _step_name(marker: str) -> str:
    """'loading raw CSVs from DIR' -> 'loading raw CSVs'; 'dbt build: models ...' -> 'dbt build'."""
    return re.split(r":| from | \(", marker, maxsplit=1)[0].strip()


def measure_pipeline(bench: Bench, base: files.Dataset, floor_copy_seconds: float) -> dict[str, Any]:
    """Measure 2: init.sh (load + seed + full build with tests) vs `\\copy` + one `create table as`."""
    progress("full pipeline: init.sh with FULL_REFRESH=true (load, seed, build with tests, docs)")
    env = bench.env(CSV_DIR=str(base.directory), FULL_REFRESH="true", RUN_ALERTS="false", SERVE_DOCS="false")
    timed = run(["bash", str(ROOT / "init.sh")], env=env, log=bench.log("pipeline"))
    # each step lasts until the next step's line (the last one until the end)
    ends = [at for at, _ in timed.markers[1:]] + [timed.seconds]
    steps = {
        _step_name(text): round(end - at, 3) for (at, text), end in zip(timed.markers, ends, strict=True)
    }
    docs_start = next((at for at, text in timed.markers if text.startswith("dbt docs generate")), None)
    pipeline_seconds = docs_start if docs_start is not None else timed.seconds
    docs_seconds = steps.get("dbt docs generate")

    progress("floor: one hand-written create table as for the daily fact")
    bench.query(sql.SQL("drop table if exists {}.daily_fact").format(sql.Identifier(FLOOR_SCHEMA)))
    floor_fact = run(
        psql_command(bench.psql, "-f", str(FLOOR_SQL)), env=bench.env(), log=bench.log("floor-fact")
    )
    different = _differences(
        bench, "marts.fct_organization_daily_financials", "bench_floor.daily_fact", FACT_COLUMNS
    )
    floor_seconds = floor_copy_seconds + floor_fact.seconds
    return {
        "pipeline_seconds": round(pipeline_seconds, 3),
        "docs_generate_seconds": docs_seconds,
        "steps_seconds": steps,
        "floor_copy_seconds": round(floor_copy_seconds, 3),
        "floor_daily_fact_seconds": round(floor_fact.seconds, 3),
        "floor_seconds": round(floor_seconds, 3),
        "ratio": round(pipeline_seconds / floor_seconds, 3),
        "floor_matches_fact": not any(different),
        "floor_rows_differing": different,
    }


def _differences(bench: Bench, left: str, right: str, columns: str = "*") -> list[int]:
    """[rows of left not in right, rows of right not in left] (both 0: same rows)."""
    left_rows, right_rows = f"select {columns} from {left}", f"select {columns} from {right}"
    counts = bench.query(
        f"""
        select
            (select count(*) from ({left_rows} except all {right_rows}) as only_left),
            (select count(*) from ({right_rows} except all {left_rows}) as only_right)
        """
    )[0]
    return [int(count) for count in counts]


def measure_incremental(bench: Bench, appended: files.Dataset, append_invoices: int) -> tuple[dict, dict]:
    """Measure 3: one appended day, incremental build and run vs a full rebuild, and equal results."""
    progress(f"loading the files with one appended day ({append_invoices:,} invoices)")
    append_load = bench.load(appended, "load-appended")
    progress("incremental dbt build (models + tests)")
    build, build_nodes = bench.dbt("dbt-build-incremental", "build")
    progress("incremental dbt run (models only)")
    run_models, _ = bench.dbt("dbt-run-incremental", "run")
    for mart, copy in COMPARED.values():
        bench.query(f"drop table if exists {copy}")
        bench.query(f"create table {copy} as select * from {mart}")
    progress("full rebuild: dbt build --full-refresh")
    full, full_nodes = bench.dbt("dbt-build-full-refresh", "build", "--full-refresh")
    differences = {name: _differences(bench, mart, copy) for name, (mart, copy) in COMPARED.items()}
    fact_rows = bench.query("select count(*) from marts.fct_organization_daily_financials")[0][0]
    measures = {
        "append_invoices": append_invoices,
        "append_load_seconds": round(append_load.seconds, 3),
        "append_load_peak_rss_mb": round(append_load.peak_rss_mb or 0, 1),
        "incremental_build_seconds": round(build.seconds, 3),
        "incremental_run_seconds": round(run_models.seconds, 3),
        "full_rebuild_seconds": round(full.seconds, 3),
        "ratio_full_to_incremental": round(full.seconds / build.seconds, 3),
        "fact_rows": fact_rows,
        "fact_match": not any(differences["fact"]),
        "dim_organizations_match": not any(differences["dim_organizations"]),
        "rows_differing": differences,
        "results_match": not any(any(pair) for pair in differences.values()),
    }
    return measures, {"full_refresh_build": full_nodes, "incremental_build": build_nodes}


def measure_alert_query(bench: Bench, repeat: int) -> dict[str, Any]:
    """Measure 4: the alert script's query on the latest day, as the alerter, through SQLAlchemy."""
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


def method_notes(results: dict[str, Any]) -> list[str]:
    p = results["parameters"]
    return [
        "One run, one fresh database: the steps below run in this order on the same data.",
        "Generator: wall time of `python -m data_platform.generator` (invoices + organizations), "
        "rows/s counted on invoices; cached files report the time of their own generation.",
        "Loader vs floor: `python -m data_platform.loader` (wall time, includes its ANALYZE) against "
        "`psql \\copy ... (format csv, header true)` of the same two files into unindexed tables created "
        "`like raw.*` (no CHECK constraints). Each runs twice, alternating, and the best of two counts.",
        "Loader RSS: the loader process's peak resident memory, polled every 50 ms (psutil RSS and the "
        "kernel's high-water mark VmHWM), on the full file (both runs) and on its first "
        f"{HEAD_FRACTION:.0%} of invoices.",
        "Full pipeline: `init.sh` with FULL_REFRESH=true, RUN_ALERTS=false, up to the start of "
        "`dbt docs generate` (timed separately). Floor: the best `\\copy` time above plus "
        "`bench/floor_daily_fact.sql` (one `create table as` computing the daily fact), which must give the "
        "mart's rows (checked with EXCEPT ALL both ways).",
        f"Incremental: the files plus one appended day ({p['append_invoices']:,} invoices) are loaded "
        "(the loader reloads the whole file), then `dbt build` and `dbt run` (incremental), then "
        "`dbt build --full-refresh`; the fact and dim_organizations from the incremental build are compared "
        "with the rebuild's with EXCEPT ALL both ways.",
        f"Alert query: `alerts_query(latest, latest, 0.5)` executed and fetched through SQLAlchemy as the "
        f"alerter, median of {p['repeat_alert_query']} runs after one warm-up run.",
        "Per-model timings: `execution_time` of each node in dbt's run_results.json.",
    ]


# --- the command --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--invoices", type=int, default=12_700_000)
    parser.add_argument("--organizations", type=int, default=21_806)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--append-invoices", type=int, default=10_000, help="invoices in the appended day")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "bench" / "data", help="generated files")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--repeat-alert-query", type=int, default=7, help="timed runs of the alert query")
    parser.add_argument("--keep", action="store_true", help="keep the database and the work folder")
    args = parser.parse_args(argv)
    if args.repeat_alert_query < 1 or args.append_invoices < 1:
        parser.error("--repeat-alert-query and --append-invoices must be at least 1")
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
            "append_invoices": args.append_invoices,
            "end_date": files.END_DATE,
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
    appended = files.appended_dataset(base, args.append_invoices, logs)
    generation = base.marker["generation"]
    measures: dict[str, Any] = {
        "generation": {
            "invoices": args.invoices,
            "seconds": generation["seconds"],
            "rows_per_second": generation["rows_per_second"],
            "reused": reused,
            "generated_at": generation["generated_at"],
            "files": base.marker["files"],
        }
    }
    measures["loader_vs_copy"], measures["loader_rss"] = measure_loader(bench, base)
    floor_copy_seconds = measures["loader_vs_copy"]["floor_best_seconds"]
    measures["pipeline_vs_floor"] = measure_pipeline(bench, base, floor_copy_seconds)
    measures["incremental"], results["model_timings"] = measure_incremental(
        bench, appended, args.append_invoices
    )
    measures["alert_query"] = measure_alert_query(bench, args.repeat_alert_query)
    results["measures"] = measures
    results["targets"] = report.evaluate(measures)
    results["checks"] = {
        "results_match": measures["incremental"]["results_match"],
        "floor_matches_fact": measures["pipeline_vs_floor"]["floor_matches_fact"],
    }
    results["method"] = method_notes(results)
    results["finished_at"] = datetime.now().isoformat(timespec="seconds")
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        server, server_kind = open_server(args.data_dir)
        database = create_database(server)
    except (psycopg.Error, RuntimeError) as error:
        print(f"bench: cannot prepare the database: {error}", file=sys.stderr)
        return 1
    work = args.data_dir / f"run_{database}"
    bench = Bench(server, database, work, bootstrap.psql_binary())
    progress(f"database {database} ({server_kind}); logs in {work / 'logs'}")
    succeeded = False
    try:
        results = measure(bench, args, server_kind)
        json_path, md_path = report.write(results, args.results_dir)
        print(md_path.read_text())
        progress(f"results: {json_path} and {md_path}")
        failed = [name for name, ok in results["checks"].items() if not ok]
        if failed:
            progress(f"FAILED checks: {', '.join(failed)} (see the JSON for the differing row counts)")
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
