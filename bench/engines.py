"""Build the warehouse on Postgres, DuckDB and Spark (local mode) from the same files, in one run.

    .venv/bin/python bench/engines.py [--invoices 12700000] [--organizations 21806] [--seed 1]
        [--engines postgres,duckdb,spark] [--timeout 3600 | --timeout 1800,spark=2700]
        [--data-dir bench/data] [--results-dir bench/results] [--keep]

The data is bench/run.py's (bench/files.py: the generated base export, cached per size in --data-dir).
Each engine builds it from scratch, one after the other:

- postgres: init.sh as the pipeline runs it (FULL_REFRESH=true, RUN_ALERTS=false, SERVE_DOCS=false) on a
  fresh database: the loader, then `dbt build` (seed, models, tests); its docs step is not counted. The
  server is the PG* variables' (a superuser connection) or the embedded one in <data-dir>/pgdata;
- duckdb: `python -m data_platform.engines.build duckdb` on a fresh DuckDB file;
- spark: `python -m data_platform.engines.build spark` on fresh warehouse, metastore and scratch folders.

Per engine: wall time of the raw layer and of dbt (its build: seeds, models and tests), peak memory of the
process tree (and of the Postgres server), the slowest dbt nodes, the result's size on disk, and a summary
of its marts (the fact's rows, the latest day's rows and sum of balance_usd, the rows of dim_organizations
and fct_invoices) which must equal the reference engine's (Postgres when it ran): a broken build is never
timed as a result.

Writes <results-dir>/<date>-<invoices>-invoices-engines.json and .md and prints the markdown. Exit code
0 when every engine finished and the marts agree; 1 otherwise (a timeout or failure is in the results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import psutil
import psycopg

# this checkout's data_platform first, not the one the shared virtual environment was installed from
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import engine_report
import files
from engine_run import TreeRun, run_tree
from measures import node_timings
from procs import PYTHON, ROOT, pipeline_command
from workspace import PIPELINE_SETTINGS, Bench, create_database, drop_database, open_server, progress, publish

from data_platform import bootstrap

ENGINES = ("postgres", "duckdb", "spark")
BUILD_COMMAND = (PYTHON, "-m", "data_platform.engines.build")
DEFAULT_TIMEOUT_SECONDS = 3600.0
DOCS_STEP = "dbt docs generate"
FACT, DIM_ORGANIZATIONS, FCT_INVOICES = (
    "fct_organization_daily_financials",
    "dim_organizations",
    "fct_invoices",
)
PACKAGES = (
    "dbt-core",
    "dbt-postgres",
    "dbt-duckdb",
    "dbt-spark",
    "duckdb",
    "pyspark",
    "psycopg",
    "psutil",
)


# --- what each engine's build left: its marts and its size ------------------------------------------


def marts_summary_sql(fact: str, dim_organizations: str, fct_invoices: str) -> str:
    """One row: the fact's rows, its latest day, that day's rows and sum of balance_usd, the sum over
    every day, and the rows of dim_organizations and fct_invoices (the same SQL on Postgres and DuckDB)."""
    return f"""
        with fact as (select cast(balance_date as date) as balance_date, balance_usd from {fact}),
        latest as (select max(balance_date) as day from fact)
        select
            (select count(*) from fact),
            (select day from latest),
            (select count(*) from fact where balance_date = (select day from latest)),
            (select sum(balance_usd) from fact where balance_date = (select day from latest)),
            (select sum(balance_usd) from fact),
            (select count(*) from {dim_organizations}),
            (select count(*) from {fct_invoices})
    """


def _summary(row: tuple) -> dict[str, Any]:
    rows, day, day_rows, day_sum, total_sum, organizations, invoices = row
    return {
        "fact_rows": int(rows),
        "latest_day": day.isoformat() if day else None,
        "latest_day_rows": int(day_rows),
        "latest_day_balance_usd": _money(day_sum),
        "all_days_balance_usd": _money(total_sum),
        "dim_organizations_rows": int(organizations),
        "fct_invoices_rows": int(invoices),
    }


def _money(value: Any) -> str | None:
    """A sum as a decimal string, as the engine gave it (every engine sums exact decimals of cents, in
    as many places as the rules' coefficients take: 19.44000 on DuckDB is Postgres's 19.44)."""
    return None if value is None else str(Decimal(str(value)))


def compare_marts(summaries: dict[str, dict[str, Any]], reference: str) -> dict[str, Any]:
    """Each engine's marts summary against the reference engine's: counts, day and sums equal (USD amounts
    are exact decimals of cents on every engine); a sum that differs says by how much."""
    expected = summaries[reference]
    exact = ("fact_rows", "latest_day", "latest_day_rows", "dim_organizations_rows", "fct_invoices_rows")
    sums = ("latest_day_balance_usd", "all_days_balance_usd")
    comparison: dict[str, Any] = {"reference": reference, "engines": {}}
    for engine, actual in summaries.items():
        differing = [key for key in exact if actual[key] != expected[key]]
        differences = {}
        for key in sums:
            if actual[key] is None or expected[key] is None:
                if actual[key] != expected[key]:
                    differing.append(key)
            elif Decimal(actual[key]) != Decimal(expected[key]):
                differing.append(key)
                differences[key] = str(Decimal(actual[key]) - Decimal(expected[key]))
        comparison["engines"][engine] = {
            "equal": not differing,
            "differing": differing,
            "sum_differences_usd": differences,
        }
    comparison["all_equal"] = all(result["equal"] for result in comparison["engines"].values())
    return comparison


def directory_bytes(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file()) if path.exists() else 0


# --- running one engine ------------------------------------------------------------------------------


@dataclass
class Run:
    """One benchmark run: its parameters, the data and the work folder."""

    args: argparse.Namespace
    base: files.Dataset
    work: Path

    def timeout(self, engine: str) -> float:
        return self.args.timeouts.get(engine, self.args.timeouts["*"])


def _engine_env(work: Path, **extra: str) -> dict[str, str]:
    """Our environment without the settings that would point a build elsewhere, plus dbt's folders."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PG", "LEDGER_")) and name not in (*PIPELINE_SETTINGS, "DBT_TARGET")
    }
    env.update(
        PATH=f"{Path(PYTHON).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        DBT_TARGET_PATH=str(work / "target"),
        DBT_LOG_PATH=str(work / "logs"),
        DBT_SEND_ANONYMOUS_USAGE_STATS="false",
    )
    env.update(extra)
    return env


