"""The benchmark's CSV files: generated once per size and reused, then laid out as CSV directories.

- the base export: invoices.csv + organizations.csv (the generator's single-file layout);
- the next day: a folder holding the base files (hard links) and `exports/<day>/invoices.csv`, the
  generator's next-day export (new and changed invoices only): what a user's CSV_DIR holds the day after
  (the pipeline and the next day run on a landing folder in the run's work folder, to which that export
  is added: the same paths on both days, as in daily operation);
- the full-snapshot next day: `exports/<day>/` holding every invoice (the base rows with the day's changes
  applied, plus the day's new ones) and organizations.csv, as a system that can only export everything
  would send it;
- the first 10% of the base invoices, for the loader's memory on a smaller file.

A folder's `dataset.json` marker is written last, after a successful generation, with the parameters and
the files' sizes: a folder whose marker matches is reused, anything else is generated again. Cached
files are never modified.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from procs import PYTHON, ROOT, Timed, run

REAL_INVOICES = 12_700_000  # the real export's size, every benchmark's default


def at_least_one(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark shares: which generated data, where it and the results go."""
    parser.add_argument("--invoices", type=at_least_one, default=REAL_INVOICES)
    parser.add_argument("--organizations", type=at_least_one, default=21_806)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data-dir", type=Path, default=ROOT / "bench" / "data", help="generated files")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")


MARKER = "dataset.json"
INVOICES, ORGANIZATIONS = "invoices.csv", "organizations.csv"
FILES = (INVOICES, ORGANIZATIONS)
END_DATE = "2024-06-28"
NEXT_DAY = (date.fromisoformat(END_DATE) + timedelta(days=1)).isoformat()
DAYS = 1096
BLOCK = 1 << 20


@dataclass(frozen=True)
class Dataset:
    """A folder and the files the marker lists (paths relative to the folder), with rows and bytes."""

    directory: Path
    marker: dict[str, Any]

    def rows(self, file_name: str) -> int:
        return int(self.marker["files"][file_name]["rows"])

    def bytes(self, file_name: str) -> int:
        return int(self.marker["files"][file_name]["bytes"])

    @property
    def total_rows(self) -> int:
        return sum(facts["rows"] for facts in self.marker["files"].values())

    @property
    def path(self) -> dict[str, Path]:
        return {name: self.directory / name for name in self.marker["files"]}


def count_rows(path: Path) -> int:
    """Data lines of a CSV file (header excluded), counted in blocks: never the whole file in memory."""
    lines, last = 0, b"\n"
    with path.open("rb") as file:
        while block := file.read(BLOCK):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n") - 1


def _describe(directory: Path, names: tuple[str, ...]) -> dict[str, dict[str, int]]:
    return {
        name: {"bytes": (directory / name).stat().st_size, "rows": count_rows(directory / name)}
        for name in names
    }


def _cached(directory: Path, parameters: dict[str, Any]) -> Dataset | None:
    """The dataset in `directory` if its marker matches `parameters` and its files are intact."""
    try:
        marker = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if marker.get("parameters") != parameters:
        return None
    for name, facts in marker.get("files", {}).items():
        path = directory / name
        if not path.is_file() or path.stat().st_size != facts.get("bytes"):
            return None
    return Dataset(directory, marker)


