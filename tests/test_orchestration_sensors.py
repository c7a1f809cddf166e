"""Daily operation that keeps going on its own: the export sensor waits for a complete export, a run cut
off by the daemon container's restart ends failed (so it alerts and frees the queue), and every service
the daily profile needs comes back after a host or Docker restart."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter, build_sensor_context
from dagster._core.test_utils import create_run_for_test
from orchestration_support import (
    UNUSABLE_PIPELINE_SETTINGS,
    daemons_origin,
    dagster_env,
    daily_home,
    environment,
)
from test_compose import PROJECT_ROOT, run_compose_config

from data_platform.csv_files import check_header
from data_platform.exports import discover
from data_platform.load_errors import LoadError
from data_platform.orchestration import sensors
from data_platform.orchestration.schedules import daily_job
from data_platform.orchestration.sensors import EXPORT_DAY_TAG, new_export_sensor
from data_platform.raw_tables import INVOICES, ORGANIZATIONS

DAEMON_COMMAND = ["dagster-daemon", "run", "-m", "data_platform.orchestration.definitions"]


# --- the export sensor -------------------------------------------------------------------------------


def write(path: Path, text: str, age_seconds: float = 60) -> None:
    """A file as a finished copy leaves it: written `age_seconds` ago."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    written = time.time() - age_seconds
    os.utime(path, (written, written))


@pytest.fixture
def exports(tmp_path) -> Path:
    return tmp_path / "csv" / "exports"


