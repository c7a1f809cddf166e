"""The pipeline lock (data_platform/pipeline_lock.py): one run at a time, held for the whole run whatever
ends idle sessions, and a run that lost it anyway neither starts nor records a build; nor does one whose
rules, SQL or settings changed while dbt read them."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from conftest import copy_project, hold_the_loaders_lock, loaders_lock_free
from loader_files import invoice, write_dir, write_export

from data_platform import pipeline, refresh
from data_platform.db import LockHolder
from data_platform.loader import load_exports
from data_platform.pipeline_lock import session_name, who_holds

LOCK_SESSIONS = (
    "select pg_terminate_backend(pid) from pg_stat_activity "
    "where application_name like 'data_platform pipeline lock%' and datname = current_database()"
)


@pytest.fixture
def database(make_database, monkeypatch):
    """A database the pipeline's steps reach through the PG* variables."""
    database = make_database()
    for name, value in database.env("transformer").items():
        monkeypatch.setenv(name, value)
    return database


def test_the_lock_outlives_an_idle_session_timeout(database, monkeypatch):
    # as an admin may set it for the role (ALTER ROLE ... SET idle_session_timeout)
    monkeypatch.setenv("PGOPTIONS", "-c idle_session_timeout=500")
    with pipeline.PipelineLock(timeout=0) as lock:
        time.sleep(1.5)  # the run's steps use other sessions meanwhile
        lock.check()
        with pytest.raises(pipeline.PipelineError, match="another pipeline run holds the lock"):
            pipeline.PipelineLock(timeout=0).__enter__()


def holder_named(message: str) -> dt.datetime:
    """When the lock was taken, by this process on this host as `message` says (it fails when not said)."""
    host = re.escape(socket.gethostname()[:10])  # a long host name is cut
    found = re.search(rf", process {os.getpid()} on host {host}\S*, since (\S+ \S+) UTC \(0 min\)", message)
    assert found, message
    return dt.datetime.fromisoformat(found[1]).replace(tzinfo=dt.UTC)


def test_a_run_refused_the_lock_is_told_which_process_holds_it_and_since_when(database, capsys, monkeypatch):
    """'Another pipeline run holds the lock' alone left the operator to find that run: a Dagster step
    (whose log names its process), an init.sh by hand, or one in another container. The time is UTC,
    whatever the sessions' time zone."""
    monkeypatch.setenv("PGTZ", "America/New_York")
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    with pipeline.PipelineLock(timeout=0), pytest.raises(pipeline.PipelineError) as refused:
        pipeline.PipelineLock(timeout=1.5).__enter__()
    assert refused.value.exit_code == pipeline.EXIT_BUSY
    assert before <= holder_named(str(refused.value)) <= dt.datetime.now(dt.UTC)
    assert str(refused.value).startswith("another pipeline run holds the lock on ")
    waiting = capsys.readouterr().out
    assert waiting.startswith("another pipeline run is in progress, process ")
    holder_named(waiting)


def test_a_holder_whose_server_clock_runs_ahead_is_said_to_hold_the_lock_for_0_minutes():
    ahead = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    assert who_holds(LockHolder(1, session_name(ahead), "idle", 0.0)).endswith(" UTC (0 min)")


def test_a_build_that_lost_the_lock_is_not_recorded_and_the_next_one_is_full(database, tmp_path):
    settings = pipeline.Settings.from_environment()
    with database.connect(autocommit=True) as conn:
        load_exports(conn, write_dir(tmp_path / "csv"))
    with pipeline.PipelineLock(timeout=0) as lock:
        first = pipeline.plan(settings)
        own_mark = pipeline.mark_build_started(first, settings, lock)
        pipeline.record_build(first, settings, lock, own_mark)  # a successful build, recorded
        build_plan = pipeline.plan(settings)
        assert not build_plan.full_refresh
        database.query(LOCK_SESSIONS)  # an admin's pg_terminate_backend, or a dropped connection
        with pytest.raises(pipeline.PipelineError, match="this run lost the pipeline lock"):
            pipeline.mark_build_started(build_plan, settings, lock)  # never starts beside another run
        with pytest.raises(pipeline.PipelineError, match="its build is not recorded"):
            pipeline.record_build(build_plan, settings, lock, None)
    again = pipeline.plan(settings)
    assert (again.full_refresh, again.reason.split(",")[0]) == (True, "the last full rebuild did not finish")
    assert logged_builds(database) == [True]  # the first build's only


def logged_builds(database) -> list[bool]:
    """raw.build_log's builds, oldest first: whether each was full."""
    return [full for (full,) in database.query("select full_refresh from raw.build_log order by build_id")]


