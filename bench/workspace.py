"""Where the benchmark runs: the server, its databases, and the commands it times on them.

The server is the one the PG* variables name (a superuser connection) when PGHOST or PGDATABASE is set,
else an embedded server in <data-dir>/pgdata. The run's main database `bench_<timestamp>` holds the
pipeline; fresh databases `bench_<timestamp>_<label>` are created for single loads and dropped after.
Each is bootstrapped with init.sql (the container's roles, schemas and grants) plus a scratch schema.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import files
import psycopg
import yaml
from procs import (
    ROOT,
    Server,
    StepFailed,
    Timed,
    dbt_command,
    loader_command,
    pipeline_command,
    psql_command,
    run,
)
from psycopg import sql

from data_platform import bootstrap, secrets
from data_platform.raw_tables import TABLES

FLOOR_SCHEMA = "bench_floor"
# settings a run could leave in our environment that would change what the pipeline does
PIPELINE_SETTINGS = (
    "CSV_DIR",
    "FULL_REFRESH",
    "RUN_ALERTS",
    "SERVE_DOCS",
    "LEDGER_WINDOW_START",
    "SLACK_WEBHOOK_URL",
    # a secret's NAME_FILE: it would send the bench's alerts to a real channel, or clash with a value the
    # bench sets (ALERTER_PASSWORD)
    *map(secrets.file_variable, secrets.SECRET_VARIABLES),
)
_started = time.monotonic()


def progress(message: str) -> None:
    print(f"[bench {time.monotonic() - _started:7.1f}s] {message}", file=sys.stderr, flush=True)


def publish(results: dict, paths: tuple[Path, Path]) -> list[str]:
    """Print the written markdown report and say where both files are; the names of the failed checks."""
    json_path, md_path = paths
    print(md_path.read_text())
    progress(f"results: {json_path} and {md_path}")
    return [name for name, ok in results["checks"].items() if not ok]


def compose_postgres_settings(compose_file: Path = ROOT / "compose.yaml") -> dict[str, str]:
    """The `-c name=value` settings compose.yaml starts the warehouse's Postgres with."""
    command = yaml.safe_load(compose_file.read_text())["services"]["postgres"].get("command") or []
    if isinstance(command, str):
        command = command.split()
    settings = {}
    for flag, value in itertools.pairwise(command):
        if flag == "-c":
            name, _, setting = value.partition("=")
            settings[name] = setting
    return settings


# how long a reload may take to reach new sessions (the postmaster handles the signal asynchronously)
RELOAD_WAIT_SECONDS = 5.0


def apply_settings(conninfo: str, settings: dict[str, str]) -> None:
    """Set `settings` on the running server (ALTER SYSTEM, then a reload) and wait until new sessions
    see them. A setting that only a restart applies is refused before anything is changed."""
    if not settings:
        return
    names = list(settings)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        known = dict(
            conn.execute("select name, context from pg_settings where name = any(%s)", [names]).fetchall()
        )
        unknown = [name for name in names if name not in known]
        restart = [name for name in names if known.get(name) == "postmaster"]
        if unknown or restart:
            raise StepFailed(
                "compose.yaml's Postgres settings cannot be applied to the running benchmark server: "
                + "; ".join(
                    [f"unknown: {', '.join(unknown)}"] * bool(unknown)
                    + [f"need a restart: {', '.join(restart)}"] * bool(restart)
                )
            )
        for name, value in settings.items():
            conn.execute(sql.SQL("alter system set {} = {}").format(sql.Identifier(name), sql.Literal(value)))
        conn.execute("select pg_reload_conf()")
    deadline = time.monotonic() + RELOAD_WAIT_SECONDS
    while True:
        with psycopg.connect(conninfo, autocommit=True) as conn:  # a new session: it has the reload or not
            seen = {name: conn.execute("select current_setting(%s)", [name]).fetchone()[0] for name in names}
        if seen == settings:
            return
        if time.monotonic() > deadline:
            raise StepFailed(f"the server did not take compose.yaml's settings {settings} (it shows {seen})")
        time.sleep(0.05)


def open_server(data_dir: Path) -> tuple[Server, str]:
    """The server to benchmark on, and a word on where it came from.

    The embedded server gets compose.yaml's Postgres settings, so the benchmark measures the warehouse as
    compose runs it. A server named by PG* variables is measured as it is configured (the report lists
    its settings).
    """
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
    server = Server(variables, passwords)
    apply_settings(server.conninfo("admin", server.maintenance_database), compose_postgres_settings())
    return server, f"embedded (pgserver, {data_dir / 'pgdata'}, with compose.yaml's settings)"


def create_database(server: Server, name: str) -> str:
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


def new_database_name() -> str:
    return f"bench_{datetime.now():%Y%m%d_%H%M%S}"


