"""Run failure alerts: a failed run is told once, and kept in the sensor's cursor until delivered.

Each tick reads the instance's run failure events after where the previous tick started, leaving out
those it read already (Postgres numbers an event as it is written, so of two runs failing at once the
failure numbered first can be committed after the other was read), and the cursor keeps the runs whose
alert is not delivered yet; a run leaves it once its alert was delivered, or once
MAX_UNCONFIRMED_ATTEMPTS attempts went unanswered (a timeout: Slack may have taken it), which is logged as
an error saying to check the channel; an alert refused, or not sent at all, is retried without limit. The
cursor is saved even when a run's alert could not be built (that run waits for the next tick), and a tick
starts no send after FAILURE_TICK_BUDGET_SECONDS, so that a tick Dagster gives up on does not leave sent
alerts out of the cursor. A run counts by its job's name: the jobs of this code location (the daily job,
or assets materialized alone), however it was started: by the schedule or a sensor, in the UI, or by hand
(`dagster job execute`, `dagster asset materialize`); a job of the same name in another code location of
the instance would count too. The first tick starts from the newest failure, so runs that failed before
the sensor ever ran are not alerted; the cursor of the run failure sensor this one replaced is carried on
from the last event it read.

A canceled run (Terminate in the UI) is someone's decision, and not alerted, unless its balance alerts step
had given up on alerts before: the step retries the run's other alerts for minutes after a give-up, and a
run canceled meanwhile would leave it untold (the step's failure, which says it, never comes), and so would
one canceled during a later step after the step had failed (its failure was never alerted). Those runs are
read with the failures, and queued the same way; as with failures, not those canceled before the sensor
read any cancellation (its first tick, or its first after an upgrade from a release that read none).
"""

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunStatusChangeRecordsFilter,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)
from dagster._core.execution.plan.objects import ErrorSource  # where a step's error came from
from dagster._core.remote_representation.code_location import is_implicit_asset_job_name
from dagster._core.storage.tags import RETRY_NUMBER_TAG

from data_platform.alerts.delivery import Outcome
from data_platform.alerts.records import MAX_UNCONFIRMED_ATTEMPTS
from data_platform.orchestration.notify import (
    OpsMessage,
    channel_from_environment,
    dagster_base_url,
    first_lines,
    given_up,
)
from data_platform.orchestration.run_records import (
    KILLED_METADATA,
    NO_DATABASE_METADATA,
    give_ups_in_run,
    recorded_give_ups,
)
from data_platform.orchestration.run_retries import started_again
from data_platform.orchestration.schedules import daily_job

if TYPE_CHECKING:
    from dagster._utils.error import SerializableErrorInfo

