"""The pipeline's steps, in one place for every runner (init.sh, the container, the tests).

    wait for the database -> load the pending exports -> plan the build (refresh.py)
    -> dbt build (the rules seed, models, tests) -> record the build -> dbt docs generate -> one alert run
    (which runs even when the docs failed: the run then fails with the docs' error)

dbt imports itself and parses the project while the loader runs (WarmDbt, warm_dbt.py): on a day's
export that start-up would otherwise be a quarter of the run.

`python -m data_platform.pipeline` runs them in order and stops at the first failure with its exit code;
init.sh execs it. A run that went to its end exits 0, or 4 (5) when the alert run left alerts undelivered
(gave up on some), unless the docs are then served (docs_server.py). Settings come from the environment
(pipeline_settings.py), connections from the libpq variables (the transformer role).

One run at a time: the run holds a Postgres advisory lock for its whole length (pipeline_lock.py), so a
second run waits (PIPELINE_LOCK_TIMEOUT seconds) and then stops with a clear message instead of dropping
tables under a running build; from the plan to the build's record it holds the loader's lock too, so a
loader run by hand cannot change the build's input under it. Each step runs as a child process in its own
process group (steps.py); SIGTERM or SIGINT to the pipeline is passed on to the running step as SIGINT (dbt
then cancels its queries, the loader rolls back), waited for, and the run ends with 128 + the signal number.
The build is recorded in the warehouse only after `dbt build` succeeded, so the next run builds again what
an interrupted run left unfinished (the same window, or in full when the rules or the project changed;
refresh.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

from data_platform import build_failures, refresh, warm_dbt
from data_platform.alerts import config as alert_config
from data_platform.alerts import exit_codes as alert_exit_codes
from data_platform.db import DatabaseUnavailable, connect, describe_target, wait_until_ready
from data_platform.docs_server import check_docs_address, serve_docs
from data_platform.load_errors import ERROR_PREFIX as LOADER_ERROR_PREFIX
from data_platform.load_errors import EXIT_BUSY
from data_platform.load_errors import EXIT_DATABASE_FAILED as EXIT_LOADER_DATABASE_FAILED
from data_platform.load_errors import EXIT_DATABASE_UNAVAILABLE as EXIT_LOADER_UNAVAILABLE
from data_platform.paths import DBT_ARGS, PROJECT_ROOT, dbt_log_dir, dbt_target_dir
from data_platform.pipeline_errors import (
    EXIT_ALERTS_GIVEN_UP,
    EXIT_ALERTS_UNDELIVERED,
    EXIT_CONFIG,
    PipelineError,
)
from data_platform.pipeline_lock import PipelineLock
from data_platform.pipeline_settings import Settings
from data_platform.steps import (
    Stopped,
    failed,
    output_lost,
    run_child_quoting_stderr,
    say,
    start_child,
    step,
    stop_on_signals,
    wait_child,
    wait_or_kill,
)

# What dbt's folders need free before a run: a build writes about 5 MiB in its target folder (the manifest,
# the compiled SQL, the docs' catalog) and dbt's log keeps up to 60 MiB (10 MiB files, rotated 5 times)
DBT_FOLDER_MIN_FREE_BYTES = 64 * 2**20
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
            # the run's output cannot be written (a full disk): dbt would print a traceback for each of its
            # log lines (the alert run keeps it: a console alert that cannot be printed is not delivered)
            stdout=subprocess.DEVNULL if output_lost() else None,
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


def wait_for_database(settings: Settings) -> None:
    step(f"waiting for the database (up to {settings.db_wait_seconds:g}s)")
    wait_until_ready(settings.db_wait_seconds)
    say(f"database {describe_target()} is ready")
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
    if code == EXIT_LOADER_DATABASE_FAILED:  # the loader said what rolled back and to run again
        raise PipelineError(
            f"the load failed: {said}\nnothing was built: exports the loader reported loaded stay loaded",
            code,
        )
    # each export commits on its own: the ones before the failing export stay loaded
    raise PipelineError(
        f"the load failed: {said}\nnothing was built: exports the loader reported loaded stay loaded; "
        "the failing export and the later ones were not: do what its error says, or fix what it names, and "
        "the next run loads and builds the rest (never remove a dated export to get past it unless its error "
        "says so: once a later one loads, an earlier one can no longer load)",
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
            raise PipelineError(f"dbt build {failed(code)}; {after_failure(build_plan)}", code)


# the database unreachable, or failing (or refusing) one of the pipeline's own queries
DATABASE_FAILED = (DatabaseUnavailable, psycopg.Error)


def after_failure(build_plan: refresh.BuildPlan) -> str:
    """What the next run does when this build failed: a rebuild from scratch whatever this plan was when
    the record was marked meanwhile (by a run that lost the pipeline lock while this one built, say)."""
    if not build_plan.full_refresh:
        try:
            with connect() as conn:
                if refresh.full_build_unfinished(conn):
                    return refresh.REBUILT_FROM_SCRATCH
        except DATABASE_FAILED:
            pass  # unread: the plan's own words
    return build_plan.after_failure()


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
    meanwhile may have run beside another one, and one whose rules, SQL or settings changed while dbt read
    them may have built either version: neither is recorded, and the next build is a full one."""
    try:
        lock.check()
        changed = refresh.changed_since_plan(build_plan)
        if changed:
            raise PipelineError(f"{changed} changed while dbt built, so which version it built is unknown")
    except PipelineError as error:
        try:
            with connect() as conn:
                refresh.mark_rebuild_needed(conn)
        except DATABASE_FAILED as failed:
            raise PipelineError(
                f"{error}; its build is not recorded, and the database failed before the next build could be "
                f"marked a full one ({_first_line(failed)}): run it with FULL_REFRESH=true",
                EXIT_CONFIG,
            ) from None
        message = f"{error}; its build is not recorded, and {refresh.REBUILT_FROM_SCRATCH}"
        raise PipelineError(message) from None
    try:
        with connect() as conn:
            refresh.record_build(conn, build_plan, reader=settings.alerter_user, own_mark=own_mark)
    except DATABASE_FAILED as failed:
        # a build not recorded is redone (the plan compares with the last record), so nothing is lost
        raise PipelineError(
            f"dbt build succeeded, but the database failed before it was recorded ({_first_line(failed)}): "
            f"{after_failure(build_plan)}",
            EXIT_CONFIG,
        ) from None