def _mb(value: int | None) -> float | None:
    return None if value is None else round(value / 1024 / 1024, 1)


def _load_average() -> list[float]:
    return [round(load, 2) for load in os.getloadavg()]


def _measure(run: TreeRun, end: float | None, nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """The timings and memory of a build, up to `end` (Postgres: the start of its docs step)."""
    steps = run.step_seconds(end)
    counted = set(steps)
    raw = sum(seconds for name, seconds in steps.items() if name in engine_report.RAW_STEPS)
    dbt = sum(seconds for name, seconds in steps.items() if name in engine_report.DBT_STEPS)
    total = round(sum(steps.values()), 3)
    peaks = {name: _mb(peak) for name, peak in run.peak_pss_bytes.items() if name in counted}
    server = {name: _mb(peak) for name, peak in run.server_peak_pss_bytes.items() if name in counted}
    return {
        "status": run.status,
        "returncode": run.returncode,
        "seconds": total,
        "raw_layer_seconds": round(raw, 3),
        "dbt_seconds": round(dbt, 3),
        "other_seconds": round(total - raw - dbt, 3),
        "steps_seconds": steps,
        "process_seconds": round(run.seconds, 3),
        "peak_pss_mb": max((peak for peak in peaks.values() if peak is not None), default=None),
        "peak_pss_mb_by_step": peaks,
        "server_idle_pss_mb": _mb(run.server_idle_pss_bytes),
        "server_peak_pss_mb": max(server.values(), default=None),
        "server_peak_pss_mb_by_step": server,
        "cpu": run.cpu_summary(),
        "dbt_nodes_by_type": _count_types(nodes),
        "dbt_nodes": nodes,
        "log": str(run.log),
    }


def _count_types(nodes: list[dict[str, Any]]) -> dict[str, int]:
    """How many nodes of each resource type dbt ran (model, test, seed, ...): the same on every engine."""
    counts: dict[str, int] = {}
    for node in nodes:
        kind = node["unique_id"].split(".", 1)[0]
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def _nodes(run_results: Path) -> list[dict[str, Any]]:
    try:
        results = json.loads(run_results.read_text())
    except (OSError, ValueError):
        return []
    if results.get("args", {}).get("which") != "build":
        return []
    return node_timings(results)


def _finish(result: dict[str, Any], run: TreeRun, engine: str) -> None:
    result["load_average_at_end"] = _load_average()
    if run.status != "ok":
        result["error_tail"] = run.tail()
        progress(f"{engine}: {run.status} after {run.seconds:,.0f} s (log: {run.log})")
    else:
        progress(
            f"{engine}: {result['seconds']:,.1f} s (raw layer {result['raw_layer_seconds']:,.1f} s, "
            f"dbt {result['dbt_seconds']:,.1f} s)"
        )


def postmaster_pid(bench: Bench) -> int | None:
    """The server's postmaster process when it runs on this machine (its data directory is readable)."""
    try:
        [(data_directory,)] = bench.query("select current_setting('data_directory')", role="admin")
        pid = int((Path(data_directory) / "postmaster.pid").read_text().splitlines()[0])
        return pid if psutil.Process(pid).name().startswith("postgres") else None
    except (OSError, ValueError, IndexError, psutil.Error, psycopg.Error):
        return None


def build_postgres(context: Run) -> dict[str, Any]:
    args = context.args
    server, server_kind = open_server(args.data_dir)
    database = create_database(server, f"bench_{datetime.now():%Y%m%d_%H%M%S}_engines")
    work = context.work / "postgres"
    bench = Bench(server, database, work, bootstrap.psql_binary())
    try:
        [(server_version,)] = bench.query("select current_setting('server_version')", role="admin")
        pid = postmaster_pid(bench)
        env = bench.env(
            CSV_DIR=str(context.base.directory),
            FULL_REFRESH="true",
            RUN_ALERTS="false",
            SERVE_DOCS="false",
            DBT_TARGET_PATH=str(work / "target"),
            DBT_LOG_PATH=str(work / "logs"),
        )
        run_results, kept = work / "target" / "run_results.json", work / "run_results-build.json"

        def keep_build_results(text: str) -> None:
            # the docs step overwrites run_results.json; dbt wrote the build's before this line
            if text.startswith(DOCS_STEP) and run_results.exists():
                shutil.copyfile(run_results, kept)

        result: dict[str, Any] = {
            "engine": "postgres",
            "command": "init.sh (FULL_REFRESH=true RUN_ALERTS=false SERVE_DOCS=false)",
            "server": server_kind,
            "server_version": server_version,
            "database": database,
            "load_average_at_start": _load_average(),
        }
        progress(f"postgres: init.sh, full refresh, on the fresh database {database}")
        run = run_tree(
            pipeline_command(),
            env=env,
            log=work / "build.log",
            cwd=ROOT,
            timeout=context.timeout("postgres"),
            server_pid=pid,
            on_step=keep_build_results,
        )
        docs_at = next((at for at, text in run.markers if text.startswith(DOCS_STEP)), None)
        result |= _measure(run, docs_at, _nodes(kept))
        if run.status == "ok" and docs_at is not None:
            result["docs_generate_seconds"] = round(run.seconds - docs_at, 3)
        if run.status == "ok":
            fact, organizations, invoices = (
                f"marts.{name}" for name in (FACT, DIM_ORGANIZATIONS, FCT_INVOICES)
            )
            [row] = bench.query(marts_summary_sql(fact, organizations, invoices), role="admin")
            result["marts"] = _summary(row)
            result["disk_bytes"] = int(bench.query("select pg_database_size(current_database())")[0][0])
            result["disk_bytes_by_part"] = {
                schema: int(size)
                for schema, size in bench.query(
                    """select n.nspname, sum(pg_total_relation_size(c.oid))
                    from pg_class as c join pg_namespace as n on n.oid = c.relnamespace
                    where c.relkind in ('r', 'm', 'p')
                        and n.nspname not in ('pg_catalog', 'information_schema')
                    group by n.nspname order by n.nspname""",
                    role="admin",
                )
            }
        _finish(result, run, "postgres")
        return result
    finally:
        if args.keep:
            progress(f"kept database {database}")
        else:
            drop_database(server, database)


def _engines_build(context: Run, engine: str, work: Path, **env: str) -> tuple[dict[str, Any], TreeRun]:
    """data_platform.engines.build of `engine` in `work` as the daily pipeline builds (no unit tests):
    the result's header and timings, and the run."""
    options = ("--no-unit-tests",)
    result: dict[str, Any] = {
        "engine": engine,
        "command": f"python -m data_platform.engines.build {engine} {' '.join(options)}",
        "load_average_at_start": _load_average(),
    }
    run = run_tree(
        [*BUILD_COMMAND, engine, "--csv-dir", str(context.base.directory), *options],
        env=_engine_env(work, **env),
        log=work / "build.log",
        cwd=ROOT,
        timeout=context.timeout(engine),
    )
    result |= _measure(run, None, _nodes(work / "target" / "run_results.json"))
    return result, run


def build_duckdb(context: Run) -> dict[str, Any]:
    import duckdb

    work = context.work / "duckdb"
    path = work / "warehouse.duckdb"
    progress(f"duckdb: data_platform.engines.build on the fresh file {path}")
    result, run = _engines_build(context, "duckdb", work, DUCKDB_PATH=str(path))
    if run.status == "ok":
        with duckdb.connect(str(path), read_only=True) as conn:
            row = conn.execute(
                marts_summary_sql(*(f"marts.{name}" for name in (FACT, DIM_ORGANIZATIONS, FCT_INVOICES)))
            ).fetchone()
        result["marts"] = _summary(row)
        wal = path.with_name(path.name + ".wal")
        result["disk_bytes"] = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    _finish(result, run, "duckdb")
    if not context.args.keep:
        path.unlink(missing_ok=True)
    return result


def build_spark(context: Run) -> dict[str, Any]:
    import duckdb

    work = context.work / "spark"
    warehouse, metastore, scratch = work / "warehouse", work / "metastore", work / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    progress(f"spark: data_platform.engines.build in {work} (local mode)")
    result, run = _engines_build(
        context,
        "spark",
        work,
        SPARK_WAREHOUSE_DIR=str(warehouse),
        SPARK_METASTORE_DIR=str(metastore),
        # Spark's shuffle and spill files: with the run's files, not in /tmp (a killed run leaves them)
        SPARK_LOCAL_DIRS=str(scratch),
    )
    if run.status == "ok":
        # read back from the Parquet files with DuckDB: no second JVM, and the same SQL as the others
        def table(name: str) -> str:
            files_glob = str(warehouse / "marts.db" / name / "**" / "*.parquet").replace("'", "''")
            return f"read_parquet('{files_glob}', hive_partitioning = true)"

        with duckdb.connect() as conn:
            conn.execute("set timezone = 'UTC'")
            row = conn.execute(
                marts_summary_sql(table(FACT), table(DIM_ORGANIZATIONS), table(FCT_INVOICES))
            ).fetchone()
        result["marts"] = _summary(row)
        result["disk_bytes"] = directory_bytes(warehouse)
        result["disk_bytes_by_part"] = {
            database.name.removesuffix(".db"): directory_bytes(database)
            for database in sorted(warehouse.iterdir())
            if database.is_dir()
        }
        result["metastore_bytes"] = directory_bytes(metastore)
    _finish(result, run, "spark")
    if not context.args.keep:
        for folder in (warehouse, metastore, scratch):
            shutil.rmtree(folder, ignore_errors=True)
    return result


BUILDERS = {"postgres": build_postgres, "duckdb": build_duckdb, "spark": build_spark}


# --- the run -----------------------------------------------------------------------------------------


def _java_version() -> str | None:
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java:
        return None
    try:
        output = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    return output.strip().splitlines()[0] if output.strip() else None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    memory = psutil.virtual_memory()
    return {
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "memory_gib": round(memory.total / 1024**3, 1),
            "memory_available_gib_at_start": round(memory.available / 1024**3, 1),
            "platform": platform.platform(),
            "load_average_at_start": _load_average(),
        },
        "versions": {
            "python": platform.python_version(),
            "java": _java_version(),
            **{name: _package_version(name) for name in PACKAGES},
        },
    }