# a step's error when its run process was told to stop is a bare class name (Terminate in the UI cancels
# the run instead: no failure, and no alert unless its balance alerts step had given up, canceled_message)
INTERRUPTED_IN_WORDS = (
    "the run was stopped while the step ran: its process was told to stop (Ctrl-C of `dagster dev` or of "
    "a run started by hand, a shutdown, or run monitoring's time limit)"
)
# a run that did not fail on a step's own error, and that Dagster does not run again (dagster.yaml's run
# retries: once, and never a run started by hand): nothing else starts it before the next export or schedule
CATCH_UP = (
    "Exports already loaded stay loaded and a build counts only once complete: run the job again, or let "
    "the next scheduled run catch up."
)
# the pipeline's errors say FULL_REFRESH=true, as for init.sh: how a Dagster deployment does it
FULL_REFRESH_ONCE = "FULL_REFRESH=true"
FULL_REFRESH_UNDER_DAGSTER = (
    "To rebuild in full once, run the job with FULL_REFRESH=true in its environment: `FULL_REFRESH=true "
    "dagster job execute -m data_platform.orchestration.definitions -j daily_pipeline` (with Docker: "
    "`docker compose --profile daily exec -e FULL_REFRESH=true dagster-daemon dagster job execute ...`)."
)
RUN_AGAIN_BY_DAGSTER = (
    "Dagster runs it again once, by itself, from the steps it did not finish: nothing to do unless that "
    "run fails too, which is alerted."
)
RETRY_OF = "It was Dagster's own retry of run {}."
# said when no failure of the step says it (the run cut off during the step's retries of the run's other
# alerts, or a retry of the step failed on an error of its own)
GIVEN_UP_UNTOLD = "Before the run ended, its balance alerts step had given up on alerts; it said:"
CANCELED_DURING_RETRIES = (
    "It was canceled while the step retried the run's other alerts: any still undelivered go with the next "
    "run."
)
CANCELED_AFTER_THE_STEP_FAILED = "It was canceled after the step failed, so that failure was not alerted."
# the run status events a tick reads: a run failure, and a cancellation, alerted after a give-up only
RUN_ENDS_READ = (DagsterEventType.RUN_FAILURE, DagsterEventType.RUN_CANCELED)
# a tick reads up to this many new failures (and as many cancellations); the next tick the rest
FAILURE_EVENTS_READ = 100
# a backlog is sent a few messages a tick, so that a tick ends well within the daemon's time limit
FAILURE_ALERTS_PER_TICK = 5
# Dagster gives up on a tick after DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS (60 by default) and keeps its old
# cursor while the code server goes on sending, so the next tick would send those alerts again: a tick
# starts no send after this many seconds, leaving the rest of the minute to the send under way (its
# pacing, at most notify.OPS_MAX_PACE_SECONDS, then one attempt of at most twice
# notify.OPS_HTTP_TIMEOUT_SECONDS, never retried within the tick).
FAILURE_TICK_BUDGET_SECONDS = 20.0
# a destination down for days must not grow the cursor without end: beyond this, the oldest are dropped
MAX_PENDING_FAILURE_ALERTS = 300
# what Dagster's run status sensors (run_failure_sensor) name their cursor in its serialized form
RUN_STATUS_SENSOR_CURSORS = ("RunStatusSensorCursor", "PipelineSensorCursor")


def run_message(instance: DagsterInstance, run: DagsterRun, base_url: str) -> OpsMessage:
    """The alert of a run the sensor queued: failed, or canceled after its step gave up on alerts."""
    if run.status == DagsterRunStatus.CANCELED:
        return canceled_message(instance, run, base_url)
    return failure_message(instance, run, base_url)


def canceled_message(instance: DagsterInstance, run: DagsterRun, base_url: str) -> OpsMessage:
    """A run canceled after its balance alerts step gave up on alerts: what the step said of them, in its
    own failure when it had failed by then (the run canceled during a later step), else in its record."""
    kinds = {DagsterEventType.STEP_FAILURE, DagsterEventType.ASSET_OBSERVATION}
    entries = [
        record.event_log_entry for record in instance.get_records_for_run(run.run_id, of_type=kinds).records
    ]
    give_ups = recorded_give_ups(entries)
    steps = {step for step, _ in give_ups}
    failed = [
        e.dagster_event
        for e in entries
        if e.dagster_event_type == DagsterEventType.STEP_FAILURE
        and e.dagster_event.step_key in steps
        and e.dagster_event.step_failure_data.error_source != ErrorSource.INTERRUPT
    ]
    if failed:
        details = first_lines(_step_error(failed[-1]))
        untold = _untold(give_ups, details)
        details += (
            *((GIVEN_UP_UNTOLD, *first_lines(untold)) if untold else ()),
            CANCELED_AFTER_THE_STEP_FAILED,
        )
    else:
        details = (
            *first_lines(give_ups[-1][1] if give_ups else "no give-up recorded"),
            CANCELED_DURING_RETRIES,
        )
    return OpsMessage(
        title=(
            f"Pipeline run canceled: {_job_label(run.job_name)}, after its balance alerts step gave up on "
            "alerts"
        ),
        details=details,
        link=f"{base_url}/runs/{run.run_id}",
    )


