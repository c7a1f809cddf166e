"""The pipeline's steps, in one place for every runner (init.sh, the container, the tests).

    wait for the database -> load the pending exports -> plan the build (refresh.py)
    -> dbt build (the rules seed, models, tests) -> record the build -> dbt docs generate -> one alert run
    (which runs even when the docs failed: the run then fails with the docs' error)

dbt imports itself and parses the project while the loader runs (WarmDbt, warm_dbt.py): on a day's
export that start-up would otherwise be a quarter of the run.

`python -m data_platform.pipeline` runs them in order and stops at the first failure with its exit code;
init.sh execs it. A run that went to its end exits 0, or 4 (5) when the alert run left alerts undelivered
(gave up on some), unless the docs are then served. Settings come from the environment (see
`Settings`), connections from the libpq variables (the transformer role).

One run at a time: the run holds a Postgres advisory lock for its whole length, so a second run waits
(PIPELINE_LOCK_TIMEOUT seconds) and then stops with a clear message instead of dropping tables under a running
build; from the plan to the build's record it holds the loader's lock too, so a loader run by hand cannot
change the build's input under it. Each step runs as a child process in its own process group (steps.py);
SIGTERM or SIGINT to the pipeline is passed on to the running step as SIGINT (dbt then cancels its queries,
the loader rolls back), waited for, and the run ends with 128 + the signal number. The build is recorded in
the warehouse only after `dbt build` succeeded, so the next run builds again what an interrupted run left
unfinished (the same window, or in full when the rules or the project changed; refresh.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import errno
import json
import math
import os
import signal
import socketserver
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

from data_platform import build_failures, refresh, warm_dbt
from data_platform.alerts import config as alert_config
from data_platform.alerts import exit_codes as alert_exit_codes
from data_platform.alerts import routing
from data_platform.db import (
    LOADER_LOCK_KEY,
    PIPELINE_LOCK_SESSION,
    DatabaseUnavailable,
    advisory_lock_holder,
    connect,
    describe_target,
    release_advisory_lock,
    take_advisory_lock,
    wait_until_ready,
)
from data_platform.load_errors import ERROR_PREFIX as LOADER_ERROR_PREFIX
from data_platform.load_errors import EXIT_BUSY
from data_platform.load_errors import EXIT_DATABASE_UNAVAILABLE as EXIT_LOADER_UNAVAILABLE
from data_platform.paths import DBT_DIR_ARGS, PROJECT_ROOT, dbt_target_dir
from data_platform.steps import (
    Stopped,
    exit_status,
    failed,
    run_child_quoting_stderr,
    start_child,
    step,
    stop_on_signals,
    wait_child,
    wait_or_kill,
)

# the pipeline loads and builds Postgres whatever DBT_TARGET says (the other engines' raw layer comes
# from data_platform.engines, see the README's "Other engines"); Dagster's dbt resource uses it too
DBT_PROFILE_TARGET = "dev"
DBT_ARGS = (*DBT_DIR_ARGS, "--target", DBT_PROFILE_TARGET)
LOCK_KEY = "data_platform.pipeline"
EXIT_CONFIG = 2  # a setting to fix, or no database
# EXIT_BUSY (3) is the loader's exit code when its lock is busy, and the pipeline's when another pipeline
# run, a loader run by hand or an alert run by hand holds its lock past PIPELINE_LOCK_TIMEOUT: nothing is
# wrong, run again later

# The run went to its end and the warehouse is built, but not every alert was delivered: a run from cron
# must not end green then. Not used while the docs are served: the server runs on, the message is printed.
EXIT_ALERTS_UNDELIVERED = 4  # they wait for the next alert run
EXIT_ALERTS_GIVEN_UP = 5  # some were given up on: check the channel
# A failed load's error quotes the loader's stderr from its last error line on, or else its last lines:
# at most this many lines, each shortened (steps.MAX_QUOTED_LINE_CHARS).
LOADER_LINES_KEPT = 20
# An alert run that could not deliver every alert is quoted from its last failed delivery on: that line
# and the run's notes after it (at most 4), which with the step's own line fit the 8 lines a failure alert
# shows (orchestration.notify.ERROR_LINES_SHOWN).
ALERT_LINES_KEPT = 6
# a step's exit codes after Ctrl-C or SIGTERM sent to it (the loader rolls back the export it was loading,
# the alert run keeps what it committed)
STOPPED = (128 + signal.SIGINT, 128 + signal.SIGTERM)


class PipelineError(Exception):
    """A step failed or the run could not start; `exit_code` is what the pipeline exits with."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_status(exit_code)


