"""One loader at a time: the advisory lock a loader run holds while it loads, and why a run that cannot
take it was refused (another loader, a pipeline build reading the loaded exports, or a loader process
that has ended while its session still rolls back)."""

from __future__ import annotations

import os
import re
import socket
import sys

import psycopg

from data_platform.db import (
    LOADER_LOCK_KEY,
    LockHolder,
    advisory_lock_holder,
    release_advisory_lock,
    take_advisory_lock,
)
from data_platform.load_errors import LoaderBusy
from data_platform.pipeline_lock import held_by_a_pipeline_run, who_holds
from data_platform.steps import say


def session_name(pid: int) -> str:
    """The application_name of a loader session holding the lock: the next run, refused the lock, can tell
    whether the process holding it still exists (Postgres truncates it to 63 bytes)."""
    return f"{LOADER_LOCK_KEY} {pid}@{socket.gethostname()}"[:63]


def take_loader_lock(conn: psycopg.Connection, wait: float) -> None:
    def say_waiting() -> None:
        holder = advisory_lock_holder(conn, LOADER_LOCK_KEY)
        who = (
            f"a pipeline run is building from the loaded exports{who_holds(holder)}"
            if held_by_a_pipeline_run(holder)
            else "another loader run is in progress"
        )
        say(f"{who}: waiting up to {wait:g}s", sys.stderr)

    if not take_advisory_lock(conn, LOADER_LOCK_KEY, wait, say_waiting):
        holder = advisory_lock_holder(conn, LOADER_LOCK_KEY)
        raise LoaderBusy(
            (holder and (_orphaned(holder) or _building(holder, wait)))
            or f"another loader run is in progress on this database (waited {wait:g}s): nothing was "
            "loaded; run again when it has finished"
        )


def release_loader_lock(conn: psycopg.Connection) -> None:
    release_advisory_lock(conn, LOADER_LOCK_KEY)


def _orphaned(holder: LockHolder) -> str | None:
    """Why the lock is held when its loader process has ended (kill -9, the OOM killer) while its session
    still runs a statement: for the seconds before the server's check of a dead client ends it, or until it
    ends when that check is off. None when the holder is alive, elsewhere (another host or container) or
    unknown."""
    name = holder.application_name
    found = re.match(rf"{re.escape(LOADER_LOCK_KEY)} (\d+)@", name)
    if not found or holder.state != "active" or name != session_name(int(found[1])):  # not this host's
        return None
    pid = int(found[1])
    try:
        os.kill(pid, 0)
        return None  # alive (or its number reused: then the usual message)
    except ProcessLookupError:
        pass
    except PermissionError:
        return None  # alive, another user's
    return (
        f"the loader run holding the lock (process {pid}) has ended, but its database session (backend "
        f"{holder.backend}) is still running its statement, started {holder.seconds:.0f}s ago, and rolls its "
        "export back when that ends (tens of seconds on a large export): nothing was loaded; run again in a "
        "moment, or with --wait SECONDS"
    )


def _building(holder: LockHolder, wait: float) -> str | None:
    """Why the lock is held when a pipeline build holds it, else None."""
    if not held_by_a_pipeline_run(holder):  # PipelineLock.loads_held
        return None
    return (
        f"a pipeline run is building from the loaded exports{who_holds(holder)} (waited {wait:g}s): a load "
        "now would change its input under it. Nothing was loaded; run again when it has finished, or with "
        "--wait SECONDS"
    )
