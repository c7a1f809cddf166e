"""Before the daemon starts: fail every run that a previous daemon (its container, or `dagster dev`) left
in progress.

Runs execute in processes of the dagster-daemon container (the default run launcher starts them from
the daemon's code server), so a restart, recreate or kill of that container ends them too, but their
status stays STARTING or STARTED. With one run at a time the queue would then wait on them, no run
would fail, and no alert would say so. Run monitoring (dagster.yaml) cannot tell that such a run's
process is gone with this run launcher; it would fail the run only after max_runtime_seconds. No run
outlives the container, so at start-up every one still in progress is reported failed, which the
run-failure alert then reports like any failed run, and Dagster's run retries (dagster.yaml) run again.

compose.yaml's daemon runs `python -m data_platform.orchestration.startup` before `dagster-daemon run`;
without Docker, the README runs it before `dagster dev`, whose runs end with it too.
A run started by hand in a process of its own (`dagster job execute`, `dagster asset materialize`: no code
location launched it) ends with its own process, not with the daemon's: one still alive is left alone.
It imports only Dagster (and run_retries, which does too), so it needs no dbt project.
"""

from __future__ import annotations

import sys

import psutil
from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter

from data_platform.orchestration.run_retries import keep_failures_from_here

INTERRUPTED = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
MESSAGE = (
    "The run was cut off: the dagster-daemon stopped while it ran (its container restarted, recreated or "
    "killed, or `dagster dev` ended), and its run process with it."
)


def fail_interrupted_runs(instance: DagsterInstance) -> list[str]:
    """Report every STARTING or STARTED run failed; returns their run ids."""
    keep_failures_from_here(instance)  # before the failures, so that Dagster's run retries read them
    runs = instance.get_runs(filters=RunsFilter(statuses=INTERRUPTED))
    runs = [run for run in runs if not _running_by_hand(instance, run)]
    for run in runs:
        instance.report_run_failed(run, MESSAGE)
    return [run.run_id for run in runs]


def _running_by_hand(instance: DagsterInstance, run: DagsterRun) -> bool:
    """A run started by hand whose process still runs: the process that started it, older than the run
    (a process of the same pid started since, in a container started again, is another one)."""
    if run.remote_job_origin is not None:  # launched by the daemon or the UI: it ended with them
        return False
    started = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.RUN_START, limit=1).records
    event = started[0].event_log_entry.dagster_event if started else None
    if event is None or event.pid is None:
        return False
    try:
        return psutil.Process(event.pid).create_time() <= started[0].event_log_entry.timestamp
    except psutil.Error:  # gone
        return False


def main() -> int:
    with DagsterInstance.get() as instance:
        for run_id in fail_interrupted_runs(instance):
            print(f"run {run_id} was in progress when the daemon stopped: marked failed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
