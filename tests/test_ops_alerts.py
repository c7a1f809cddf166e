"""The operations alerts (data_platform/orchestration/failure_alerts.py, freshness.py, notify.py): a
failed run is alerted once, retried until delivered, and what a tick sent stays sent whatever happens
later in that tick; a typo in a balance alert setting does not silence them; the freshness alerts judge
the fact by what the last successful build covered, and keep that verdict while a run is in progress.
Sensor ticks are evaluated directly, as the daemon would, against a temporary instance."""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy
from dagster import (
    DagsterEventType,
    DagsterRun,
    DagsterRunStatus,
    Failure,
    RetryPolicy,
    build_sensor_context,
    job,
    op,
)
from dagster._core.definitions.run_status_sensor_definition import RunStatusSensorCursor
from dagster._core.errors import DagsterExecutionInterruptedError
from orchestration_support import (
    UNUSABLE_PIPELINE_SETTINGS,
    daemons_origin,
    dagster_env,
    environment,
    freshness_clock_ahead,
    load_definitions,
)
from slack_stub import OK, SECRET, Reply, SlackStub, hang, rate_limited, redirect, server_error, slow

from data_platform import ledger, ledger_tables, pipeline, refresh
from data_platform.alerts.records import MAX_UNCONFIRMED_ATTEMPTS
from data_platform.orchestration import failure_alerts, freshness, notify, run_records, run_retries, startup
from data_platform.orchestration.freshness import FACT, check_freshness
from data_platform.raw_tables import LoadLogRow

EXPORTS = [dt.date(2024, 7, 1), dt.date(2024, 7, 2), dt.date(2024, 7, 3)]


@pytest.fixture(scope="module")
def defs():
    return load_definitions()


@op
def load_step():
    raise Failure(description="export 2024-07-02 is older than the newest loaded export\nsee the loader")


@job(name="daily_pipeline")  # stands for the daily job: a run started by hand, with no code location
def failing_daily_job():
    load_step()


@job(name="scratch_job")
def failing_other_job():
    load_step()


@op(retry_policy=RetryPolicy(max_retries=1))
def alert_step():
    raise Failure(description="some balance alerts could not be delivered (see the step's log)")


@job(name="daily_pipeline")
def failing_retried_job():
    alert_step()


@job(name="__ASSET_JOB")  # Dagster's own job for assets materialized alone, from the UI
def failing_asset_job():
    load_step()


@op
def interrupted_step():
    # what Dagster raises in a step when its run process is told to stop (Ctrl-C, a shutdown)
    raise DagsterExecutionInterruptedError()


@job(name="daily_pipeline")
def interrupted_daily_job():
    interrupted_step()


def tick(defs, instance, name: str, cursor: str | None):
    sensor = defs.get_sensor_def(name)
    return sensor.evaluate_tick(build_sensor_context(instance=instance, cursor=cursor, definitions=defs))


def fail(instance, failing_job=failing_daily_job):
    result = failing_job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    return result.run_id


def alerted_runs(slack) -> list[str]:
    return [message["text"].splitlines()[-1].rsplit("/", 1)[-1] for message in slack.delivered]


def pending_runs(cursor: str) -> list[str]:
    return json.loads(cursor)["pending"]


# --- run failure alerts --------------------------------------------------------------------------


def test_a_failure_alert_that_could_not_be_delivered_is_logged_and_sent_on_a_later_tick_once(
    defs, instance, capfd
):
    with SlackStub() as slack:
        slack.always(server_error())  # every attempt, retries included
        env = dagster_env(
            SLACK_WEBHOOK_URL=slack.url, ALERT_HTTP_BACKOFF="0", DAGSTER_BASE_URL="http://dagster.test"
        )
        with environment(env):
            started = tick(defs, instance, "run_failure_alerts", None)
            run_id = fail(instance)
            capfd.readouterr()
            undelivered = tick(defs, instance, "run_failure_alerts", started.cursor)
            assert slack.requests and slack.delivered == []
            # in the daemon's log, not only in the tick's skip reason
            log = capfd.readouterr().err
            assert (
                f"the failure alert of run {run_id} (daily_pipeline) could not be delivered: HTTP 500" in log
            )
            slack.always(OK)
            delivered = tick(defs, instance, "run_failure_alerts", undelivered.cursor)
            assert len(slack.delivered) == 1
            tick(defs, instance, "run_failure_alerts", delivered.cursor)
        assert len(slack.delivered) == 1
        text = slack.delivered[0]["text"]
    assert text.startswith("Pipeline run failed: daily_pipeline, step load_step\n")
    assert "\nexport 2024-07-02 is older than the newest loaded export\nsee the loader\n" in text
    assert text.endswith(f"http://dagster.test/runs/{run_id}")


def test_a_step_that_failed_after_its_retries_is_alerted_with_its_own_error(defs, instance):
    # once retries run out, Dagster's error says only "Exceeded max_retries of 1"
    run_id = fail(instance, failing_retried_job)
    message = failure_alerts.failure_message(instance, instance.get_run_by_id(run_id), "http://dagster.test")
    assert message.title == "Pipeline run failed: daily_pipeline, step alert_step (Exceeded max_retries of 1)"
    assert message.details == ("some balance alerts could not be delivered (see the step's log)",)


def test_a_run_whose_job_could_not_load_is_alerted_with_the_reason_dagster_logged(instance):
    """A dbt model that no longer compiles: the run's process cannot load the job, Dagster logs why in an
    engine event, and marks the run failed "from outside the execution context", which says nothing."""
    from dagster._core.events import EngineEventData
    from dagster._utils.error import SerializableErrorInfo

    run = instance.create_run_for_job(job_def=failing_daily_job)
    instance.report_engine_event("Started process for run (pid 7).", run)
    cause = SerializableErrorInfo(
        "dagster_dbt.errors.DagsterDbtCliRuntimeError: The dbt CLI process failed with exit code 2.\n"
        "Compilation Error in model dim_organizations\n",
        stack=[],
        cls_name="DagsterDbtCliRuntimeError",
    )
    instance.report_engine_event("Could not load job definition.", run, EngineEventData(error=cause))
    instance.report_run_failed(run, "This run has been marked as failed from outside the execution context.")

    message = failure_alerts.failure_message(
        instance, instance.get_run_by_id(run.run_id), "http://dagster.test"
    )

    assert message.title == "Pipeline run failed: daily_pipeline, step the run itself"
    assert message.details == (
        "This run has been marked as failed from outside the execution context.",
        "Could not load job definition.",
        "The dbt CLI process failed with exit code 2.",
        "Compilation Error in model dim_organizations",
    )  # no advice to run it again: every run fails the same way until the model is fixed


def test_a_run_that_failed_outside_its_steps_is_alerted_with_the_runs_error_and_its_unfinished_step(instance):
    """The run's process died under a step (the Dagster storage went away, say): no step failed, and the
    run's failure message says only that an exception was thrown; the exception is in the event."""
    from dagster import DagsterEvent
    from dagster._core.events import JobFailureData
    from dagster._utils.error import SerializableErrorInfo

    run = instance.create_run_for_job(job_def=failing_daily_job)
    for kind in (DagsterEventType.RUN_START, DagsterEventType.STEP_START):
        event = DagsterEvent(
            kind.value, job_name=run.job_name, step_key=None if kind.name == "RUN_START" else "load_step"
        )
        instance.report_dagster_event(event, run_id=run.run_id)
    cause = SerializableErrorInfo(
        "dagster._core.errors.DagsterSubprocessError: During multiprocess execution errors occurred in child "
        "processes:\nIn process 23559: dagster_postgres.utils.DagsterPostgresException: too many retries for "
        "DB connection\n",
        stack=[],
        cls_name="DagsterSubprocessError",
    )
    instance.report_run_failed(
        run,
        'Execution of run for "daily_pipeline" failed. An exception was thrown during execution.',
        JobFailureData(error=cause, failure_reason=None),
    )

    message = failure_alerts.failure_message(
        instance, instance.get_run_by_id(run.run_id), "http://dagster.test"
    )

    assert message.title == "Pipeline run failed: daily_pipeline, step load_step, which did not finish"
    assert message.details == (
        'Execution of run for "daily_pipeline" failed. An exception was thrown during execution.',
        "During multiprocess execution errors occurred in child processes:",
        "In process 23559: dagster_postgres.utils.DagsterPostgresException: too many retries for DB "
        "connection",
        # the database came back: nothing else runs the job again before the schedule
        failure_alerts.CATCH_UP,
    )


def test_a_run_whose_process_died_is_alerted_with_dagsters_explanation_of_how(instance):
    # the code server finds the run's process gone and reports how it ended (the OOM killer's SIGKILL),
    # then fails the run "from outside the execution context", which says nothing of it
    from dagster._utils import get_run_crash_explanation

    crashed_by = signal.SIGKILL
    run, other = in_progress(instance, "daily_pipeline"), in_progress(instance, "daily_pipeline")
    for crashed in (run, other):
        explanation = get_run_crash_explanation(f"Run execution process for {crashed.run_id}", -crashed_by)
        instance.report_engine_event(explanation, crashed)
    instance.report_run_failed(run)

    message = failure_alerts.failure_message(instance, instance.get_run_by_id(run.run_id), "http://d")

    assert message.details[:2] == (
        "This run has been marked as failed from outside the execution context.",
        get_run_crash_explanation(f"Run execution process for {run.run_id}", -crashed_by),
    )
    assert "terminated by signal 9 (SIGKILL). This usually indicates" in message.details[1]


def test_a_step_stopped_as_its_run_process_was_killed_says_how_that_process_ended(instance):
    # the step's process, left without a parent, stops itself as if told to: not Ctrl-C nor a shutdown
    from dagster._utils import get_run_crash_explanation

    run_id = fail(instance, interrupted_daily_job)
    explanation = get_run_crash_explanation(f"Run execution process for {run_id}", -signal.SIGKILL)
    instance.report_engine_event(explanation, instance.get_run_by_id(run_id))

    message = failure_alerts.failure_message(instance, instance.get_run_by_id(run_id), "http://d")

    assert message.details[0] == explanation
    assert failure_alerts.INTERRUPTED_IN_WORDS not in message.details


def test_a_step_that_finished_is_not_named_among_those_that_did_not(instance):
    from dagster import DagsterEvent
    from dagster._core.events import JobFailureData
    from dagster._core.execution.plan.objects import StepSuccessData

    run = instance.create_run_for_job(job_def=failing_daily_job)
    for kind, step, data in (
        (DagsterEventType.STEP_START, "raw_tables", None),
        (DagsterEventType.STEP_SUCCESS, "raw_tables", StepSuccessData(duration_ms=1.0)),
        (DagsterEventType.STEP_START, "dbt_build", None),
    ):
        event = DagsterEvent(kind.value, job_name=run.job_name, step_key=step, event_specific_data=data)
        instance.report_dagster_event(event, run_id=run.run_id)
    instance.report_run_failed(run, "the run's process died", JobFailureData(error=None, failure_reason=None))

    message = failure_alerts.failure_message(instance, instance.get_run_by_id(run.run_id), "http://d")

    assert message.title == "Pipeline run failed: daily_pipeline, step dbt_build, which did not finish"


