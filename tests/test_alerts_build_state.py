"""An alert run, started by hand or by cron, while the pipeline builds or after a build failed: it reads
only the days the last successful build covered (the pipeline's record, raw.build_state), and none while
a full rebuild is unfinished. Same harness as test_alerts.py: marts tables made by hand, the real
command, a Slack stub; the record is written by the pipeline's own functions."""

from __future__ import annotations

import pytest
from test_alerts import (  # noqa: F401  (db, warehouse, slack are fixtures)
    DAY,
    add_moves,
    db,
    history,
    ops_tables,
    run_alerts,
    slack,
    warehouse,
    watermark,
)

from data_platform import refresh

ALERTER = "alerter"


def build_plan(full: bool, through=None) -> refresh.BuildPlan:
    state = refresh.BuildState("rules", "project", "exports", through)
    return refresh.BuildPlan(full, "test", None if full else through, state)


@pytest.fixture
def record(db):  # noqa: F811
    """The pipeline's record of its builds, absent at the start of each test; record(day) writes a
    successful build that covered the exports up to `day`."""
    with db.connect("transformer", autocommit=True) as conn:
        conn.execute(f"drop table if exists {refresh.BUILD_STATE}")

    def write(through, own_mark=None) -> None:
        with db.connect("transformer", autocommit=True) as conn:
            refresh.record_build(conn, build_plan(False, through), reader=ALERTER, own_mark=own_mark)

    return write


def mark_full_build(db):  # noqa: F811
    """The mark of a full rebuild that started; its own, which its success clears."""
    with db.connect("transformer", autocommit=True) as conn:
        return refresh.mark_build_started(conn, build_plan(True), reader=ALERTER)


def test_days_after_the_last_successful_build_wait_for_the_next_one(db, slack, record):  # noqa: F811
    # DAY[2] is a day a running (or failed) incremental build has written; the last success covered DAY[1]
    add_moves(db, (1, DAY[0], "100", "100"), (1, DAY[1], "100", "300"), (2, DAY[2], "100", "10"))
    record(DAY[1])

    during = run_alerts(db, webhook=slack.url)
    assert during.returncode == 0, during.stderr
    assert history(db) == {(1, DAY[1]): ("sent", 1)}
    assert watermark(db) == DAY[1]
    assert (
        "1 day after 2024-03-02 in the fact (up to 2024-03-03) not processed: no successful pipeline "
        "build covers them yet"
    ) in during.stdout

    record(DAY[2])  # the build succeeded
    after = run_alerts(db, webhook=slack.url)
    assert after.returncode == 0, after.stderr
    assert history(db) == {(1, DAY[1]): ("sent", 1), (2, DAY[2]): ("sent", 1)}
    assert watermark(db) == DAY[2]
    assert "not processed" not in after.stdout


def test_a_requested_day_after_the_last_successful_build_is_a_clear_error(db, slack, record):  # noqa: F811
    add_moves(db, (1, DAY[1], "100", "300"), (2, DAY[2], "100", "10"))
    record(DAY[1])
    result = run_alerts(db, "--date", DAY[2].isoformat(), webhook=slack.url)
    assert result.returncode == 2
    assert (
        "--date 2024-03-03 is after 2024-03-02, the newest export the last successful pipeline build "
        "covered: later days wait for a build to succeed."
    ) in result.stderr
    assert slack.requests == []


def test_an_unfinished_full_rebuild_stops_the_run_before_anything_is_read(db, slack, record):  # noqa: F811
    add_moves(db, (1, DAY[1], "100", "300"))
    record(DAY[1])
    own_mark = mark_full_build(db)  # started, not (yet) succeeded: any table may hold other rules' numbers

    result = run_alerts(db, webhook=slack.url)
    assert result.returncode == 2
    assert "a full rebuild of the marts started at" in result.stderr
    assert "has not succeeded (it is running, or it failed or was stopped, or it was a build by hand" in (
        result.stderr
    )
    assert "nothing was read or sent. Alerts run after a build succeeds." in result.stderr
    assert slack.requests == []
    assert ops_tables(db) == set()  # nothing recorded

    record(DAY[1], own_mark)  # the rebuild succeeded
    assert run_alerts(db, webhook=slack.url).returncode == 0
    assert history(db) == {(1, DAY[1]): ("sent", 1)}


def test_a_first_build_that_has_not_succeeded_stops_the_run(db, slack, record):  # noqa: F811
    add_moves(db, (1, DAY[1], "100", "300"))  # the fact a first build has written before its tests
    mark_full_build(db)  # the first build creates the record empty
    result = run_alerts(db, webhook=slack.url)
    assert result.returncode == 2
    assert "no pipeline build has succeeded yet: the marts may be half built" in result.stderr
    assert slack.requests == []


def test_a_record_the_alerter_may_not_read_is_named(db, slack, record):  # noqa: F811
    add_moves(db, (1, DAY[1], "100", "300"))
    with db.connect("transformer", autocommit=True) as conn:
        conn.execute(refresh.CREATE_BUILD_STATE)  # as an older pipeline did: not granted to the alerter
    result = run_alerts(db, webhook=slack.url)
    assert result.returncode == 2
    assert "this role cannot read raw.build_state" in result.stderr
    assert "Traceback" not in result.stderr

    record(DAY[1])  # the next build grants it
    assert run_alerts(db, webhook=slack.url).returncode == 0
    assert history(db) == {(1, DAY[1]): ("sent", 1)}