def _retries_ran_out(error_info: "SerializableErrorInfo") -> bool:
    """Whether a step failure's error is Dagster's words once its retries ran out ("Exceeded max_retries"),
    whose cause is the last attempt's error: what failed."""
    return error_info.message.startswith("Exceeded max_retries") and error_info.cause is not None


def _step_error(failure) -> str:
    """A step failure's error; once its retries ran out, the last attempt's."""
    error_info = failure.step_failure_data.error
    return _without_class_name(error_info.cause if _retries_ran_out(error_info) else error_info)


def _untold(give_ups: list[tuple[str, str]], shown: tuple[str, ...]) -> str | None:
    """The latest give-up whose first line is not among the lines an alert shows (a failure of the step
    that quotes it may be another step's, shown instead, or cut short)."""
    untold = [said for _, said in give_ups if not set(first_lines(said)[:1]) <= set(shown)]
    return untold[-1] if untold else None


def failure_message(instance: DagsterInstance, run: DagsterRun, base_url: str) -> OpsMessage:
    """The failed step and its error; for a run that failed outside its steps (its process died, the
    Dagster storage went away, its job's definitions could not load), the steps it left unfinished and the
    run's error, or the error of Dagster's own event that holds one. A run Dagster's run retries start
    again says so; one they do not, unless it failed on a step's own error or its code could not load,
    says what to do: nothing starts it again before the next export or schedule. A retry says whose it
    was. A run cut off after its balance alerts step gave up on alerts says what the step said of them."""
    kinds = {
        DagsterEventType.STEP_START,
        DagsterEventType.STEP_SUCCESS,
        DagsterEventType.STEP_FAILURE,
        DagsterEventType.RUN_FAILURE,
        DagsterEventType.ENGINE_EVENT,
        DagsterEventType.ASSET_OBSERVATION,
    }
    entries = [
        record.event_log_entry for record in instance.get_records_for_run(run.run_id, of_type=kinds).records
    ]

    def steps_of(kind: DagsterEventType) -> set[str]:
        return {
            e.dagster_event.step_key
            for e in entries
            if e.dagster_event_type == kind and e.dagster_event.step_key
        }

    failures = [e.dagster_event for e in entries if e.dagster_event_type == DagsterEventType.STEP_FAILURE]
    failed = steps_of(DagsterEventType.STEP_FAILURE)
    unfinished = steps_of(DagsterEventType.STEP_START) - steps_of(DagsterEventType.STEP_SUCCESS)
    steps = ", ".join(sorted(failed))
    run_failures = [e for e in entries if e.dagster_event_type == DagsterEventType.RUN_FAILURE]
    retries_ran_out = ""
    job_did_not_load = False  # its code fails every run until fixed: running it again is not the advice
    # the run ended under a step (its process died, the database went away) or was stopped: nothing in the
    # data to fix, and unless Dagster retries it, nothing starts it again before the next export or schedule
    cut_off = bool(unfinished - failed)
    engine = [e for e in entries if e.dagster_event_type == DagsterEventType.ENGINE_EVENT]
    # the run's process gone, its code server says how it ended (a SIGKILL: out of memory?)
    crash = f"Run execution process for {run.run_id} "
    crashed = [e.message for e in engine if e.message and e.message.startswith(crash)]
    if failures and failures[0].step_failure_data.user_failure_data is not None:
        recorded = failures[0].step_failure_data.user_failure_data.metadata
        cut_off |= KILLED_METADATA in recorded or NO_DATABASE_METADATA in recorded
    if failures and failures[0].step_failure_data.error is not None:
        error_info = failures[0].step_failure_data.error
        if _retries_ran_out(error_info):
            retries_ran_out = f" ({error_info.message.strip()})"
        error = _step_error(failures[0])
        if failures[0].step_failure_data.error_source == ErrorSource.INTERRUPT:
            cut_off = True
            # the run's own failure says why when run monitoring stopped it (its time limit); a step whose
            # run's process was killed stops itself as if told to: how that process ended says why
            said = crashed or [INTERRUPTED_IN_WORDS]
            error = "\n".join([*said, *filter(None, (e.message for e in run_failures))])
    else:
        error = next(filter(None, (e.message for e in run_failures)), "no error message")
        # "An exception was thrown during execution." says nothing of the exception: it is in the event
        data = run_failures[0].dagster_event.event_specific_data if run_failures else None
        if getattr(data, "error", None) is not None:
            error = f"{error}\n{_without_class_name(data.error)}"
        else:
            # "marked as failed from outside the execution context": the cause is in an engine event (the
            # job's definitions could not load, say), the run's failure has none
            cause = next(
                (e for e in engine if getattr(e.dagster_event.event_specific_data, "error", None)), None
            )
            if cause is not None:
                job_did_not_load = True
                said = cause.dagster_event.message or cause.message
                error = (
                    f"{error}\n{said}\n{_without_class_name(cause.dagster_event.event_specific_data.error)}"
                )
            error = "\n".join([error, *crashed])
    if not steps:
        steps = f"{', '.join(sorted(unfinished))}, which did not finish" if unfinished else "the run itself"
    details = first_lines(error)
    # unless the error shown already says it (the step's own failure, quoting it)
    untold = _untold(recorded_give_ups(entries), details)
    details += (GIVEN_UP_UNTOLD, *first_lines(untold)) if untold else ()
    if FULL_REFRESH_ONCE in error:
        details += (FULL_REFRESH_UNDER_DAGSTER,)
    # only the retries' daemon numbers a run it starts (a re-execution from the UI has a parent, no number)
    if run.tags.get(RETRY_NUMBER_TAG) and run.parent_run_id:
        details += (RETRY_OF.format(run.parent_run_id),)
    # the daemon acts on the run's first failure event (run monitoring may add a second)
    if run_failures and started_again(instance, run, run_failures[0]):
        details += (RUN_AGAIN_BY_DAGSTER,)
    elif (cut_off or not failures) and not job_did_not_load:  # nothing in the data or code to fix
        details += (CATCH_UP,)
    return OpsMessage(
        title=f"Pipeline run failed: {_job_label(run.job_name)}, step {steps}{retries_ran_out}",
        details=details,
        link=f"{base_url}/runs/{run.run_id}",
    )


