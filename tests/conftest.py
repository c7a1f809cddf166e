"""Test database: a real Postgres, found in this order (the run's header line says which one and why).

1. TEST_DATABASE_URL: an explicit superuser URL (e.g. postgresql://postgres:pw@localhost:5432/postgres).
2. testcontainers, when a Docker engine answers.
3. An embedded server from the `pgserver` package (no set-up needed).

Each test module that needs a database asks `make_database()` for a fresh one with init.sql
applied, so roles, schemas and grants are exactly those of the container.

Tests that run the whole pipeline (init.sh and dbt, several seconds each) are marked `slow`:
`scripts/test.sh -m "not slow"` is the quick set for development; CI runs everything.

Under pytest-xdist (scripts/test.sh runs `-n auto`) every worker is its own pytest session: with
pgserver or testcontainers each worker starts its own server, so roles, the `dagster` database and the
advisory locks are never shared. With TEST_DATABASE_URL the workers share one server: init.sql runs one
at a time, and a test marked `server_wide` (it changes the cluster-wide roles) runs while no other test
does. Tests are handed out a module at a time (`--dist loadfile`), so module fixtures are built once.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from data_platform import bootstrap
from data_platform.db import LOADER_LOCK_KEY, release_advisory_lock, take_advisory_lock
from data_platform.loader import load_exports

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ROLE_PASSWORDS = {"transformer": "transformer", "alerter": "alerter"}
# as init.sql reads them (psql \getenv)
ROLE_PASSWORD_ENV = {f"{role.upper()}_PASSWORD": password for role, password in ROLE_PASSWORDS.items()}


def _docker_unavailable() -> str | None:
    """Why no Docker engine can run the test database, or None when one answers."""
    import docker
    import requests

    try:
        docker.from_env(timeout=3).ping()
    except (docker.errors.DockerException, requests.RequestException) as error:
        return f"no Docker engine answers: {type(error).__name__}"
    return None


def database_source() -> tuple[str, str]:
    """Which test database the run uses ("url", "testcontainers" or "pgserver") and a line saying why."""
    if os.environ.get("TEST_DATABASE_URL"):
        return "url", "test database: TEST_DATABASE_URL"
    reason = _docker_unavailable()
    if reason is None:
        return "testcontainers", "test database: a postgres:16 container (testcontainers; Docker answers)"
    return (
        "pgserver",
        f"test database: embedded Postgres from pgserver ({reason}; set TEST_DATABASE_URL to choose)",
    )


_SOURCE: tuple[str, str] | None = None
_SOURCE_KEY = "data_platform_database_source"


def _source() -> tuple[str, str]:
    global _SOURCE
    if _SOURCE is None:
        _SOURCE = database_source()
    return _SOURCE


def _worker_count(config) -> int:
    """How many pytest-xdist workers run the session (0: no xdist, tests run in this process)."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        return int(workerinput["workercount"])
    return len(getattr(config.option, "tx", None) or [])  # the controller: one entry per worker


def pytest_report_header(config) -> str:
    kind, line = _source()
    if _worker_count(config) > 1:
        shared = kind == "url"
        line += "; the xdist workers share it" if shared else "; one server per xdist worker"
    return line


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "slow: runs the whole pipeline (init.sh, dbt); skip with -m 'not slow'"
    )
    # an xdist worker takes the source its controller chose and named in the header
    global _SOURCE
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and _SOURCE_KEY in workerinput:
        _SOURCE = tuple(workerinput[_SOURCE_KEY])


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """pytest-xdist's controller, before starting a worker: hand it the database source."""
    node.workerinput[_SOURCE_KEY] = list(_source())


def _shared_server() -> bool:
    """Whether other xdist workers use this worker's Postgres server (TEST_DATABASE_URL)."""
    return _source()[0] == "url" and int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1


# Advisory locks the workers take on a shared server. Advisory locks belong to one database, so every
# worker takes them in the URL's own database.
SERVER_WIDE_LOCK = 0x64_70_01  # shared by each test; exclusive for a `server_wide` test
INIT_SQL_LOCK = 0x64_70_02  # init.sql creates and alters cluster-wide roles: one run at a time


