"""Operations alerts: a run failed, or the data went stale (and recovered).

Each alert is sent once. A failed run: Dagster's run-failure sensor keeps its own cursor of the run
events it has handled, so a later tick never sees the same failure again. Freshness: the sensor's
cursor records whether the last alert said stale or fresh, and a tick sends only when that changes
(and moves the cursor only once the message was delivered, so a failed delivery is retried).
"""

import datetime as dt
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunsFilter,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    sensor,
)

from data_platform.db import connect
from data_platform.orchestration.notify import (
    OpsMessage,
    channel_from_environment,
    dagster_base_url,
    first_lines,
)
from data_platform.orchestration.schedules import daily_job
from data_platform.orchestration.sensors import export_folders, exports_dir

DEFAULT_EXPORT_MAX_AGE_HOURS = 26.0
# the ledger books an export's changes on its own day; one quiet day in the fact is normal
FACT_MAX_LAG_DAYS = 1
FACT = "marts.fct_organization_daily_financials"
IN_PROGRESS = [DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]


class AlertNotDelivered(RuntimeError):
    """The operations message could not be sent (the text is already scrubbed of the webhook URL)."""


def failure_message(context: RunFailureSensorContext, base_url: str) -> OpsMessage:
    run = context.dagster_run
    failures = context.get_step_failure_events()
    steps = ", ".join(sorted({event.step_key for event in failures if event.step_key})) or "the run itself"
    if failures and failures[0].step_failure_data.error is not None:
        error_info = failures[0].step_failure_data.error
        # "dagster._core.definitions.events.Failure: <description>": the description is what helps
        qualified_class = re.match(rf"[\w.]*\b{re.escape(error_info.cls_name or '?')}: ", error_info.message)
        error = error_info.message[qualified_class.end() if qualified_class else 0 :]
    else:
        error = context.failure_event.message or "no error message"
    return OpsMessage(
        title=f"Pipeline run failed: {run.job_name}, step {steps}",
        details=first_lines(error),
        link=f"{base_url}/runs/{run.run_id}",
    )


@run_failure_sensor(name="run_failure_alerts", default_status=DefaultSensorStatus.RUNNING)
def run_failure_alerts(context: RunFailureSensorContext) -> None:
    outcome = channel_from_environment().send(failure_message(context, dagster_base_url()))
    if not outcome.delivered:
        raise AlertNotDelivered(f"the run failure alert could not be delivered: {outcome.error}")


@dataclass(frozen=True)
class Freshness:
    problems: tuple[str, ...]

    @property
    def stale(self) -> bool:
        return bool(self.problems)


def export_max_age_hours(environ: Mapping[str, str] | None = None) -> float:
    raw = (os.environ if environ is None else environ).get("EXPORT_MAX_AGE_HOURS", "").strip()
    if not raw:
        return DEFAULT_EXPORT_MAX_AGE_HOURS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ValueError(f"EXPORT_MAX_AGE_HOURS must be a number of hours > 0, got {raw!r}")
    return value


def _fact_lag() -> str | None:
    """Why the daily fact is older than the exports loaded, or None when it is not."""
    with connect() as conn:
        loaded = conn.execute("select to_regclass('raw.load_log')").fetchone()[0]
        newest_export = (
            conn.execute("select max(export_date) from raw.load_log").fetchone()[0] if loaded else None
        )
        if newest_export is None:
            return None
        if conn.execute("select to_regclass(%s)", (FACT,)).fetchone()[0] is None:
            return f"{FACT} does not exist, but exports up to {newest_export} are loaded"
        latest_day = conn.execute(f"select max(balance_date) from {FACT}").fetchone()[0]
    expected = newest_export - dt.timedelta(days=FACT_MAX_LAG_DAYS)
    if latest_day is None or latest_day < expected:
        return (
            f"{FACT} ends on {latest_day or 'no day'}, but exports up to {newest_export} are loaded "
            f"(expected {expected} or later)"
        )
    return None


def check_freshness(now: dt.datetime, max_age_hours: float, check_fact: bool = True) -> Freshness:
    problems: list[str] = []
    directory = exports_dir()
    folders = export_folders(directory)
    if not folders:
        problems.append(f"no export folder (YYYY-MM-DD) in {directory}")
    else:
        newest = folders[-1]
        landed = dt.datetime.fromtimestamp(newest.stat().st_mtime, dt.UTC)
        age_hours = (now - landed).total_seconds() / 3600
        if age_hours > max_age_hours:
            problems.append(
                f"no new export for {age_hours:.1f} h: the newest, {newest.name}, landed "
                f"{landed:%Y-%m-%d %H:%M} UTC (EXPORT_MAX_AGE_HOURS={max_age_hours:g})"
            )
    if check_fact:
        lag = _fact_lag()
        if lag:
            problems.append(lag)
    return Freshness(tuple(problems))


def _recorded(cursor: str | None) -> Freshness:
    if not cursor:
        return Freshness(())  # nothing said yet: assume fresh, so the first stale tick alerts
    return Freshness(tuple(json.loads(cursor).get("problems", [])))


@sensor(name="freshness_alerts", minimum_interval_seconds=300, default_status=DefaultSensorStatus.RUNNING)
def freshness_alerts(context: SensorEvaluationContext):
    # while the daily job runs, the fact may lag the exports it is loading: judge it after the run
    running = context.instance.get_run_records(
        filters=RunsFilter(job_name=daily_job.name, statuses=IN_PROGRESS), limit=1
    )
    now = dt.datetime.now(dt.UTC)
    current = check_freshness(now, export_max_age_hours(), check_fact=not running)
    recorded = _recorded(context.cursor)
    if current.stale == recorded.stale:
        return SkipReason("stale: " + "; ".join(current.problems) if current.stale else "fresh")
    if current.stale:
        message = OpsMessage("Data is stale", details=current.problems, link=f"{dagster_base_url()}/assets")
    else:
        message = OpsMessage(
            "Data is fresh again", details=tuple(f"resolved: {p}" for p in recorded.problems)
        )
    outcome = channel_from_environment().send(message)
    if not outcome.delivered:
        return SkipReason(f"the freshness alert could not be delivered ({outcome.error}); next tick retries")
    context.update_cursor(json.dumps({"stale": current.stale, "problems": list(current.problems)}))
    return SkipReason(f"sent: {message.title}")
