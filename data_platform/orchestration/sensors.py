"""New export folders, csv_data/exports/<YYYY-MM-DD>/ (CSV_DIR), start one run of the daily job once they are
complete, and so does a change to the folders a run was requested for (a bad export fixed).

A tick may see a folder while it is still being copied, and the loader loads what is there: an export loaded
in part is final (exports are immutable), and one without its invoices fails the run. So a run is requested
only when every export folder holds invoices.csv, their files (names, sizes, modification and change times)
are the same as at the previous tick, and the newest of them was last modified at least SETTLE_SECONDS ago.
Several folders landing together start one run; an unchanged set of folders starts none. The run loads the
folders up to the newest day the sensor judged complete (its EXPORT_DAY_TAG), not one that lands while it
waits in the queue. An export copied into a dot-named folder (ignored here and by the loader) and renamed into
place is complete when it appears. A link to a missing file (an unmounted share) counts as the link itself, as
the loader takes it: not waited for, as that would hold back every export after it, but left to the runs,
which fail naming it until it is fixed.

A folder dated after today (UTC), which the loader refuses, is left out until its day begins: it is then new
to the sensor, and starts a run as any landing does.

With no folder newer than the requested day, every folder is one that run read (the loader looks into each
folder up to its day, loading the new ones and checking the loaded ones are unchanged). When their files other
than dotfiles, which the loader ignores (a .DS_Store, an editor's swap file), differ from when it was
requested (an export replaced after its run refused it, or re-landed, even with its old size and modification
time, as `cp -p` lands it: its change time is new), the folders are waited for as a new landing is, then a run
is requested again for that day, under a run key naming the files and counting such runs (Dagster launches a
run key once, and a folder can come back to an earlier request's files: a stray file added, then removed). A
loaded export changed is refused by that run (its failure alert says so), and one only touched or landed again
unchanged loads nothing.

The cursor: a _Cursor as JSON, with "digests": DIGESTS, what its digests are of. A bare date, the cursor of
earlier versions, is the requested day; without "requested_files", or with digests of another kind, the first
tick records the folders as they are.
"""

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from data_platform.exports import EXPORTS_FOLDER, day_folders, present
from data_platform.load_errors import LoadError, utc_today
from data_platform.orchestration.schedules import daily_job
from data_platform.pipeline_settings import csv_dir_from_environment
from data_platform.raw_tables import INVOICES

# a file written this recently may still be written to, even if the previous tick saw it the same
SETTLE_SECONDS = 10
# A run this sensor starts carries the newest export day it judged complete, and loads up to that day
# only: a folder that lands while the run waits in the queue may still be being copied.
EXPORT_DAY_TAG = "data_platform/export_day"
# what the cursor's digests are of: raised whenever that changes, so that a digest of an earlier
# version is not taken for a change to the folders
DIGESTS = 3


def exports_dir() -> Path:
    return csv_dir_from_environment() / EXPORTS_FOLDER


def now_ns() -> int:
    """The sensor's clock (a seam for the tests)."""
    return time.time_ns()


def export_folders(directory: Path, skip_unexpected: bool = False) -> list[Path]:
    """The dated export folders, oldest first, exactly as the loader takes them; LoadError with the
    loader's words for a landing folder it would refuse (a file or a dangling link in place of the folder,
    an entry that is not a YYYY-MM-DD folder), unless `skip_unexpected` leaves those out."""
    return [folder for _, folder in day_folders(directory, skip_unexpected)]


@dataclass(frozen=True)
class _Cursor:
    requested: str | None = None  # the newest day a run was requested for
    requested_files: str | None = None  # the folders' digest when it was (dotfiles left out)
    pending: str | None = None  # the folders' digest at the last tick (dotfiles too)
    renewals: int = 0  # runs requested again for changed folders: part of their run keys

    @classmethod
    def read(cls, cursor: str | None) -> "_Cursor":
        """The digests only if made as _files makes them now."""
        if not cursor:
            return cls()
        if not cursor.startswith("{"):
            return cls(requested=cursor)
        state = json.loads(cursor)
        renewals = state.get("renewals", 0)
        if state.get("digests") != DIGESTS:  # another version's digest would differ for unchanged folders
            return cls(requested=state.get("requested"), renewals=renewals)
        return cls(state.get("requested"), state.get("requested_files"), state.get("pending"), renewals)

    def write(self) -> str:
        return json.dumps({**asdict(self), "digests": DIGESTS})


def _waiting(reason: str, cursor: str) -> SensorResult:
    return SensorResult(skip_reason=f"{reason}; checked again next tick", cursor=cursor)