@contextmanager
def _server_lock(key: int, shared: bool = False) -> Iterator[None]:
    if not _shared_server():
        yield
        return
    with psycopg.connect(os.environ["TEST_DATABASE_URL"], autocommit=True) as conn:
        lock = "select pg_advisory_lock_shared(%s)" if shared else "select pg_advisory_lock(%s)"
        conn.execute(lock, [key])
        yield  # closing the connection releases the lock


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items) -> None:
    """Under xdist (`--dist loadfile`) a module is one unit of work, run by one worker in its order, so
    its module fixtures (a database, a pipeline run) are built once. The units that take longest start
    first, Spark's, then those with the most whole-pipeline tests, so that no worker starts a long one
    near the end; inside a unit the Spark tests come first, so that its worker, which asks for more
    work when two of its tests are left, asks only near its end."""
    if getattr(config, "workerinput", None) is None:
        return

    def rank(item) -> int:
        return 0 if item.get_closest_marker("spark") else 1 if item.get_closest_marker("slow") else 2

    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)

    def longest_first(module: str) -> tuple[int, int]:
        ranks = [rank(item) for item in modules[module]]
        return min(ranks), -sum(r < 2 for r in ranks)

    # stable sorts: otherwise as collected (every worker must list the same order)
    order = sorted(modules, key=longest_first)
    items[:] = [item for module in order for item in sorted(modules[module], key=lambda i: rank(i) > 0)]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    # around set-up, call and teardown: module fixtures are built and dropped inside them
    alone = item.get_closest_marker("server_wide") is not None
    with _server_lock(SERVER_WIDE_LOCK, shared=not alone):
        return (yield)


@pytest.fixture(scope="session")
def admin_conninfo() -> Iterator[str]:
    """A superuser conninfo for a running Postgres server."""
    kind, _ = _source()
    if kind == "url":
        yield os.environ["TEST_DATABASE_URL"]
        return
    if kind == "testcontainers":
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver=None) as container:
            yield container.get_connection_url()
        return
    import pgserver

    # pgserver starts no server under a path a shell would split (a TMPDIR with a space, say)
    parent = "/tmp" if bootstrap.shell_unsafe(Path(tempfile.gettempdir())) else None
    data_dir = Path(tempfile.mkdtemp(prefix="data_platform_pg_", dir=parent))
    server = pgserver.get_server(data_dir, cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        _stop_at_once(server.get_pid())
        server.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)


def _stop_at_once(pid: int | None) -> None:
    """Stop a postmaster whose data folder is deleted next: an immediate shutdown (SIGQUIT) skips the
    shutdown checkpoint, which writes out every database the session built (tens of seconds)."""
    import psutil

    if pid is None:
        return
    try:
        postmaster = psutil.Process(pid)
        postmaster.send_signal(signal.SIGQUIT)
        postmaster.wait(timeout=30)
    except psutil.NoSuchProcess:
        pass


@dataclass(frozen=True)
class Database:
    """A fresh database on the test server, bootstrapped with init.sql."""

    name: str
    admin_conninfo: str

    def conninfo(self, role: str = "transformer") -> str:
        params = conninfo_to_dict(self.admin_conninfo)
        params["dbname"] = self.name
        if role != "admin":
            params["user"] = role
            params["password"] = ROLE_PASSWORDS[role]
        return make_conninfo(**params)

    def env(self, role: str = "transformer") -> dict[str, str]:
        """os.environ plus the libpq variables that point at this database as `role`."""
        return libpq_env(self.conninfo(role))

    def connect(self, role: str = "transformer", **kwargs) -> psycopg.Connection:
        return psycopg.connect(self.conninfo(role), **kwargs)

    def query(self, statement: str, params=None, role: str = "admin") -> list[tuple]:
        with self.connect(role, autocommit=True) as conn:
            return conn.execute(statement, params).fetchall()


@contextmanager
def role_setting(database: Database, role: str, name: str, value: str) -> Iterator[None]:
    """Within the block, `role`'s new sessions in `database` take `value` for the setting `name`, as a DBA
    may set it (ALTER ROLE ... IN DATABASE ... SET)."""
    target = sql.SQL("alter role {} in database {}").format(
        sql.Identifier(role), sql.Identifier(database.name)
    )
    with database.connect("admin", autocommit=True) as admin:
        admin.execute(sql.SQL("{} set {} to {}").format(target, sql.Identifier(name), sql.Literal(value)))
        try:
            yield
        finally:
            admin.execute(sql.SQL("{} reset {}").format(target, sql.Identifier(name)))


def libpq_env(conninfo: str) -> dict[str, str]:
    """os.environ without its PG* variables, plus those that name `conninfo`'s connection."""
    params = conninfo_to_dict(conninfo)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        PGHOST=str(params.get("host", "localhost")),
        PGPORT=str(params.get("port", "5432")),
        PGUSER=str(params.get("user", "postgres")),
        PGPASSWORD=str(params.get("password") or ""),
        PGDATABASE=str(params.get("dbname", "postgres")),
    )
    return env