def test_a_failed_materialization_of_an_asset_alone_is_alerted(defs, instance):
    # Materialize in the UI runs Dagster's asset job, not the daily one
    with SlackStub() as slack:
        with environment(dagster_env(SLACK_WEBHOOK_URL=slack.url)):
            started = tick(defs, instance, "run_failure_alerts", None)
            run_id = fail(instance, failing_asset_job)
            tick(defs, instance, "run_failure_alerts", started.cursor)
        assert alerted_runs(slack) == [run_id]
        # not Dagster's name for it, __ASSET_JOB
        assert slack.delivered[0]["text"].startswith(
            "Pipeline run failed: assets materialized alone, step load_step\n"
        )


def test_an_interrupted_run_is_alerted_in_words_with_what_to_do(instance):
    # Dagster's own error is the bare class name; nothing starts the run again before the next export
    # lands or the schedule comes
    run_id = fail(instance, interrupted_daily_job)
    message = failure_alerts.failure_message(instance, instance.get_run_by_id(run_id), "http://dagster.test")
    assert message.title == "Pipeline run failed: daily_pipeline, step interrupted_step"
    assert message.details == (
        "the run was stopped while the step ran: its process was told to stop (Ctrl-C of `dagster dev` or of "
        "a run started by hand, a shutdown, or run monitoring's time limit)",
        'Execution of run for "daily_pipeline" failed. Execution was interrupted unexpectedly. No user '
        "initiated termination request was found, treating as failure.",
        failure_alerts.CATCH_UP,
    )


@pytest.mark.parametrize("error_class", ["DagsterExecutionInterruptedError", "KeyboardInterrupt"])
def test_a_run_stopped_by_run_monitorings_time_limit_says_so(instance, error_class):
    # the step is interrupted either way; the run's own failure names the limit
    from dagster import DagsterEvent
    from dagster._core.execution.plan.objects import ErrorSource, StepFailureData
    from dagster._utils.error import SerializableErrorInfo

    run = instance.create_run_for_job(job_def=failing_daily_job)
    interrupted = SerializableErrorInfo(f"{error_class}\n", stack=[], cls_name=error_class)
    for kind, data in (
        (DagsterEventType.STEP_START, None),
        (DagsterEventType.STEP_FAILURE, StepFailureData(interrupted, None, ErrorSource.INTERRUPT)),
    ):
        event = DagsterEvent(
            kind.value, job_name=run.job_name, step_key="dbt_build", event_specific_data=data
        )
        instance.report_dagster_event(event, run_id=run.run_id)
    instance.report_run_failed(run, "Exceeded maximum runtime of 14400 seconds.")

    message = failure_alerts.failure_message(instance, instance.get_run_by_id(run.run_id), "http://d")

    assert message.title == "Pipeline run failed: daily_pipeline, step dbt_build"
    assert message.details[1:] == ("Exceeded maximum runtime of 14400 seconds.", failure_alerts.CATCH_UP)


def test_a_step_that_failed_on_its_own_error_gets_no_advice_to_run_again(instance):
    # a bad export fails again until it is fixed: the error says what to fix
    run_id = fail(instance)
    message = failure_alerts.failure_message(instance, instance.get_run_by_id(run_id), "http://dagster.test")
    assert failure_alerts.CATCH_UP not in message.details


@op
def record_lost_step():
    raise Failure(
        description="dbt build succeeded, but the database failed before it was recorded (connection "
        "refused): its build is not recorded, and the database failed before the next build could be marked "
        "a full one (connection refused): run it with FULL_REFRESH=true"
    )


@job(name="daily_pipeline")
def failing_record_job():
    record_lost_step()


def test_a_failure_that_asks_for_a_full_refresh_says_how_under_dagster(instance):
    # the pipeline's words are init.sh's: a Dagster operator has no command line to set it on
    run_id = fail(instance, failing_record_job)
    message = failure_alerts.failure_message(instance, instance.get_run_by_id(run_id), "http://dagster.test")
    assert message.details[-1] == failure_alerts.FULL_REFRESH_UNDER_DAGSTER
    assert (
        failure_alerts.FULL_REFRESH_UNDER_DAGSTER
        not in failure_alerts.failure_message(
            instance, instance.get_run_by_id(fail(instance)), "http://dagster.test"
        ).details
    )


def test_a_step_that_failed_without_an_error_is_not_taken_for_one_cut_off(instance):
    from dagster import DagsterEvent
    from dagster._core.execution.plan.objects import StepFailureData

    run = instance.create_run_for_job(job_def=failing_daily_job)
    for kind, data in (
        (DagsterEventType.STEP_START, None),
        (DagsterEventType.STEP_FAILURE, StepFailureData(None, None)),
    ):
        event = DagsterEvent(
            kind.value, job_name=run.job_name, step_key="load_step", event_specific_data=data
        )
        instance.report_dagster_event(event, run_id=run.run_id)
    instance.report_run_failed(run, "Steps failed: ['load_step'].")

    message = failure_alerts.failure_message(instance, instance.get_run_by_id(run.run_id), "http://d")

    assert message.title == "Pipeline run failed: daily_pipeline, step load_step"
    assert message.details == ("Steps failed: ['load_step'].",)


def test_a_tick_sends_at_most_its_share_of_a_backlog_and_keeps_the_rest_in_order(defs, instance):
    # a backlog (Slack down for a day) goes out a few per tick, so that a tick ends well within its limit
    with SlackStub() as slack:
        with environment(dagster_env(SLACK_WEBHOOK_URL=slack.url, ALERT_SLACK_MIN_INTERVAL="0")):
            started = tick(defs, instance, "run_failure_alerts", None)
            runs = [fail(instance) for _ in range(failure_alerts.FAILURE_ALERTS_PER_TICK + 1)]
            first = tick(defs, instance, "run_failure_alerts", started.cursor)
            assert alerted_runs(slack) == runs[: failure_alerts.FAILURE_ALERTS_PER_TICK]
            assert pending_runs(first.cursor) == runs[failure_alerts.FAILURE_ALERTS_PER_TICK :]
            tick(defs, instance, "run_failure_alerts", first.cursor)
        assert alerted_runs(slack) == runs


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
        assert alerted_runs(slack) == [first, second]


def test_a_run_whose_failure_is_reported_twice_between_ticks_is_alerted_once(defs, instance):
    # run monitoring, or the daemon's start-up sweep, can report failed a run that its own process reports
    # failed too: two failure events of one run, read by one tick
    with SlackStub() as slack:
        with environment(dagster_env(SLACK_WEBHOOK_URL=slack.url)):
            started = tick(defs, instance, "run_failure_alerts", None)
            run_id = fail(instance)
            instance.report_run_failed(instance.get_run_by_id(run_id), "reported again")
            failures = instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_FAILURE).records
            assert len(failures) == 2
            after = tick(defs, instance, "run_failure_alerts", started.cursor)
            tick(defs, instance, "run_failure_alerts", after.cursor)
        assert alerted_runs(slack) == [run_id]


def test_a_failure_committed_after_a_later_failure_was_read_is_alerted_on_the_next_tick(
    defs, postgres_instance
):
    # Postgres numbers an event when it is written, and a writer can commit after one numbered later was
    # read: two runs failing at once, the earlier number committed last
    instance = postgres_instance
    columns = "run_id, event, dagster_event_type, timestamp, step_key, asset_key, partition"
    events = sqlalchemy.create_engine(instance.event_log_storage.postgres_url)
    fail(instance)  # before the sensor ran: the cursor starts after it
    with SlackStub() as slack, events.connect() as writer:
        with environment(dagster_env(SLACK_WEBHOOK_URL=slack.url)):
            started = tick(defs, instance, "run_failure_alerts", None)
            late = fail(instance)
            # its failure event as it was written, taken out to be written again, committed last
            taken = writer.execute(
                sqlalchemy.text(
                    f"delete from event_logs where run_id = :run and dagster_event_type = :failure "
                    f"returning {columns}"
                ),
                {"run": late, "failure": DagsterEventType.RUN_FAILURE.value},
            ).one()
            writer.commit()
            writer.execute(
                sqlalchemy.text(
                    f"insert into event_logs ({columns}) values "
                    "(:run_id, :event, :dagster_event_type, :timestamp, :step_key, :asset_key, :partition)"
                ),
                taken._asdict(),
            )
            early = fail(instance)
            first = tick(defs, instance, "run_failure_alerts", started.cursor)
            assert alerted_runs(slack) == [early]
            writer.commit()
            later = tick(defs, instance, "run_failure_alerts", first.cursor)
            tick(defs, instance, "run_failure_alerts", later.cursor)
        assert alerted_runs(slack) == [early, late]


def test_a_tick_reads_its_share_of_new_failures_besides_those_it_reads_again(defs, instance, monkeypatch):
    monkeypatch.setattr(failure_alerts, "FAILURE_EVENTS_READ", 2)
    with SlackStub() as slack:
        with environment(dagster_env(SLACK_WEBHOOK_URL=slack.url)):
            cursor = tick(defs, instance, "run_failure_alerts", None).cursor
            first = [fail(instance), fail(instance)]
            cursor = tick(defs, instance, "run_failure_alerts", cursor).cursor
            second = [fail(instance), fail(instance)]
            tick(defs, instance, "run_failure_alerts", cursor)
        assert alerted_runs(slack) == first + second


def test_the_previous_releases_cursor_goes_on_after_the_last_failure_it_read(defs, instance):
    with SlackStub() as slack:
        with environment(dagster_env(SLACK_WEBHOOK_URL=slack.url)):
            started = tick(defs, instance, "run_failure_alerts", None)
            fail(instance)  # alerted by the previous release, whose cursor has read it
            newest = instance.fetch_run_status_changes(DagsterEventType.RUN_FAILURE, limit=1).records[0]
            previous = json.dumps({"after": newest.storage_id, "pending": [], "unanswered": {}})
            failed_since = fail(instance)
            upgraded = tick(defs, instance, "run_failure_alerts", previous)
            tick(defs, instance, "run_failure_alerts", upgraded.cursor)
        assert json.loads(started.cursor)["after"] < newest.storage_id
        assert alerted_runs(slack) == [failed_since]


def test_the_cursor_keeps_only_the_failures_its_last_tick_read(defs, instance):
    # so that it does not grow with every failure ever read
    with SlackStub() as slack:
        with environment(dagster_env(SLACK_WEBHOOK_URL=slack.url)):
            cursor = tick(defs, instance, "run_failure_alerts", None).cursor
            for _ in range(3):
                fail(instance)
                fail(instance)
                cursor = tick(defs, instance, "run_failure_alerts", cursor).cursor
        assert len(slack.delivered) == 6
        last_two = instance.fetch_run_status_changes(DagsterEventType.RUN_FAILURE, limit=2).records
        assert json.loads(cursor)["read"] == sorted(record.storage_id for record in last_two)