@pytest.fixture
def tick(exports, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    with DagsterInstance.local_temp(str(home)) as instance:

        def evaluate(cursor: str | None, **settings: str):
            with environment(dagster_env(**{"CSV_DIR": str(exports.parent), **settings})):
                return new_export_sensor.evaluate_tick(build_sensor_context(instance=instance, cursor=cursor))

        yield evaluate


def run_keys(result) -> list[str]:
    return [request.run_key for request in result.run_requests]


def test_an_empty_export_folder_starts_no_run(exports, tick):
    (exports / "2024-07-02").mkdir(parents=True)
    first = tick(None)
    assert run_keys(first) == []
    assert run_keys(tick(first.cursor)) == []


def test_a_complete_folder_starts_one_run_once_it_stopped_changing(exports, tick):
    day = exports / "2024-07-02"
    write(day / "invoices.csv", "ID\n1\n")
    seen = tick(None)
    assert run_keys(seen) == [], "first sight: it may still be being copied"
    # the copy goes on: organizations.csv arrives after invoices.csv
    write(day / "organizations.csv", "ID\n1\n")
    changed = tick(seen.cursor)
    assert run_keys(changed) == []
    # a file still growing: its size changes
    write(day / "organizations.csv", "ID\n1\n2\n")
    grown = tick(changed.cursor)
    assert run_keys(grown) == []
    settled = tick(grown.cursor)
    assert run_keys(settled) == ["export-2024-07-02"]
    assert settled.run_requests[0].tags[EXPORT_DAY_TAG] == "2024-07-02"
    # requested once: the next ticks start nothing for it while its files stay as they were
    assert run_keys(tick(settled.cursor)) == []


def test_a_folder_without_invoices_never_starts_a_run(exports, tick):
    write(exports / "2024-07-02" / "organizations.csv", "ID\n1\n")
    first = tick(None)
    assert run_keys(first) == []
    second = tick(first.cursor)
    assert run_keys(second) == [] and "invoices.csv" in (second.skip_message or "")


@pytest.mark.parametrize(
    "days",
    [
        pytest.param(["2024-07-02"], id="one-folder"),
        pytest.param(["2024-07-01", "2024-07-02"], id="folders-landing-together"),
    ],
)
def test_a_requested_export_is_not_requested_again_however_many_ticks_follow(exports, tick, days):
    for day in days:
        write(exports / day / "invoices.csv", "ID\n1\n")
    settled = tick(tick(None).cursor)
    assert run_keys(settled) == [f"export-{days[-1]}"]
    # each tick carries on from the one before, as the daemon chains them
    cursor = settled.cursor
    for _ in range(3):
        later = tick(cursor)
        assert run_keys(later) == []
        cursor = later.cursor or cursor


def settled_request(tick, cursor: str | None = None):
    """The ticks up to the one that requests a run for the folders now in place (each tick carrying
    on from the one before, as the daemon chains them)."""
    for _ in range(3):
        result = tick(cursor)
        if result.run_requests:
            return result
        cursor = result.cursor or cursor
    raise AssertionError(f"no run requested: {result.skip_message}")


def run_keys_after_each(tick, cursor: str, changes) -> list[str]:
    """The run keys requested after each change to the folders, once settled, the ticks chained."""
    keys = []
    for change in changes:
        change()
        again = settled_request(tick, cursor)
        keys += run_keys(again)
        cursor = again.cursor
    return keys


def reland(folder: Path, invoices: str) -> None:
    """The README's way to land an export again: copy into a dot-named folder, then mv it into place."""
    staged = folder.with_name(f".{folder.name}")
    write(staged / "invoices.csv", invoices)
    shutil.rmtree(folder)
    staged.rename(folder)


@pytest.mark.parametrize(
    "fix",
    [
        pytest.param(lambda day: write(day / "invoices.csv", "ID\n1\n2\n"), id="replaced-in-place"),
        pytest.param(lambda day: reland(day, "ID\n1\n2\n"), id="landed-again"),
    ],
)
def test_a_requested_folder_fixed_after_its_run_starts_one_new_run_once_settled(exports, tick, fix):
    day = exports / "2024-07-02"
    write(day / "invoices.csv", "ID\n1\n")
    first = settled_request(tick)
    assert run_keys(first) == ["export-2024-07-02"]
    unchanged = tick(first.cursor)
    assert run_keys(unchanged) == []
    # its run failed on a bad value; the operator fixes the export
    fix(day)
    seen = tick(unchanged.cursor or first.cursor)
    assert run_keys(seen) == [], "first sight of the fix: it may still be being copied"
    again = tick(seen.cursor)
    [key] = run_keys(again)
    # Dagster never launches a run key twice
    assert key != "export-2024-07-02" and key.startswith("export-2024-07-02-")
    assert again.run_requests[0].tags[EXPORT_DAY_TAG] == "2024-07-02"
    # requested once again, then left alone while unchanged
    cursor = again.cursor
    for _ in range(3):
        later = tick(cursor)
        assert run_keys(later) == []
        cursor = later.cursor or cursor


def replace_keeping_times(path: Path, text: str) -> None:
    """A file landed again as `cp -p` or `rsync -a` lands it: new content, the old file's times."""
    before = path.stat()
    staged = path.with_name(f".{path.name}.tmp")
    staged.write_text(text)
    os.utime(staged, ns=(before.st_atime_ns, before.st_mtime_ns))
    staged.replace(path)


def test_a_fix_of_the_same_size_and_times_starts_a_new_run(exports, tick):
    day = exports / "2024-07-02"
    write(day / "invoices.csv", "ID\n1\n")
    first = settled_request(tick)
    replace_keeping_times(day / "invoices.csv", "ID\n2\n")
    again = settled_request(tick, first.cursor)
    [key] = run_keys(again)
    assert key.startswith("export-2024-07-02-")


def test_a_change_reverted_then_made_again_starts_a_run_under_a_new_key_each_time(exports, tick):
    # Dagster never launches a run key twice: a key met again would start nothing
    invoices = exports / "2024-07-02" / "invoices.csv"
    first, second = time.time_ns() - 120 * 10**9, time.time_ns() - 60 * 10**9
    write(invoices, "ID\n1\n")
    os.utime(invoices, ns=(first, first))

    def landed(text: str, written: int):
        def land() -> None:
            write(invoices, text)
            os.utime(invoices, ns=(written, written))

        return land

    # the revert brings back the first file's size and times (`cp -p` of a kept copy)
    changes = [landed("ID\n1\n2\n", second), landed("ID\n1\n", first), landed("ID\n1\n2\n", second)]
    keys = run_keys_after_each(tick, settled_request(tick).cursor, changes)
    assert len(keys) == len(set(keys)) == 3, keys


def test_a_stray_file_added_and_removed_twice_starts_a_run_under_a_new_key_each_time(exports, tick):
    # each removal brings the folder back to the files of the first request, unchanged since
    day = exports / "2024-07-02"
    write(day / "invoices.csv", "ID\n1\n")
    stray = day / "_SUCCESS"
    changes = [lambda: write(stray, ""), stray.unlink] * 2
    keys = run_keys_after_each(tick, settled_request(tick).cursor, changes)
    assert len(keys) == len(set(keys)) == 4, keys


def test_a_dot_file_appearing_in_a_requested_folder_starts_no_run(exports, tick):
    # the loader ignores dotfiles: a Finder's .DS_Store or an editor's swap file changes nothing it loads
    day = exports / "2024-07-02"
    write(day / "invoices.csv", "ID\n1\n")
    cursor = settled_request(tick).cursor
    write(day / ".DS_Store", "x")
    write(day / ".invoices.csv.swp", "x")
    for _ in range(4):
        later = tick(cursor)
        assert run_keys(later) == [], later.skip_message
        cursor = later.cursor or cursor
    # a real change still starts one
    write(day / "invoices.csv", "ID\n1\n2\n")
    assert run_keys(settled_request(tick, cursor))[0].startswith("export-2024-07-02-")


def test_a_dot_file_already_there_when_the_run_was_requested_starts_no_more_runs(exports, tick):
    # what a run loaded is recorded without dotfiles, as the unchanged check reads it: with them, every
    # later tick would take the folder for one fixed after its run, and start a run every other tick
    day = exports / "2024-07-02"
    write(day / "invoices.csv", "ID\n1\n")
    write(day / ".DS_Store", "x")
    cursor = settled_request(tick).cursor
    for _ in range(4):
        later = tick(cursor)
        assert run_keys(later) == [], later.skip_message
        cursor = later.cursor or cursor


def test_a_fixed_folders_run_key_names_its_files_as_well_as_the_count(exports, tick):
    # Dagster launches a run key once: the count alone would repeat a key already launched whenever it
    # starts over (a cursor reset, or restored from a backup), and the fix would start no run
    write(exports / "2024-07-02" / "invoices.csv", "ID\n1\n")
    first = settled_request(tick)
    write(exports / "2024-07-02" / "invoices.csv", "ID\n1\n2\n")
    [key] = run_keys(settled_request(tick, first.cursor))
    assert re.fullmatch(r"export-2024-07-02-[0-9a-f]{12}-1", key), key


def test_a_temporary_file_still_growing_holds_a_fix_back(exports, tick):
    day = exports / "2024-07-02"
    write(day / "invoices.csv", "ID\n1\n")
    first = settled_request(tick)
    write(day / "invoices.csv", "ID\n1\n2\n")
    write(day / ".organizations.csv.partial", "ID\n")
    seen = tick(first.cursor)
    write(day / ".organizations.csv.partial", "ID\n1\n")
    grown = tick(seen.cursor)
    assert run_keys(seen) == run_keys(grown) == []
    assert "changed since the last tick" in grown.skip_message
    assert len(run_keys(tick(grown.cursor))) == 1


def test_a_fix_in_progress_holds_the_new_run_back_as_a_new_landing_would(exports, tick, monkeypatch):
    day = exports / "2024-07-02"
    write(day / "invoices.csv", "ID\n1\n")
    first = settled_request(tick)
    # the fixed folder copied in place: invoices.csv removed, not there yet
    (day / "invoices.csv").unlink()
    write(day / "organizations.csv", "ID\n1\n")
    missing = tick(tick(first.cursor).cursor)
    assert run_keys(missing) == [] and "invoices.csv" in missing.skip_message
    # then written, seconds ago
    write(day / "invoices.csv", "ID\n1\n2\n", age_seconds=0)
    monkeypatch.setattr(sensors, "SETTLE_SECONDS", 3600)
    fresh = tick(tick(missing.cursor).cursor)
    assert run_keys(fresh) == [] and "in the last seconds" in fresh.skip_message
    monkeypatch.setattr(sensors, "SETTLE_SECONDS", 0)
    assert len(run_keys(tick(fresh.cursor))) == 1


def test_an_older_folder_of_the_requested_run_fixed_starts_a_new_run(exports, tick):
    # two folders landing together start one run, which loads both: a bad value in the older one fails it
    write(exports / "2024-07-01" / "invoices.csv", "ID\n1\n")
    write(exports / "2024-07-02" / "invoices.csv", "ID\n1\n")
    first = settled_request(tick)
    write(exports / "2024-07-01" / "invoices.csv", "ID\n1\n2\n")
    again = settled_request(tick, first.cursor)
    [key] = run_keys(again)
    assert key.startswith("export-2024-07-02-")
    assert again.run_requests[0].tags[EXPORT_DAY_TAG] == "2024-07-02"


def test_the_requested_folder_removed_then_landed_again_starts_a_new_run_for_its_day(exports, tick):
    # the README's fix of a failed export: remove the failed folder, then mv the fixed copy into place; a
    # tick in between sees the folders without it, and the fixed folder must still get a run of its own
    write(exports / "2024-07-01" / "invoices.csv", "ID\n1\n")
    write(exports / "2024-07-02" / "invoices.csv", "ID\n1\n")
    first = settled_request(tick)
    shutil.rmtree(exports / "2024-07-02")
    removed = settled_request(tick, first.cursor)
    assert removed.run_requests[0].tags[EXPORT_DAY_TAG] == "2024-07-02"
    write(exports / "2024-07-02" / "invoices.csv", "ID\n1\n2\n")
    fixed = settled_request(tick, removed.cursor)
    assert fixed.run_requests[0].tags[EXPORT_DAY_TAG] == "2024-07-02"
    keys = run_keys(first) + run_keys(removed) + run_keys(fixed)
    assert len(set(keys)) == 3, f"Dagster launches a run key once: {keys}"


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("2024-07-02", id="bare-date"),
        pytest.param(json.dumps({"requested": "2024-07-02"}), id="json-without-the-requested-files"),
        # an earlier version's digest of the same files is another digest
        pytest.param(
            json.dumps({"requested": "2024-07-02", "requested_files": "0" * 64, "pending": None}),
            id="digest-of-an-earlier-version",
        ),
    ],
)
def test_a_cursor_of_an_earlier_version_notices_a_fix_from_its_first_tick_on(exports, tick, cursor):
    # such a cursor does not say what the folders held when the run was requested: the first tick
    # records it, and a change from then on starts a run
    write(exports / "2024-07-02" / "invoices.csv", "ID\n1\n")
    for _ in range(3):
        later = tick(cursor)
        assert run_keys(later) == []
        cursor = later.cursor or cursor
    write(exports / "2024-07-02" / "invoices.csv", "ID\n1\n2\n")
    assert run_keys(settled_request(tick, cursor))[0].startswith("export-2024-07-02-")


