"""A new export folder, csv_data/exports/<YYYY-MM-DD>/ (CSV_DIR), starts one run of the daily job.

The cursor is the newest folder seen. Several folders landing together start one run (the loader
loads every pending export); an unchanged set of folders starts none.
"""

import datetime as dt
from pathlib import Path

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from data_platform.orchestration.schedules import daily_job
from data_platform.pipeline import PROJECT_ROOT, Settings

EXPORTS_FOLDER = "exports"


def exports_dir(settings: Settings | None = None) -> Path:
    csv_dir = Path((settings or Settings.from_environment()).csv_dir)
    # relative to the project, as the loader (run from the project root) reads it
    return (csv_dir if csv_dir.is_absolute() else PROJECT_ROOT / csv_dir) / EXPORTS_FOLDER


def _is_day(name: str) -> bool:
    try:
        return dt.date.fromisoformat(name).isoformat() == name
    except ValueError:
        return False


def export_folders(directory: Path) -> list[Path]:
    """The dated export folders, oldest first (other names are ignored)."""
    if not directory.is_dir():
        return []
    return sorted(path for path in directory.iterdir() if path.is_dir() and _is_day(path.name))


@sensor(job=daily_job, minimum_interval_seconds=60, default_status=DefaultSensorStatus.RUNNING)
def new_export_sensor(context: SensorEvaluationContext):
    directory = exports_dir()
    folders = export_folders(directory)
    if not folders:
        return SkipReason(f"no export folder (YYYY-MM-DD) in {directory}")
    newest = folders[-1].name
    if context.cursor and newest <= context.cursor:
        return SkipReason(f"no export newer than {context.cursor} in {directory}")
    return SensorResult(
        run_requests=[RunRequest(run_key=f"export-{newest}", tags={"data_platform/export_day": newest})],
        cursor=newest,
    )