@dataclass
class Bench:
    """One benchmark run: the server, its main database and a work folder for logs and dbt output."""

    server: Server
    database: str
    work: Path
    psql: str

    def env(self, role: str = "transformer", database: str | None = None, **extra: str) -> dict[str, str]:
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        env = self.server.env(
            role,
            database or self.database,
            PATH=path,
            DBT_TARGET_PATH=str(self.work / "dbt" / "target"),
            DBT_LOG_PATH=str(self.work / "dbt" / "logs"),
            DBT_SEND_ANONYMOUS_USAGE_STATS="false",
        )
        for name in PIPELINE_SETTINGS:
            env.pop(name, None)
        env.update(extra)
        return env

    def connect(self, role: str = "transformer", database: str | None = None) -> psycopg.Connection:
        return psycopg.connect(self.server.conninfo(role, database or self.database), autocommit=True)

    def query(
        self,
        statement: str | sql.Composable,
        params: list[Any] | None = None,
        *,
        role: str = "transformer",
        database: str | None = None,
    ) -> list[tuple]:
        with self.connect(role, database) as conn:
            cursor = conn.execute(statement, params)
            return cursor.fetchall() if cursor.description else []

    def log(self, name: str) -> Path:
        return self.work / "logs" / f"{name}.log"

    @contextmanager
    def fresh_database(self, label: str) -> Iterator[str]:
        """A new database for one measurement, dropped afterwards."""
        name = create_database(self.server, f"{self.database}_{label}")
        try:
            yield name
        finally:
            drop_database(self.server, name)

    def load(self, csv_dir: Path, name: str, database: str) -> Timed:
        """The loader on `csv_dir` (wall time and peak memory of its process)."""
        return run(
            loader_command(csv_dir), env=self.env(database=database), log=self.log(name), sample_rss=True
        )

    def copy(self, dataset: files.Dataset, name: str, database: str) -> Timed:
        """`psql \\copy` of each file into a new, empty table with the CSV's columns (no key, no index);
        only the copy is timed, and the row counts COPY reports must be the files' rows."""
        commands = []
        for file_name, path in dataset.path.items():
            spec = TABLES[Path(file_name).stem]
            table = sql.Identifier(FLOOR_SCHEMA, spec.name)
            columns = sql.SQL(", ").join(
                sql.SQL("{} {}{}").format(
                    sql.Identifier(c.name), sql.SQL(c.sql_type), sql.SQL(" not null" if c.not_null else "")
                )
                for c in spec.columns
            )
            self.query(sql.SQL("drop table if exists {}").format(table), database=database)
            self.query(sql.SQL("create table {} ({})").format(table, columns), database=database)
            quoted = str(path).replace("'", "''")
            commands += [
                "-c",
                f"\\copy {FLOOR_SCHEMA}.{spec.name} from '{quoted}' with (format csv, header true)",
            ]
        timed = run(psql_command(self.psql, *commands), env=self.env(database=database), log=self.log(name))
        copied = sum(int(rows) for rows in re.findall(r"^COPY (\d+)$", timed.output, re.MULTILINE))
        if copied != dataset.total_rows:
            raise StepFailed(f"psql \\copy reported {copied:,} rows, the files hold {dataset.total_rows:,}")
        return timed

    def settle(self, database: str | None = None) -> float:
        """The day between two exports: `vacuum (analyze)` the whole database, as autovacuum would (right
        after a bulk load it would still be running, or the first reads would set hint bits), then a
        checkpoint, as the day's timed ones would have written what the load and the vacuum dirtied (else
        the next load shares the disk with that write-back). Returns its seconds, which are reported but
        count in no measure."""
        started = time.perf_counter()
        with self.connect("admin", database) as conn:
            conn.execute("vacuum (analyze)")
            conn.execute("checkpoint")
        return round(time.perf_counter() - started, 3)

    def psql_file(self, path: Path, name: str) -> Timed:
        return run(psql_command(self.psql, "-f", str(path)), env=self.env(), log=self.log(name))

    def pipeline(self, csv_dir: Path, name: str, on_step: Callable[[str], None], **settings: str) -> Timed:
        """init.sh on the main database, as the transformer, docs not served, alerts to the console."""
        env = self.env(
            CSV_DIR=str(csv_dir),
            SERVE_DOCS="false",
            ALERTER_USER="alerter",
            ALERTER_PASSWORD=self.server.passwords["alerter"],
            **settings,
        )
        return run(pipeline_command(), env=env, log=self.log(name), on_step=on_step, cwd=ROOT)

    def dbt(self, name: str, *arguments: str) -> tuple[Timed, Path]:
        """A dbt command on the main database; its timing and its run_results.json."""
        timed = run(dbt_command(*arguments), env=self.env(), log=self.log(name))
        return timed, self.work / "dbt" / "target" / "run_results.json"

    def differences(self, left: str, right: str, columns: str = "*") -> list[int]:
        """[rows of left not in right, rows of right not in left] (both 0: the same rows)."""
        left_rows, right_rows = f"select {columns} from {left}", f"select {columns} from {right}"
        counts = self.query(
            f"""
            select
                (select count(*) from ({left_rows} except all {right_rows}) as only_left),
                (select count(*) from ({right_rows} except all {left_rows}) as only_right)
            """
        )[0]
        return [int(count) for count in counts]