def test_a_file_written_seconds_ago_holds_back_its_folder_however_old_the_others(exports, tick, monkeypatch):
    write(exports / "2024-07-02" / "invoices.csv", "ID\n1\n", age_seconds=7200)
    write(exports / "2024-07-02" / "organizations.csv", "ID\n1\n", age_seconds=0)
    # however slow the machine, the two ticks come within the settling time
    monkeypatch.setattr(sensors, "SETTLE_SECONDS", 3600)
    first = tick(None)
    second = tick(first.cursor)
    assert run_keys(first) == run_keys(second) == []
    assert "in the last seconds" in second.skip_message


def test_the_newest_file_must_have_been_written_ten_seconds_before_the_run_starts(exports, tick, monkeypatch):
    # the README's settling time, at its default, on the sensor's clock (the tests above change it)
    invoices = exports / "2024-07-02" / "invoices.csv"
    write(invoices, "ID\n1\n")
    written = invoices.stat().st_mtime_ns
    monkeypatch.setattr(sensors, "now_ns", lambda: written + 9 * 1_000_000_000)
    unsettled = tick(tick(None).cursor)
    assert run_keys(unsettled) == []
    assert "in the last seconds" in unsettled.skip_message
    monkeypatch.setattr(sensors, "now_ns", lambda: written + 11 * 1_000_000_000)
    assert run_keys(tick(unsettled.cursor)) == ["export-2024-07-02"]