def _timeouts(text: str) -> dict[str, float]:
    """'1800' (every engine) or '1800,spark=2700' or 'spark=2700' -> {'*': ..., engine: ...}."""
    timeouts = {"*": DEFAULT_TIMEOUT_SECONDS}
    for part in filter(None, (part.strip() for part in text.split(","))):
        engine, _, seconds = part.rpartition("=")
        if engine and engine not in ENGINES:
            raise argparse.ArgumentTypeError(f"unknown engine {engine!r} (one of {', '.join(ENGINES)})")
        try:
            timeouts[engine or "*"] = float(seconds)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {seconds!r}") from None
    if min(timeouts.values()) <= 0:
        raise argparse.ArgumentTypeError("a timeout must be positive")
    return timeouts


def _engines(text: str) -> list[str]:
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(ENGINES))
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"engines are a comma list of {', '.join(ENGINES)}")
    return list(dict.fromkeys(chosen))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/engines.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    files.add_dataset_arguments(parser)
    parser.add_argument("--engines", type=_engines, default=list(ENGINES), help="default: all three")
    parser.add_argument(
        "--timeout",
        dest="timeouts",
        type=_timeouts,
        default=_timeouts(""),
        help=f"seconds per engine (default {DEFAULT_TIMEOUT_SECONDS:g}), e.g. 1800 or 1800,spark=2700",
    )
    parser.add_argument("--keep", action="store_true", help="keep each engine's result and the work folder")
    args = parser.parse_args(argv)
    args.data_dir, args.results_dir = args.data_dir.resolve(), args.results_dir.resolve()
    return args


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    results: dict[str, Any] = {
        "date": datetime.now().date().isoformat(),
        "started_at": datetime.now().isoformat(timespec="seconds"),
        "command": shlex.join(["bench/engines.py", *sys.argv[1:]]),
        **environment(),
    }
    progress(f"data: {args.invoices:,} invoices, {args.organizations:,} organizations, seed {args.seed}")
    base, reused = files.base_dataset(
        args.data_dir, args.invoices, args.organizations, args.seed, work / "logs"
    )
    progress(f"{'reused' if reused else 'generated'} {base.directory}")
    results["parameters"] = {
        "invoices": args.invoices,
        "organizations": args.organizations,
        "seed": args.seed,
        "end_date": files.END_DATE,
        "days": files.DAYS,
        "engines": args.engines,
        "timeouts_seconds": {
            engine: args.timeouts.get(engine, args.timeouts["*"]) for engine in args.engines
        },
        "csv_dir": str(base.directory),
        "files": base.marker["files"],
    }
    context = Run(args, base, work)
    engines: dict[str, Any] = {}
    for engine in args.engines:
        try:
            engines[engine] = BUILDERS[engine](context)
        except (OSError, psycopg.Error, RuntimeError) as error:
            # the engine could not even start (no server, a missing package): reported like a failure
            progress(f"{engine}: could not run: {error}")
            engines[engine] = {"engine": engine, "status": "failed", "error_tail": str(error)}
    results["engines"] = engines
    summaries = {name: result["marts"] for name, result in engines.items() if "marts" in result}
    reference = "postgres" if "postgres" in summaries else next(iter(summaries), None)
    results["marts_comparison"] = compare_marts(summaries, reference) if reference else None
    finished = [name for name, result in engines.items() if result["status"] == "ok"]
    results["checks"] = {
        "every_engine_finished": len(finished) == len(args.engines),
        "marts_equal": bool(results["marts_comparison"]) and results["marts_comparison"]["all_equal"],
    }
    results["method"] = engine_report.method_notes()
    results["finished_at"] = datetime.now().isoformat(timespec="seconds")
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    work = args.data_dir / f"engines_{datetime.now():%Y%m%d_%H%M%S}"
    progress(f"engines {', '.join(args.engines)}; work folder {work}")
    results = measure(args, work)
    failed = publish(results, engine_report.write(results, args.results_dir))
    if failed:
        progress(f"FAILED checks: {', '.join(failed)}; logs kept in {work}")
    elif not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
