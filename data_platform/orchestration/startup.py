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
It imports only Dagster (and run_retries, which does too), so it needs no dbt project.
"""

from __future__ import annotations

import sys

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

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