def test_a_partly_copied_older_folder_holds_the_run_back(exports, tick):
    # the run loads every pending folder, not only the newest
    write(exports / "2024-07-02" / "invoices.csv", "ID\n1\n")
    (exports / "2024-07-01").mkdir()
    first = tick(None)
    second = tick(first.cursor)
    assert run_keys(second) == []
    write(exports / "2024-07-01" / "invoices.csv", "ID\n1\n")
    third = tick(second.cursor)
    assert run_keys(third) == []
    assert run_keys(tick(third.cursor)) == ["export-2024-07-02"]


@pytest.mark.parametrize("name", ["organizations.csv", "invoices.csv"])
def test_a_dangling_link_in_a_loaded_folder_does_not_hold_back_the_next_export(exports, tick, name):
    write(exports / "2024-07-01" / "invoices.csv", "ID\n1\n")
    cursor = settled_request(tick).cursor
    # a file of the loaded export replaced by a link into a share that is not mounted
    link = exports / "2024-07-01" / name
    link.unlink(missing_ok=True)
    link.symlink_to(exports.parent / "unmounted" / name)
    made = time.time() - 60
    os.utime(link, (made, made), follow_symlinks=False)
    write(exports / "2024-07-02" / "invoices.csv", "ID\n1\n")
    assert "export-2024-07-02" in run_keys(settled_request(tick, cursor))
    # the run's loader names the link
    [loaded, _] = discover(exports.parent)
    assert link in loaded.files
    with pytest.raises(LoadError) as refused:
        check_header(INVOICES if name == "invoices.csv" else ORGANIZATIONS, link)
    assert refused.value.path == link


