"""Build the warehouse on another engine: its raw ledger, then `dbt build` (the seeds, every model and test).

    python -m data_platform.engines.build duckdb        # or spark; --csv-dir (default $CSV_DIR, csv_data)
        [--no-unit-tests]                               # the daily pipeline's build: data tests only
        [--allow-empty]                                 # header-only files, as the loader's --allow-empty

The Postgres pipeline (init.sh) decides between incremental and full builds from its build record;
here every `dbt build` is a full refresh, which is exact. A hand-run incremental build, after loading new
exports (`python -m data_platform.engines.<engine>_raw`), is `DBT_TARGET_PATH=dbt/target-<engine>
LEDGER_WINDOW_START=<first day to recompute> dbt build --target <engine> --project-dir dbt --profiles-dir
.dbt` (dbt/target is the Postgres build's, whose docs the pipeline serves).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from data_platform.engines import duckdb_raw, spark_raw
from data_platform.exports import CSV_DIR_HELP, csv_dir_default, discover
from data_platform.load_errors import ALLOW_EMPTY_HELP, LoadError
from data_platform.paths import DBT_DIR_ARGS, DBT_PROJECT_DIR
from data_platform.refresh import UNIT_TESTS_EXCLUDED
from data_platform.steps import Stopped, exit_status, failed, run_child, step, stop_on_signals

ENGINES = ("duckdb", "spark")
# where each engine keeps its warehouse (the dbt profile reads the same variables), made absolute so
# that the raw builder and dbt, which runs from the project root, open the same files
LOCATIONS = {
    "duckdb": {duckdb_raw.DATABASE_VARIABLE: duckdb_raw.DEFAULT_DATABASE},
    "spark": {
        spark_raw.WAREHOUSE_VARIABLE: spark_raw.DEFAULT_WAREHOUSE_DIR,
        spark_raw.METASTORE_VARIABLE: spark_raw.DEFAULT_METASTORE_DIR,
    },
}


def environment(engine: str) -> dict[str, str]:
    env = dict(os.environ)
    for name, default in LOCATIONS[engine].items():
        env[name] = str(Path(env.get(name) or default).resolve())
    # dbt's output in a folder of the engine's own: dbt/target holds the Postgres build's manifest and the
    # docs site the pipeline serves, which another engine's build would replace
    env.setdefault("DBT_TARGET_PATH", str(DBT_PROJECT_DIR / f"target-{engine}"))
    return env


def run(engine: str, csv_dir: str, unit_tests: bool = True, allow_empty: bool = False) -> int:
    """Each step a child as the pipeline's are (steps.py): a stop request is passed on to the
    step running and waited for, so no dbt is left writing to the warehouse after the build ended."""
    try:
        return _steps(engine, csv_dir, unit_tests, allow_empty)
    except Stopped as stop:
        print(f"{engine} build: stopped by {stop}", file=sys.stderr)
        return 128 + stop.signum


def _steps(engine: str, csv_dir: str, unit_tests: bool, allow_empty: bool) -> int:
    env = environment(engine)
    if engine != "spark":
        return _raw_then_dbt(engine, env, csv_dir, unit_tests, allow_empty)

    # both steps' JVMs open the metastore, which Derby lets one at a time: another Spark load or build is
    # refused at once, for the whole build. The exports first: a missing folder leaves no metastore behind
    try:
        discover(csv_dir)
        with spark_raw.one_load_at_a_time(env):
            return _raw_then_dbt(engine, {**env, spark_raw.LOCK_HELD: "1"}, csv_dir, unit_tests, allow_empty)
    except LoadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _raw_then_dbt(engine: str, env: dict[str, str], csv_dir: str, unit_tests: bool, allow_empty: bool) -> int:
    # the raw builder in its own process: Spark's metastore is an embedded Derby database that one JVM
    # holds at a time, and dbt's session is another JVM. Steps run from the project's folder.
    csv_dir = str(Path(csv_dir).absolute())
    raw = [sys.executable, "-m", f"data_platform.engines.{engine}_raw", "--csv-dir", csv_dir]
    if allow_empty:
        raw.append("--allow-empty")
    # the same step lines as the pipeline's, so a caller (bench/engines.py) can time each step
    step(f"raw ledger: {engine} from {csv_dir}")
    code = run_child(raw, env)
    if code != 0:
        print(
            f"error: the {engine} raw ledger was not built: it {failed(code, show_code=True)}",
            file=sys.stderr,
        )
        return exit_status(code)
    dbt = shutil.which("dbt") or str(Path(sys.executable).parent / "dbt")
    # `dbt build` loads the seeds before the models that read them, as the pipeline's build does
    options = [] if unit_tests else UNIT_TESTS_EXCLUDED
    step(f"dbt build: {engine}, full refresh")
    code = run_child([dbt, "build", "--full-refresh", *options, *DBT_DIR_ARGS, "--target", engine], env)
    if code != 0:
        print(f"error: dbt build on {engine} {failed(code, show_code=True)}", file=sys.stderr)
        return exit_status(code)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_platform.engines.build", description=__doc__.splitlines()[0]
    )
    parser.add_argument("engine", choices=ENGINES, help="the engine whose warehouse to build")
    parser.add_argument("--csv-dir", default=csv_dir_default(), help=CSV_DIR_HELP)
    parser.add_argument(
        "--no-unit-tests",
        dest="unit_tests",
        action="store_false",
        help="build as the daily pipeline does: models and data tests, no dbt unit tests",
    )
    parser.add_argument("--allow-empty", action="store_true", help=ALLOW_EMPTY_HELP)
    arguments = parser.parse_args(argv)
    with stop_on_signals():
        return run(**vars(arguments))


if __name__ == "__main__":
    sys.exit(main())
