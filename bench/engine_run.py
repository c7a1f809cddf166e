"""One engine's build as a measured process tree: wall time per step, peak memory per step, a deadline.

bench/procs.py times one process and samples its own RSS; an engine's build is a tree (init.sh -> the
pipeline -> the loader and dbt; build.py -> the raw builder and dbt, each with a JVM on Spark), and the
Postgres server does much of the work in processes that are not in it. So here the memory is the sum
of the proportional set size (PSS: each shared page divided among the processes sharing it) over every
process of the tree, and optionally over the server's processes, polled while the command runs; summed
RSS would count the JVM's or shared_buffers' shared pages once per process.

The command runs in its own process group: at its deadline the whole group is killed (and any
descendant that left it), and the run is reported as a timeout with the steps it had finished.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from procs import START_UP, copy_output, start_logged, step_name, step_seconds

SAMPLE_SECONDS = 0.2
ANSI_CODE = re.compile(r"\x1b\[[0-9;]*m")


def tree_pss(root: psutil.Process) -> int:
    """The PSS of `root` and all its descendants in bytes (processes that vanish count 0)."""
    return _sample(root, {})


def _sample(root: psutil.Process, cpu: dict[tuple[int, float], float]) -> int:
    """The tree's PSS; records each process's CPU seconds so far in `cpu` (by pid and start time)."""
    total = 0
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for process in processes:
        with contextlib.suppress(psutil.Error, OSError), process.oneshot():
            times = process.cpu_times()
            cpu[(process.pid, process.create_time())] = times.user + times.system
            total += process.memory_full_info().pss
    return total


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot, summed over its cores."""
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    # guest time is already counted in user time
    guest = getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    return sum(times) - idle - guest


class _TreeSampler(threading.Thread):
    """Polls the PSS of the command's tree (and of the server's) and keeps the peak of each per step."""

    def __init__(self, pid: int, server_pid: int | None):
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.server = _process(server_pid)
        self.step = START_UP
        self.peaks: dict[str, int] = {}
        self.server_peaks: dict[str, int] = {}
        self.stopped = threading.Event()
        # CPU seconds of every process seen in the tree (and the server's), as last sampled: a process's
        # last poll interval is missed, which is small beside builds of seconds to minutes
        self.cpu: dict[tuple[int, float], float] = {}
        self.server_cpu: dict[tuple[int, float], float] = {}
        # every descendant seen, as psutil processes: killing one checks that its pid was not reused
        self.descendants: dict[int, psutil.Process] = {}

    def run(self) -> None:
        while not self.stopped.is_set():
            step = self.step
            with contextlib.suppress(psutil.Error):
                self.descendants.update((child.pid, child) for child in self.root.children(recursive=True))
            self.peaks[step] = max(self.peaks.get(step, 0), _sample(self.root, self.cpu))
            if self.server is not None:
                server = _sample(self.server, self.server_cpu)
                self.server_peaks[step] = max(self.server_peaks.get(step, 0), server)
            self.stopped.wait(SAMPLE_SECONDS)


def _process(pid: int | None) -> psutil.Process | None:
    if pid is None:
        return None
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


