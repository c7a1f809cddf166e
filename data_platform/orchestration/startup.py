"""Before the daemon starts: fail every run that a previous daemon (its container, or `dagster dev`) left
in progress.

Runs execute in processes of the dagster-daemon container (the default run launcher starts them from
the daemon's code server), so a restart, recreate or kill of that container ends them too, but their
status stays STARTING or STARTED. With one run at a time the queue would then wait on them, no run
would fail, and no alert would say so. Run monitoring (dagster.yaml) cannot tell that such a run's
process is gone with this run launcher; it would fail the run only after max_runtime_seconds. No run
outlives the container, so at start-up every one still in progress is reported failed, which the
run-failure alert then reports like any failed run.

compose.yaml's daemon runs `python -m data_platform.orchestration.startup` before `dagster-daemon run`;
without Docker, the README runs it before `dagster dev`, whose runs end with it too.
It imports only Dagster, so it needs no dbt project (the failure alerts import its words).
"""

from __future__ import annotations

import sys

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

INTERRUPTED = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
# what to do about a run that ended before its work did: nothing else starts it again before the next
# export lands or the schedule comes (the failure alerts say it too)
CATCH_UP = (
    "Exports it loaded stay loaded and a build counts only once complete: run the job again, or let the "
    "next scheduled run catch up."
)
MESSAGE = (
    "The run was cut off: the dagster-daemon stopped while it ran (its container restarted, recreated or "
    f"killed, or `dagster dev` ended), and its run process with it. {CATCH_UP}"
)


def fail_interrupted_runs(instance: DagsterInstance) -> list[str]:
    """Report every STARTING or STARTED run failed; returns their run ids."""
    runs = instance.get_runs(filters=RunsFilter(statuses=INTERRUPTED))
    for run in runs:
        instance.report_run_failed(run, MESSAGE)
    return [run.run_id for run in runs]


def main() -> int:
    with DagsterInstance.get() as instance:
        for run_id in fail_interrupted_runs(instance):
            print(f"run {run_id} was in progress when the daemon stopped: marked failed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