def test_a_file_gone_between_listing_and_reading_holds_the_run_back(exports, tick, monkeypatch):
    # a rename under way: the folder was listed with the file, which is gone when looked at
    day = exports / "2024-07-02"
    write(day / "invoices.csv", "ID\n1\n")
    write(day / ".invoices.csv.tmp", "ID\n1\n")
    listed = list(os.scandir(day))
    (day / ".invoices.csv.tmp").unlink()
    monkeypatch.setattr(sensors.os, "scandir", lambda folder: iter(listed))
    changing = tick(tick(None).cursor)
    assert run_keys(changing) == [] and "are changing" in changing.skip_message


def test_a_cursor_of_the_earlier_format_a_bare_date_still_works(exports, tick):
    write(exports / "2024-06-29" / "invoices.csv", "ID\n1\n")
    assert run_keys(tick("2024-06-29")) == []
    write(exports / "2024-06-30" / "invoices.csv", "ID\n1\n")
    first = tick("2024-06-29")
    assert run_keys(first) == []
    second = tick(first.cursor)
    assert run_keys(second) == ["export-2024-06-30"]
    assert run_keys(tick(second.cursor)) == []


def test_folders_being_renamed_into_place_are_not_exports_yet(exports, tick):
    # the README's way to land an export: copy into a dot-named folder, then mv it into place
    write(exports / ".2024-07-02" / "invoices.csv", "ID\n1\n")
    first = tick(None)
    assert run_keys(tick(first.cursor)) == []
    (exports / ".2024-07-02").rename(exports / "2024-07-02")
    renamed = tick(first.cursor)
    assert run_keys(tick(renamed.cursor)) == ["export-2024-07-02"]


def test_a_temporary_file_still_growing_beside_the_invoices_holds_the_run_back(exports, tick):
    # a copy's temporary file (rsync's .organizations.csv.XXXXXX) in a folder that already holds
    # invoices.csv: the folder is not complete while it grows
    day = exports / "2024-07-02"
    write(day / "invoices.csv", "ID\n1\n")
    write(day / ".organizations.csv.partial", "ID\n")
    first = tick(None)
    write(day / ".organizations.csv.partial", "ID\n1\n")
    second = tick(first.cursor)
    assert run_keys(second) == []
    assert "changed since the last tick" in second.skip_message


def test_a_relative_csv_dir_is_taken_from_the_working_directory_as_the_steps_take_it(
    exports, tick, tmp_path, monkeypatch
):
    write(exports / "2024-07-02" / "invoices.csv", "ID\n1\n")
    monkeypatch.chdir(tmp_path)
    first = tick(None, CSV_DIR=exports.parent.name)
    assert run_keys(tick(first.cursor, CSV_DIR=exports.parent.name)) == ["export-2024-07-02"]


NOT_A_FOLDER = "not a folder (or a link to a missing one)"
UNEXPECTED_ENTRY = "unexpected entry in"


@pytest.mark.parametrize(
    ("landing", "refusal"),
    [
        pytest.param(lambda exports: write(exports, "not a folder"), NOT_A_FOLDER, id="exports-is-a-file"),
        pytest.param(
            lambda exports: exports.symlink_to(exports.parent / "unmounted"), NOT_A_FOLDER, id="dangling-link"
        ),
        pytest.param(
            lambda exports: write(exports / "2024-7-02" / "invoices.csv", "ID\n1\n"),
            UNEXPECTED_ENTRY,
            id="misnamed",
        ),
        pytest.param(lambda exports: write(exports / "notes.txt", "x"), UNEXPECTED_ENTRY, id="stray-file"),
    ],
)
def test_a_landing_folder_the_loader_would_refuse_is_named_not_taken_for_no_exports(
    exports, tick, landing, refusal
):
    exports.parent.mkdir(parents=True, exist_ok=True)
    landing(exports)
    write(exports.parent / "exports-ok" / "2024-07-02" / "invoices.csv", "ID\n1\n")  # not looked at
    first = tick(None)
    second = tick(first.cursor)
    assert run_keys(first) == run_keys(second) == []
    # the loader's own words, so the sensor, the freshness check and the failing run agree
    assert "no export folder" not in second.skip_message
    assert refusal in second.skip_message


@pytest.mark.parametrize("setting", UNUSABLE_PIPELINE_SETTINGS)
def test_an_unusable_pipeline_setting_does_not_stop_the_sensor(exports, tick, setting):
    write(exports / "2024-07-02" / "invoices.csv", "ID\n1\n")
    first = tick(None, **setting)
    assert run_keys(tick(first.cursor, **setting)) == ["export-2024-07-02"]


# --- runs cut off by a restart of the daemon container ----------------------------------------------