class AlertRun(enum.Enum):
    """How an alert run that went to its end left the alerts: what the caller reports, and whether a
    retry can still help (the undelivered ones), or not (given up: the channel needs a human's eye)."""

    DELIVERED = "every alert delivered"
    UNDELIVERED = "some alerts are still undelivered (the alert run said which, and why, above)"
    GIVEN_UP = (
        "some balance alerts got no answer for the last allowed time and are not sent again (status "
        "'unknown' in ops.alert_history): check the channel they go to"
    )


@dataclass(frozen=True)
class AlertRunEnd:
    """An alert run that went to its end: how it left the alerts, and what it said on stderr from its last
    failed delivery on (where to, why, its notes), which a failure alert quotes."""

    outcome: AlertRun
    said: tuple[str, ...] = ()


DEFAULT_CSV_DIR = PROJECT_ROOT / "csv_data"
BOOLEAN_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False}
BOOLEAN_WORDS |= {"no": False, "off": False}


def _boolean(environ: dict[str, str], name: str, default: bool) -> bool:
    """An empty or blank value is unset, as for every other setting (and compose's ${NAME:-default})."""
    raw = environ.get(name, "")
    if not raw.strip():
        return default
    try:
        return BOOLEAN_WORDS[raw.strip().lower()]
    except KeyError:
        raise PipelineError(f"{name} must be true or false, got {raw!r}", EXIT_CONFIG) from None