@pytest.mark.parametrize("broken", ["message", "run lookup"])
def test_an_error_on_the_second_alert_of_a_tick_keeps_the_first_sent(
    broken, defs, instance, monkeypatch, capfd
):
    # the cursor is saved only when a tick returns: an error escaping it would send the first again
    with SlackStub() as slack:
        with environment(dagster_env(SLACK_WEBHOOK_URL=slack.url)):
            started = tick(defs, instance, "run_failure_alerts", None)
            first, second = fail(instance), fail(instance)
            with monkeypatch.context() as patch:
                if broken == "message":
                    build = failure_alerts.failure_message

                    def failing_message(instance, run, base_url):
                        if run.run_id == second:
                            raise KeyError("step_failure_data")
                        return build(instance, run, base_url)

                    patch.setattr(failure_alerts, "failure_message", failing_message)
                else:
                    lookup = instance.get_run_by_id

                    def failing_lookup(run_id):
                        if run_id == second:
                            raise ConnectionError("the run storage went away")
                        return lookup(run_id)

                    patch.setattr(instance, "get_run_by_id", failing_lookup)
                capfd.readouterr()
                broken_tick = tick(defs, instance, "run_failure_alerts", started.cursor)
            assert alerted_runs(slack) == [first]
            assert pending_runs(broken_tick.cursor) == [second]
            assert f"the failure alert of run {second} could not be sent" in capfd.readouterr().err
            tick(defs, instance, "run_failure_alerts", broken_tick.cursor)
        assert alerted_runs(slack) == [first, second]


def test_a_run_whose_alert_cannot_be_built_does_not_hold_back_the_others(defs, instance, monkeypatch):
    with SlackStub() as slack:
        with environment(dagster_env(SLACK_WEBHOOK_URL=slack.url)):
            started = tick(defs, instance, "run_failure_alerts", None)
            unbuildable, other = fail(instance), fail(instance)
            build = failure_alerts.failure_message

            def failing_message(instance, run, base_url):
                if run.run_id == unbuildable:
                    raise KeyError("step_failure_data")
                return build(instance, run, base_url)

            monkeypatch.setattr(failure_alerts, "failure_message", failing_message)
            first = tick(defs, instance, "run_failure_alerts", started.cursor)
            second = tick(defs, instance, "run_failure_alerts", first.cursor)
        assert alerted_runs(slack) == [other]
        assert pending_runs(second.cursor) == [unbuildable]


def test_a_tick_starts_no_send_once_its_time_is_spent(defs, instance):
    # a tick the daemon gives up on keeps its old cursor: what it sent after that would be sent again
    with SlackStub() as slack:
        with environment(dagster_env(SLACK_WEBHOOK_URL=slack.url)):
            started = tick(defs, instance, "run_failure_alerts", None)
            runs = [fail(instance) for _ in range(3)]
            context = build_sensor_context(instance=instance, cursor=started.cursor, definitions=defs)
            # each message takes 15 s of this clock: the second starts at 15 s, the third would at 30 s
            result = failure_alerts.alert_failed_runs(
                context, budget_seconds=20, clock=lambda: 15.0 * len(slack.requests)
            )
            assert alerted_runs(slack) == runs[:2]
            assert pending_runs(context.cursor) == runs[2:]
            assert "20 s are spent" in result.skip_message
            tick(defs, instance, "run_failure_alerts", context.cursor)
        assert alerted_runs(slack) == runs


def test_a_ticks_failure_alerts_are_spaced_as_slack_asks(defs, instance):
    # Slack answers a burst to one webhook with 429: a tick's alerts keep ALERT_SLACK_MIN_INTERVAL apart,
    # as the balance alerts do, instead of leaving all but the first to later ticks
    with SlackStub() as slack:
        slack.limit_rate(0.4, retry_after=1)
        with environment(dagster_env(SLACK_WEBHOOK_URL=slack.url, ALERT_SLACK_MIN_INTERVAL="0.5")):
            started = tick(defs, instance, "run_failure_alerts", None)
            runs = [fail(instance) for _ in range(3)]
            sent = tick(defs, instance, "run_failure_alerts", started.cursor)
        assert alerted_runs(slack) == runs, sent.skip_message
        assert len(slack.requests) == 3
    assert pending_runs(sent.cursor) == []


def test_an_ops_alerts_pace_is_capped_so_a_tick_ends_within_dagsters_limit():
    from data_platform.orchestration import notify

    with environment(
        dagster_env(SLACK_WEBHOOK_URL="https://hooks.example.invalid/x", ALERT_SLACK_MIN_INTERVAL="60")
    ):
        channel = notify.channel_from_environment()
    assert channel.pace_seconds == notify.OPS_MAX_PACE_SECONDS
    budget = (
        failure_alerts.FAILURE_TICK_BUDGET_SECONDS
        + notify.OPS_MAX_PACE_SECONDS
        + 2 * notify.OPS_HTTP_TIMEOUT_SECONDS
    )
    assert budget < 60  # DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS' default


def test_a_slow_failing_send_keeps_the_tick_well_within_dagsters_limit(defs, instance):
    # the budget only stops new sends: a send with long retries (ALERT_HTTP_TIMEOUT up to 300 s, 5xx
    # retried) outlived Dagster's 60 s, which then kept the old cursor and the sent alert went again
    slow_error = Reply(503, "unavailable", delay=2)
    with SlackStub() as slack:
        env = dagster_env(
            SLACK_WEBHOOK_URL=slack.url,
            ALERT_HTTP_TIMEOUT="300",
            ALERT_HTTP_RETRIES="10",
            ALERT_HTTP_BACKOFF="0",
        )
        with environment(env):
            started = tick(defs, instance, "run_failure_alerts", None)
            runs = [fail(instance) for _ in range(2)]
            slack.answer(OK, slow_error, hang(seconds=40))
            context = build_sensor_context(instance=instance, cursor=started.cursor, definitions=defs)
            began = time.monotonic()
            failure_alerts.alert_failed_runs(context)
            failing = time.monotonic() - began
            assert alerted_runs(slack) == runs[:1]
            assert len(slack.requests) == 2  # one attempt for the failing one: its next try is the next tick
            assert pending_runs(context.cursor) == runs[1:]
            began = time.monotonic()
            failure_alerts.alert_failed_runs(context)  # no answer at all: the attempt gives up early
            hanging = time.monotonic() - began
    assert failing < 10, failing
    assert hanging < notify.OPS_HTTP_TIMEOUT_SECONDS + 5, hanging
    assert alerted_runs(slack) == runs[:1] and pending_runs(context.cursor) == runs[1:]


def test_an_ops_send_answered_byte_by_byte_is_given_up_after_its_timeout_in_all():
    # the HTTP client's timeout bounds each socket read: a server trickling its answer (a proxy, a
    # broken balancer) kept one send alive for 29 s with ALERT_HTTP_TIMEOUT=1
    server = socket.create_server(("127.0.0.1", 0))
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"

    def trickle() -> None:
        connection, _ = server.accept()
        with connection:
            connection.recv(65536)
            for byte in answer:
                connection.send(bytes([byte]))
                time.sleep(0.5)

    threading.Thread(target=trickle, daemon=True).start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/services/T000/B000/{SECRET}"
    channel = notify.channel_from_environment({"SLACK_WEBHOOK_URL": url, "ALERT_HTTP_TIMEOUT": "1"})
    began = time.monotonic()
    outcome = channel.send(notify.OpsMessage("Data is stale", details=("x",), link="http://x"))
    took = time.monotonic() - began
    server.close()
    assert took < 4, took
    assert not outcome.delivered and outcome.service_unavailable and outcome.unanswered
    assert outcome.error == "no answer within 2 s (the message may have arrived)"


def test_a_failure_alert_slack_takes_but_answers_late_is_sent_twice_at_most_then_logged(
    defs, instance, capfd
):
    # Slack took each copy and answered after the timeout: counted as undelivered, it went again every
    # 30 s without end. A refused attempt (HTTP 500) did not arrive, so it does not count.
    assert MAX_UNCONFIRMED_ATTEMPTS == 2
    with SlackStub() as slack:
        with environment(dagster_env(SLACK_WEBHOOK_URL=slack.url, ALERT_HTTP_TIMEOUT="1")):
            started = tick(defs, instance, "run_failure_alerts", None)
            run_id, other = fail(instance), fail(instance)
            # the previous release's cursor: a plain list of pending runs, no count of attempts
            cursor = json.dumps({"after": json.loads(started.cursor)["after"], "pending": []})
            slack.answer(slow(seconds=3), server_error(), slow(seconds=3), then=OK)
            capfd.readouterr()
            for _ in range(2):
                cursor = tick(defs, instance, "run_failure_alerts", cursor).cursor
                assert pending_runs(cursor) == [run_id, other]  # still readable by that release
            log = capfd.readouterr().err
            assert f"the failure alert of run {run_id} (daily_pipeline) got no answer: no answer" in log
            assert "HTTP 500: internal_error; retried next tick" in log
            given_up = tick(defs, instance, "run_failure_alerts", cursor)
            # the give-up is reported in the same words as the balance alerts'
            log = capfd.readouterr().err
            assert (
                f"the failure alert of run {run_id} (daily_pipeline) never confirmed after 2 unanswered "
                "attempts: not sent again; check the channel, where it may have arrived" in log
            )
            assert "never confirmed after 2 unanswered attempts" in given_up.skip_message
            assert pending_runs(given_up.cursor) == [other]
            after = tick(defs, instance, "run_failure_alerts", given_up.cursor)
            tick(defs, instance, "run_failure_alerts", after.cursor)
        # each slow copy reached the channel: two of them, then the other run's alert, once
        assert alerted_runs(slack) == [run_id, run_id, other]
        assert [r.status for r in slack.requests][:3] == [200, 500, 200]


@pytest.mark.parametrize(
    ("reply", "unanswered"),
    [(slow(seconds=3), True), (server_error(), False), (rate_limited(retry_after=30), False)],
    ids=["answered late", "500", "429"],
)
def test_an_ops_alert_outcome_says_whether_the_message_may_have_arrived(reply, unanswered):
    # a sensor counts the attempts that may have arrived; a refused one is retried freely
    with SlackStub() as slack:
        slack.always(reply)
        channel = notify.channel_from_environment({"SLACK_WEBHOOK_URL": slack.url, "ALERT_HTTP_TIMEOUT": "1"})
        outcome = channel.send(notify.OpsMessage("Pipeline run failed: daily_pipeline"))
    assert not outcome.delivered and outcome.unanswered is unanswered
    assert ("may have arrived" in outcome.error) is unanswered


def test_an_ops_alert_to_a_webhook_that_refuses_connections_is_not_counted_as_maybe_arrived():
    server = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{server.getsockname()[1]}/services/T000/B000/{SECRET}"
    server.close()  # nothing listens there now: the connection is refused
    outcome = notify.channel_from_environment({"SLACK_WEBHOOK_URL": url}).send(notify.OpsMessage("x"))
    assert not outcome.delivered and not outcome.unanswered
    assert outcome.error.startswith("cannot reach Slack: ") and SECRET not in outcome.error


def test_an_undelivered_alert_holds_back_the_rest_of_the_tick_in_order(defs, instance):
    # a failing destination gets one attempt per tick; the other runs wait behind the undelivered one
    with SlackStub() as slack:
        slack.always(server_error())
        with environment(dagster_env(SLACK_WEBHOOK_URL=slack.url)):
            started = tick(defs, instance, "run_failure_alerts", None)
            runs = [fail(instance) for _ in range(3)]
            context = build_sensor_context(instance=instance, cursor=started.cursor, definitions=defs)
            failure_alerts.alert_failed_runs(context)
        assert len(slack.requests) == 1
    assert pending_runs(context.cursor) == runs