def test_only_a_build_whose_body_returned_is_logged(database, tmp_path):
    with after_a_recorded_build(database, tmp_path / "csv") as (settings, lock):
        build_plan = pipeline.plan(settings)
        with pytest.raises(RuntimeError), pipeline.recorded_build(build_plan, settings, lock, tmp_path):
            raise RuntimeError("dbt build failed")
        assert logged_builds(database) == [True]
        with pipeline.recorded_build(build_plan, settings, lock, tmp_path):
            pass
        assert logged_builds(database) == [True, False]


@contextlib.contextmanager
def no_new_session(database):
    """The server refusing every new session of the pipeline's (a restart, a database full): the database's
    connection limit, which its superuser is spared, at the sessions it has."""
    with database.connect("admin", autocommit=True) as admin:
        admin.execute(f"alter database {database.name} connection limit 0")
        try:
            yield
        finally:
            admin.execute(f"alter database {database.name} connection limit -1")


@contextlib.contextmanager
def after_a_recorded_build(database, csv_dir) -> Iterator[tuple[pipeline.Settings, pipeline.PipelineLock]]:
    """Under the pipeline lock, once the base export in `csv_dir` is loaded and its build recorded."""
    settings = pipeline.Settings.from_environment()
    with database.connect(autocommit=True) as conn:
        load_exports(conn, write_dir(csv_dir))
    with pipeline.PipelineLock(timeout=0) as lock:
        first = pipeline.plan(settings)
        pipeline.record_build(first, settings, lock, pipeline.mark_build_started(first, settings, lock))
        yield settings, lock


def test_a_failed_build_says_the_next_run_rebuilds_from_scratch_once_another_run_marked_the_record(
    database, tmp_path
):
    """Two runs built at once, one of them having lost the lock: that one marked the record, and the other's
    failure said the next run would build only the days from its window."""
    with after_a_recorded_build(database, tmp_path / "csv") as (settings, _):
        build_plan = pipeline.plan(settings)
        assert (
            pipeline.after_failure(build_plan)
            == f"the next run builds the days from {build_plan.window_start} again"
        )
        with database.connect(autocommit=True) as conn:
            refresh.mark_rebuild_needed(conn)  # as the run that lost the lock does
        assert pipeline.after_failure(build_plan) == "the next run rebuilds from scratch"
    assert pipeline.plan(settings).full_refresh


def test_a_build_the_database_failed_to_record_says_so_and_what_the_next_run_does(database, tmp_path):
    """It said only "cannot connect to ...", as though nothing had been built."""
    with after_a_recorded_build(database, tmp_path / "csv") as (settings, lock):
        write_export(tmp_path / "csv", "2024-01-02", [invoice(1)])
        with database.connect(autocommit=True) as conn:
            load_exports(conn, tmp_path / "csv")
        build_plan = pipeline.plan(settings)
        assert not build_plan.full_refresh
        with no_new_session(database), pytest.raises(pipeline.PipelineError) as failed:
            pipeline.record_build(build_plan, settings, lock, None)
        assert failed.value.exit_code == pipeline.EXIT_CONFIG
        said = str(failed.value)
        assert said.startswith("dbt build succeeded, but the database failed before it was recorded (cannot ")
        assert said.endswith(
            f'too many connections for database "{database.name}"): the next run builds '
            f"the days from {build_plan.window_start} again"
        )


def test_a_run_that_lost_the_lock_and_cannot_mark_the_record_says_to_rebuild_from_scratch(database, tmp_path):
    with after_a_recorded_build(database, tmp_path / "csv") as (settings, lock):
        build_plan = pipeline.plan(settings)
        database.query(LOCK_SESSIONS)  # the server restarted, say
        with no_new_session(database), pytest.raises(pipeline.PipelineError) as failed:
            pipeline.record_build(build_plan, settings, lock, None)
    said = str(failed.value)
    assert said.startswith("this run lost the pipeline lock")
    assert failed.value.exit_code == pipeline.EXIT_CONFIG
    assert (
        "; its build is not recorded, and the database failed before the next build could be marked a full "
        "one (cannot connect to " in said
    )
    assert said.endswith(
        f'too many connections for database "{database.name}"): run it with FULL_REFRESH=true'
    )