def _files(folders: list[Path]) -> list[tuple[str, str, int, int, int]]:
    """Every entry of the folders (dotfiles too: a copy's temporary files) as (folder, name, size, mtime,
    ctime). The ctime tells apart a file landed again with its old size and times (`cp -p`, `rsync -a`):
    any write or replacement sets it to now and nothing sets it back, so a file's entry never comes back
    (a folder's set of entries can: a stray file added, then removed).
    FileNotFoundError for an entry gone since it was listed (a rename under way)."""
    return sorted(
        (folder.name, entry.name, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        for folder in folders
        for entry in os.scandir(folder)
        for stat in [_stat(entry)]
    )


def _digest(files: list[tuple[str, str, int, int, int]]) -> str:
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()


def _stat(entry: os.DirEntry) -> os.stat_result:
    try:
        return entry.stat()
    except OSError:
        # a link to a missing file (an unmounted share) is the link itself: the run's loader names it,
        # while waiting for it would hold back every export after it
        return entry.stat(follow_symlinks=False)


def _unreadable(error: OSError, directory: Path) -> SkipReason:
    # a folder it may not read (landed by another user, say): the run would fail on it too
    return SkipReason(
        f"cannot look into {error.filename or directory}: {error.strerror}; checked again next tick"
    )


@sensor(job=daily_job, minimum_interval_seconds=60, default_status=DefaultSensorStatus.RUNNING)
def new_export_sensor(context: SensorEvaluationContext):
    directory = exports_dir()
    try:
        folders = export_folders(directory)
    except LoadError as error:  # the scheduled run fails on it and the freshness check reports it
        return SkipReason(f"{error}; checked again next tick")
    except OSError as error:
        return _unreadable(error, directory)
    if not folders:
        return SkipReason(f"no export folder (YYYY-MM-DD) in {directory}")
    # an export dated after today (UTC) is refused by the loader: it waits for its day, when it is new
    # to this sensor (named in local time ahead of UTC, it lands before its UTC day)
    today = utc_today().isoformat()
    early = [folder.name for folder in folders if folder.name > today]
    folders = [folder for folder in folders if folder.name <= today]
    if early:
        context.log.info(f"waiting for their day (UTC): {', '.join(early)}")
    if not folders:
        return SkipReason(
            f"the export folders in {directory} are dated after today ({today}, UTC): {', '.join(early)}; "
            "each is loaded once its day begins"
        )
    cursor = _Cursor.read(context.cursor)
    requested, requested_files = cursor.requested, cursor.requested_files
    # Every folder counts, not only the pending ones: the run loads up to its day reading each folder
    # (so one still changing fails it), and a fix to a folder a failed run refused must start a run.
    renewed = requested is not None and folders[-1].name <= requested
    newest = requested if renewed else folders[-1].name
    try:
        files = _files(folders)
    except FileNotFoundError:  # an entry went away while listed: a copy or a rename is under way
        return SkipReason(f"the exports up to {newest} are changing; checked again next tick")
    except OSError as error:
        return _unreadable(error, directory)
    digest = _digest(files)
    # what the run loads: the loader ignores dotfiles, so one appearing (.DS_Store, a swap file) in a
    # loaded folder is no change to it, while the wait below still counts a copy's temporary ones
    loaded = _digest([file for file in files if not file[1].startswith(".")])
    if renewed and requested_files is None:  # a cursor of an earlier version: from now on, as they are
        requested_files = loaded
    if renewed and loaded == requested_files:
        return SensorResult(
            skip_reason=(
                f"no export newer than {requested}, the newest requested, in {directory}, and the folders "
                "are as when its run was requested (if it failed on a bad export, fixing or re-landing the "
                "folder starts a new run once it is complete)"
            ),
            cursor=replace(cursor, requested_files=requested_files, pending=None).write(),
        )
    # as the loader takes it: a link to a missing file is there, and the loader names it
    without_invoices = [f.name for f in folders if not present(f / INVOICES.file_name)]
    seen = replace(cursor, requested_files=requested_files, pending=digest).write()
    if without_invoices:
        return _waiting(f"no {INVOICES.file_name} yet in {', '.join(without_invoices)}", seen)
    if digest != cursor.pending:
        return _waiting(f"the exports up to {newest} changed since the last tick", seen)
    now = now_ns()
    # a modification time in the future (kept by `cp -p` from a host whose clock is ahead) would never be
    # long enough ago: such a file was written when it landed, its change time
    written = max(mtime if mtime <= now else ctime for _, _, _, mtime, ctime in files)
    if now - written < SETTLE_SECONDS * 1_000_000_000:
        return _waiting(f"the exports up to {newest} were written to in the last seconds", seen)
    renewals = cursor.renewals + 1 if renewed else cursor.renewals
    run_key = f"export-{newest}-{loaded[:12]}-{renewals}" if renewed else f"export-{newest}"
    return SensorResult(
        run_requests=[RunRequest(run_key=run_key, tags={EXPORT_DAY_TAG: newest})],
        cursor=_Cursor(newest, loaded, None, renewals).write(),
    )
