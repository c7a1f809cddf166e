"""The assets: the raw tables (the loader), every dbt model and seed (tests as asset checks), the docs
and the balance alerts. Each one calls the step of `data_platform.pipeline` that init.sh runs."""

import json
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetObservation,
    AssetSpec,
    Backoff,
    Failure,
    MetadataValue,
    RetryPolicy,
    asset,
    multi_asset,
)
from dagster_dbt import (
    DagsterDbtTranslator,
    DbtCliResource,
    dbt_assets,
    get_asset_key_for_model,
    get_asset_keys_by_output_name_for_source,
)

from data_platform import build_failures, pipeline, steps
from data_platform.db import DatabaseUnavailable
from data_platform.load_errors import utc_today
from data_platform.orchestration import configuration
from data_platform.orchestration.environment import process_environment
from data_platform.orchestration.project import BUILD_TARGET_PATH, dbt_project
from data_platform.orchestration.run_records import (
    GIVEN_UP_METADATA,
    KILLED_METADATA,
    NO_DATABASE_METADATA,
    give_ups_in_run,
)
from data_platform.orchestration.sensors import EXPORT_DAY_TAG

RAW_SOURCE = "payments"
# the dbt exposure that documents what the alert run reads (dbt/models/marts/_marts__exposures.yml)
ALERTS_EXPOSURE = "exposure.data_platform.balance_change_alerts"
# the alert run only reads the warehouse and keeps its own state (a delivered alert is never sent
# again), so a retry is always safe: it sends what the last attempt could not deliver. Not after an
# attempt gave up on an alert: see balance_alerts.
ALERT_RETRY_POLICY = RetryPolicy(max_retries=3, delay=60, backoff=Backoff.EXPONENTIAL)
# as many retries, by the step itself, after an attempt that gave up (the first one at once: usually
# nothing else is waiting)
GIVEN_UP_RETRY_DELAYS_SECONDS = (0, 60, 120, 240)
# how often a step's watch of the run's process, its parent, looks whether the step has ended
PARENT_CHECK_SECONDS = 1.0
# a step told to stop since its run's process is gone is given this long to stop and exit, then ended
ORPHAN_EXIT_SECONDS = steps.STOP_GRACE_SECONDS + 30


@contextmanager
def pipeline_step() -> Iterator[None]:
    """A failed step becomes a Dagster failure whose description is the pipeline's own message. A setting
    that cannot be used (a secret file, as it fails init.sh before its first step, PIPELINE_SCHEDULE, or
    one of the pipeline's own such as FULL_REFRESH) fails every step: configuration.problems."""
    unusable = configuration.problems()
    if unusable:
        # no retry: a setting does not fix itself, and a retried step holds the one-run queue meanwhile
        raise Failure(description="\n".join(str(error) for error in unusable), allow_retries=False)
    try:
        with _stopped_with_its_run():
            yield
    except (pipeline.PipelineError, DatabaseUnavailable) as error:
        metadata = _ended_by_signal(getattr(error, "exit_code", 0))
        if isinstance(error, DatabaseUnavailable):
            metadata[NO_DATABASE_METADATA] = "true"
        raise Failure(description=str(error), metadata=metadata) from error


def _ended_by_signal(exit_code: int) -> dict[str, str]:
    """A failure's metadata when a signal ended the step's own process (the loader, dbt): Popen's negative
    code, or 128 + the signal as the pipeline exits with it."""
    try:
        return {KILLED_METADATA: signal.Signals(steps.exit_status(exit_code) - 128).name}
    except ValueError:  # a program's own exit status
        return {}


@contextmanager
def _stopped_with_its_run() -> Iterator[None]:
    """A step runs in a process that the run's process started (Dagster's multiprocess executor). That
    process killed outright (kill -9, the OOM killer) would leave the step running unseen, holding the
    pipeline lock the run's retry waits for and writing into a run already failed. Its end, even before the
    step began, wakes a watch that tells the step to stop as Dagster's Terminate tells it (SIGINT: dbt
    cancels its queries, the loader rolls back), then ends the process ORPHAN_EXIT_SECONDS later, whatever
    it is doing: the interrupt may reach Dagster's code rather than the step's, and the exit can wait for
    ever on a pipe to the dead parent. The step's loader and dbt die with it. A step run in the run's own
    process (in-process execution) has no parent to watch."""
    parent = multiprocessing.parent_process()
    if parent is None:
        yield
        return
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if multiprocessing.connection.wait([parent.sentinel], timeout=PARENT_CHECK_SECONDS):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(ORPHAN_EXIT_SECONDS)
                os._exit(128 + signal.SIGINT)

    threading.Thread(target=watch, name="stopped-with-its-run", daemon=True).start()
    try:
        yield
    finally:
        done.set()