def _number(environ: dict[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "")
    if not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        raise PipelineError(f"{name} must be a number of seconds >= 0, got {raw!r}", EXIT_CONFIG)
    if not math.isfinite(value):  # nan or inf: the wait would never end
        raise PipelineError(f"{name} must be a finite number of seconds, got {raw!r}", EXIT_CONFIG)
    return value


def _port(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    value = int(raw) if raw.isascii() and raw.isdigit() else 0
    if not 1 <= value <= 65535:
        raise PipelineError(f"{name} must be a port number from 1 to 65535, got {raw!r}", EXIT_CONFIG)
    return value


def _check_threads(environ: Mapping[str, str]) -> None:
    """DBT_THREADS, which dbt's profiles read (blank: their default), is a whole number from 1: checked
    before the load, not found by dbt after it (0 was a traceback, a word a compilation error)."""
    raw = environ.get("DBT_THREADS", "").strip()
    if raw and not (raw.isascii() and raw.isdigit() and int(raw) >= 1):
        raise PipelineError(f"DBT_THREADS must be a whole number from 1, got {raw!r}", EXIT_CONFIG)


ROUTING_SEED = PROJECT_ROOT / routing.SEED


def _check_alert_settings(environ: Mapping[str, str]) -> None:
    """The alert run's own settings (ALERT_*, the webhook, each route's webhook), as it reads them at the
    run's end: a setting to fix is said before the load and the build, not after them, and a Dagster step
    does not retry it. ALERT_LOCK_TIMEOUT is the pipeline's to set (run_alerts). The routes are the seed
    file's, which the build is about to put in the marts; one the build would refuse is left to it."""
    try:
        settings = alert_config.load(
            [], {name: value for name, value in environ.items() if name != "ALERT_LOCK_TIMEOUT"}
        )
        routes = routing.routes_in_seed(ROUTING_SEED)
        if routes is not None:
            routing.destinations(routes, settings, routing.SEED)
    except alert_config.ConfigError as error:
        raise PipelineError(f"the alert run's settings: {error}", EXIT_CONFIG) from None


def csv_dir_from_environment(environ: Mapping[str, str] | None = None) -> Path:
    """CSV_DIR, the exports' folder, absolute. The export sensor and the freshness check read it here, not
    through Settings: another setting that cannot be used must fail the runs, not stop them watching the
    exports. A relative one is taken from the working directory, as the loader's --csv-dir is: the steps
    run in the project's folder."""
    raw = (os.environ if environ is None else environ).get("CSV_DIR")
    return Path(raw).absolute() if raw else DEFAULT_CSV_DIR


@dataclass(frozen=True)
class Settings:
    """The pipeline's switches (environment variables), with their defaults."""

    csv_dir: Path = DEFAULT_CSV_DIR
    db_wait_seconds: float = 60
    lock_timeout_seconds: float = 600
    full_refresh: bool = False
    run_alerts: bool = True
    alerter_user: str = "alerter"
    alerter_password: str = "alerter"
    serve_docs: bool = False
    docs_host: str = "0.0.0.0"
    docs_port: int = 8080

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        serve_docs = _boolean(env, "SERVE_DOCS", cls.serve_docs)
        _check_threads(env)
        run_alerts = _boolean(env, "RUN_ALERTS", cls.run_alerts)
        if run_alerts:
            _check_alert_settings(env)
        return cls(
            csv_dir=csv_dir_from_environment(env),
            db_wait_seconds=_number(env, "DB_WAIT_SECONDS", cls.db_wait_seconds),
            lock_timeout_seconds=_number(env, "PIPELINE_LOCK_TIMEOUT", cls.lock_timeout_seconds),
            full_refresh=_boolean(env, "FULL_REFRESH", cls.full_refresh),
            run_alerts=run_alerts,
            alerter_user=env.get("ALERTER_USER", "").strip() or cls.alerter_user,
            alerter_password=env.get("ALERTER_PASSWORD") or cls.alerter_password,
            serve_docs=serve_docs,
            docs_host=env.get("DOCS_HOST") or cls.docs_host,
            # read only by the docs server: a run that serves none does not fail on it
            docs_port=_port(env, "DOCS_PORT", cls.docs_port) if serve_docs else cls.docs_port,
        )


def dbt(*args: str, env: dict[str, str] | None = None) -> int:
    """`dbt <args>` in a process of its own, as the build runs (warm_dbt.py): a stop request ends it as
    quietly. Its exit code."""
    with WarmDbt(env) as warm:
        return warm.run(*args, env=dict(os.environ) if env is None else env)


class WarmDbt:
    """A dbt process that imports dbt and parses the project while the loader runs (warm_dbt.py), then
    runs the one command `run` sends it. Leaving the block without a command lets it exit unused."""

    def __init__(self, env: dict[str, str] | None = None):
        self.env = env

    def __enter__(self) -> WarmDbt:
        self.child = start_child(
            warm_dbt.command(list(DBT_ARGS)),
            env=self.env,
            block_sigint=True,
            stdin=subprocess.PIPE,
            text=True,
        )
        return self

    def run(self, *args: str, env: dict[str, str]) -> int:
        """`dbt <args>` in `env`, with the project parsed already; its exit code."""
        try:
            self.child.stdin.write(json.dumps({"args": [*args, *DBT_ARGS], "env": env}) + "\n")
            self.child.stdin.close()
        except BrokenPipeError:
            pass  # it stopped early and printed why; its exit code says the rest
        return wait_child(self.child)

    def __exit__(self, exc_type, exc, traceback) -> None:
        if self.child.poll() is not None:
            return
        if exc_type is not None:
            # The load failed or a stop request came before any command: no parse is worth waiting for,
            # and nothing it holds needs cleaning up (it has no database connection). SIGTERM ends it at
            # any point, before it handles SIGINT too.
            self.child.terminate()
        with contextlib.suppress(BrokenPipeError):  # a command left in the buffer, for a stopped process
            self.child.stdin.close()
        wait_or_kill(self.child)


class PipelineLock:
    """A session advisory lock held for the run; a second run waits up to `timeout` seconds.

    The lock lives as long as its session, which sits idle for the whole run: nothing may end it
    unnoticed. The session turns off idle_session_timeout and keeps its TCP connection alive (a NAT or
    proxy drops a silent one), and `check` tells a run whose session ended anyway (pg_terminate_backend, a
    dropped connection) before it starts or records a build, when another run may be building beside it.
    """

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.conn: psycopg.Connection | None = None

    def __enter__(self) -> PipelineLock:
        self.conn = connect(
            autocommit=True,
            application_name=PIPELINE_LOCK_SESSION,
            keepalives=1,
            keepalives_idle=60,
            keepalives_interval=10,
            keepalives_count=6,
        )
        self.conn.execute("set idle_session_timeout = 0")

        def say() -> None:
            print(f"another pipeline run is in progress: waiting up to {self.timeout:g}s", flush=True)

        if not take_advisory_lock(self.conn, LOCK_KEY, self.timeout, say):
            self.conn.close()
            raise PipelineError(
                f"another pipeline run holds the lock on {describe_target()} "
                f"(waited {self.timeout:g}s; PIPELINE_LOCK_TIMEOUT sets how long). "
                "Let it finish, then run again.",
                EXIT_BUSY,
            )
        return self

    def __exit__(self, *exc_info) -> None:
        if self.conn is not None:
            self.conn.close()  # ends the session, which releases the lock

    @contextlib.contextmanager
    def loads_held(self) -> Iterator[None]:
        """Hold the loader's lock too, from the plan to the build's record: an export a loader run by hand
        committed during the build would reach some of its models and tests and not others."""

        def say() -> None:
            print(f"a loader run by hand is in progress: waiting up to {self.timeout:g}s", flush=True)

        if not take_advisory_lock(self.conn, LOADER_LOCK_KEY, self.timeout, say):
            raise PipelineError(
                f"a loader run by hand still holds the loader's lock (waited {self.timeout:g}s; "
                "PIPELINE_LOCK_TIMEOUT sets how long): nothing was built; run again when it has finished",
                EXIT_BUSY,
            )
        try:
            yield
        finally:
            with contextlib.suppress(psycopg.Error):  # a session that ended released it
                release_advisory_lock(self.conn, LOADER_LOCK_KEY)

    def check(self) -> None:
        """PipelineError when this run no longer holds the lock: its session ended."""
        try:
            holder = advisory_lock_holder(self.conn, LOCK_KEY) if self.conn is not None else None
            held = holder is not None and holder.backend == self.conn.info.backend_pid
        except psycopg.Error:
            held = False
        if not held:
            raise PipelineError(
                "this run lost the pipeline lock: its database session ended (terminated, or its connection "
                "dropped), so another run may have started beside it"
            )

    @staticmethod
    def held(conn: psycopg.Connection) -> bool:
        """Whether some session holds the lock (init.sh's run, or a Dagster step), seen from `conn`."""
        return advisory_lock_holder(conn, LOCK_KEY) is not None


def wait_for_database(settings: Settings) -> None:
    step(f"waiting for the database (up to {settings.db_wait_seconds:g}s)")
    wait_until_ready(settings.db_wait_seconds)
    print(f"database {describe_target()} is ready")
    check_alerter_role(settings)


def check_alerter_role(settings: Settings) -> None:
    """The build grants ALERTER_USER select on the marts and the alert run logs in as it: a role that does
    not exist is a setting to fix, said before anything is loaded, not a model's error after the load."""
    with connect() as conn:
        found = conn.execute("select from pg_roles where rolname = %s", (settings.alerter_user,)).fetchone()
    if found is None:
        raise PipelineError(
            f"ALERTER_USER={settings.alerter_user} is not a role on {describe_target()}: the build grants "
            "it the marts and the alert run logs in as it. Create it (init.sql creates alerter) or set "
            "ALERTER_USER to a role that exists; nothing was loaded or built",
            EXIT_CONFIG,
        )


def _ended(code: int) -> str:
    """How a step that was killed, or stopped by a signal sent to it (STOPPED), ended."""
    return failed(code) if code < 0 else f"was stopped by {signal.Signals(code - 128).name}"


def loader_error(quoted: Sequence[str]) -> str:
    """Why the loader stopped: its quoted stderr, the error line without its prefix."""
    return "\n".join(
        line.removeprefix(LOADER_ERROR_PREFIX) if n == 0 else line for n, line in enumerate(quoted)
    )


def load_exports(settings: Settings, through: str | None = None) -> None:
    """Load every pending export; `through` (YYYY-MM-DD): only the dated folders up to that day.

    A failed load's PipelineError quotes the loader's error: a Dagster step's failure alert quotes that
    error, and has no "above" to point to."""
    step(f"loading the exports in {settings.csv_dir}" + (f" up to {through}" if through else ""))
    if not settings.csv_dir.is_dir():  # a setting to fix, not an export: the loader's advice would not fit
        raise PipelineError(
            f"CSV_DIR {settings.csv_dir} is not a folder: set it to the folder of the exports; nothing was "
            "loaded or built",
            EXIT_CONFIG,
        )
    command = [sys.executable, "-m", "data_platform.loader", "--csv-dir", str(settings.csv_dir)]
    # a loader started by hand is waited for as another pipeline run is
    command += ["--wait", f"{settings.lock_timeout_seconds:g}"]
    code, stderr = run_child_quoting_stderr(
        command + (["--through", through] if through else []), LOADER_LINES_KEPT, LOADER_ERROR_PREFIX
    )
    if not code:
        return
    if code < 0 or code in STOPPED:  # killed, or stopped by a signal sent to it, not to the run
        how = _ended(code)
        raise PipelineError(
            f"the loader {how}: the export it was loading was rolled back, the ones it reported loaded "
            "stay loaded; nothing was built: run again",
            code,
        )
    said = loader_error(stderr) or f"the loader exited with {code} and printed no error"
    if code == EXIT_LOADER_UNAVAILABLE:
        raise PipelineError(f"the load could not start: {said}\nnothing was loaded or built", code)
    if code == EXIT_BUSY:  # the loader says who holds its lock (a loader run by hand, say)
        raise PipelineError(f"the load could not start: {said}\nnothing was built", code)
    # each export commits on its own: the ones before the failing export stay loaded
    raise PipelineError(
        f"the load failed: {said}\nnothing was built: exports the loader reported loaded stay loaded; "
        "the failing export and the later ones were not: fix or remove it, and the next run loads "
        "and builds the rest",
        code,
    )


def plan(settings: Settings, project: str | None = None) -> refresh.BuildPlan:
    """The next build; `project`: the project's fingerprint taken before a dbt that parsed ahead of this
    plan (the warm process), else the files now (a dbt started after the plan parses them then)."""
    with connect() as conn:
        return refresh.plan_build(conn, force_full=settings.full_refresh, project=project)


def build(build_plan: refresh.BuildPlan, warm: WarmDbt, settings: Settings, lock: PipelineLock) -> None:
    if build_plan.full_refresh:
        step(f"dbt build: rules, models and tests, rebuilt from scratch ({build_plan.reason})")
    else:
        step(f"dbt build: rules, models and tests, days from {build_plan.window_start} ({build_plan.reason})")
    with recorded_build(build_plan, settings, lock, dbt_target_dir()):
        code = warm.run("build", *build_plan.dbt_args(), env=build_plan.dbt_environment())
        if code:
            build_failures.show(dbt_target_dir())
            raise PipelineError(f"dbt build {failed(code)}; {build_plan.after_failure()}", code)


@contextlib.contextmanager
def recorded_build(
    build_plan: refresh.BuildPlan,
    settings: Settings,
    lock: PipelineLock,
    target_dir: Path,
    *,
    record: bool = True,
) -> Iterator[None]:
    """What surrounds the plan's `dbt build`, for both runners (init.sh's and Dagster's build step): mark
    the record (mark_build_started) and forget the previous run's results, then the body runs the build
    into `target_dir` and raises if it failed; a body that returns is recorded (record_build), unless
    `record` is false (a build of some models only)."""
    own_mark = mark_build_started(build_plan, settings, lock)
    build_failures.forget_run_results(target_dir)
    yield
    if record:
        record_build(build_plan, settings, lock, own_mark)


def mark_build_started(
    build_plan: refresh.BuildPlan, settings: Settings, lock: PipelineLock
) -> dt.datetime | None:
    """Call it just before the plan's `dbt build`, under `lock` (a full rebuild must be redone if it does
    not finish; meanwhile the alerter reads no day); the build's own mark, for record_build."""
    lock.check()
    with connect() as conn:
        return refresh.mark_build_started(conn, build_plan, reader=settings.alerter_user)


def record_build(
    build_plan: refresh.BuildPlan, settings: Settings, lock: PipelineLock, own_mark: dt.datetime | None
) -> None:
    """Remember the plan's state; call it only after its `dbt build` succeeded, under `lock`, with the mark
    it set (the alerter reads the days up to its newest export from then on). A build that lost the lock
    meanwhile may have run beside another one, and one whose rules or SQL changed while dbt read them may
    have built either version: neither is recorded, and the next build is a full one."""
    try:
        lock.check()
        changed = refresh.changed_since_plan(build_plan)
        if changed:
            raise PipelineError(f"{changed} changed while dbt built, so which version it built is unknown")
    except PipelineError as error:
        with connect() as conn:
            refresh.mark_rebuild_needed(conn)
        message = f"{error}; its build is not recorded, and the next run rebuilds from scratch"
        raise PipelineError(message) from None
    with connect() as conn:
        refresh.record_build(conn, build_plan.current, reader=settings.alerter_user, own_mark=own_mark)


def generate_docs(build_plan: refresh.BuildPlan) -> None:
    step("dbt docs generate")
    # the build's environment, so dbt reuses the build's parse instead of parsing again
    code = dbt("docs", "generate", env=build_plan.dbt_environment())
    if code:
        raise PipelineError(f"dbt docs generate {failed(code)}", code)


def run_alerts(settings: Settings) -> AlertRunEnd:
    """One alert run; undelivered or given-up alerts are reported here and returned, so the caller
    decides whether that fails its step. Any other failure raises PipelineError."""
    step("alerts")
    env = {
        **os.environ,
        "PGUSER": settings.alerter_user,
        "PGPASSWORD": settings.alerter_password,
        # an alert run by hand or from cron is waited for as another pipeline run is
        "ALERT_LOCK_TIMEOUT": f"{min(settings.lock_timeout_seconds, alert_config.LOCK_TIMEOUT_MAX):g}",
    }
    code, said = run_child_quoting_stderr(
        [sys.executable, str(PROJECT_ROOT / "alert_script.py")],
        ALERT_LINES_KEPT,
        alert_exit_codes.DELIVERY_FAILED_LINE,
        env=env,
    )
    outcomes = {
        alert_exit_codes.OK: AlertRun.DELIVERED,
        alert_exit_codes.DELIVERY_FAILED: AlertRun.UNDELIVERED,
        alert_exit_codes.GIVEN_UP: AlertRun.GIVEN_UP,
    }
    if code not in outcomes:
        if code == alert_exit_codes.BUSY:  # it said who: an alert run by hand or from cron
            how, code = "found another alert run still running", EXIT_BUSY
        else:
            how = _ended(code) if code in STOPPED else failed(code, show_code=True)
        raise PipelineError(
            f"the alert run {how}; the build is recorded: the next alert run "
            "(alert_script.py, or the next pipeline run) alerts its days",
            code,
        )
    if outcomes[code] is AlertRun.DELIVERED:
        return AlertRunEnd(AlertRun.DELIVERED)
    print(f"pipeline: {outcomes[code].value}.", file=sys.stderr)
    return AlertRunEnd(outcomes[code], tuple(said))


def run(settings: Settings) -> AlertRunEnd | None:
    """Every step, in order, under the pipeline lock; how the alert run left the alerts (None: none ran)."""
    wait_for_database(settings)
    with PipelineLock(settings.lock_timeout_seconds) as lock:
        project = refresh.project_fingerprint()  # before the warm process parses the project
        with WarmDbt() as warm:
            load_exports(settings)
            with lock.loads_held():
                build_plan = plan(settings, project)
                build(build_plan, warm, settings, lock)
        try:
            generate_docs(build_plan)
            docs_failed = None
        except PipelineError as error:  # the warehouse is built: its alerts matter more than its docs
            docs_failed = error
        # the warehouse is fine whatever the alerts' fate: undelivered ones wait for the next alert run, a
        # given-up one was reported by the alert run and here
        alerts = run_alerts(settings) if settings.run_alerts else None
        if docs_failed:
            raise docs_failed
    step("pipeline finished")
    return alerts


def check_docs_address(settings: Settings) -> None:
    """Bind DOCS_HOST and DOCS_PORT as `dbt docs serve` does, and let go: a port in use (or a host that
    is not this machine's) is a PipelineError naming them, not dbt's traceback."""
    try:
        with socketserver.TCPServer(
            (settings.docs_host, settings.docs_port), socketserver.BaseRequestHandler
        ):
            pass
    except OSError as error:
        raise _unservable(settings, error) from None


def _unservable(settings: Settings, error: OSError) -> PipelineError:
    return PipelineError(
        f"the docs cannot be served on DOCS_HOST={settings.docs_host} DOCS_PORT={settings.docs_port}: "
        f"{error.strerror or error}",
        EXIT_CONFIG,
    )


def serve_docs(settings: Settings) -> None:
    """Serve the docs in this process until SIGINT or SIGTERM (the container's signals) ends it."""
    # again: the port may have been taken while the pipeline ran (dbt binds it a moment after this check)
    check_docs_address(settings)
    step(f"serving the dbt docs on http://{settings.docs_host}:{settings.docs_port}")
    # dbt turns Ctrl-C into a traceback and exit 2: stopping the server is its normal end, said in words
    # (set before dbt's import, which takes seconds)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop_serving)
    from dbt.cli.main import dbtRunner

    args = ["docs", "serve", *DBT_ARGS, "--host", settings.docs_host, "--port", str(settings.docs_port)]
    error = dbtRunner().invoke([*args, "--no-browser"]).exception
    if isinstance(error, OSError) and error.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
        raise _unservable(settings, error)  # taken between the check and dbt's bind
    raise PipelineError(f"dbt docs serve ended: {error or 'see its output above'}")


def _stop_serving(signum: int, _frame: object) -> None:
    # os.write, not print: a print interrupted here, or to a closed pipe, would raise and keep it serving
    try:
        os.write(2, f"pipeline: the docs server stopped ({signal.Signals(signum).name}).\n".encode())
    except OSError:
        pass
    finally:
        os._exit(128 + signum)  # nothing to clean up: the run's work is committed, the server keeps no state


def main(argv: list[str] | None = None) -> int:
    if argv:
        print(f"usage: python -m data_platform.pipeline (settings come from the environment)\n{__doc__}")
        return EXIT_CONFIG
    with stop_on_signals():
        return _main()


def _main() -> int:
    try:
        settings = Settings.from_environment()
        if settings.serve_docs:
            check_docs_address(settings)  # before any work, not after the whole run
        alerts = run(settings)
        if settings.serve_docs:
            serve_docs(settings)
        if alerts and alerts.outcome is AlertRun.UNDELIVERED:
            return EXIT_ALERTS_UNDELIVERED
        if alerts and alerts.outcome is AlertRun.GIVEN_UP:
            return EXIT_ALERTS_GIVEN_UP
    except PipelineError as error:
        print(f"pipeline: {error}", file=sys.stderr)
        return error.exit_code
    except DatabaseUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except Stopped as stop:
        print(f"pipeline: stopped by {stop}; the warehouse keeps its last committed state.", file=sys.stderr)
        return 128 + stop.signum
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