def test_the_daily_instance_monitors_runs_that_never_start_or_never_end(daily_instance):
    # the settings only: Dagster's monitoring daemon then fails such a run (a run failure event, which
    # run_failure_alerts reads), also past its max runtime (it cancels, then marks the run failed)
    assert daily_instance.run_monitoring_enabled
    # a run worker imports Dagster and the definitions (parsing the dbt project when it changed)
    assert daily_instance.run_monitoring_start_timeout_seconds == 300
    # a whole run takes up to ~10 minutes at 12.7M invoices: 4 hours is far from a slow run
    assert daily_instance.run_monitoring_max_runtime_seconds == 4 * 3600
    # the default run launcher can neither check a run worker's health nor resume a run
    assert not daily_instance.run_launcher.supports_check_run_worker_health
    assert daily_instance.run_monitoring_max_resume_run_attempts == 0
    assert "MONITORING" in daily_instance.get_required_daemon_types()
    assert daily_instance.run_coordinator.get_run_queue_config().max_concurrent_runs == 1


def make_runs(instance: DagsterInstance) -> dict[DagsterRunStatus, str]:
    """One run of the daily job in each status the sweep must tell apart."""
    origin = daemons_origin(daily_job.name)  # a queued run is launched by the daemon
    statuses = [
        DagsterRunStatus.STARTING,
        DagsterRunStatus.STARTED,
        DagsterRunStatus.QUEUED,
        DagsterRunStatus.SUCCESS,
        DagsterRunStatus.FAILURE,
    ]
    return {
        status: create_run_for_test(
            instance, job_name=daily_job.name, status=status, remote_job_origin=origin
        ).run_id
        for status in statuses
    }


def statuses(
    instance: DagsterInstance, runs: dict[DagsterRunStatus, str]
) -> dict[DagsterRunStatus, DagsterRunStatus]:
    return {before: instance.get_run_by_id(run_id).status for before, run_id in runs.items()}


def test_the_start_up_sweep_fails_the_runs_a_previous_container_left_in_progress(daily_instance):
    from data_platform.orchestration.startup import fail_interrupted_runs

    runs = make_runs(daily_instance)
    failed = fail_interrupted_runs(daily_instance)
    assert sorted(failed) == sorted([runs[DagsterRunStatus.STARTING], runs[DagsterRunStatus.STARTED]])
    assert statuses(daily_instance, runs) == {
        DagsterRunStatus.STARTING: DagsterRunStatus.FAILURE,
        DagsterRunStatus.STARTED: DagsterRunStatus.FAILURE,
        # a queued run is launched by the new daemon; a finished one is history
        DagsterRunStatus.QUEUED: DagsterRunStatus.QUEUED,
        DagsterRunStatus.SUCCESS: DagsterRunStatus.SUCCESS,
        DagsterRunStatus.FAILURE: DagsterRunStatus.FAILURE,
    }
    # a run failure event, as the run-failure alert sensor reads them, saying what happened
    failure = daily_instance.all_logs(runs[DagsterRunStatus.STARTED])[-1]
    assert failure.dagster_event.event_type_value == "PIPELINE_FAILURE"
    assert "dagster-daemon" in failure.dagster_event.message
    assert fail_interrupted_runs(daily_instance) == []


HAND_JOB = """
import time
from dagster import job, op

@op
def slow_step():
    time.sleep(60)

@job
def hand_job():
    slow_step()
"""


def test_the_start_up_sweep_leaves_a_run_started_by_hand_that_still_runs(tmp_path):
    """`dagster job execute` or `dagster asset materialize` in another shell (the README's "Run one step by
    hand") does not end with `dagster dev`: run again meanwhile, the sweep failed it while it went on, and
    the failure alert said it was cut off. A run of a process that has ended is still failed."""
    from data_platform.orchestration.startup import fail_interrupted_runs

    home = daily_home(tmp_path)
    (tmp_path / "hand_job.py").write_text(HAND_JOB)
    execute = [
        str(Path(sys.executable).parent / "dagster"),
        "job",
        "execute",
        "-f",
        str(tmp_path / "hand_job.py"),
    ]
    hand = subprocess.Popen(
        execute,
        env={**os.environ, "DAGSTER_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with DagsterInstance.from_config(str(home)) as instance:
            deadline = time.monotonic() + 120
            while not instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED])):
                assert hand.poll() is None and time.monotonic() < deadline, "the hand run never started"
                time.sleep(0.2)
            assert fail_interrupted_runs(instance) == []
            [run] = instance.get_runs()
            assert run.status == DagsterRunStatus.STARTED
            hand.kill()  # as a reboot would: its run is left in progress
            hand.wait(timeout=60)
            assert fail_interrupted_runs(instance) == [run.run_id]
    finally:
        if hand.poll() is None:
            hand.kill()