class LayerGroups(DagsterDbtTranslator):
    """Group each dbt node by its warehouse layer (its schema: seeds, staging, intermediate, marts)."""

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        if dbt_resource_props.get("resource_type") == "source":
            return "raw"
        return dbt_resource_props.get("config", {}).get("schema") or super().get_group_name(
            dbt_resource_props
        )


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    name="dbt_build",
    dagster_dbt_translator=LayerGroups(),
)
def dbt_models(context: AssetExecutionContext, dbt: DbtCliResource):
    """Plan (full or incremental), then dbt build: rules seed, models, every test; recorded on success."""
    with pipeline_step():
        settings = pipeline.Settings.from_environment()
        with pipeline.PipelineLock(settings.lock_timeout_seconds) as lock, lock.loads_held():
            build_plan = pipeline.plan(settings)
            context.log.info(
                "full rebuild: " + build_plan.reason
                if build_plan.full_refresh
                else f"incremental build from {build_plan.window_start}: {build_plan.reason}"
            )
            # a partial build must not move the incremental window of the models it skipped
            record = not context.is_subset
            with pipeline.recorded_build(build_plan, settings, lock, BUILD_TARGET_PATH, record=record):
                with process_environment(build_plan.dbt_environment()):
                    invocation = dbt.cli(
                        ["build", *build_plan.dbt_args()],
                        context=context,
                        raise_on_error=False,
                        target_path=BUILD_TARGET_PATH,
                    )
                yield from invocation.stream()
                if not invocation.is_successful():
                    report = build_failures.report(invocation.target_path)
                    # as init.sh says it: `bound-dbt` becomes dbt, whose end (a SIGKILL) is the process's
                    code = invocation.process.returncode
                    raise Failure(
                        description="\n".join(
                            [f"dbt build {steps.failed(code)}; {pipeline.after_failure(build_plan)}", *report]
                        ),
                        metadata={
                            "failures": MetadataValue.text("\n".join(report) or "none"),
                            **_ended_by_signal(code),
                        },
                    )


RAW_TABLE_KEYS = get_asset_keys_by_output_name_for_source([dbt_models], RAW_SOURCE)


@multi_asset(
    name="raw_tables",
    specs=[
        AssetSpec(key, group_name="raw", description=f"raw.{key.path[-1]}, written by the loader")
        for key in RAW_TABLE_KEYS.values()
    ],
)
def raw_tables(context: AssetExecutionContext):
    """Wait for the database, then load every pending export in CSV_DIR (data_platform.loader): up to
    the export day of the sensor's run, else up to today (UTC). A folder dated later (named in a time zone
    ahead of UTC) waits for its day, as the sensor makes it wait: loaded, it would be refused, and fail
    the schedule's run and one started by hand."""
    with pipeline_step():
        settings = pipeline.Settings.from_environment()
        pipeline.wait_for_database(settings)
        through = context.run.tags.get(EXPORT_DAY_TAG) or utc_today().isoformat()
        with pipeline.PipelineLock(settings.lock_timeout_seconds):
            pipeline.load_exports(settings, through=through)


@asset(
    group_name="docs",
    # the docs describe every model: they follow every mart, the last layer built
    deps=[key for key, group in dbt_models.group_names_by_key.items() if group == "marts"],
    description="The dbt docs site (dbt docs generate into the dbt target folder).",
)
def dbt_docs() -> None:
    with pipeline_step():
        settings = pipeline.Settings.from_environment()
        # under the lock: the docs are generated into the target folder a pipeline run parses into
        with pipeline.PipelineLock(settings.lock_timeout_seconds):
            pipeline.generate_docs(pipeline.plan(settings))


def _alert_run(settings: pipeline.Settings) -> pipeline.AlertRunEnd:
    # under the lock, as in init.sh: a pipeline run may be rebuilding the marts it reads
    with pipeline.PipelineLock(settings.lock_timeout_seconds):
        return pipeline.run_alerts(settings)