def test_undelivered_alerts_beyond_the_limit_are_dropped_oldest_first_and_logged(defs, instance, capfd):
    with SlackStub() as slack:
        slack.always(server_error())
        with environment(dagster_env(SLACK_WEBHOOK_URL=slack.url, ALERT_HTTP_RETRIES="0")):
            started = tick(defs, instance, "run_failure_alerts", None)
            runs = [fail(instance) for _ in range(3)]
            context = build_sensor_context(instance=instance, cursor=started.cursor, definitions=defs)
            capfd.readouterr()
            failure_alerts.alert_failed_runs(context, max_pending=2)
    assert pending_runs(context.cursor) == runs[1:]
    log = capfd.readouterr().err
    assert f"1 run failure alert(s) dropped undelivered, more than 2 were waiting; runs: {runs[0]}" in log


def test_failures_after_the_previous_run_failure_sensors_cursor_are_alerted_on_the_first_tick(defs, instance):
    fail(instance)  # the previous sensor (Dagster's run_failure_sensor) alerted this one
    failed_during_upgrade = fail(instance)
    failure = instance.fetch_run_status_changes(DagsterEventType.RUN_FAILURE, limit=1).records[0]
    assert failure.event_log_entry.run_id == failed_during_upgrade
    failed_at = dt.datetime.fromtimestamp(failure.timestamp, dt.UTC).isoformat()
    # its record_id is the last event it handled: here the one just before this failure, which the
    # first tick must still alert
    previous_cursor = RunStatusSensorCursor(
        record_id=failure.storage_id - 1, record_timestamp=failed_at
    ).to_json()
    assert json.loads(previous_cursor)["__class__"] == "RunStatusSensorCursor"
    with SlackStub() as slack:
        with environment(dagster_env(SLACK_WEBHOOK_URL=slack.url)):
            upgraded = tick(defs, instance, "run_failure_alerts", previous_cursor)
            tick(defs, instance, "run_failure_alerts", upgraded.cursor)
        assert alerted_runs(slack) == [failed_during_upgrade]


# --- the channel ---------------------------------------------------------------------------------


def test_a_typo_in_a_balance_alert_setting_does_not_silence_the_ops_alerts(
    defs, instance, make_database, tmp_path
):
    with ops_slack(make_database(), tmp_path, ALERT_MIN_CHANGE_USD="abc") as slack:
        tick(defs, instance, "freshness_alerts", None)
    assert len(slack.delivered) == 1
    assert "no export folder" in slack.delivered[0]["text"]


@pytest.mark.parametrize("setting", UNUSABLE_PIPELINE_SETTINGS)
def test_an_unusable_pipeline_setting_does_not_silence_the_freshness_alerts(
    defs, instance, make_database, tmp_path, setting
):
    with ops_slack(make_database(), tmp_path, **setting) as slack:
        tick(defs, instance, "freshness_alerts", None)
    assert len(slack.delivered) == 1
    assert "no export folder" in slack.delivered[0]["text"]


def test_a_long_slack_retry_after_leaves_the_ops_alert_to_a_later_tick_instead_of_waiting():
    # a tick that waits out a long Retry-After outlives Dagster's limit, and its sends are repeated
    with SlackStub() as slack:
        slack.always(rate_limited(retry_after=30))
        channel = notify.channel_from_environment({"SLACK_WEBHOOK_URL": slack.url})
        outcome = channel.send(notify.OpsMessage("Pipeline run failed: daily_pipeline"))
        assert not outcome.delivered
        assert len(slack.requests) == 1


@pytest.mark.parametrize(
    ("reply", "delivered"),
    [(OK, True), (Reply(204, ""), True), (redirect(), False), (Reply(400, "invalid_blocks"), False)],
    ids=["200", "204", "302", "400"],
)
def test_only_a_2xx_answer_counts_an_ops_alert_as_delivered(reply, delivered):
    # a refused message never reached the channel: counted as sent, the alert would never be sent again
    # (a redirect followed would drop the message: the POST becomes a GET of a page)
    with SlackStub() as slack:
        slack.always(reply)
        channel = notify.channel_from_environment({"SLACK_WEBHOOK_URL": slack.url})
        outcome = channel.send(notify.OpsMessage("Pipeline run failed: daily_pipeline"))
    assert outcome.delivered is delivered
    assert outcome.error == (None if delivered else f"HTTP {reply.status}: {reply.body}")


def test_an_error_of_exactly_the_shown_lines_gets_no_ellipsis():
    lines = [f"line {n}" for n in range(1, notify.ERROR_LINES_SHOWN + 2)]
    shown = lines[: notify.ERROR_LINES_SHOWN]
    assert notify.first_lines("\n".join(shown)) == tuple(shown)
    assert notify.first_lines("\n".join(lines)) == (*shown, "...")


def test_blank_lines_of_an_error_do_not_take_the_places_of_its_shown_lines():
    assert notify.first_lines("a\n\n  \nb") == ("a", "b")


def test_an_ops_alert_shows_quoted_text_as_written_and_never_mentions_anyone():
    # an error quotes an export's values and what a step printed: <!channel> there must not ping a channel
    message = notify.OpsMessage("Pipeline run failed: <x>", details=("value <!channel> & co",))
    assert message.slack_text() == "Pipeline run failed: &lt;x&gt;\nvalue &lt;!channel&gt; &amp; co"
    assert message.blocks()[1]["text"]["text"] == "```value &lt;!channel&gt; &amp; co```"


def test_long_details_are_not_cut_inside_an_escaped_character():
    message = notify.OpsMessage("t", details=("x" * 2898 + "&",))
    body = message.blocks()[1]["text"]["text"]
    assert body == "```" + "x" * 2898 + "```"


def test_a_long_title_and_long_details_fit_slacks_block_limits():
    # Slack refuses a header over 150 characters and a section over 3000: a long job and step list or
    # error would make the alert undeliverable
    message = notify.OpsMessage(
        "Pipeline run failed: " + "x" * 300, details=("y" * 5000,), link="https://d/x"
    )
    header, body, _link = message.blocks()
    assert len(header["text"]["text"]) <= 150
    assert len(body["text"]["text"]) <= 3000
    assert message.text().startswith("Pipeline run failed: " + "x" * 300)  # the fallback text is whole


def test_an_error_naming_the_webhook_url_is_reported_without_it(monkeypatch):
    url = f"https://hooks.example.invalid/services/T000/B000/{SECRET}"
    channel = notify.channel_from_environment({"SLACK_WEBHOOK_URL": url})

    def failing(**_):
        raise ValueError(f"cannot post to {url}")

    monkeypatch.setattr(channel._client, "send", failing)
    outcome = channel.send(notify.OpsMessage("Data is stale"))
    assert not outcome.delivered and outcome.error.startswith("ValueError: cannot post to ")
    assert SECRET not in outcome.error


@pytest.mark.parametrize(
    ("environ", "base_url"),
    [
        ({}, "http://localhost:3000"),
        ({"DAGSTER_PORT": "3001"}, "http://localhost:3001"),  # the README's default, without compose
        ({"DAGSTER_BASE_URL": "  ", "DAGSTER_PORT": " "}, "http://localhost:3000"),  # spaces: unset
        (
            {"DAGSTER_BASE_URL": " https://dagster.example/ ", "DAGSTER_PORT": "3001"},
            "https://dagster.example",
        ),
    ],
)
def test_the_link_in_failure_alerts_follows_dagster_port_unless_dagster_base_url_is_set(environ, base_url):
    assert notify.dagster_base_url(environ) == base_url


@pytest.mark.parametrize(
    ("setting", "why"),
    [
        ({"ALERT_HTTP_TIMEOUT": "soon"}, "ALERT_HTTP_TIMEOUT must be a number, got 'soon'"),
        ({"SLACK_WEBHOOK_URL": f"http://hooks.example.com/{SECRET}"}, "must start with https://"),
    ],
)
def test_an_unusable_webhook_setting_prints_the_ops_alert_and_says_why(setting, why, capsys):
    details = ("the load failed:", "x.csv line 3")
    message = notify.OpsMessage("Pipeline run failed: daily_pipeline", details, "L")
    with SlackStub() as slack:
        channel = notify.channel_from_environment({"SLACK_WEBHOOK_URL": slack.url, **setting})
        assert channel.send(message).delivered
        assert slack.requests == []
    out = capsys.readouterr().out
    assert why in out and "not sent to Slack" in out
    # every line of it found by the tag the README says to search the logs for
    assert out.splitlines()[1:] == [
        "[ops alert] Pipeline run failed: daily_pipeline",
        "[ops alert] the load failed:",
        "[ops alert] x.csv line 3",
        "[ops alert] L",
    ]
    assert SECRET not in out


# --- freshness -----------------------------------------------------------------------------------


def load(database, *exports: dt.date) -> None:
    """Log `exports` as loaded, in the loader's own tables (created as the loader creates them)."""
    with database.connect("transformer", autocommit=True) as conn:
        ledger_tables.ensure_tables(conn)
        for day in exports:
            ledger.log_export(
                conn,
                LoadLogRow(
                    export_date=day,
                    source=f"exports/{day}",
                    invoices_sha256=f"sha-{day}",
                    organizations_sha256=None,
                    invoice_rows=0,
                    invoices_new=0,
                    invoices_changed=0,
                    invoices_unchanged=0,
                    organization_rows=0,
                    organizations_new=0,
                    organizations_changed=0,
                    loaded_at=dt.datetime.now(dt.UTC),
                    duration_seconds=0.1,
                ),
            )


def cover(database, covered: dt.date) -> None:
    """Record a successful build covering the exports up to `covered`."""
    with database.connect("transformer", autocommit=True) as conn:
        state = refresh.BuildState("rules", "project", "exports", covered)
        refresh.record_build(conn, refresh.BuildPlan(False, "test", covered, state), reader="alerter")


# the fact's verdict once EXPORTS are loaded and a build covered all but the last
BEHIND = (
    f"{FACT} is behind: exports up to 2024-07-03 are loaded, "
    "the last successful build covered up to 2024-07-02"
)


def fresh_export_folder(tmp_path, day: dt.date = EXPORTS[-1]) -> None:
    (tmp_path / "exports" / day.isoformat()).mkdir(parents=True)


def loaded_warehouse(make_database, covered: dt.date | None = None):
    """A new database with EXPORTS loaded and, with `covered`, a successful build up to that day."""
    database = make_database()
    load(database, *EXPORTS)
    if covered is not None:
        cover(database, covered)
    return database


@contextmanager
def ops_slack(database, csv_dir, **extra: str) -> Iterator[SlackStub]:
    """The sensors' environment: `database`, exports under `csv_dir`, ops alerts to a Slack stub."""
    with (
        SlackStub() as slack,
        environment(dagster_env(database.env(), CSV_DIR=str(csv_dir), SLACK_WEBHOOK_URL=slack.url, **extra)),
    ):
        yield slack


