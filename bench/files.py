"""The benchmark's CSV files: generated once per size and reused, plus an appended day and a 10% head.

A folder's `dataset.json` marker is written last, after a successful generation, with the parameters
and the files' sizes: a folder whose marker matches is reused, anything else is generated again.
The cached files are never modified: the appended day goes into a copy in a sibling folder.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from procs import PYTHON, Timed, run

MARKER = "dataset.json"
FILES = ("invoices.csv", "organizations.csv")
END_DATE = "2024-06-28"
DAYS = 1096
BLOCK = 1 << 20


@dataclass(frozen=True)
class Dataset:
    directory: Path
    marker: dict[str, Any]

    def rows(self, file_name: str) -> int:
        return int(self.marker["files"][file_name]["rows"])

    @property
    def total_rows(self) -> int:
        return sum(self.rows(name) for name in FILES)

    @property
    def path(self) -> dict[str, Path]:
        return {name: self.directory / name for name in FILES}


def count_rows(path: Path) -> int:
    """Data lines of a CSV file (header excluded), counted in blocks: never the whole file in memory."""
    lines, last = 0, b"\n"
    with path.open("rb") as file:
        while block := file.read(BLOCK):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n") - 1


def _describe(directory: Path) -> dict[str, dict[str, int]]:
    return {
        name: {"bytes": (directory / name).stat().st_size, "rows": count_rows(directory / name)}
        for name in FILES
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


def _write_marker(directory: Path, parameters: dict[str, Any], timed: Timed, rows: int) -> Dataset:
    marker = {
        "parameters": parameters,
        "files": _describe(directory),
        "generation": {
            "seconds": round(timed.seconds, 3),
            "rows": rows,
            "rows_per_second": round(rows / timed.seconds),
            "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    }
    (directory / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return Dataset(directory, marker)


def generator_arguments(invoices: int, organizations: int, seed: int) -> list[str]:
    return [
        *("--invoices", str(invoices), "--organizations", str(organizations), "--seed", str(seed)),
        *("--end-date", END_DATE, "--days", str(DAYS)),
    ]


def base_dataset(
    data_dir: Path, invoices: int, organizations: int, seed: int, logs: Path
) -> tuple[Dataset, bool]:
    """The generated files for these parameters, and whether they were reused from the cache."""
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
    (directory / MARKER).unlink(missing_ok=True)
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
    return _write_marker(directory, parameters, timed, invoices), False


def appended_dataset(base: Dataset, append_invoices: int, logs: Path) -> Dataset:
    """A copy of `base` with one more day of `append_invoices` invoices (the day after END_DATE)."""
    parameters = {
        **base.marker["parameters"],
        "append_day": 1,
        "append_invoices": append_invoices,
        "base_files": base.marker["files"],
    }
    directory = base.directory.with_name(f"{base.directory.name}_append{append_invoices}")
    cached = _cached(directory, parameters)
    if cached:
        return cached
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).unlink(missing_ok=True)
    for name in FILES:  # real copies: appending must not touch the cached base file
        shutil.copyfile(base.directory / name, directory / name)
    p = base.marker["parameters"]
    timed = run(
        [
            PYTHON,
            "-m",
            "data_platform.generator",
            "--out",
            str(directory),
            *generator_arguments(append_invoices, p["organizations"], p["seed"]),
            "--append-day",
            "1",
        ],
        env=dict(os.environ),
        log=logs / "generate-append.log",
    )
    return _write_marker(directory, parameters, timed, append_invoices)


def head_dataset(base: Dataset, fraction: float, directory: Path) -> Dataset:
    """`directory` with the header and the first `fraction` of base's invoices, streamed line by line.

    organizations.csv is linked (or copied) unchanged.
    """
    directory.mkdir(parents=True, exist_ok=True)
    keep = max(1, int(base.rows("invoices.csv") * fraction))
    with (
        (base.directory / "invoices.csv").open("rb") as source,
        (directory / "invoices.csv").open("wb") as target,
    ):
        for _ in range(keep + 1):  # + the header
            target.write(source.readline())
    organizations = directory / "organizations.csv"
    organizations.unlink(missing_ok=True)
    try:
        os.link(base.directory / "organizations.csv", organizations)
    except OSError:
        shutil.copyfile(base.directory / "organizations.csv", organizations)
    return Dataset(directory, {"files": _describe(directory)})
