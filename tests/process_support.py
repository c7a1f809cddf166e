"""Helpers for tests of child processes: a stand-in interpreter, and a child that must die with its parent."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

# a stand-in for the Python interpreter that the kernel kills at once, as the OOM killer would
KILLED_AT_START = "kill -KILL $$"


def fake_python(directory: Path, script: str) -> str:
    """An executable shell script to put in place of sys.executable: its steps run `script` instead."""
    path = directory / "python"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return str(path)


def assert_dies_with(parent: subprocess.Popen, pid_file: Path, child: str) -> None:
    """Wait for `child` to write its pid to `pid_file`, kill `parent` outright, and fail unless the child
    dies with it."""
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert time.monotonic() < deadline and parent.poll() is None, f"{child} did not start"
        time.sleep(0.05)
    started = psutil.Process(int(pid_file.read_text()))
    parent.kill()
    parent.wait()
    try:
        started.wait(timeout=10)
    except psutil.TimeoutExpired:
        started.kill()
        pytest.fail(f"{child} outlived the process that was killed")


def kill_group(started: subprocess.Popen) -> None:
    """Kill whatever is left of a process started in a session of its own."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(started.pid, signal.SIGKILL)
    started.wait()


def process_group_alive(group: int) -> bool:
    """Whether a process of `group` still runs (a zombie does not: it waits for whoever reaps it)."""
    return any(
        process.info["status"] != psutil.STATUS_ZOMBIE
        for process in psutil.process_iter(["status"])
        if _group_of(process.pid) == group
    )


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def read_log(log: Path) -> str:
    """A log another process is writing (its last character may be cut)."""
    return log.read_text(errors="replace")


@contextlib.contextmanager
def python_waiting(script: str, ready: str):
    """A Python child that runs `script` until it prints the line `ready`, then waits until it is let go
    (its stdin closed) when the block ends: a process whose past (CPU, memory) a test measures."""
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline() == f"{ready}\n"
        yield child
    finally:
        child.stdin.close()
        child.wait(timeout=30)