@pytest.mark.parametrize(
    ("edited", "what"),
    [
        ("seeds/invoice_enrichment.csv", "the balance rules"),
        ("models/marts/fct_invoices.sql", "the dbt project's SQL or settings"),
    ],
)
def test_a_build_during_which_its_files_changed_is_not_recorded_and_the_next_one_is_full(
    database, tmp_path, edited, what
):
    """dbt reads the rules and the SQL after the plan fingerprinted them: a build that ran an edit made in
    between was recorded under the plan's files, so once the edit was undone every later build was
    incremental, and the days it built kept the edited numbers."""
    project_dir = copy_project(tmp_path / "project") / "dbt"
    settings = pipeline.Settings.from_environment()

    def plan() -> refresh.BuildPlan:
        with database.connect(autocommit=True) as conn:
            return refresh.plan_build(conn, project_dir=project_dir)

    with database.connect(autocommit=True) as conn:
        load_exports(conn, write_dir(tmp_path / "csv"))
    with pipeline.PipelineLock(timeout=0) as lock:
        first = plan()
        pipeline.record_build(first, settings, lock, pipeline.mark_build_started(first, settings, lock))
        build_plan = plan()
        assert not build_plan.full_refresh
        own_mark = pipeline.mark_build_started(build_plan, settings, lock)
        file = project_dir / edited
        as_planned = file.read_text()
        file.write_text(as_planned + "\n")  # what dbt then read
        with pytest.raises(pipeline.PipelineError) as failed:
            pipeline.record_build(build_plan, settings, lock, own_mark)
        assert str(failed.value) == (
            f"{what} changed while dbt built, so which version it built is unknown; its build is not "
            "recorded, and the next run rebuilds from scratch"
        )
        file.write_text(as_planned)  # the edit undone: the files are as the record has them
    assert logged_builds(database) == [True]
    again = plan()
    assert again.full_refresh
    assert again.reason.endswith(
        "or the rules, SQL or settings changed during a build: any of these may have left tables computed "
        "otherwise"
    )


def test_a_loader_run_by_hand_waits_for_a_pipeline_build_and_is_told_why(database, tmp_path):
    """A load committed during a build reached some of its models and tests and not others: the build failed
    a data test (the ledger against the current invoices) that said nothing of the load."""
    csv_dir = write_dir(tmp_path / "csv")
    loader = [sys.executable, "-m", "data_platform.loader", "--csv-dir", str(csv_dir)]
    with pipeline.PipelineLock(timeout=0) as lock, lock.loads_held():
        by_hand = subprocess.run(loader, capture_output=True, text=True, env=os.environ, timeout=120)
        assert database.query("select to_regclass('raw.load_log') is null") == [(True,)]  # nothing loaded
    assert by_hand.returncode == 3, by_hand.stderr
    assert "a pipeline run is building from the loaded exports, process " in by_hand.stderr
    assert holder_named(by_hand.stderr)
    assert " (waited 0s): a load now would change its input under it." in by_hand.stderr
    with pipeline.PipelineLock(timeout=0) as lock, lock.loads_held():
        waited = subprocess.run([*loader, "--wait", "1"], capture_output=True, text=True, env=os.environ)
    assert waited.returncode == 3, waited.stderr
    # said while it waits too, not "another loader run"
    assert waited.stderr.startswith("a pipeline run is building from the loaded exports, process ")
    assert ": waiting up to 1s\n" in waited.stderr
    assert subprocess.run(loader, capture_output=True, text=True, env=os.environ).returncode == 0


def test_a_pipeline_build_waits_for_a_loader_run_by_hand(database, tmp_path):
    with database.connect(autocommit=True) as by_hand, pipeline.PipelineLock(timeout=0) as lock:
        hold_the_loaders_lock(by_hand)
        with pytest.raises(pipeline.PipelineError) as failed:
            lock.loads_held().__enter__()
    assert failed.value.exit_code == 3
    assert str(failed.value).startswith("a loader run by hand still holds the loader's lock (waited 0s;")


def test_the_loaders_lock_is_let_go_once_the_build_is_recorded(database):
    """The run holds the loader's lock from the plan to the build's record only: the docs and the alert
    run that follow read nothing a load changes, and a loader run by hand must not wait for them."""
    with database.connect(autocommit=True) as by_hand, pipeline.PipelineLock(timeout=0) as lock:
        with lock.loads_held():
            assert not loaders_lock_free(by_hand)
        assert loaders_lock_free(by_hand)


def test_a_run_holds_the_loaders_lock_from_its_plan_to_its_record_only(database, monkeypatch):
    """pipeline.run's order, its steps replaced by a look at the loader's lock from another session: taken
    for the plan and the build (a load by hand committed between them would reach some models and not
    others), not for the load (the loader takes it itself) nor the docs; and RUN_ALERTS off runs no alert
    run."""
    seen: dict[str, bool] = {}
    with database.connect(autocommit=True) as by_hand:

        def during(name: str):
            return lambda *args, **kwargs: seen.setdefault(name, not loaders_lock_free(by_hand))

        monkeypatch.setattr(pipeline, "WarmDbt", contextlib.nullcontext)
        for name, step in [("load", "load_exports"), ("plan", "plan"), ("build", "build")]:
            monkeypatch.setattr(pipeline, step, during(name))
        monkeypatch.setattr(pipeline, "generate_docs", during("docs"))
        monkeypatch.setattr(pipeline, "run_alerts", during("alerts"))
        assert pipeline.run(pipeline.Settings(run_alerts=False, lock_timeout_seconds=0)) is None
    assert seen == {"load": False, "plan": True, "build": True, "docs": False}