@dataclass
class TreeRun:
    """What one engine's command cost, and how it ended."""

    status: str  # "ok", "failed" (non-zero exit) or "timeout"
    seconds: float
    returncode: int | None
    # (seconds since start, step line) for each `==> ` line, in order
    markers: list[tuple[float, str]] = field(default_factory=list)
    peak_pss_bytes: dict[str, int] = field(default_factory=dict)  # step name -> peak of the tree
    server_peak_pss_bytes: dict[str, int] = field(default_factory=dict)  # step name -> peak of the server
    server_idle_pss_bytes: int | None = None
    log: Path | None = None
    cpu_seconds: float = 0.0  # CPU of the tree's processes (sampled)
    server_cpu_seconds: float = 0.0  # CPU the server's processes spent meanwhile (sampled)
    machine_busy_cpu_seconds: float = 0.0  # CPU the whole machine spent busy meanwhile, every core

    def cpu_summary(self) -> dict[str, float]:
        """Cores in use on average while the build ran: the build's, and everything else's (the machine
        is shared: other work competes for the same cores)."""
        ours = self.cpu_seconds + self.server_cpu_seconds
        return {
            "cpu_seconds": round(self.cpu_seconds, 1),
            "server_cpu_seconds": round(self.server_cpu_seconds, 1),
            "machine_busy_cpu_seconds": round(self.machine_busy_cpu_seconds, 1),
            "build_cores_average": round(ours / self.seconds, 2) if self.seconds else 0.0,
            "other_work_cores_average": (
                round(max(0.0, self.machine_busy_cpu_seconds - ours) / self.seconds, 2)
                if self.seconds
                else 0.0
            ),
        }

    def step_seconds(self, end: float | None = None) -> dict[str, float]:
        """Each step's seconds (procs.step_seconds), up to `end`, default the run's end."""
        return step_seconds(self.markers, self.seconds if end is None else end)

    def tail(self, lines: int = 40) -> str:
        """The log's last lines, without dbt's colour codes and Spark's progress bars."""
        if self.log is None or not self.log.exists():
            return ""
        text = ANSI_CODE.sub("", self.log.read_text(errors="replace"))
        kept = [line for line in text.splitlines() if not line.lstrip("\r").startswith("[Stage ")]
        return "\n".join(kept[-lines:])


def run_tree(
    command: Sequence[str],
    *,
    env: dict[str, str],
    log: Path,
    cwd: Path,
    timeout: float | None,
    server_pid: int | None = None,
    on_step: Callable[[str], None] | None = None,
) -> TreeRun:
    """Run `command` to its end or its deadline, output to `log`, sampling its tree's memory per step."""
    log.parent.mkdir(parents=True, exist_ok=True)
    server = _process(server_pid)
    server_idle = tree_pss(server) if server is not None else None
    server_cpu_before: dict[tuple[int, float], float] = {}
    if server is not None:
        _sample(server, server_cpu_before)
    busy_before = machine_busy_seconds()
    markers: list[tuple[float, str]] = []
    timed_out = threading.Event()
    with log.open("w", encoding="utf-8") as out:
        started = time.perf_counter()
        # its own process group, killed whole at the deadline
        process = start_logged(command, cwd=cwd, env=env, out=out, start_new_session=True)
        sampler = _TreeSampler(process.pid, server_pid)
        sampler.start()

        def expire() -> None:
            timed_out.set()
            _kill_tree(process.pid, sampler.descendants)

        watchdog = threading.Timer(timeout, expire) if timeout else None
        if watchdog:
            watchdog.start()

        def note_step(text: str) -> None:
            sampler.step = step_name(text)
            if on_step:
                on_step(text)

        try:
            copy_output(process, out, started, markers, note_step)
            process.wait()
        finally:
            seconds = time.perf_counter() - started
            if watchdog:
                watchdog.cancel()
            sampler.stopped.set()
            sampler.join()
            busy = machine_busy_seconds() - busy_before
            process.stdout.close()
        if timed_out.is_set():
            out.write(f"\n[bench] killed after the {timeout:g} s timeout\n")
    status = "timeout" if timed_out.is_set() else ("ok" if process.returncode == 0 else "failed")
    return TreeRun(
        status=status,
        seconds=seconds,
        returncode=process.returncode,
        markers=markers,
        peak_pss_bytes=sampler.peaks,
        server_peak_pss_bytes=sampler.server_peaks,
        server_idle_pss_bytes=server_idle,
        log=log,
        cpu_seconds=sum(sampler.cpu.values()),
        # the server's processes that ran before the build only count for what they spent during it
        server_cpu_seconds=sum(
            seconds - server_cpu_before.get(key, 0.0) for key, seconds in sampler.server_cpu.items()
        ),
        machine_busy_cpu_seconds=busy,
    )


def _kill_tree(pid: int, seen: dict[int, psutil.Process]) -> None:
    """SIGKILL the command's process group, then any descendant seen running that left the group."""
    try:
        descendants = {child.pid: child for child in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        descendants = {}
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    for child in {**seen, **descendants}.values():
        with contextlib.suppress(psutil.Error):
            child.kill()