def apply_init_sql(conninfo: str) -> None:
    with _server_lock(INIT_SQL_LOCK):
        bootstrap.apply_init_sql(conninfo, {**os.environ, **ROLE_PASSWORD_ENV})


_counter = itertools.count()


@pytest.fixture(scope="session")
def make_database(admin_conninfo: str):
    """Factory: a new, empty, bootstrapped database each call; dropped at session end (with
    TEST_DATABASE_URL; a pgserver or container is removed whole)."""
    created: list[str] = []

    def factory() -> Database:
        name = f"dp_test_{next(_counter)}_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(admin_conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        created.append(name)
        database = Database(name, admin_conninfo)
        apply_init_sql(database.conninfo("admin"))
        return database

    yield factory
    if _source()[0] != "url":
        # the pgserver data folder or the container goes whole; each drop would force a checkpoint
        # (seconds each, a minute for a session's databases)
        return
    with psycopg.connect(admin_conninfo, autocommit=True) as conn:
        for name in created:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def run_pipeline(
    database: Database, csv_dir: Path, project_root: Path = PROJECT_ROOT, **extra_env: str
) -> subprocess.CompletedProcess:
    """Run init.sh, the one pipeline runner, against `database` (as the container would)."""
    env = pipeline_env(database, csv_dir, project_root, **extra_env)
    return subprocess.run(
        ["bash", str(project_root / "init.sh")],
        cwd=project_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )


def start_pipeline(env: dict[str, str], project_root: Path = PROJECT_ROOT, **popen) -> subprocess.Popen:
    """init.sh started in the background in `env` (pipeline_env), its stdout a text pipe."""
    return subprocess.Popen(
        ["bash", str(project_root / "init.sh")],
        cwd=project_root,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        **popen,
    )