def in_progress(
    instance, job_name: str, status: DagsterRunStatus = DagsterRunStatus.STARTED, **run_fields
) -> DagsterRun:
    run = DagsterRun(
        job_name=job_name,
        run_id=str(uuid.uuid4()),
        status=status,
        remote_job_origin=daemons_origin(job_name),
        **run_fields,
    )
    instance.add_run(run)
    return run


def test_the_fact_is_fresh_while_the_last_build_covered_every_loaded_export(
    defs, instance, make_database, tmp_path
):
    database = loaded_warehouse(make_database, covered=EXPORTS[-1])
    fresh_export_folder(tmp_path)
    with ops_slack(database, tmp_path, DAGSTER_BASE_URL="http://dagster.test") as slack:
        cursor = tick(defs, instance, "freshness_alerts", None).cursor
        assert slack.requests == []
        cover(database, EXPORTS[1])  # the build of the newest export failed
        tick(defs, instance, "freshness_alerts", cursor)
    assert len(slack.delivered) == 1
    assert slack.delivered[0]["text"].startswith(f"Data is stale\n{BEHIND}")
    # where to look: the assets page of the Dagster UI
    assert slack.delivered[0]["text"].endswith("\nhttp://dagster.test/assets")


def test_an_export_folder_copied_with_its_times_kept_landed_when_it_was_copied(tmp_path):
    # cp -rp and rsync -a give a folder that lands today the modification time it had days ago
    fresh_export_folder(tmp_path)
    days_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(days=3)).timestamp()
    os.utime(tmp_path / "exports" / EXPORTS[-1].isoformat(), (days_ago, days_ago))
    with environment(dagster_env(CSV_DIR=str(tmp_path))):
        verdict = check_freshness(dt.datetime.now(dt.UTC), max_age_hours=26, fact=())
    assert verdict.problems == ()


def test_loaded_exports_without_a_successful_build_are_stale(make_database, tmp_path):
    database = loaded_warehouse(make_database)
    fresh_export_folder(tmp_path)
    with environment(dagster_env(database.env(), CSV_DIR=str(tmp_path))):
        verdict = check_freshness(dt.datetime.now(dt.UTC), max_age_hours=26)
    assert verdict.problems == (
        f"{FACT} is behind: exports up to 2024-07-03 are loaded, but no successful build is recorded",
    )


def test_the_exports_are_as_fresh_as_the_newest_folder(tmp_path, monkeypatch):
    # a landing folder keeps every day's export: the oldest landed long ago, the newest says whether one came
    monkeypatch.setenv("CSV_DIR", str(tmp_path))
    landed = []
    for day in EXPORTS[:2]:
        folder = tmp_path / "exports" / day.isoformat()
        folder.mkdir(parents=True)
        landed.append(folder.stat().st_ctime)
        time.sleep(0.05)  # the two folders' change times differ
    older, newer = (dt.datetime.fromtimestamp(seconds, dt.UTC) for seconds in landed)
    max_age_hours = (newer - older).total_seconds() / 3600
    assert freshness.check_freshness(newer + (newer - older) / 2, max_age_hours, fact=()).exports == ()
    (stale,) = freshness.check_freshness(newer + (newer - older) * 2, max_age_hours, fact=()).exports
    assert f"the newest, {EXPORTS[1].isoformat()}, landed" in stale


def test_an_exports_entry_that_is_not_a_folder_is_reported_stale_in_the_loaders_words(
    defs, instance, make_database, tmp_path
):
    # a link to an unmounted share: "no export folder" would send the reader looking for a late export
    (tmp_path / "exports").symlink_to(tmp_path / "unmounted")
    with ops_slack(make_database(), tmp_path) as slack:
        tick(defs, instance, "freshness_alerts", None)
    assert len(slack.delivered) == 1
    text = slack.delivered[0]["text"]
    assert "not a folder (or a link to a missing one)" in text and "no export folder" not in text


@pytest.mark.parametrize("value", ["0", "-1", "0.0"])
def test_an_export_max_age_of_zero_or_less_is_refused_and_a_year_is_allowed(value):
    # a max age of 0 h would call every export stale
    with pytest.raises(
        ValueError, match=rf"EXPORT_MAX_AGE_HOURS must be a number of hours > 0 .* got '{value}'"
    ):
        freshness.export_max_age_hours({"EXPORT_MAX_AGE_HOURS": value})
    assert freshness.export_max_age_hours({"EXPORT_MAX_AGE_HOURS": " 8784 "}) == 8784


@pytest.mark.parametrize("value", ["nan", "1e309", "100000", "abc"])
def test_an_unusable_export_max_age_is_reported_stale_and_the_default_stands_in(
    defs, instance, make_database, tmp_path, value
):
    # nan and inf never compare greater, so they switched the check off; "abc" made every tick raise,
    # seen only in the tick list; a wait of years means nothing
    database = loaded_warehouse(make_database, covered=EXPORTS[-1])
    fresh_export_folder(tmp_path)
    with ops_slack(database, tmp_path, EXPORT_MAX_AGE_HOURS=value) as slack, freshness_clock_ahead(hours=30):
        tick(defs, instance, "freshness_alerts", None)
    # as Slack shows it: the message escapes > (notify.slack_escaped)
    (message,) = [html.unescape(m["text"]).splitlines() for m in slack.delivered]
    assert message[:2] == [
        "Data is stale",
        f"EXPORT_MAX_AGE_HOURS must be a number of hours > 0 and at most 8784 (a year), got {value!r}; "
        "the exports are checked against the default, 26 h",
    ]
    assert message[2].startswith("no new export for 30.0 h") and message[2].endswith(
        "(EXPORT_MAX_AGE_HOURS=26)"
    )


def test_a_run_starting_while_the_fact_is_stale_sends_no_recovery_until_a_build_covers_it(
    defs, instance, make_database, tmp_path
):
    database = loaded_warehouse(make_database, covered=EXPORTS[0])
    fresh_export_folder(tmp_path)
    with ops_slack(database, tmp_path) as slack:
        stale = tick(defs, instance, "freshness_alerts", None)
        assert [m["text"].splitlines()[0] for m in slack.delivered] == ["Data is stale"]
        run = in_progress(instance, "__ASSET_JOB")  # "Materialize all", not the daily job
        during = tick(defs, instance, "freshness_alerts", stale.cursor)
        assert len(slack.delivered) == 1, slack.delivered[-1]["text"]
        cover(database, EXPORTS[-1])  # the run's build succeeds
        during = tick(defs, instance, "freshness_alerts", during.cursor)
        assert len(slack.delivered) == 1  # judged only once the run is over
        instance.delete_run(run.run_id)
        tick(defs, instance, "freshness_alerts", during.cursor)
    assert len(slack.delivered) == 2
    assert slack.delivered[1]["text"].startswith(f"Data is fresh again\nresolved: {FACT} is behind")


@pytest.mark.parametrize("status", [DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING])
def test_a_run_queued_or_starting_keeps_the_facts_last_verdict_as_a_started_one_does(
    defs, instance, make_database, tmp_path, status
):
    # a queued run waits for the one loading now, and a starting one is about to load: either way the
    # fact's lag is the runs' work in progress, not a stale warehouse
    database = loaded_warehouse(make_database, covered=EXPORTS[-1])
    fresh_export_folder(tmp_path)
    with ops_slack(database, tmp_path) as slack:
        cursor = tick(defs, instance, "freshness_alerts", None).cursor
        run = in_progress(instance, "daily_pipeline", status)
        load(database, dt.date(2024, 7, 4))  # loaded, not built yet
        cursor = tick(defs, instance, "freshness_alerts", cursor).cursor
        assert slack.requests == []
        instance.delete_run(run.run_id)
        tick(defs, instance, "freshness_alerts", cursor)  # no run left: now it counts
    assert [m["text"].splitlines()[0] for m in slack.delivered] == ["Data is stale"]


@contextmanager
def export_loaded_not_built(defs, instance, make_database, tmp_path):
    """A fact judged fresh, then an export loaded that no build covered yet: the Slack stub, and a tick of
    the freshness sensor going on from the last."""
    database = loaded_warehouse(make_database, covered=EXPORTS[-1])
    fresh_export_folder(tmp_path)
    with ops_slack(database, tmp_path) as slack:
        cursor = tick(defs, instance, "freshness_alerts", None).cursor
        load(database, dt.date(2024, 7, 4))

        def next_tick() -> None:
            nonlocal cursor
            cursor = tick(defs, instance, "freshness_alerts", cursor).cursor

        yield slack, next_tick


@pytest.mark.parametrize("retry_created", [False, True])
def test_a_run_cut_off_and_about_to_be_retried_keeps_the_facts_last_verdict_until_the_daemon_reads_it(
    defs, daily_instance, make_database, tmp_path, retry_created
):
    # `dagster dev` restarted under a run that had loaded an export: its retry will build it
    from dagster._core.storage.tags import AUTO_RETRY_RUN_ID_TAG

    with export_loaded_not_built(defs, daily_instance, make_database, tmp_path) as (slack, next_tick):
        first = cut_off_by_startup(daily_instance, in_progress(daily_instance, "daily_pipeline"))
        if retry_created:  # the daemon created the retry and tagged the run, and has yet to queue it
            retry = retry_of(daily_instance, first, DagsterRunStatus.NOT_STARTED)
            daily_instance.add_run_tags(first.run_id, {AUTO_RETRY_RUN_ID_TAG: retry.run_id})
        next_tick()
        assert slack.requests == []
        # the daemon read past it: a retry is queued by then and counts as any run; none was queued here
        daemon_read_up_to_now(daily_instance)
        next_tick()
    assert [m["text"].splitlines()[0] for m in slack.delivered] == ["Data is stale"]


@pytest.mark.parametrize("why", ["started by hand", "the daemon beats without reading it"])
def test_a_failed_run_no_retry_comes_for_does_not_hold_the_facts_verdict(
    defs, daily_instance, make_database, tmp_path, why
):
    from dagster._daemon.auto_run_reexecution.event_log_consumer import EventLogConsumerDaemon
    from dagster._daemon.types import DaemonHeartbeat

    with export_loaded_not_built(defs, daily_instance, make_database, tmp_path) as (slack, next_tick):
        if why == "started by hand":
            cut_off_by_startup(daily_instance, daily_instance.create_run_for_job(job_def=failing_daily_job))
        else:  # failing before it moves its place, say
            cut_off_by_startup(daily_instance, in_progress(daily_instance, "daily_pipeline"))
            later = time.time() + run_retries.UNREAD_WAIT_SECONDS + 1
            beat = DaemonHeartbeat(later, EventLogConsumerDaemon.daemon_type(), "daemon", None)
            daily_instance.add_daemon_heartbeat(beat)
        next_tick()
    assert [m["text"].splitlines()[0] for m in slack.delivered] == ["Data is stale"]


def test_while_init_sh_holds_the_pipeline_lock_a_lagging_fact_keeps_the_last_verdict(
    defs, instance, make_database, tmp_path
):
    database = loaded_warehouse(make_database, covered=EXPORTS[-1])
    fresh_export_folder(tmp_path)
    with ops_slack(database, tmp_path) as slack:
        cursor = tick(defs, instance, "freshness_alerts", None).cursor
        with pipeline.PipelineLock(timeout=0):  # the dbt container's run, outside Dagster
            load(database, dt.date(2024, 7, 4))  # loaded, not built yet
            cursor = tick(defs, instance, "freshness_alerts", cursor).cursor
            assert slack.requests == []
        tick(defs, instance, "freshness_alerts", cursor)  # its build failed: now it counts
    assert [m["text"].splitlines()[0] for m in slack.delivered] == ["Data is stale"]


