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
from dagster._daemon.auto_run_reexecution.event_log_consumer import (
    DAGSTER_EVENT_TYPES,
    EventLogConsumerDaemon,
    _create_cursor_key,
)

# as many failures as the daemon reads at a time
DAEMON_READS = 500
# the newest failed runs a retry may still be owed to: the daemon reads failures within seconds
RECENT_FAILURES = 20
# a failure the daemon has not read though it beat this long after it (every 30 s when it runs) is one
# it is failing to read: not waited for
UNREAD_WAIT_SECONDS = 120


def keep_failures_from_here(instance: DagsterInstance) -> None:
    """Give the daemon its first place now, when it has none: the runs failed after this (the start-up
    sweep's) are read by its first start instead of being passed over as old. When it has one, from a time
    with run retries, the failures since that no run retries judged (they failed while retries were off)
    are judged not to be retried: they were alerted as runs to start again by hand."""
    if not instance.run_retries_enabled:
        return
    keys = {_create_cursor_key(kind) for kind in DAGSTER_EVENT_TYPES}
    known = instance.daemon_cursor_storage.get_cursor_values(keys)
    newest = str(instance.event_log_storage.get_maximum_record_id() or 0)
    missing = {key: newest for key in keys if key not in known}
    if missing:
        instance.daemon_cursor_storage.set_cursor_values(missing)
    for run_id in _unread_failures(instance, limit=None):
        run = instance.get_run_by_id(run_id)
        if run is not None and WILL_RETRY_TAG not in run.tags:
            instance.add_run_tags(run_id, {WILL_RETRY_TAG: "false"})


def _daemons_place(instance: DagsterInstance) -> int | None:
    key = _create_cursor_key(DagsterEventType.RUN_FAILURE)
    place = instance.daemon_cursor_storage.get_cursor_values({key}).get(key)
    return int(place) if place is not None else None


def _unread_failures(instance: DagsterInstance, limit: int | None = DAEMON_READS) -> dict[str, float]:
    """The runs whose failure the daemon has yet to read, with when each failed, read as the daemon reads
    them (in a storage that keeps each run's events apart, their ids are not the ones it counts by)."""
    place = _daemons_place(instance)
    if place is None:  # never ran: its first start takes a place past every event there is
        return {}
    failures = instance.event_log_storage.get_logs_for_all_runs_by_log_id(
        after_cursor=place, dagster_event_type={DagsterEventType.RUN_FAILURE}, limit=limit
    )
    unread: dict[str, float] = {}
    for entry in failures.values():
        unread.setdefault(entry.run_id, entry.timestamp)
    return unread


def started_again(instance: DagsterInstance, run: DagsterRun, failure: EventLogEntry) -> bool:
    """Whether the daemon starts `run`, failed by the event `failure`, again: it did (the retry is
    tagged), it read the failure without doing so, or, not there yet, what it will find (the run's tag;
    before the tag is set, the verdict Dagster sets it to, from the event's reason). A run started by hand,
    in the shell, names no code location to start from."""
    if run.remote_job_origin is None:
        return False
    if run.tags.get(AUTO_RETRY_RUN_ID_TAG):
        return True
    if not instance.run_retries_enabled or run.run_id not in _unread_failures(instance):
        return False
    verdict = run.tags.get(WILL_RETRY_TAG)
    if verdict is not None:
        return verdict == "true"
    # read between the event's storing and the run's update: judged as the run will be
    reason = getattr(failure.dagster_event.event_specific_data, "failure_reason", None)
    return auto_reexecution_should_retry_run(instance, run.with_status(DagsterRunStatus.FAILURE), reason)


def waiting_to_run_again(instance: DagsterInstance) -> bool:
    """Whether a failed run is yet to be started again: its failure not yet read through by a daemon that
    will start it (between a `dagster dev` restart and its daemon's first reading, say). The daemon creates
    the retry, tags the failed run, queues the retry, and only then moves its place: until then the retry
    is not queued yet, so the failure counts until the daemon has moved past it. A daemon that goes on
    beating without reading it (failing before it moves its place) is not waited for long."""
    if not instance.run_retries_enabled:
        return False
    unread = _unread_failures(instance)
    if not unread:
        return False
    beat = instance.get_daemon_heartbeats().get(EventLogConsumerDaemon.daemon_type())
    failed = instance.get_runs(
        filters=RunsFilter(statuses=[DagsterRunStatus.FAILURE], tags={WILL_RETRY_TAG: "true"}),
        limit=RECENT_FAILURES,
    )
    return any(
        run.remote_job_origin is not None
        and run.run_id in unread
        and (beat is None or beat.timestamp < unread[run.run_id] + UNREAD_WAIT_SECONDS)
        for run in failed
    )