def lines_until(process: subprocess.Popen, marker: str) -> list[str]:
    """The process's output lines up to the first one holding `marker`, which ends them."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if marker in line:
            break
    return lines


_BUILD_DIRS: dict[str, Path] = {}
_SCRATCH: Path | None = None


def scratch_dir() -> Path:
    """This test process's folder for what outlives one test (dbt output that a module's tests share),
    removed when its session ends: a whole run makes hundreds of dbt output folders of megabytes each."""
    global _SCRATCH
    if _SCRATCH is None:
        _SCRATCH = Path(tempfile.mkdtemp(prefix="data_platform_tests_"))
    return _SCRATCH


def pytest_sessionfinish(session, exitstatus) -> None:
    if _SCRATCH is not None:
        shutil.rmtree(_SCRATCH, ignore_errors=True)


def pipeline_env(
    database: Database, csv_dir: Path, project_root: Path = PROJECT_ROOT, **extra_env: str
) -> dict[str, str]:
    """The environment init.sh gets in the container, pointed at the test database."""
    env = database.env("transformer")
    # dbt and python from this interpreter's environment; dbt output away from the checkout
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # one dbt output folder per database and project: dbt's partial parsing carries over between runs
    key = f"{database.name}:{project_root}"
    build_dir = _BUILD_DIRS.setdefault(key, Path(tempfile.mkdtemp(prefix="dbt_build_", dir=scratch_dir())))
    env.update(
        CSV_DIR=str(csv_dir),
        SERVE_DOCS="false",
        ALERTER_USER="alerter",
        ALERTER_PASSWORD=ROLE_PASSWORDS["alerter"],
        DBT_TARGET_PATH=str(build_dir / "target"),
        DBT_LOG_PATH=str(build_dir / "logs"),
        DBT_SEND_ANONYMOUS_USAGE_STATS="false",
    )
    env.pop("SLACK_WEBHOOK_URL", None)
    env.update(extra_env)
    return env


def require_java() -> None:
    """Spark needs a Java runtime: without one its tests skip, except in CI (CI set, as .ci/run does),
    where every test must run and a missing runtime fails them."""
    if shutil.which("java") is not None:
        return
    if os.environ.get("CI"):
        pytest.fail("Spark needs a Java runtime (java on PATH): .ci/run installs one")
    pytest.skip("Spark needs a Java runtime (java on PATH)")


def dbt_by_hand(database: Database, csv_dir: Path, project: Path, *command: str, **env: str) -> str:
    """A dbt command run by hand in `project`, as the pipeline's role, with init.sh's environment; it must
    succeed. Its output (a selection that matches nothing succeeds too)."""
    ran = subprocess.run(
        ["dbt", *command, "--project-dir", "dbt", "--profiles-dir", ".dbt"],
        cwd=project,
        env=pipeline_env(database, csv_dir, project, **env),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return ran.stdout


def loader_by_hand(database: Database, csv_dir: Path, *options: str) -> None:
    """`python -m data_platform.loader <options>` run by hand, as the pipeline's role, with init.sh's
    environment; it must succeed."""
    loaded = subprocess.run(
        [sys.executable, "-m", "data_platform.loader", *options],
        cwd=PROJECT_ROOT,
        env=pipeline_env(database, csv_dir),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert loaded.returncode == 0, loaded.stderr


def copy_project(destination: Path) -> Path:
    """A private copy of the pipeline (code, dbt project, scripts) that a test may edit."""
    destination.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns(".venv", ".git", "target", "logs", "__pycache__", ".pgdata", "bench")
    for name in ("init.sh", "alert_script.py", "init.sql"):
        shutil.copy2(PROJECT_ROOT / name, destination / name)
    for name in ("data_platform", "dbt", ".dbt", "csv_data"):
        shutil.copytree(PROJECT_ROOT / name, destination / name, ignore=ignore)
    return destination


# The loader's tests share these: a module's own database, an empty raw layer per test, the base export.


@pytest.fixture
def instance(tmp_path):
    """A Dagster instance with its storage in a temporary folder; a module that needs the daily profile's
    Postgres storage defines its own."""
    from dagster import DagsterInstance  # only the orchestration tests import Dagster

    home = tmp_path / "dagster_home"
    home.mkdir()
    with DagsterInstance.local_temp(str(home)) as instance:
        yield instance


@pytest.fixture
def postgres_instance(tmp_path, make_database):
    """A Dagster instance on Postgres, where the daily profile keeps its runs and events (a database of
    its own on the test server): what only Postgres does, such as ids handed out before their commit."""
    from dagster import DagsterInstance
    from orchestration_support import dagster_pg_url, daily_home

    storage = {"postgres": {"postgres_url": dagster_pg_url(make_database().conninfo("admin"))}}
    with DagsterInstance.from_config(str(daily_home(tmp_path, storage))) as instance:
        yield instance


@pytest.fixture
def daily_instance(tmp_path):
    """A Dagster instance as dagster_home/dagster.yaml configures the daily profile (its queue, run
    monitoring and run retries), with its storage in a temporary folder."""
    from dagster import DagsterInstance
    from orchestration_support import daily_home

    with DagsterInstance.from_config(str(daily_home(tmp_path))) as instance:
        yield instance


@pytest.fixture(scope="module")
def database(make_database) -> Database:
    """A fresh database for the test module (a module with its own set-up defines its own)."""
    return make_database()


@pytest.fixture
def conn(database: Database) -> Iterator[psycopg.Connection]:
    """The transformer's connection on empty raw tables; autocommit, as in the loader's command line,
    where every export is its own top-level transaction."""
    from loader_files import reset_raw  # here: loader_files imports this module

    with database.connect("transformer", autocommit=True) as connection:
        reset_raw(connection)
        yield connection


@pytest.fixture
def baseline(conn: psycopg.Connection, tmp_path: Path) -> dict:
    """The good base export loaded: what a failed load must leave exactly as it is."""
    from loader_files import snapshot, write_dir  # here: loader_files imports this module

    load_exports(conn, write_dir(tmp_path / "baseline"))
    return snapshot(conn)


def hold_the_loaders_lock(conn: psycopg.Connection) -> None:
    """Take the loader's lock on `conn`'s session and keep it, as a loader run by hand does."""
    conn.execute("select pg_advisory_lock(hashtext(%s))", [LOADER_LOCK_KEY])


def loaders_lock_free(conn: psycopg.Connection) -> bool:
    """Whether `conn`'s session can take the loader's lock now (it is let go again at once)."""
    taken = take_advisory_lock(conn, LOADER_LOCK_KEY, 0, lambda: None)
    if taken:
        release_advisory_lock(conn, LOADER_LOCK_KEY)
    return taken


def sessions_blocked_by(database: Database, holder: psycopg.Connection) -> list[str]:
    """The application of every session waiting for a lock that `holder`'s session holds (read on a
    connection of its own: a transaction sees the activity of its start)."""
    blocked = database.query(
        "select application_name from pg_stat_activity where %s = any(pg_blocking_pids(pid))",
        (holder.info.backend_pid,),
    )
    return [application for (application,) in blocked]


def wait_until(condition, what: str, timeout: float = 30) -> None:
    """Poll `condition` until it holds; fail, naming `what` was waited for, after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