def test_the_previous_releases_cursor_keeps_its_problems_as_the_facts_verdict(
    defs, instance, make_database, tmp_path
):
    database = loaded_warehouse(make_database, covered=EXPORTS[1])
    fresh_export_folder(tmp_path)
    previous_cursor = json.dumps({"stale": True, "problems": [BEHIND]})
    with ops_slack(database, tmp_path) as slack:
        run = in_progress(instance, "daily_pipeline")
        cover(database, EXPORTS[-1])  # the run has built, and is still running
        cursor = tick(defs, instance, "freshness_alerts", previous_cursor).cursor
        assert slack.requests == []  # still stale until the run is over
        instance.delete_run(run.run_id)
        tick(defs, instance, "freshness_alerts", cursor)
    assert [m["text"] for m in slack.delivered] == [f"Data is fresh again\nresolved: {BEHIND}"]


def test_a_fact_gone_stale_after_the_stale_alert_still_counts_while_a_run_is_in_progress(
    defs, instance, make_database, tmp_path
):
    database = loaded_warehouse(make_database, covered=EXPORTS[-1])
    fresh_export_folder(tmp_path)
    with ops_slack(database, tmp_path) as slack:
        with freshness_clock_ahead(hours=30):
            cursor = tick(defs, instance, "freshness_alerts", None).cursor  # stale: no new export
            cover(database, EXPORTS[1])  # then a build fails: a cause of its own, told
            cursor = tick(defs, instance, "freshness_alerts", cursor).cursor
        in_progress(instance, "daily_pipeline")
        (tmp_path / "exports" / "2024-07-04").mkdir()  # a new export: its run is in progress
        tick(defs, instance, "freshness_alerts", cursor)
    assert [m["text"].splitlines()[0] for m in slack.delivered] == ["Data is stale", "Data is still stale"]


def test_a_freshness_alert_slack_takes_but_answers_late_is_sent_twice_at_most_then_logged(
    defs, instance, make_database, tmp_path, capfd
):
    # as a failure alert: each late answer may hide a delivered copy, resent every 5 min without end
    database = loaded_warehouse(make_database, covered=EXPORTS[1])
    fresh_export_folder(tmp_path)
    with ops_slack(database, tmp_path, ALERT_HTTP_TIMEOUT="1") as slack:
        slack.always(slow(seconds=3))
        capfd.readouterr()
        cursor = None
        for _ in range(3):
            result = tick(defs, instance, "freshness_alerts", cursor)
            cursor = result.cursor
        assert (
            "the freshness alert (Data is stale) never confirmed after 2 unanswered attempts: not sent "
            "again; check the channel, where it may have arrived" in capfd.readouterr().err
        )
        assert [m["text"].splitlines()[0] for m in slack.delivered] == ["Data is stale"] * 2
        slack.always(OK)
        cover(database, EXPORTS[-1])  # counted as said: the recovery is alerted as usual
        tick(defs, instance, "freshness_alerts", cursor)
    assert [m["text"].splitlines()[0] for m in slack.delivered] == ["Data is stale"] * 2 + [
        "Data is fresh again"
    ]


def test_a_refused_freshness_alert_is_retried_until_delivered(defs, instance, make_database, tmp_path):
    # nothing arrived: no limit, unlike an unanswered one
    database = loaded_warehouse(make_database, covered=EXPORTS[1])
    fresh_export_folder(tmp_path)
    with ops_slack(database, tmp_path, ALERT_HTTP_RETRIES="0") as slack:
        slack.always(server_error())
        cursor = None
        for _ in range(MAX_UNCONFIRMED_ATTEMPTS + 1):
            cursor = tick(defs, instance, "freshness_alerts", cursor).cursor
        assert len(slack.requests) == MAX_UNCONFIRMED_ATTEMPTS + 1 and slack.delivered == []
        slack.always(OK)
        tick(defs, instance, "freshness_alerts", cursor)
    assert [m["text"].splitlines()[0] for m in slack.delivered] == ["Data is stale"]


def test_a_refused_recovery_alert_still_names_what_was_resolved_when_it_is_sent_again(
    defs, instance, make_database, tmp_path
):
    # the retry of "fresh again" must say what it resolves: the problems the stale alert named, not the
    # (none) the failed attempt's tick found
    database = loaded_warehouse(make_database, covered=EXPORTS[1])
    fresh_export_folder(tmp_path)
    with ops_slack(database, tmp_path, ALERT_HTTP_RETRIES="0") as slack:
        cursor = tick(defs, instance, "freshness_alerts", None).cursor
        cover(database, EXPORTS[-1])  # the next build succeeded
        slack.always(server_error())
        cursor = tick(defs, instance, "freshness_alerts", cursor).cursor
        slack.always(OK)
        tick(defs, instance, "freshness_alerts", cursor)
    assert [m["text"].splitlines()[:2] for m in slack.delivered] == [
        ["Data is stale", BEHIND],
        ["Data is fresh again", f"resolved: {BEHIND}"],
    ]


def test_a_stale_alert_names_a_late_export_beside_a_landing_folder_the_loader_refuses(
    defs, instance, make_database, tmp_path
):
    # the refusal used to hide the age: fixing it left the operator thinking the exports arrive
    database = loaded_warehouse(make_database, covered=EXPORTS[-1])
    fresh_export_folder(tmp_path)
    stray = tmp_path / "exports" / "incoming"
    stray.mkdir()
    with ops_slack(database, tmp_path) as slack, freshness_clock_ahead(hours=30):
        cursor = tick(defs, instance, "freshness_alerts", None).cursor
        stray.rmdir()  # the refusal is fixed; the late export was told
        cursor = tick(defs, instance, "freshness_alerts", cursor).cursor
    (stale,) = [html.unescape(m["text"]).splitlines() for m in slack.delivered]
    assert stale[0] == "Data is stale"
    assert "unexpected entry in" in stale[1] and stale[2].startswith("no new export for 30.0 h")


def test_stale_for_another_cause_is_said_once_and_the_same_causes_in_new_words_are_not(
    defs, instance, make_database, tmp_path
):
    database = loaded_warehouse(make_database, covered=EXPORTS[-1])
    fresh_export_folder(tmp_path)
    with ops_slack(database, tmp_path) as slack:
        with freshness_clock_ahead(hours=30):
            cursor = tick(defs, instance, "freshness_alerts", None).cursor  # stale: no new export
        with freshness_clock_ahead(hours=31):  # an hour later: the same cause, its age grown
            cursor = tick(defs, instance, "freshness_alerts", cursor).cursor
            assert len(slack.delivered) == 1
            cover(database, EXPORTS[1])  # then a build fails: a cause of its own
            cursor = tick(defs, instance, "freshness_alerts", cursor).cursor
            cursor = tick(defs, instance, "freshness_alerts", cursor).cursor  # nothing new
        (tmp_path / "exports" / "2024-07-04").mkdir()  # an export lands: only the build lags now
        cursor = tick(defs, instance, "freshness_alerts", cursor).cursor  # a cause fixed: no news
        assert len(slack.delivered) == 2
        with freshness_clock_ahead(hours=29):  # and then, no export for a day: told again
            cursor = tick(defs, instance, "freshness_alerts", cursor).cursor
        cover(database, EXPORTS[-1])
        (tmp_path / "exports" / "2024-07-05").mkdir()
        tick(defs, instance, "freshness_alerts", cursor)
    titles = [m["text"].splitlines()[0] for m in slack.delivered]
    assert titles == ["Data is stale", "Data is still stale", "Data is still stale", "Data is fresh again"]
    behind = slack.delivered[1]["text"].splitlines()
    assert behind[1].startswith("no new export for 31.0 h") and behind[2].startswith(f"{FACT} is behind")
    late_again = slack.delivered[2]["text"].splitlines()
    assert late_again[1].startswith("no new export for 29.0 h: the newest, 2024-07-04")
    assert late_again[2].startswith(f"{FACT} is behind")
    assert [line.split(":")[0] for line in slack.delivered[3]["text"].splitlines()[1:]] == ["resolved"] * 2


@pytest.mark.parametrize("release", ["fact kept apart", "one list of problems"])
def test_the_previous_releases_stale_cursor_says_nothing_again_for_the_same_causes(
    defs, instance, make_database, tmp_path, release
):
    # written before the causes were kept: an upgrade alone must not repeat "stale"
    database = loaded_warehouse(make_database, covered=EXPORTS[1])
    fresh_export_folder(tmp_path)
    with ops_slack(database, tmp_path) as slack, freshness_clock_ahead(hours=30):
        late = check_freshness(freshness.utc_now(), max_age_hours=26, fact=()).exports
        if release == "fact kept apart":
            state = {"stale": True, "exports": late, "fact": [BEHIND], "unanswered": 0}
        else:  # the release before: the export problems and the fact's in one list
            state = {"stale": True, "problems": [*late, BEHIND]}
        tick(defs, instance, "freshness_alerts", json.dumps(state))
    assert late[0].startswith("no new export for 30.0 h")
    assert slack.requests == []


def test_a_cursor_whose_causes_do_not_match_its_problems_is_read_from_their_words(
    defs, instance, make_database, tmp_path
):
    # set by hand (`dagster sensor cursor --set`): every tick must not fail on it, telling nobody
    database = loaded_warehouse(make_database, covered=EXPORTS[1])
    fresh_export_folder(tmp_path)
    state = {"stale": True, "exports": [], "fact": [BEHIND], "causes": [], "unanswered": 0}
    with ops_slack(database, tmp_path) as slack:
        cursor = tick(defs, instance, "freshness_alerts", json.dumps(state)).cursor
        assert slack.requests == []  # the same cause: told already
        cover(database, EXPORTS[-1])
        tick(defs, instance, "freshness_alerts", cursor)
    assert [m["text"] for m in slack.delivered] == [f"Data is fresh again\nresolved: {BEHIND}"]


def test_still_stale_names_a_told_cause_gone_in_the_same_tick_as_resolved(
    defs, instance, make_database, tmp_path
):
    database = loaded_warehouse(make_database, covered=EXPORTS[-1])
    fresh_export_folder(tmp_path)
    with ops_slack(database, tmp_path) as slack:
        with freshness_clock_ahead(hours=30):
            cursor = tick(defs, instance, "freshness_alerts", None).cursor  # stale: no new export
        (tmp_path / "exports" / "2024-07-04").mkdir()  # it lands, and is loaded, but its build fails
        load(database, dt.date(2024, 7, 4))
        tick(defs, instance, "freshness_alerts", cursor)
    (stale, still) = [m["text"].splitlines() for m in slack.delivered]
    assert still[0] == "Data is still stale"
    assert still[1].startswith(f"{FACT} is behind: exports up to 2024-07-04 are loaded")
    assert still[2] == f"resolved: {stale[1]}" and stale[1].startswith("no new export for 30.0 h")


