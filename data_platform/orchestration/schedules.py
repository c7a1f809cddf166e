"""The daily job (every asset and check) and its schedule: PIPELINE_SCHEDULE, cron, UTC."""

from __future__ import annotations

import os

from dagster import (
    AssetSelection,
    DagsterInvalidDefinitionError,
    DefaultScheduleStatus,
    ScheduleDefinition,
    define_asset_job,
)

DEFAULT_SCHEDULE = "0 6 * * *"

daily_job = define_asset_job(
    "daily_pipeline",
    selection=AssetSelection.all(),
    description="load the pending exports -> dbt build (rules, models, tests) -> docs -> balance alerts",
)


def daily_schedule(environ: dict[str, str] | None = None) -> ScheduleDefinition:
    cron = ((os.environ if environ is None else environ).get("PIPELINE_SCHEDULE") or DEFAULT_SCHEDULE).strip()
    try:
        return ScheduleDefinition(
            name="daily_pipeline_schedule",
            job=daily_job,
            cron_schedule=cron,
            execution_timezone="UTC",
            default_status=DefaultScheduleStatus.RUNNING,
        )
    except DagsterInvalidDefinitionError:
        raise ValueError(
            f"PIPELINE_SCHEDULE must be a cron expression such as {DEFAULT_SCHEDULE!r} (UTC), got {cron!r}"
        ) from None
