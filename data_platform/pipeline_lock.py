"""One pipeline run at a time: the advisory lock a run holds for its whole length."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import socket
from collections.abc import Iterator

import psycopg

from data_platform.db import (
    LOADER_LOCK_KEY,
    PIPELINE_LOCK_SESSION,
    LockHolder,
    advisory_lock_holder,
    connect,
    describe_target,
    release_advisory_lock,
    take_advisory_lock,
)
from data_platform.load_errors import EXIT_BUSY
from data_platform.pipeline_errors import PipelineError
from data_platform.steps import say

LOCK_KEY = "data_platform.pipeline"
TAKEN_AT_FORMAT = "%Y%m%dT%H%M%SZ"


def session_name(taken_at: dt.datetime) -> str:
    """The lock session's application_name once it holds the lock: since when, and which process on which
    host (a Dagster step's log names its process), so that a run refused the lock can say who holds it.
    Postgres keeps 63 bytes: a long host name is cut, never the rest."""
    utc = taken_at.astimezone(dt.UTC)  # the server gives it in the session's time zone
    return f"{PIPELINE_LOCK_SESSION} {utc:{TAKEN_AT_FORMAT}} {os.getpid()}@{socket.gethostname()}"[:63]


def held_by_a_pipeline_run(holder: LockHolder | None) -> bool:
    """Whether `holder` is a pipeline run's lock session (it may hold the loader's lock too)."""
    return holder is not None and (
        holder.application_name == PIPELINE_LOCK_SESSION
        or holder.application_name.startswith(PIPELINE_LOCK_SESSION + " ")
    )


def who_holds(holder: LockHolder | None) -> str:
    """The pipeline run holding a lock, as its session names it, to follow what says it is held: ", process
    123 on host abc, since 2024-07-01 10:02:11 UTC (5 min)"; "" for a session not named so (a run of an
    earlier release, or one that has just taken the lock)."""
    found = holder and re.fullmatch(
        rf"{re.escape(PIPELINE_LOCK_SESSION)} (\S+) (\d+)@(.*)", holder.application_name, flags=re.S
    )
    if not found:
        return ""
    try:
        taken_at = dt.datetime.strptime(found[1], TAKEN_AT_FORMAT).replace(tzinfo=dt.UTC)
    except ValueError:
        return ""
    # never below 0: the database server's clock may be ahead of this one
    minutes = max(0, (dt.datetime.now(dt.UTC) - taken_at).total_seconds() // 60)
    return (
        f", process {found[2]} on host {found[3]}, since {taken_at:%Y-%m-%d %H:%M:%S} UTC ({minutes:.0f} min)"
    )


class PipelineLock:
    """A session advisory lock held for the run; a second run waits up to `timeout` seconds.

    The lock lives as long as its session, which sits idle for the whole run: nothing may end it
    unnoticed. The session has no idle_session_timeout (db.connect) and keeps its TCP connection alive (a
    NAT or proxy drops a silent one), and `check` tells a run whose session ended anyway
    (pg_terminate_backend, a dropped connection) before it starts or records a build, when another run may
    be building beside it.
    """

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.conn: psycopg.Connection | None = None

    def __enter__(self) -> PipelineLock:
        self.conn = connect(
            autocommit=True,
            application_name=PIPELINE_LOCK_SESSION,
            keepalives=1,
            keepalives_idle=60,
            keepalives_interval=10,
            keepalives_count=6,
        )

        def say_waiting() -> None:
            who = who_holds(advisory_lock_holder(self.conn, LOCK_KEY))
            say(f"another pipeline run is in progress{who}: waiting up to {self.timeout:g}s")

        if not take_advisory_lock(self.conn, LOCK_KEY, self.timeout, say_waiting):
            who = who_holds(advisory_lock_holder(self.conn, LOCK_KEY))
            self.conn.close()
            raise PipelineError(
                f"another pipeline run holds the lock on {describe_target()}{who} "
                f"(waited {self.timeout:g}s; PIPELINE_LOCK_TIMEOUT sets how long). "
                "Let it finish, then run again.",
                EXIT_BUSY,
            )
        taken_at = self.conn.execute("select now()").fetchone()[0]
        self.conn.execute("select set_config('application_name', %s, false)", [session_name(taken_at)])
        return self

    def __exit__(self, *exc_info) -> None:
        if self.conn is not None:
            self.conn.close()  # ends the session, which releases the lock

    @contextlib.contextmanager
    def loads_held(self) -> Iterator[None]:
        """Hold the loader's lock too, from the plan to the build's record: an export a loader run by hand
        committed during the build would reach some of its models and tests and not others."""

        def say_waiting() -> None:
            say(f"a loader run by hand is in progress: waiting up to {self.timeout:g}s")

        if not take_advisory_lock(self.conn, LOADER_LOCK_KEY, self.timeout, say_waiting):
            raise PipelineError(
                f"a loader run by hand still holds the loader's lock (waited {self.timeout:g}s; "
                "PIPELINE_LOCK_TIMEOUT sets how long): nothing was built; run again when it has finished",
                EXIT_BUSY,
            )
        try:
            yield
        finally:
            with contextlib.suppress(psycopg.Error):  # a session that ended released it
                release_advisory_lock(self.conn, LOADER_LOCK_KEY)

    def check(self) -> None:
        """PipelineError when this run no longer holds the lock: its session ended."""
        try:
            holder = advisory_lock_holder(self.conn, LOCK_KEY) if self.conn is not None else None
            held = holder is not None and holder.backend == self.conn.info.backend_pid
        except psycopg.Error:
            held = False
        if not held:
            raise PipelineError(
                "this run lost the pipeline lock: its database session ended (terminated, or its connection "
                "dropped), so another run may have started beside it"
            )

    @staticmethod
    def held(conn: psycopg.Connection) -> bool:
        """Whether some session holds the lock (init.sh's run, or a Dagster step), seen from `conn`."""
        return advisory_lock_holder(conn, LOCK_KEY) is not None
