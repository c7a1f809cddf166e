"""Running the measured commands: the connection each runs as, wall time, peak memory and a log.

Every command runs as a subprocess with its output in a log file, so a failure can show its tail
and a success stays quiet. Wall time is measured around the process only.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
DBT = str(Path(sys.executable).parent / "dbt")
RSS_POLL_SECONDS = 0.05
# the pipeline announces each step with a line starting with this
STEP_MARKER = "==> "
LOG_TAIL_LINES = 40
# libpq variable -> conninfo keyword, for the ones that say who connects where
_CONNINFO_KEYS = {"PGHOST": "host", "PGPORT": "port", "PGUSER": "user", "PGPASSWORD": "password"}


class StepFailed(Exception):
    """A benchmark step could not run (a command failed, a check did not hold)."""


@dataclass(frozen=True)
class Server:
    """A Postgres server, as the libpq variables of a superuser connection (PGDATABASE aside)."""

    admin: dict[str, str]
    passwords: dict[str, str]  # role -> password, for transformer and alerter
    maintenance_database: str = "postgres"  # where `create database` runs

    def env_vars(self, role: str, database: str) -> dict[str, str]:
        """The PG* variables that connect to `database` as `role` ('admin' = the superuser)."""
        variables = {**self.admin, "PGDATABASE": database}
        if role != "admin":
            variables.update(PGUSER=role, PGPASSWORD=self.passwords[role])
        return variables

    def env(self, role: str, database: str, **extra: str) -> dict[str, str]:
        """A subprocess environment: ours without PG* variables, plus those of `role`."""
        env = {name: value for name, value in os.environ.items() if not name.startswith("PG")}
        env.update(self.env_vars(role, database))
        env.update(extra)
        return env

    def conninfo(self, role: str, database: str) -> str:
        variables = self.env_vars(role, database)
        params = {key: variables[name] for name, key in _CONNINFO_KEYS.items() if variables.get(name)}
        return make_conninfo(dbname=database, **params)


@dataclass
class Timed:
    """What one command cost."""

    seconds: float
    # peak resident memory of the process, polled every RSS_POLL_SECONDS; None when not sampled
    peak_rss_bytes: int | None = None
    # (seconds since start, line) for each init.sh step line
    markers: list[tuple[float, str]] = field(default_factory=list)
    output: str = ""

    @property
    def peak_rss_mb(self) -> float | None:
        return None if self.peak_rss_bytes is None else self.peak_rss_bytes / 1024 / 1024


class _RssSampler(threading.Thread):
    """Polls one process's RSS until stopped and keeps the maximum.

    On Linux it also reads the kernel's high-water mark (VmHWM), so a peak between two polls still
    counts. (Not wait4's ru_maxrss: for a fresh child it includes the forking parent's memory.)
    """

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss, _high_water_mark(self.process.pid))
            except (psutil.Error, OSError):  # the process is gone (or a zombie)
                return
            self.stopped.wait(RSS_POLL_SECONDS)


def _high_water_mark(pid: int) -> int:
    """VmHWM of /proc/<pid>/status in bytes, 0 where there is no such file."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return 0
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def start_logged(command: Sequence[str], *, cwd: Path, env: dict[str, str], out, **popen) -> subprocess.Popen:
    """Write the command line to the log `out`, then start it with its output (stderr too) piped as text."""
    out.write(f"$ {' '.join(command)}\n")
    out.flush()
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        **popen,
    )


def copy_output(
    process: subprocess.Popen,
    out,
    started: float,
    markers: list[tuple[float, str]],
    on_step: Callable[[str], None] | None,
) -> None:
    """Copy the output to `out` as it comes, noting each step line's time since `started` in `markers`."""
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(STEP_MARKER):
            text = line[len(STEP_MARKER) :].strip()
            markers.append((time.perf_counter() - started, text))
            if on_step:
                on_step(text)
        out.write(line)


def run(
    command: Sequence[str],
    *,
    env: dict[str, str],
    log: Path,
    sample_rss: bool = False,
    cwd: Path = ROOT,
    on_step: Callable[[str], None] | None = None,
) -> Timed:
    """Run `command`, output to `log`; raise StepFailed (with the log's tail) unless it exits 0.

    `on_step` is called with each step line's text as soon as it is read, before the step's own output.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    markers: list[tuple[float, str]] = []
    with log.open("w", encoding="utf-8") as out:
        started = time.perf_counter()
        process = start_logged(command, cwd=cwd, env=env, out=out)
        sampler = _RssSampler(process.pid) if sample_rss else None
        if sampler:
            sampler.start()
        copy_output(process, out, started, markers, on_step)
        process.wait()
        seconds = time.perf_counter() - started
        process.stdout.close()
        if sampler:
            sampler.stopped.set()
            sampler.join()
    output = log.read_text(encoding="utf-8", errors="replace")
    if process.returncode != 0:
        tail = "\n".join(output.splitlines()[-LOG_TAIL_LINES:])
        raise StepFailed(
            f"command failed with exit code {process.returncode}: {' '.join(command)}\n"
            f"(full output in {log})\n{tail}"
        )
    return Timed(
        seconds=seconds,
        peak_rss_bytes=sampler.peak if sampler else None,
        markers=markers,
        output=output,
    )


def step_name(text: str) -> str:
    """'loading the exports in DIR' -> 'loading the exports'; 'dbt build: models ...' -> 'dbt build'."""
    return re.split(r":| in | from | \(", text, maxsplit=1)[0].strip()


START_UP = "start-up"


def step_seconds(markers: Sequence[tuple[float, str]], end: float) -> dict[str, float]:
    """Each step's seconds, from its line to the next one (the last: to `end`; lines after it are left
    out); the time before the first line (the interpreter starting) is `start-up`, so they sum to `end`.
    A step named twice gets both durations."""
    markers = [(at, text) for at, text in markers if at < end]
    times = [at for at, _ in markers] + [end]
    steps = {START_UP: round(times[0], 3)}
    for (at, text), following in zip(markers, times[1:], strict=True):
        name = step_name(text)
        steps[name] = round(steps.get(name, 0.0) + following - at, 3)
    return steps


def pipeline_command() -> list[str]:
    return ["bash", str(ROOT / "init.sh")]


def loader_command(csv_dir: Path) -> list[str]:
    return [PYTHON, "-m", "data_platform.loader", "--csv-dir", str(csv_dir)]


def dbt_command(*arguments: str) -> list[str]:
    """dbt from this environment, run from the repository root like init.sh does."""
    return [DBT, *arguments, "--project-dir", "dbt", "--profiles-dir", ".dbt"]


def psql_command(psql: str, *arguments: str) -> list[str]:
    return [psql, "--no-psqlrc", "-v", "ON_ERROR_STOP=1", *arguments]