def as_launched(instance, run_id: str) -> DagsterRun:
    """The run executed in this process as the daemon would have launched it, from the code location."""
    run = instance.get_run_by_id(run_id)
    return run._replace(remote_job_origin=daemons_origin(run.job_name))


def cut_off_by_startup(instance, run: DagsterRun) -> DagsterRun:
    """`run` started its build step, then the daemon stopped and its next start failed the run."""
    from dagster import DagsterEvent

    for kind, step in ((DagsterEventType.RUN_START, None), (DagsterEventType.STEP_START, "dbt_build")):
        event = DagsterEvent(kind.value, job_name=run.job_name, step_key=step)
        instance.report_dagster_event(event, run_id=run.run_id)
    assert startup.fail_interrupted_runs(instance) == [run.run_id]
    return instance.get_run_by_id(run.run_id)


def retry_of(instance, first: DagsterRun, status: DagsterRunStatus = DagsterRunStatus.STARTED) -> DagsterRun:
    """A run as Dagster's run retries start it for `first` (in progress, unless `status` says otherwise)."""
    from dagster._core.storage.tags import PARENT_RUN_ID_TAG, RETRY_NUMBER_TAG, ROOT_RUN_ID_TAG

    tags = {PARENT_RUN_ID_TAG: first.run_id, ROOT_RUN_ID_TAG: first.run_id, RETRY_NUMBER_TAG: "1"}
    return in_progress(
        instance, "daily_pipeline", status, parent_run_id=first.run_id, root_run_id=first.run_id, tags=tags
    )


def daemon_read_up_to_now(instance) -> None:
    """Dagster's run retries' daemon read every event so far (its cursor), starting nothing."""
    from dagster._daemon.auto_run_reexecution.event_log_consumer import (
        DAGSTER_EVENT_TYPES,
        _create_cursor_key,
    )

    newest = str(instance.event_log_storage.get_maximum_record_id())
    instance.daemon_cursor_storage.set_cursor_values(
        {_create_cursor_key(k): newest for k in DAGSTER_EVENT_TYPES}
    )


def test_a_run_cut_off_after_its_alert_step_gave_up_on_alerts_says_what_the_step_said(instance):
    # the step retries the run's other alerts for minutes after a give-up, then fails saying it: a run
    # cut off meanwhile failed without those words, and its retry found the give-up reported, ending green
    run = in_progress(instance, "daily_pipeline")
    given_up = "some balance alerts got no answer; the alert run said:\nslack: 1 alert never confirmed"
    step_events(instance, run.run_id, given_up=given_up)
    assert startup.fail_interrupted_runs(instance) == [run.run_id]

    message = failure_alerts.failure_message(instance, instance.get_run_by_id(run.run_id), "http://d")

    assert message.title == "Pipeline run failed: daily_pipeline, step balance_alerts, which did not finish"
    assert message.details == (
        startup.MESSAGE,
        failure_alerts.GIVEN_UP_UNTOLD,
        "some balance alerts got no answer; the alert run said:",
        "slack: 1 alert never confirmed",
        failure_alerts.CATCH_UP,
    )


def step_events(
    instance,
    run_id: str,
    step: str = "balance_alerts",
    given_up: str | None = None,
    failed: str | None = None,
) -> None:
    """A step's events in a daily run: its start, the give-up it recorded (`given_up`), its failure
    (`failed`); a step with neither is cut off."""
    from dagster import AssetKey, AssetObservation, DagsterEvent
    from dagster._core.events import AssetObservationData
    from dagster._core.execution.plan.objects import StepFailureData
    from dagster._utils.error import SerializableErrorInfo

    events = [(DagsterEventType.STEP_START, None)]
    if given_up is not None:
        observed = AssetObservation(AssetKey(step), metadata={run_records.GIVEN_UP_METADATA: given_up})
        events.append((DagsterEventType.ASSET_OBSERVATION, AssetObservationData(observed)))
    if failed is not None:
        error = SerializableErrorInfo(f"dagster._core.definitions.events.Failure: {failed}", [], "Failure")
        events.append((DagsterEventType.STEP_FAILURE, StepFailureData(error, None)))
    for kind, data in events:
        event = DagsterEvent(kind.value, "daily_pipeline", step_key=step, event_specific_data=data)
        instance.report_dagster_event(event, run_id=run_id)


def canceled_after_a_give_up(instance, given_up: str | None, failed: str | None = None) -> str:
    """A daily run canceled (Terminate) while its balance alerts step ran, after it recorded `given_up`;
    or during a later step, after the balance alerts step `failed`."""
    run = in_progress(instance, "daily_pipeline")
    step_events(instance, run.run_id, given_up=given_up, failed=failed)
    instance.report_run_canceled(instance.get_run_by_id(run.run_id))
    return run.run_id


def test_a_run_canceled_after_its_alert_step_gave_up_is_alerted_with_what_the_step_said(defs, instance):
    """The step retries the run's other alerts for minutes after a give-up, and only its failure said it:
    a run canceled meanwhile (Terminate) left no one told to check the channel. A run canceled without a
    give-up is someone's decision, and not alerted."""
    given_up = "some balance alerts got no answer; the alert run said:\nslack: 1 alert never confirmed"
    with (
        SlackStub() as slack,
        environment(dagster_env(SLACK_WEBHOOK_URL=slack.url, DAGSTER_BASE_URL="http://d")),
    ):
        started = tick(defs, instance, "run_failure_alerts", None)
        quietly = canceled_after_a_give_up(instance, None)
        run_id = canceled_after_a_give_up(instance, given_up)
        cursor = tick(defs, instance, "run_failure_alerts", started.cursor).cursor
        tick(defs, instance, "run_failure_alerts", cursor)
        assert alerted_runs(slack) == [run_id]
        assert quietly not in pending_runs(cursor)
    assert slack.delivered[0]["text"].splitlines() == [
        "Pipeline run canceled: daily_pipeline, after its balance alerts step gave up on alerts",
        "some balance alerts got no answer; the alert run said:",
        "slack: 1 alert never confirmed",
        failure_alerts.CANCELED_DURING_RETRIES,
        f"http://d/runs/{run_id}",
    ]


def test_a_run_canceled_after_its_alert_step_failed_is_alerted_with_that_failure(instance):
    """The alert step had failed saying the give-up and what its retries delivered, and the run was
    canceled during a later step: its failure, never alerted, is what the alert says."""
    given_up = "some balance alerts got no answer; the alert run said:\nslack: 1 alert never confirmed"
    failed = f"{given_up}\nthe step's retries then delivered the run's other alerts"
    run_id = canceled_after_a_give_up(instance, given_up, failed)

    message = failure_alerts.run_message(instance, instance.get_run_by_id(run_id), "http://d")

    assert message.details == (
        "some balance alerts got no answer; the alert run said:",
        "slack: 1 alert never confirmed",
        "the step's retries then delivered the run's other alerts",
        failure_alerts.CANCELED_AFTER_THE_STEP_FAILED,
    )


@pytest.mark.parametrize("shown", ["another pipeline run holds the lock", "dbt docs generate failed"])
def test_a_give_up_the_error_shown_does_not_quote_is_said_by_the_failure_alert(instance, shown):
    """A retry of the step that failed on an error of its own (the pipeline lock busy) said nothing of the
    give-up an earlier attempt recorded; and when the docs step failed first, the alert shows its error,
    not the balance alerts step's failure that quoted the give-up. Either way the alert showed that error
    alone, and no one was told to check the channel."""
    run = in_progress(instance, "daily_pipeline")
    given_up = "some balance alerts got no answer; the alert run said:\nslack: 1 alert never confirmed"
    if shown == "dbt docs generate failed":
        step_events(instance, run.run_id, "dbt_docs", failed=shown)
        step_events(
            instance, run.run_id, given_up=given_up, failed=f"{given_up}\nthe step's retries then delivered"
        )
    else:
        step_events(instance, run.run_id, given_up=given_up, failed=shown)
    instance.report_run_failed(instance.get_run_by_id(run.run_id))

    message = failure_alerts.failure_message(instance, instance.get_run_by_id(run.run_id), "http://d")

    assert message.details[:4] == (
        shown,
        failure_alerts.GIVEN_UP_UNTOLD,
        "some balance alerts got no answer; the alert run said:",
        "slack: 1 alert never confirmed",
    )


def test_a_run_canceled_during_the_give_up_retries_after_another_step_failed_says_so(instance):
    """Another step's failure is not the balance alerts step's: the alert said the run was canceled after
    the step failed, with the docs' error, while the step was still retrying the run's other alerts."""
    run = in_progress(instance, "daily_pipeline")
    given_up = "some balance alerts got no answer"
    step_events(instance, run.run_id, "dbt_docs", failed="dbt docs generate failed")
    step_events(instance, run.run_id, given_up=given_up)
    instance.report_run_canceled(instance.get_run_by_id(run.run_id))

    message = failure_alerts.run_message(instance, instance.get_run_by_id(run.run_id), "http://d")

    assert message.details == (given_up, failure_alerts.CANCELED_DURING_RETRIES)


def test_runs_canceled_before_the_sensor_read_any_are_not_alerted(defs, instance):
    """As runs that failed before its first tick are not; nor, after an upgrade from a cursor that read no
    cancellations, those from before it."""
    given_up = "some balance alerts got no answer"
    with SlackStub() as slack, environment(dagster_env(SLACK_WEBHOOK_URL=slack.url)):
        canceled_after_a_give_up(instance, given_up)
        first = tick(defs, instance, "run_failure_alerts", None).cursor
        tick(defs, instance, "run_failure_alerts", first)
        assert slack.delivered == []
        older = json.loads(first)
        del older["cancels_after"]
        older["after"] = older["since"] = -1  # read from the start: the upgrade's cursor
        canceled_after_a_give_up(instance, given_up)
        cursor = tick(defs, instance, "run_failure_alerts", json.dumps(older)).cursor
        assert slack.delivered == []
        later = canceled_after_a_give_up(instance, given_up)
        tick(defs, instance, "run_failure_alerts", cursor)
        assert alerted_runs(slack) == [later]


def test_failures_and_cancellations_beyond_a_ticks_reading_are_all_alerted(defs, instance, monkeypatch):
    """A tick reads a page of each kind: a page that ends early must not let the other kind's carry the
    cursor past failures it did not read."""
    monkeypatch.setattr(failure_alerts, "FAILURE_EVENTS_READ", 1)
    with SlackStub() as slack, environment(dagster_env(SLACK_WEBHOOK_URL=slack.url)):
        cursor = tick(defs, instance, "run_failure_alerts", None).cursor
        failed = [fail(instance) for _ in range(4)]
        canceled = canceled_after_a_give_up(instance, "some balance alerts got no answer")
        for _ in range(8):
            cursor = tick(defs, instance, "run_failure_alerts", cursor).cursor
        assert sorted(alerted_runs(slack)) == sorted([*failed, canceled])


