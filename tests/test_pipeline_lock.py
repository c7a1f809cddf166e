"""The pipeline lock (data_platform/pipeline.py): one run at a time, held for the whole run whatever ends idle
sessions, and a run that lost it anyway neither starts nor records a build."""

from __future__ import annotations

import time

import pytest
from loader_files import write_dir

from data_platform import pipeline
from data_platform.loader import load_exports

LOCK_SESSIONS = (
    "select pg_terminate_backend(pid) from pg_stat_activity "
    "where application_name = 'data_platform pipeline lock' and datname = current_database()"
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