def _job_label(job_name: str) -> str:
    """Dagster's own job for assets materialized alone (the UI's Materialize, `dagster asset materialize`)
    is named `__ASSET_JOB`, which says nothing to the reader."""
    return "assets materialized alone" if is_implicit_asset_job_name(job_name) else job_name


def _without_class_name(error_info: "SerializableErrorInfo") -> str:
    """ "dagster._core.definitions.events.Failure: <description>": the description is what helps."""
    qualified_class = re.match(rf"[\w.]*\b{re.escape(error_info.cls_name or '?')}: ", error_info.message)
    return error_info.message[qualified_class.end() if qualified_class else 0 :]


@dataclass(frozen=True)
class _FailureCursor:
    """What the sensor keeps between ticks (storage ids: the event log's numbers of its events)."""

    after: int  # the newest failure event read
    since: int  # the next tick reads the failures after this one: where the last tick started
    read: tuple[int, ...]  # the failures after `since` read already
    pending: list[str]  # the runs whose alert is not delivered yet, oldest first (sends take them off)
    unanswered: dict[str, int]  # of those, the unanswered attempts of those that had any
    # cancellations up to this one came before the sensor read any (None: not known yet, from an older
    # cursor): not alerted, as failures before its first tick are not
    cancels_after: int | None

    @classmethod
    def first(cls, after: int) -> "_FailureCursor":
        return cls(after, after, (), [], {}, after)

    @classmethod
    def read_from(cls, cursor: str | None) -> "_FailureCursor | None":
        """The cursor, or None before the first tick (or from a cursor of another kind). The run failure
        sensor this one replaced recorded the storage id of the last run status event it handled
        (`record_id`, the ids fetch_run_status_changes reads after): it goes on from there, so no failure
        is lost on the upgrade. A cursor of an older release has no `since` (it goes on after its `after`)
        nor unanswered attempts (its pending runs start from zero)."""
        try:
            state = json.loads(cursor or "")
            if state.get("__class__") in RUN_STATUS_SENSOR_CURSORS:
                return replace(cls.first(int(state["record_id"])), cancels_after=None)
            after = int(state["after"])
            return cls(
                after=after,
                since=int(state.get("since", after)),
                read=tuple(int(storage_id) for storage_id in state.get("read", [])),
                pending=[str(run_id) for run_id in state["pending"]],
                unanswered={str(run_id): int(count) for run_id, count in state.get("unanswered", {}).items()},
                cancels_after=int(state["cancels_after"]) if "cancels_after" in state else None,
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    def write(self) -> str:
        # "after" and "pending" keep their meaning, so that an earlier release still reads this cursor
        counts = {run_id: self.unanswered[run_id] for run_id in self.pending if self.unanswered.get(run_id)}
        return json.dumps(
            {
                "after": self.after,
                "since": self.since,
                "read": list(self.read),
                "pending": self.pending,
                "unanswered": counts,
                "cancels_after": self.cancels_after,
            }
        )


def alert_failed_runs(
    context: SensorEvaluationContext,
    *,
    budget_seconds: float = FAILURE_TICK_BUDGET_SECONDS,
    max_pending: int = MAX_PENDING_FAILURE_ALERTS,
    clock: Callable[[], float] = time.monotonic,
) -> SkipReason:
    """One tick of run_failure_alerts; the cursor is saved however the sends went."""
    started = clock()
    cursor = _FailureCursor.read_from(context.cursor)
    if cursor is None:
        context.update_cursor(_FailureCursor.first(_newest_run_end(context.instance)).write())
        return SkipReason("started: runs that fail from now on are alerted")
    if cursor.cancels_after is None:
        cursor = replace(cursor, cancels_after=_newest_run_end(context.instance))
    cursor = _queue_failures(context, cursor, max_pending)
    pending = cursor.pending
    sent, problem = _send_pending(
        context, pending, cursor.unanswered, lambda: clock() - started, budget_seconds
    )
    context.update_cursor(cursor.write())
    if problem:
        return SkipReason(
            f"sent {sent} run failure alert(s); {problem}; {len(pending)} wait for the next tick"
        )
    if not sent and not pending:
        return SkipReason("no failed run to alert about")
    return SkipReason(f"sent {sent} run failure alert(s)" + (f"; {len(pending)} wait" if pending else ""))


def _newest_run_end(instance: DagsterInstance) -> int:
    """The storage id of the newest run failure or cancellation (-1: none yet)."""
    newest = [instance.fetch_run_status_changes(kind, limit=1).records for kind in RUN_ENDS_READ]
    return max((records[0].storage_id for records in newest if records), default=-1)


def _queue_failures(
    context: SensorEvaluationContext, cursor: _FailureCursor, max_pending: int
) -> _FailureCursor:
    """The cursor moved on: the daily job's runs whose failure it had not read queued behind its pending
    ones, of which the newest `max_pending` are kept (the others are dropped, said in the log)."""
    # a run's alert is queued from its failure event, read once: a failure numbered before the newest one
    # read may not have been committed yet, so the next tick reads again after where this one started (a
    # whole tick later: an event's commit follows its numbering within milliseconds)
    read, pending = set(cursor.read), list(cursor.pending)
    limit = FAILURE_EVENTS_READ + len(read)
    pages = [
        context.instance.fetch_run_status_changes(
            RunStatusChangeRecordsFilter(kind, after_storage_id=cursor.since), limit=limit, ascending=True
        ).records
        for kind in RUN_ENDS_READ
    ]
    # one kind's full page may end before the other's: read no further than the first to end, so that
    # none is passed over (the rest come next tick)
    full = [page[-1].storage_id for page in pages if len(page) >= limit]
    events = sorted(
        (record for page in pages for record in page if not full or record.storage_id <= min(full)),
        key=lambda record: record.storage_id,
    )
    # the code location's jobs: the daily job, and Dagster's own for assets materialized alone
    jobs = set(context.repository_def.job_names) if context.repository_def else {daily_job.name}
    for record in events:
        entry = record.event_log_entry
        if record.storage_id in read or entry.job_name not in jobs or entry.run_id in pending:
            continue
        canceled = entry.dagster_event_type == DagsterEventType.RUN_CANCELED
        if not canceled or (
            record.storage_id > cursor.cancels_after and give_ups_in_run(context.instance, entry.run_id)
        ):
            pending.append(entry.run_id)
    read |= {record.storage_id for record in events}
    if len(pending) > max_pending:
        dropped, pending = pending[:-max_pending], pending[-max_pending:]
        context.log.error(
            f"{len(dropped)} run failure alert(s) dropped undelivered, more than {max_pending} were "
            f"waiting; runs: {', '.join(dropped)}"
        )
    return replace(
        cursor,
        after=max([cursor.after, *read]),
        since=cursor.after,
        read=tuple(sorted(storage_id for storage_id in read if storage_id > cursor.after)),
        pending=pending,
    )


def _send_pending(
    context: SensorEvaluationContext,
    pending: list[str],
    unanswered: dict[str, int],
    seconds_used: Callable[[], float],
    budget_seconds: float,
) -> tuple[int, str | None]:
    """Send the queue's alerts in order, taking each delivered (or given up) one off `pending`, until one
    fails (the rest wait with it) or the tick's time is spent; how many were sent, and what stopped it."""
    instance, channel, base_url, sent = context.instance, channel_from_environment(), dagster_base_url(), 0
    for run_id in pending[:FAILURE_ALERTS_PER_TICK]:
        if seconds_used() >= budget_seconds:
            return sent, f"this tick's {budget_seconds:g} s are spent"
        try:
            run = instance.get_run_by_id(run_id)
            # None: deleted since, nothing left to alert about
            outcome = channel.send(run_message(instance, run, base_url)) if run is not None else None
        except Exception as error:
            context.log.exception(f"the failure alert of run {run_id} could not be sent; retried next tick")
            # last in line, so that a run whose alert cannot be built does not hold back the others
            pending.remove(run_id)
            pending.append(run_id)
            return sent, f"the failure alert of run {run_id} could not be sent ({type(error).__name__})"
        if outcome is not None:
            if not outcome.delivered:
                return sent, _undelivered(context, run_id, run.job_name, outcome, pending, unanswered)
            sent += 1
        pending.remove(run_id)
    return sent, None


def _undelivered(
    context: SensorEvaluationContext,
    run_id: str,
    job_name: str,
    outcome: Outcome,
    pending: list[str],
    unanswered: dict[str, int],
) -> str:
    """Log a failure alert that was not delivered, give it up (off `pending`) after its last unanswered
    attempt; the tick's problem."""
    what = f"the failure alert of run {run_id} ({job_name})"
    problem = f"a run failure alert could not be delivered ({outcome.error})"
    if outcome.unanswered:
        # it may have arrived: resent every tick, a slow Slack would get a copy each time
        unanswered[run_id] = unanswered.get(run_id, 0) + 1
    if unanswered.get(run_id, 0) >= MAX_UNCONFIRMED_ATTEMPTS:
        problem = given_up(what, outcome.error)
        context.log.error(problem)
        pending.remove(run_id)
    elif outcome.unanswered:
        context.log.error(
            f"{what} got no answer: {outcome.error}; sent again next tick, at most "
            f"{MAX_UNCONFIRMED_ATTEMPTS} times in all"
        )
    else:  # refused, or never sent: nothing arrived, so it is retried without limit
        context.log.error(f"{what} could not be delivered: {outcome.error}; retried next tick")
    return problem


@sensor(name="run_failure_alerts", minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING)
def run_failure_alerts(context: SensorEvaluationContext):
    return alert_failed_runs(context)