def test_dagsters_run_retries_queue_again_a_run_the_sweep_failed_and_not_one_failed_on_its_step(
    daily_instance,
):
    """Dagster's daemon that retries runs, on its very first start (an upgrade): it would start after the
    newest event, past the runs the sweep failed just before, had the sweep not set its place; a run failed
    before the sweep is history. The failure alerts say of each what the daemon did."""
    from dagster import DagsterEvent, DagsterEventType
    from dagster._core.events import JobFailureData, RunFailureReason
    from dagster._core.execution.plan.handle import StepHandle
    from dagster._core.execution.plan.objects import StepFailureData, StepSuccessData
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.workspace.load_target import ModuleTarget
    from dagster._daemon.auto_run_reexecution.event_log_consumer import EventLogConsumerDaemon
    from orchestration_support import load_definitions

    from data_platform.orchestration.failure_alerts import RUN_AGAIN_BY_DAGSTER, failure_message
    from data_platform.orchestration.startup import fail_interrupted_runs

    instance, job = daily_instance, load_definitions().resolve_job_def(daily_job.name)
    origin = daemons_origin(job.name)

    def run_that_failed(*events: tuple[DagsterEventType, str, object]):
        run = instance.create_run_for_job(job, status=DagsterRunStatus.STARTED, remote_job_origin=origin)
        for kind, step, data in events:
            handle = StepHandle.parse_from_key(step)
            event = DagsterEvent(
                kind.value, job.name, step_handle=handle, step_key=step, event_specific_data=data
            )
            instance.report_dagster_event(event, run_id=run.run_id)
        return run.run_id

    start, success = DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS
    loaded = (start, "raw_tables", None), (success, "raw_tables", StepSuccessData(duration_ms=1.0))
    earlier = run_that_failed(*loaded)
    instance.report_run_failed(instance.get_run_by_id(earlier), "failed before this release")
    cut_off = run_that_failed(*loaded, (start, "dbt_build", None))
    assert fail_interrupted_runs(instance) == [cut_off]
    # then, the daemon running, a run refuses an export
    refused = run_that_failed(
        (start, "raw_tables", None),
        (DagsterEventType.STEP_FAILURE, "raw_tables", StepFailureData(None, None)),
    )
    why = JobFailureData(None, RunFailureReason.STEP_FAILURE)
    instance.report_run_failed(instance.get_run_by_id(refused), "Steps failed: ['raw_tables'].", why)
    target = ModuleTarget("data_platform.orchestration.definitions", None, str(PROJECT_ROOT), None)

    with environment(dagster_env()), create_test_daemon_workspace_context(target, instance) as workspace:
        list(EventLogConsumerDaemon().run_iteration(workspace))

    retries = [run for run in instance.get_runs() if run.parent_run_id]
    # queued behind the one run at a time, from the step it did not finish: the exports stay loaded
    assert [(run.parent_run_id, run.status) for run in retries] == [(cut_off, DagsterRunStatus.QUEUED)]
    assert sorted(retries[0].step_keys_to_execute) == ["balance_alerts", "dbt_build", "dbt_docs"]
    said = {
        run_id: RUN_AGAIN_BY_DAGSTER in failure_message(instance, instance.get_run_by_id(run_id), "d").details
        for run_id in (earlier, cut_off, refused)
    }
    assert said == {earlier: False, cut_off: True, refused: False}


def test_the_daemon_container_runs_the_sweep_before_the_daemon(tmp_path):
    result = run_compose_config("--format", "json", profile="daily")
    assert result.returncode == 0, result.stderr
    command = json.loads(result.stdout)["services"]["dagster-daemon"]["command"]
    home = daily_home(tmp_path)
    with DagsterInstance.from_config(str(home)) as instance:
        runs = make_runs(instance)
    # the container's command, with a stand-in for dagster-daemon that records its arguments
    stub = tmp_path / "bin" / "dagster-daemon"
    stub.parent.mkdir()
    stub.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$STUB_OUT"\n')
    stub.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{stub.parent}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin",
        "DAGSTER_HOME": str(home),
        "STUB_OUT": str(tmp_path / "daemon-args"),
    }
    done = subprocess.run(
        [part.replace("$$", "$") for part in command],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "daemon-args").read_text().split() == DAEMON_COMMAND[1:]
    with DagsterInstance.from_config(str(home)) as instance:
        after = statuses(instance, runs)
    assert after[DagsterRunStatus.STARTED] == after[DagsterRunStatus.STARTING] == DagsterRunStatus.FAILURE
    assert after[DagsterRunStatus.QUEUED] == DagsterRunStatus.QUEUED
    # the container's log says which runs it failed
    swept = [runs[DagsterRunStatus.STARTING], runs[DagsterRunStatus.STARTED]]
    said = [f"run {run_id} was in progress when the daemon stopped: marked failed" for run_id in swept]
    assert sorted(done.stdout.splitlines()) == sorted(said), done.stdout