def _read_by_the_alerts(manifest_path: Path = dbt_project.manifest_path) -> list[str]:
    """The models the alert run reads, as its dbt exposure lists them."""
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    exposure = manifest["exposures"].get(ALERTS_EXPOSURE)
    if exposure is None:  # said in words: it stops the code location from loading
        raise ValueError(
            f"the dbt project has no exposure {ALERTS_EXPOSURE.rsplit('.', 1)[-1]} "
            "(dbt/models/marts/_marts__exposures.yml): the balance_alerts asset runs after the models it "
            "lists"
        )
    return sorted(manifest["nodes"][node]["name"] for node in exposure["depends_on"]["nodes"])


@asset(
    group_name="alerts",
    deps=[get_asset_key_for_model([dbt_models], model) for model in _read_by_the_alerts()],
    retry_policy=ALERT_RETRY_POLICY,
    description=(
        "One run of alert_script.py over the daily fact, with the drivers, organizations and routes marts "
        "(RUN_ALERTS=false skips it)."
    ),
)
def balance_alerts(context: AssetExecutionContext) -> None:
    with pipeline_step():
        settings = pipeline.Settings.from_environment()
        if not settings.run_alerts:
            context.log.info("RUN_ALERTS is off: no alert run")
            return
        # a give-up an earlier attempt recorded, whose process was then killed before its failure said it
        earlier = _given_up_by_an_earlier_attempt(context)
        before = f"{earlier}\n{EARLIER_ATTEMPT_ENDED}\n" if earlier else ""
        first = _alert_run(settings)
        if first.outcome is pipeline.AlertRun.GIVEN_UP:
            # The run must fail, so that its failure alert tells the operators to check the channel: a
            # retry of the step would find that alert given up, and end green once the rest is sent.
            # The step gives the run's other undelivered alerts their retries itself instead.
            # An error in these retries must not fail the step with a retryable error either: Dagster's
            # retry would find the give-up reported and end green.
            # The failure quotes the first run, which said the others were not delivered: it says how the
            # retries left them, too.
            given_up = _quoting(first.outcome.value, first)
            # the run's failure alert says it if the run is cut off before the step's own failure
            context.log_event(AssetObservation(context.asset_key, metadata={GIVEN_UP_METADATA: given_up}))
            retried = "the step's retries could not deliver the run's other alerts: the next run retries them"
            for delay in GIVEN_UP_RETRY_DELAYS_SECONDS:
                time.sleep(delay)
                try:
                    if _alert_run(settings).outcome is pipeline.AlertRun.DELIVERED:
                        retried = "the step's retries then delivered the run's other alerts"
                        break
                except (pipeline.PipelineError, DatabaseUnavailable) as error:
                    context.log.error(f"retrying the other undelivered alerts failed: {error}")
            description = f"{before}{given_up}\n{retried}"
            raise Failure(description=description, allow_retries=False)
        if first.outcome is pipeline.AlertRun.UNDELIVERED:
            # a failure, so the retry policy sends them again soon, and a run that still cannot
            # deliver them fails and is reported instead of ending green (with the earlier give-up: each
            # retry finds it recorded too)
            raise Failure(description=before + _quoting("some balance alerts could not be delivered", first))
        if earlier:
            # the give-up fails the run, as it would have failed the attempt that gave up
            raise Failure(
                description=f"{before}this attempt delivered the run's other alerts", allow_retries=False
            )


EARLIER_ATTEMPT_ENDED = (
    "(an earlier attempt of this step recorded this give-up, then ended before its own failure said it: "
    "its process was killed, or an error stopped it, while it retried the run's other alerts)"
)


def _given_up_by_an_earlier_attempt(context: AssetExecutionContext) -> str | None:
    """The latest give-up an earlier attempt of the step recorded in this run (None: none). Dagster retries
    an attempt whose process was killed, within the run, and the give-up is reported by then: without this,
    the retry would end green, and the run's failure alert never tell anyone to check the channel."""
    # (a context built outside a run, build_asset_context's, has no retry number: no attempt came before)
    if getattr(context, "retry_number", 0) == 0:
        return None
    recorded = give_ups_in_run(context.instance, context.run_id)
    return recorded[-1][1] if recorded else None


def _quoting(what: str, end: pipeline.AlertRunEnd) -> str:
    """A failure's description: what happened, then the alert run's own words (where to, why), which the
    run's failure alert carries to a channel where the step's log is not at hand."""
    if not end.said:
        return f"{what} (see the step's log)"
    return "\n".join([f"{what}; the alert run said:", *end.said])
