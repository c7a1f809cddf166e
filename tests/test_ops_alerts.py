"""The operations alerts (data_platform/orchestration/ops_alerts.py, notify.py): a failed run is alerted
once, retried until delivered; a typo in a balance alert setting does not silence them; the freshness
alerts judge the fact by what the last successful build covered, and keep that verdict while a run is in
progress. Sensor ticks are evaluated directly, as the daemon would, against a temporary instance."""

from __future__ import annotations

import datetime as dt
import os
import uuid

import pytest
from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    Failure,
    build_sensor_context,
    job,
    op,
)
from orchestration_support import dagster_env, environment, load_definitions
from slack_stub import OK, SECRET, SlackStub, server_error

from data_platform import refresh
from data_platform.orchestration import notify
from data_platform.orchestration.ops_alerts import FACT, check_freshness

EXPORTS = [dt.date(2024, 7, 1), dt.date(2024, 7, 2), dt.date(2024, 7, 3)]


@pytest.fixture(scope="module")
def defs():
    return load_definitions()


@pytest.fixture
def instance(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    with DagsterInstance.local_temp(str(home)) as instance:
        yield instance


@op
def load_step():
    raise Failure(description="export 2024-07-02 is older than the newest loaded export\nsee the loader")


@job(name="daily_pipeline")  # stands for the daily job: a run started by hand, with no code location
def failing_daily_job():
    load_step()


@job(name="scratch_job")
def failing_other_job():
    load_step()


def tick(defs, instance, name: str, cursor: str | None):
    sensor = defs.get_sensor_def(name)
    return sensor.evaluate_tick(build_sensor_context(instance=instance, cursor=cursor, definitions=defs))


def fail(instance, failing_job=failing_daily_job):
    result = failing_job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    return result.run_id


# --- run failure alerts --------------------------------------------------------------------------


def test_a_failure_alert_that_could_not_be_delivered_is_sent_on_a_later_tick_once(defs, instance):
    with SlackStub() as slack:
        slack.always(server_error())  # every attempt, retries included
        env = dagster_env(
            SLACK_WEBHOOK_URL=slack.url, ALERT_HTTP_BACKOFF="0", DAGSTER_BASE_URL="http://dagster.test"
        )
        with environment(env):
            started = tick(defs, instance, "run_failure_alerts", None)
            run_id = fail(instance)
            undelivered = tick(defs, instance, "run_failure_alerts", started.cursor)
            assert slack.requests and slack.delivered == []
            slack.always(OK)
            delivered = tick(defs, instance, "run_failure_alerts", undelivered.cursor)
            assert len(slack.delivered) == 1
            tick(defs, instance, "run_failure_alerts", delivered.cursor)
        assert len(slack.delivered) == 1
        text = slack.delivered[0]["text"]
    assert text.startswith("Pipeline run failed: daily_pipeline, step load_step\n")
    assert "\nexport 2024-07-02 is older than the newest loaded export\nsee the loader\n" in text
    assert text.endswith(f"http://dagster.test/runs/{run_id}")


def test_runs_that_failed_before_the_first_tick_or_in_other_jobs_are_not_alerted(defs, instance):
    fail(instance)  # before the sensor ever ran: not a flood of old failures on its first tick
    with SlackStub() as slack:
        with environment(dagster_env(SLACK_WEBHOOK_URL=slack.url)):
            started = tick(defs, instance, "run_failure_alerts", None)
            assert slack.requests == []
            fail(instance, failing_other_job)
            first = fail(instance)
            second = fail(instance)
            after = tick(defs, instance, "run_failure_alerts", started.cursor)
            tick(defs, instance, "run_failure_alerts", after.cursor)
        links = [message["text"].splitlines()[-1] for message in slack.delivered]
    assert [link.rsplit("/", 1)[-1] for link in links] == [first, second]


# --- the channel ---------------------------------------------------------------------------------


def test_a_typo_in_a_balance_alert_setting_does_not_silence_the_ops_alerts(
    defs, instance, make_database, tmp_path
):
    database = make_database()
    with SlackStub() as slack:
        env = dagster_env(
            database.env(), CSV_DIR=str(tmp_path), SLACK_WEBHOOK_URL=slack.url, ALERT_MIN_CHANGE_USD="abc"
        )
        with environment(env):
            tick(defs, instance, "freshness_alerts", None)
        assert len(slack.delivered) == 1
        assert "no export folder" in slack.delivered[0]["text"]


@pytest.mark.parametrize(
    ("setting", "why"),
    [
        ({"ALERT_HTTP_TIMEOUT": "soon"}, "ALERT_HTTP_TIMEOUT must be a number, got 'soon'"),
        ({"SLACK_WEBHOOK_URL": f"http://hooks.example.com/{SECRET}"}, "must start with https://"),
    ],
)
def test_an_unusable_webhook_setting_prints_the_ops_alert_and_says_why(setting, why, capsys):
    with SlackStub() as slack:
        channel = notify.channel_from_environment({"SLACK_WEBHOOK_URL": slack.url, **setting})
        assert channel.send(notify.OpsMessage("Pipeline run failed: daily_pipeline")).delivered
        assert slack.requests == []
    out = capsys.readouterr().out
    assert why in out and "not sent to Slack" in out
    assert "[ops alert] Pipeline run failed: daily_pipeline" in out
    assert SECRET not in out


# --- freshness -----------------------------------------------------------------------------------


def make_warehouse(database, covered: dt.date | None, fact_ends: dt.date) -> None:
    """raw.load_log with EXPORTS, a build record covering up to `covered` (None: no build yet), and a
    fact whose last day is `fact_ends` (the fact has rows only for days with ledger entries)."""
    with database.connect("transformer", autocommit=True) as conn:
        conn.execute("create table raw.load_log (export_date date not null)")
        conn.cursor().executemany("insert into raw.load_log values (%s)", [(day,) for day in EXPORTS])
        conn.execute(f"create table {FACT} (balance_date date not null)")
        conn.execute(f"insert into {FACT} values (%s)", (fact_ends,))
        if covered is not None:
            refresh.record_build(conn, refresh.BuildState("rules", "project", "exports", covered))


def cover(database, covered: dt.date) -> None:
    with database.connect("transformer", autocommit=True) as conn:
        refresh.record_build(conn, refresh.BuildState("rules", "project", "exports", covered))


def fresh_export_folder(tmp_path) -> None:
    (tmp_path / "exports" / EXPORTS[-1].isoformat()).mkdir(parents=True)


def test_quiet_export_days_are_fresh_when_the_last_build_covered_every_loaded_export(
    defs, instance, make_database, tmp_path
):
    database = make_database()
    # two exports without a ledger entry: the fact ends two days before the newest export
    make_warehouse(database, covered=EXPORTS[-1], fact_ends=EXPORTS[0])
    fresh_export_folder(tmp_path)
    with SlackStub() as slack:
        env = dagster_env(database.env(), CSV_DIR=str(tmp_path), SLACK_WEBHOOK_URL=slack.url)
        with environment(env):
            cursor = tick(defs, instance, "freshness_alerts", None).cursor
            assert slack.requests == []
            cover(database, EXPORTS[1])  # the build of the newest export failed
            tick(defs, instance, "freshness_alerts", cursor)
        assert len(slack.delivered) == 1
        assert slack.delivered[0]["text"].startswith(
            "Data is stale\n"
            f"{FACT} is behind: exports up to 2024-07-03 are loaded, "
            "the last successful build covered up to 2024-07-02"
        )


def test_loaded_exports_without_a_successful_build_are_stale(make_database, tmp_path):
    database = make_database()
    make_warehouse(database, covered=None, fact_ends=EXPORTS[-1])
    fresh_export_folder(tmp_path)
    with environment(dagster_env(database.env(), CSV_DIR=str(tmp_path))):
        freshness = check_freshness(dt.datetime.now(dt.UTC), max_age_hours=26)
    assert freshness.problems == (
        f"{FACT} is behind: exports up to 2024-07-03 are loaded, but no successful build is recorded",
    )


def test_a_run_starting_while_the_fact_is_stale_sends_no_recovery_until_a_build_covers_it(
    defs, instance, make_database, tmp_path
):
    database = make_database()
    make_warehouse(database, covered=EXPORTS[0], fact_ends=EXPORTS[0])
    fresh_export_folder(tmp_path)
    with SlackStub() as slack:
        env = dagster_env(database.env(), CSV_DIR=str(tmp_path), SLACK_WEBHOOK_URL=slack.url)
        with environment(env):
            stale = tick(defs, instance, "freshness_alerts", None)
            assert [m["text"].splitlines()[0] for m in slack.delivered] == ["Data is stale"]
            run = DagsterRun(
                job_name="daily_pipeline", run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED
            )
            instance.add_run(run)
            during = tick(defs, instance, "freshness_alerts", stale.cursor)
            assert len(slack.delivered) == 1, slack.delivered[-1]["text"]
            cover(database, EXPORTS[-1])  # the run's build succeeds
            during = tick(defs, instance, "freshness_alerts", during.cursor)
            assert len(slack.delivered) == 1  # judged only once the run is over
            instance.delete_run(run.run_id)
            tick(defs, instance, "freshness_alerts", during.cursor)
        assert len(slack.delivered) == 2
        assert slack.delivered[1]["text"].startswith(f"Data is fresh again\nresolved: {FACT} is behind")


def test_a_fact_gone_stale_after_the_stale_alert_still_counts_while_a_run_is_in_progress(
    defs, instance, make_database, tmp_path
):
    database = make_database()
    make_warehouse(database, covered=EXPORTS[-1], fact_ends=EXPORTS[-1])
    old = tmp_path / "exports" / EXPORTS[-1].isoformat()
    old.mkdir(parents=True)
    landed = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=30)).timestamp()
    os.utime(old, (landed, landed))
    with SlackStub() as slack:
        env = dagster_env(database.env(), CSV_DIR=str(tmp_path), SLACK_WEBHOOK_URL=slack.url)
        with environment(env):
            cursor = tick(defs, instance, "freshness_alerts", None).cursor  # stale: no new export
            cover(database, EXPORTS[1])  # then a build fails: still stale, nothing new to say
            cursor = tick(defs, instance, "freshness_alerts", cursor).cursor
            instance.add_run(
                DagsterRun(
                    job_name="daily_pipeline", run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED
                )
            )
            (tmp_path / "exports" / "2024-07-04").mkdir()  # a new export: its run is in progress
            tick(defs, instance, "freshness_alerts", cursor)
        assert [m["text"].splitlines()[0] for m in slack.delivered] == ["Data is stale"]