# --- restarts ----------------------------------------------------------------------------------------


def test_every_service_the_daily_profile_needs_comes_back_after_a_restart():
    result = run_compose_config("--format", "json", profile="daily")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    # the long-running services and, transitively, what they depend on
    needed, one_shots, todo = set(), set(), ["dagster-webserver", "dagster-daemon"]
    while todo:
        name = todo.pop()
        needed.add(name)
        for dependency, how in services[name].get("depends_on", {}).items():
            if how["condition"] == "service_completed_successfully":
                one_shots.add(dependency)
            todo.append(dependency)
    assert {"postgres", "dagster-db-init"} <= needed
    for name in needed - one_shots:
        assert services[name].get("restart") == "unless-stopped", name
    # a one-shot step must not run again on every restart; the demo run (and its docs server) neither
    for name in one_shots | {"dbt"}:
        assert services[name].get("restart") == "no", name


def test_a_file_with_a_future_modification_time_settles_once_landed(exports, tick, monkeypatch):
    """Copied with its times (`cp -p`) from a host whose clock runs ahead: its modification time was never
    long enough ago, and it held back that export and every later one for hours."""
    from data_platform.orchestration import sensors

    write(exports / "2024-07-01" / "invoices.csv", "ID\n1\n", age_seconds=-3 * 3600)
    write(exports / "2024-07-02" / "invoices.csv", "ID\n2\n")
    first = tick(None)
    assert run_keys(first) == []
    landed = time.time_ns()
    monkeypatch.setattr(sensors, "now_ns", lambda: landed + (sensors.SETTLE_SECONDS + 1) * 1_000_000_000)
    assert run_keys(tick(first.cursor)) == ["export-2024-07-02"]


def test_an_export_folder_it_may_not_read_is_a_skip_reason_not_a_failed_tick(exports, tick, monkeypatch):
    from data_platform.orchestration import sensors

    write(exports / "2024-07-02" / "invoices.csv", "ID\n1\n")
    scandir = os.scandir

    def landed_by_another_user(path):
        if Path(path).name == "2024-07-02":
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(sensors.os, "scandir", landed_by_another_user)
    result = tick(None)
    assert result.skip_message == (
        f"cannot look into {exports / '2024-07-02'}: Permission denied; checked again next tick"
    )


def test_a_landing_folder_it_may_not_read_is_a_skip_reason_not_a_failed_tick(exports, tick, monkeypatch):
    exports.mkdir(parents=True)

    def landed_by_another_user(directory):
        raise PermissionError(13, "Permission denied", str(directory))

    monkeypatch.setattr(sensors, "export_folders", landed_by_another_user)
    assert (
        tick(None).skip_message == f"cannot look into {exports}: Permission denied; checked again next tick"
    )


def test_an_export_landed_before_its_utc_day_starts_its_run_when_the_day_begins(exports, tick, monkeypatch):
    """Named in local time ahead of UTC, an export lands before its day: the loader would refuse it as from
    the future, and once refused its folder never changes again, so no later tick would start its run."""
    write(exports / "2024-07-01" / "invoices.csv", "ID\n1\n")
    write(exports / "2024-07-02" / "invoices.csv", "ID\n2\n")
    monkeypatch.setattr(sensors, "utc_today", lambda: date(2024, 7, 1))
    seen = tick(None)
    settled = tick(seen.cursor)
    assert run_keys(settled) == ["export-2024-07-01"]  # up to today's: the run leaves 07-02 alone
    waiting = tick(settled.cursor)
    assert run_keys(waiting) == []
    monkeypatch.setattr(sensors, "utc_today", lambda: date(2024, 7, 2))
    seen = tick(waiting.cursor)
    assert run_keys(tick(seen.cursor)) == ["export-2024-07-02"]


def test_only_folders_dated_after_today_say_so(exports, tick, monkeypatch):
    write(exports / "2024-07-02" / "invoices.csv", "ID\n2\n")
    monkeypatch.setattr(sensors, "utc_today", lambda: date(2024, 7, 1))
    result = tick(None)
    assert run_keys(result) == []
    assert "dated after today (2024-07-01, UTC): 2024-07-02; each is loaded once its day begins" in (
        result.skip_message or ""
    )