def _write_marker(
    directory: Path, parameters: dict[str, Any], names: tuple[str, ...], timed: Timed | None, rows: int
) -> Dataset:
    marker: dict[str, Any] = {"parameters": parameters, "files": _describe(directory, names)}
    if timed is not None:
        marker["generation"] = {
            "seconds": round(timed.seconds, 3),
            "rows": rows,
            "rows_per_second": round(rows / timed.seconds),
            "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    (directory / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return Dataset(directory, marker)


def _fresh(directory: Path) -> None:
    """An empty `directory` (a half-written earlier attempt is removed)."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)


def _link(source: Path, target: Path) -> None:
    """A hard link (the base files are large and never modified), or a copy across file systems."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def generator_arguments(invoices: int, organizations: int, seed: int) -> list[str]:
    return [
        *("--invoices", str(invoices), "--organizations", str(organizations), "--seed", str(seed)),
        *("--end-date", END_DATE, "--days", str(DAYS)),
    ]


def base_dataset(
    data_dir: Path, invoices: int, organizations: int, seed: int, logs: Path
) -> tuple[Dataset, bool]:
    """The generated base files for these parameters, and whether they were reused from the cache."""
    parameters = {
        "invoices": invoices,
        "organizations": organizations,
        "seed": seed,
        "end_date": END_DATE,
        "days": DAYS,
    }
    directory = data_dir / f"{invoices}_{organizations}_{seed}"
    cached = _cached(directory, parameters)
    if cached:
        return cached, True
    _fresh(directory)
    timed = run(
        [
            PYTHON,
            "-m",
            "data_platform.generator",
            "--out",
            str(directory),
            *generator_arguments(invoices, organizations, seed),
        ],
        env=dict(os.environ),
        log=logs / "generate.log",
    )
    return _write_marker(directory, parameters, FILES, timed, invoices), False


def next_day_dataset(base: Dataset, new: int, changed: int, logs: Path) -> Dataset:
    """A CSV directory: the base files (linked) and the generator's export for NEXT_DAY.

    The export holds `new` new invoices and `changed` older invoices whose status changed (the
    generator's scenario adds a few changes of its own on the first day).
    """
    parameters = {**base.marker["parameters"], "base_files": base.marker["files"]}
    parameters |= {"next_day": NEXT_DAY, "new_invoices": new, "changed_invoices": changed}
    directory = base.directory.with_name(f"{base.directory.name}_next{new}_{changed}")
    cached = _cached(directory, parameters)
    if cached:
        return cached
    _fresh(directory)
    p = base.marker["parameters"]
    timed = run(
        [
            *(PYTHON, "-m", "data_platform.generator", "--out", str(base.directory)),
            *generator_arguments(p["invoices"], p["organizations"], p["seed"]),
            *("--next-days", "1", "--new-invoices", str(new), "--changed-invoices", str(changed)),
            *("--exports-dir", str(directory / "exports")),
        ],
        env=dict(os.environ),
        log=logs / "generate-next-day.log",
    )
    for name in FILES:
        _link(base.directory / name, directory / name)
    day_file = f"exports/{NEXT_DAY}/{INVOICES}"
    return _write_marker(directory, parameters, (*FILES, day_file), timed, new + changed)


def snapshot_dataset(base: Dataset, next_day: Dataset) -> Dataset:
    """A CSV directory holding one dated export for NEXT_DAY with every invoice: the full snapshot.

    Its invoices are the base file's rows, each replaced by its next-day version when the day changed
    it, then the day's new invoices; its organizations.csv is the base one. Streamed: memory holds only
    the day's rows. (INVOICE_ID is the first column, a plain integer.)
    """
    parameters = {"base_files": base.marker["files"], "next_day_files": next_day.marker["files"]}
    directory = next_day.directory.with_name(next_day.directory.name.replace("_next", "_snapshot", 1))
    cached = _cached(directory, parameters)
    if cached:
        return cached
    _fresh(directory)
    export = directory / "exports" / NEXT_DAY
    export.mkdir(parents=True)
    with (next_day.directory / f"exports/{NEXT_DAY}/{INVOICES}").open("rb") as day:
        day.readline()
        day_rows = {line.split(b",", 1)[0]: line for line in day}
    with (base.directory / INVOICES).open("rb") as source, (export / INVOICES).open("wb") as target:
        target.write(source.readline())
        for line in source:
            target.write(day_rows.pop(line.split(b",", 1)[0], line))
        target.writelines(day_rows.values())  # the new invoices, in the export's order
    _link(base.directory / ORGANIZATIONS, export / ORGANIZATIONS)
    names = (f"exports/{NEXT_DAY}/{INVOICES}", f"exports/{NEXT_DAY}/{ORGANIZATIONS}")
    return _write_marker(directory, parameters, names, None, 0)


def landing_folder(base: Dataset, directory: Path) -> Dataset:
    """A CSV_DIR for the pipeline and the days after it, as csv_data/ in daily operation: the base files
    linked in, each next day's export folder added beside them (`add_export`). The loader then finds the
    base files by the same paths every run, so it skips them by their remembered checksums instead of
    reading them again, as it does every day in production."""
    _fresh(directory)
    for name in FILES:
        _link(base.directory / name, directory / name)
    return Dataset(directory, {"files": base.marker["files"]})


def add_export(landing: Dataset, day: Dataset) -> None:
    """Link `day`'s dated export folders into the landing folder (a day arriving)."""
    for name in day.marker["files"]:
        if name.startswith("exports/"):
            _link(day.directory / name, landing.directory / name)


def head_dataset(base: Dataset, fraction: float, directory: Path) -> Dataset:
    """`directory` with the header and the first `fraction` of base's invoices, streamed line by line.

    organizations.csv is linked (or copied) unchanged.
    """
    directory.mkdir(parents=True, exist_ok=True)
    keep = max(1, int(base.rows(INVOICES) * fraction))
    with (base.directory / INVOICES).open("rb") as source, (directory / INVOICES).open("wb") as target:
        for _ in range(keep + 1):  # + the header
            target.write(source.readline())
    _link(base.directory / ORGANIZATIONS, directory / ORGANIZATIONS)
    return Dataset(directory, {"files": _describe(directory, FILES)})
