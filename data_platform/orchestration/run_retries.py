"""Dagster's run retries (dagster_home/dagster.yaml's run_retries): which failed runs its daemon starts
again, as the failure alerts tell it and the freshness alerts wait for, and where that daemon starts
reading failures.

The daemon reads run failure events after its place in the event log (a cursor it keeps), and for each
one starts a retry when the run's `will_retry` tag, which Dagster sets as the failure is stored, says so
and the run names a code location to start from. On its very first start it takes the newest event as
its place, so that old failures are not re-run.
"""

from __future__ import annotations

from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter
from dagster._core.events.log import EventLogEntry
from dagster._core.execution.retries import auto_reexecution_should_retry_run
from dagster._core.storage.tags import AUTO_RETRY_RUN_ID_TAG, WILL_RETRY_TAG

# where the daemon keeps its place in the event log (Dagster's own names)
from dagster._daemon.auto_run_reexecution.event_log_consumer import DAGSTER_EVENT_TYPES, _create_cursor_key


def keep_failures_from_here(instance: DagsterInstance) -> None:
    """Give the daemon its first place now, when it has none: the runs failed after this (the start-up
    sweep's) are read by its first start instead of being passed over as old."""
    if not instance.run_retries_enabled:
        return
    keys = {_create_cursor_key(kind) for kind in DAGSTER_EVENT_TYPES}
    known = instance.daemon_cursor_storage.get_cursor_values(keys)
    newest = str(instance.event_log_storage.get_maximum_record_id() or 0)
    missing = {key: newest for key in keys if key not in known}
    if missing:
        instance.daemon_cursor_storage.set_cursor_values(missing)


def _daemons_place(instance: DagsterInstance) -> int | None:
    key = _create_cursor_key(DagsterEventType.RUN_FAILURE)
    place = instance.daemon_cursor_storage.get_cursor_values({key}).get(key)
    return int(place) if place is not None else None


def _still_to_read(instance: DagsterInstance, run_id: str) -> bool:
    """Whether the daemon has a failure of the run still to read (by its own reading: in a storage that
    keeps each run's events apart, their ids are not the ones it counts by)."""
    place = _daemons_place(instance)
    if place is None:  # never ran: its first start takes a place past every event there is
        return False
    failures = instance.event_log_storage.get_logs_for_all_runs_by_log_id(
        after_cursor=place, dagster_event_type={DagsterEventType.RUN_FAILURE}
    )
    return any(entry.run_id == run_id for entry in failures.values())


def started_again(instance: DagsterInstance, run: DagsterRun, failure: EventLogEntry) -> bool:
    """Whether the daemon starts `run`, failed by the event `failure`, again: it did (the retry is
    tagged), it read the failure without doing so, or, not there yet, what it will find (the run's tag;
    before the tag is set, the verdict Dagster sets it to, from the event's reason). A run started by hand,
    in the shell, names no code location to start from."""
    if run.remote_job_origin is None:
        return False
    if run.tags.get(AUTO_RETRY_RUN_ID_TAG):
        return True
    if not _still_to_read(instance, run.run_id):
        return False
    verdict = run.tags.get(WILL_RETRY_TAG)
    if verdict is not None:
        return verdict == "true"
    if not instance.run_retries_enabled:
        return False
    # read between the event's storing and the run's update: judged as the run will be
    reason = getattr(failure.dagster_event.event_specific_data, "failure_reason", None)
    return auto_reexecution_should_retry_run(instance, run.with_status(DagsterRunStatus.FAILURE), reason)


# the newest failed runs a retry may still be owed to: the daemon reads failures within seconds
RECENT_FAILURES = 20


def waiting_to_run_again(instance: DagsterInstance) -> bool:
    """Whether a failed run is yet to be started again: its failure not yet read through by a daemon that
    will start it (between a `dagster dev` restart and its daemon's first reading, say). The daemon creates
    the retry, tags the failed run, queues the retry, and only then moves its place: until then the retry
    is not queued yet, so the failure counts until the daemon has moved past it."""
    if not instance.run_retries_enabled:
        return False
    failed = instance.get_runs(
        filters=RunsFilter(statuses=[DagsterRunStatus.FAILURE], tags={WILL_RETRY_TAG: "true"}),
        limit=RECENT_FAILURES,
    )
    return any(run.remote_job_origin is not None and _still_to_read(instance, run.run_id) for run in failed)