def test_a_give_up_its_step_failure_said_is_not_said_again_when_another_step_was_cut_off(instance):
    run = in_progress(instance, "daily_pipeline")
    given_up = "some balance alerts got no answer; the alert run said:\nslack: 1 alert never confirmed"
    step_events(
        instance, run.run_id, given_up=given_up, failed=f"{given_up}\nthe step's retries then delivered"
    )
    step_events(instance, run.run_id, "dbt_docs")  # cut off
    assert startup.fail_interrupted_runs(instance) == [run.run_id]

    message = failure_alerts.failure_message(instance, instance.get_run_by_id(run.run_id), "http://d")

    assert message.text().count("slack: 1 alert never confirmed") == 1, message.text()
    assert failure_alerts.GIVEN_UP_UNTOLD not in message.details


def test_a_run_startup_failed_under_a_step_says_what_to_do_without_run_retries(instance):
    # an instance whose dagster.yaml has no run retries: nothing starts the run again
    run = cut_off_by_startup(instance, in_progress(instance, "daily_pipeline"))

    message = failure_alerts.failure_message(instance, run, "http://d")

    assert message.title == "Pipeline run failed: daily_pipeline, step dbt_build, which did not finish"
    assert message.details == (startup.MESSAGE, failure_alerts.CATCH_UP)
    # nor does the sweep give the retries' daemon a place: enabled later, it would retry every failure since
    from dagster._daemon.auto_run_reexecution.event_log_consumer import _create_cursor_key

    key = _create_cursor_key(DagsterEventType.RUN_FAILURE)
    assert instance.daemon_cursor_storage.get_cursor_values({key}) == {}


def test_a_run_startup_failed_is_retried_by_dagster_and_its_alert_says_so(daily_instance):
    run = cut_off_by_startup(daily_instance, in_progress(daily_instance, "daily_pipeline"))

    message = failure_alerts.failure_message(daily_instance, run, "http://d")

    assert message.details == (startup.MESSAGE, failure_alerts.RUN_AGAIN_BY_DAGSTER)


def test_a_run_stopped_under_a_step_is_retried_by_dagster_and_its_alert_says_so(daily_instance):
    # the step's own error is the interrupt; the run did not fail on an error of its steps
    run_retries.keep_failures_from_here(daily_instance)  # the daemon runs
    run = as_launched(daily_instance, fail(daily_instance, interrupted_daily_job))

    message = failure_alerts.failure_message(daily_instance, run, "http://d")

    assert message.details[0] == failure_alerts.INTERRUPTED_IN_WORDS
    assert message.details[-1] == failure_alerts.RUN_AGAIN_BY_DAGSTER


def test_a_failure_before_the_daemons_first_start_is_not_said_to_be_retried(daily_instance):
    # `dagster dev` started without startup: its first start takes a place past every failure there is
    run = as_launched(daily_instance, fail(daily_instance, interrupted_daily_job))

    message = failure_alerts.failure_message(daily_instance, run, "http://d")

    assert message.details[-1] == failure_alerts.CATCH_UP


@pytest.mark.parametrize("reason", ["UNEXPECTED_TERMINATION", "STEP_FAILURE"])
def test_a_failure_read_before_dagster_tags_the_run_is_judged_as_dagster_will(daily_instance, reason):
    """The event is stored first, the run's status and verdict follow: a tick may read in between."""
    from dagster import DagsterEvent
    from dagster._core.events import JobFailureData, RunFailureReason
    from dagster._core.events.log import EventLogEntry

    run_retries.keep_failures_from_here(daily_instance)
    run = in_progress(daily_instance, "daily_pipeline")
    why = JobFailureData(None, RunFailureReason[reason])
    event = DagsterEvent(DagsterEventType.RUN_FAILURE.value, run.job_name, event_specific_data=why)
    entry = EventLogEntry(None, logging.ERROR, "", run.run_id, time.time(), dagster_event=event)
    daily_instance.event_log_storage.store_event(entry)
    assert daily_instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED

    message = failure_alerts.failure_message(daily_instance, daily_instance.get_run_by_id(run.run_id), "d")

    # a step's own error is not retried (dagster.yaml)
    assert (failure_alerts.RUN_AGAIN_BY_DAGSTER in message.details) == (reason != "STEP_FAILURE")


def test_a_failure_the_daemon_has_yet_to_read_when_startup_runs_is_still_retried(daily_instance):
    # stopped with `dagster dev`, the run failed after its daemon had stopped: the next start reads it
    run_retries.keep_failures_from_here(daily_instance)  # the daemon ran before
    run = as_launched(daily_instance, fail(daily_instance, interrupted_daily_job))
    assert startup.fail_interrupted_runs(daily_instance) == []

    message = failure_alerts.failure_message(daily_instance, run, "http://d")

    assert message.details[-1] == failure_alerts.RUN_AGAIN_BY_DAGSTER


def test_failures_while_run_retries_were_off_are_not_retried_once_they_are_back_on(daily_instance):
    # the daemon kept its place from before; reading on from there, it would retry runs alerted as runs
    # to start again by hand
    from dagster import DagsterEvent
    from dagster._core.events import JobFailureData, RunFailureReason
    from dagster._core.events.log import EventLogEntry
    from dagster._core.storage.tags import WILL_RETRY_TAG

    run_retries.keep_failures_from_here(daily_instance)  # the daemon ran, with run retries
    run = in_progress(daily_instance, "daily_pipeline")
    # then, with run retries off, the run failed: stored, and failed, without a verdict
    why = JobFailureData(None, RunFailureReason.UNEXPECTED_TERMINATION)
    event = DagsterEvent(DagsterEventType.RUN_FAILURE.value, run.job_name, event_specific_data=why)
    entry = EventLogEntry(None, logging.ERROR, "", run.run_id, time.time(), dagster_event=event)
    daily_instance.event_log_storage.store_event(entry)
    daily_instance.run_storage.handle_run_event(run.run_id, event)
    assert WILL_RETRY_TAG not in daily_instance.get_run_by_id(run.run_id).tags

    assert startup.fail_interrupted_runs(daily_instance) == []  # run retries back on: the next start

    failed = daily_instance.get_run_by_id(run.run_id)
    assert failed.tags[WILL_RETRY_TAG] == "false"  # what Dagster's daemon goes by
    assert failure_alerts.failure_message(daily_instance, failed, "d").details[-1] == failure_alerts.CATCH_UP


def test_a_re_execution_from_the_ui_is_not_called_dagsters_own_retry(daily_instance):
    from dagster._core.storage.tags import PARENT_RUN_ID_TAG, ROOT_RUN_ID_TAG

    first = cut_off_by_startup(daily_instance, in_progress(daily_instance, "daily_pipeline"))
    tags = {PARENT_RUN_ID_TAG: first.run_id, ROOT_RUN_ID_TAG: first.run_id}  # no retry number
    again = in_progress(
        daily_instance, "daily_pipeline", parent_run_id=first.run_id, root_run_id=first.run_id, tags=tags
    )
    again = cut_off_by_startup(daily_instance, again)

    message = failure_alerts.failure_message(daily_instance, again, "http://d")

    assert failure_alerts.RETRY_OF.format(first.run_id) not in message.details


def test_a_failure_the_daemon_passed_without_a_retry_is_not_said_to_be_retried(daily_instance):
    # failed before the daemon first ran with run retries (an upgrade), it was passed over as old
    run = cut_off_by_startup(daily_instance, in_progress(daily_instance, "daily_pipeline"))
    daemon_read_up_to_now(daily_instance)

    message = failure_alerts.failure_message(daily_instance, run, "http://d")

    assert message.details == (startup.MESSAGE, failure_alerts.CATCH_UP)


def test_a_run_dagster_retried_is_said_to_be_whatever_its_verdict_says_since(daily_instance):
    # Dagster works the verdict out again on a second failure event, false once the retry exists
    from dagster._core.storage.tags import AUTO_RETRY_RUN_ID_TAG, WILL_RETRY_TAG

    first = cut_off_by_startup(daily_instance, in_progress(daily_instance, "daily_pipeline"))
    retry = retry_of(daily_instance, first)
    daily_instance.add_run_tags(first.run_id, {AUTO_RETRY_RUN_ID_TAG: retry.run_id, WILL_RETRY_TAG: "false"})
    daemon_read_up_to_now(daily_instance)

    message = failure_alerts.failure_message(daily_instance, daily_instance.get_run_by_id(first.run_id), "d")

    assert message.details == (startup.MESSAGE, failure_alerts.RUN_AGAIN_BY_DAGSTER)


def test_a_run_whose_verdict_dagster_set_to_no_retry_is_not_said_to_be_retried(daily_instance):
    # the daemon sets it so when starting the retry raised
    from dagster._core.storage.tags import WILL_RETRY_TAG

    run = cut_off_by_startup(daily_instance, in_progress(daily_instance, "daily_pipeline"))
    daily_instance.add_run_tags(run.run_id, {WILL_RETRY_TAG: "false"})

    message = failure_alerts.failure_message(daily_instance, daily_instance.get_run_by_id(run.run_id), "d")

    assert message.details == (startup.MESSAGE, failure_alerts.CATCH_UP)


def test_a_run_that_failed_on_its_steps_error_is_not_retried_by_dagster(daily_instance):
    # it would fail the same way: the error says what to fix
    run_retries.keep_failures_from_here(daily_instance)
    run = as_launched(daily_instance, fail(daily_instance))

    message = failure_alerts.failure_message(daily_instance, run, "http://d")

    assert failure_alerts.RUN_AGAIN_BY_DAGSTER not in message.details
    assert failure_alerts.CATCH_UP not in message.details


def test_a_run_started_by_hand_and_cut_off_is_not_said_to_be_retried(daily_instance):
    # `dagster job execute` names no code location: Dagster cannot start it again
    run = cut_off_by_startup(daily_instance, daily_instance.create_run_for_job(job_def=failing_daily_job))

    message = failure_alerts.failure_message(daily_instance, run, "http://d")

    assert message.details == (startup.MESSAGE, failure_alerts.CATCH_UP)


def test_a_retry_cut_off_in_turn_names_the_run_it_retried_and_says_what_to_do(daily_instance):
    first = cut_off_by_startup(daily_instance, in_progress(daily_instance, "daily_pipeline"))
    retry = cut_off_by_startup(daily_instance, retry_of(daily_instance, first))

    message = failure_alerts.failure_message(daily_instance, retry, "http://d")

    # one retry only: the second cut-off is left to the operator
    assert message.details == (
        startup.MESSAGE,
        f"It was Dagster's own retry of run {first.run_id}.",
        failure_alerts.CATCH_UP,
    )


def test_a_retry_that_never_started_says_what_to_do(daily_instance):
    # run monitoring's start timeout: no step ran, so none was cut off, yet nothing in the data to fix
    from dagster._core.events import JobFailureData, RunFailureReason

    first = cut_off_by_startup(daily_instance, in_progress(daily_instance, "daily_pipeline"))
    retry = retry_of(daily_instance, first)
    why = JobFailureData(None, RunFailureReason.START_TIMEOUT)
    daily_instance.report_run_failed(
        retry, "Run timed out due to taking longer than 300 seconds to start.", why
    )

    message = failure_alerts.failure_message(daily_instance, daily_instance.get_run_by_id(retry.run_id), "d")

    assert message.title == "Pipeline run failed: daily_pipeline, step the run itself"
    assert message.details[-1] == failure_alerts.CATCH_UP