def _first_line(error: Exception) -> str:
    """The error's first line: a connection's error goes on with advice on the settings, which are right."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


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
    say(f"pipeline: {outcomes[code].value}.", sys.stderr)
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


def check_dbt_folders() -> None:
    """Make dbt's folders and write in each: one it cannot write (a read-only checkout) failed the build
    once the exports had loaded, with a traceback; one on a full disk failed it (the target folder) or
    buried the run's lines under dbt's tracebacks (the log folder), and left a manifest cut short."""
    for variable, folder in (("DBT_TARGET_PATH", dbt_target_dir()), ("DBT_LOG_PATH", dbt_log_dir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
            stats = os.statvfs(folder)
        except OSError as error:
            raise PipelineError(
                f"dbt cannot write to {folder} ({variable}): {error.strerror or error}; set {variable} to a "
                "folder this user may write to",
                EXIT_CONFIG,
            ) from None
        free = stats.f_bavail * stats.f_frsize
        if free < DBT_FOLDER_MIN_FREE_BYTES:
            raise PipelineError(
                f"the disk of {folder} ({variable}) has {free / 2**20:,.1f} MiB free, and dbt needs "
                f"{DBT_FOLDER_MIN_FREE_BYTES // 2**20} MiB there: free space on it, or set {variable} to a "
                "folder on another disk",
                EXIT_CONFIG,
            )


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
        check_dbt_folders()
        alerts = run(settings)
        if settings.serve_docs:
            serve_docs(settings)
        if alerts and alerts.outcome is AlertRun.UNDELIVERED:
            return EXIT_ALERTS_UNDELIVERED
        if alerts and alerts.outcome is AlertRun.GIVEN_UP:
            return EXIT_ALERTS_GIVEN_UP
    except PipelineError as error:
        say(f"pipeline: {error}", sys.stderr)
        return error.exit_code
    except DatabaseUnavailable as error:
        say(f"error: {error}", sys.stderr)
        return EXIT_CONFIG
    except psycopg.Error as error:  # a step's own query (the plan, the record): it failed or was refused
        said = " ".join(str(error).split())
        say(
            f"pipeline: the database stopped the run: {said}; the warehouse keeps its last committed state.",
            sys.stderr,
        )
        return EXIT_CONFIG
    except Stopped as stop:
        say(f"pipeline: stopped by {stop}; the warehouse keeps its last committed state.", sys.stderr)
        return 128 + stop.signum
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
