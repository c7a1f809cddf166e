"""One place for database connections.

Every component connects through libpq's standard variables (PGHOST, PGPORT, PGUSER,
PGPASSWORD, PGDATABASE), so the loader, dbt, the alert script and the tests all agree
on the target without a config file of their own.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import pq
from psycopg.conninfo import make_conninfo


class DatabaseUnavailable(RuntimeError):
    """The database named by the PG* variables could not be reached."""


def _os_user() -> str:
    """libpq's default user: the OS user name (a bare container may have none)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "?"


def describe_target() -> str:
    """The connection target as user@host:port/database, never with the password."""
    host = os.environ.get("PGHOST", "localhost")
    port = os.environ.get("PGPORT", "5432")
    user = os.environ.get("PGUSER") or _os_user()
    database = os.environ.get("PGDATABASE", user)
    return f"{user}@{host}:{port}/{database}"


# A client killed outright (the OOM killer, kill -9, a Dagster step ended by Terminate, a container gone)
# cannot cancel its statement, and the server notices only when it next writes to the client: the
# statement ran on, holding its locks, beside the next run. The loader's and dbt's sessions have the
# server check every 2 s while a statement runs, and end it once the client is gone (PostgreSQL 14+, on
# Linux, macOS and the BSDs). `-c client_connection_check_interval=0` in PGOPTIONS turns it off (a Windows
# server, a connection pooler that refuses the option).
DEAD_CLIENT_CHECK = "client_connection_check_interval"
DEAD_CLIENT_CHECK_INTERVAL = "2s"


def with_dead_client_check(options: str | None) -> str:
    """PGOPTIONS for a client the pipeline starts (dbt): the check, then `options` as given, whose own
    value of it wins (the server takes the last -c; a trailing escaped space stays the user's)."""
    check = f"-c {DEAD_CLIENT_CHECK}={DEAD_CLIENT_CHECK_INTERVAL}"
    return f"{check} {options}" if options else check


def check_for_dead_client(conn: psycopg.Connection) -> bool:
    """Turn the check on for the session of `conn` (in autocommit mode), unless a value was set for it
    (PGOPTIONS, the role, the database) or the server cannot check (Windows: the session goes on without
    it); whether it did, so that the caller can `reset` it."""
    try:
        turned_on = conn.execute(
            "select set_config(name, %s, false) from pg_settings where name = %s and source = 'default'",
            (DEAD_CLIENT_CHECK_INTERVAL, DEAD_CLIENT_CHECK),
        ).fetchone()
    except psycopg.errors.InvalidParameterValue:
        return False
    return turned_on is not None


# What every session of the pipeline and the alerts takes, whatever a role or database sets (ALTER ROLE ...
# SET, postgresql.conf):
# - DateStyle ISO: psycopg reads a timestamp with time zone in no other style;
# - no idle_session_timeout: a session holds its advisory lock between statements (the pipeline's for the
#   whole run, the alerts' while a webhook answers): ended, the lock would go with it;
# - synchronous_commit `local` where it is off: an alert is recorded as possibly gone before its request
#   leaves; that commit lost to a server crash would let the alert go again, with no trace of the first.
#   Not `on`: with a synchronous standby down, every commit would wait for it.
# Read from pg_settings: a server without one of them (idle_session_timeout is PostgreSQL 14's) sets the rest.
SESSION_SETTINGS = """
select pg_catalog.set_config(name, case name
    when 'DateStyle' then 'ISO, YMD'
    when 'idle_session_timeout' then '0'
    when 'synchronous_commit' then case setting when 'off' then 'local' else setting end
end, false)
from pg_catalog.pg_settings
where name in ('DateStyle', 'idle_session_timeout', 'synchronous_commit')
"""


def connect(**kwargs) -> psycopg.Connection:
    """Open a psycopg connection from the PG* environment variables, with SESSION_SETTINGS made (and
    committed: a setting made in a transaction rolled back would be undone with it)."""
    try:
        conn = psycopg.connect("", **kwargs)
    except psycopg.OperationalError as error:
        said = str(error).strip()
        advice = SERVER_FAILED_ADVICE if server_failed(said) else CHECK_SETTINGS
        raise DatabaseUnavailable(f"cannot connect to {describe_target()}: {said}\n{advice}") from error
    try:
        conn.execute(SESSION_SETTINGS)
        if not conn.autocommit:
            conn.commit()
    except psycopg.OperationalError as error:  # the server went away just after the login
        conn.close()
        raise DatabaseUnavailable(
            f"lost the connection to {describe_target()}: {str(error).strip()}"
        ) from error
    return conn


class DatabaseRefused(DatabaseUnavailable):
    """The server answers but refuses the connection (password, role, database, pg_hba): never retried."""


# What the server says when it has no connection slot for a login (SQLSTATE 53300, too_many_connections):
# max_connections is taken, the rest are reserved (for superusers, or pg_use_reserved_connections), or the
# role's or the database's CONNECTION LIMIT is reached. Sessions end, so it may pass: it is waited for like
# a server that starts. libpq gives no SQLSTATE for a failed login, only its text: a server whose
# lc_messages is not English is taken at its word, as refusing the login.
NO_FREE_SLOT = (
    "too many clients already",
    "remaining connection slots are reserved",
    "too many connections for role",
    "too many connections for database",
)


# What a server says when a login fails on its own side, not on the settings: its disk full (after a crash,
# "could not write init file"), its memory or processes exhausted. English only, as NO_FREE_SLOT.
SERVER_FAILED = ("could not write", "No space left on device", "out of memory", "could not fork")
CHECK_SETTINGS = "Check PGHOST, PGPORT, PGUSER, PGPASSWORD and PGDATABASE."
SERVER_FAILED_ADVICE = (
    "The server failed on its own side, not on these settings: check the free space on its data disk (a "
    "full disk fails every login after a crash) and its memory, and its log; then run again."
)


def server_failed(said: str) -> bool:
    """Whether a failed login failed on the server's side (SERVER_FAILED), from what libpq said."""
    return any(words in said for words in SERVER_FAILED)


def no_free_slot(error: Exception) -> bool:
    """Whether a failed login was refused for want of a connection slot (NO_FREE_SLOT)."""
    return any(words in str(error) for words in NO_FREE_SLOT)


def ping(connect_timeout: int) -> pq.Ping:
    """The server's state as pg_isready sees it (libpq's PQping), without logging in.

    OK once the server answers a login attempt with anything but "not now", so a wrong password or a
    missing database still counts as up, and so does a server with no connection slot free; REJECT while
    it starts, stops or recovers; NO_RESPONSE while nothing listens; NO_ATTEMPT when the connection
    settings cannot be parsed.
    """
    return pq.Ping(pq.PGconn.ping(make_conninfo("", connect_timeout=connect_timeout).encode()))


def wait_until_ready(timeout_seconds: float, interval_seconds: float = 1.0) -> None:
    """Block until the database accepts connections; raise DatabaseUnavailable after the timeout.

    Waits while the server is unreachable, not ready yet, or has no connection slot free for the login
    (NO_FREE_SLOT). A server that is up and refuses the login otherwise (wrong password, missing role or
    database) raises DatabaseRefused at once: waiting cannot fix it.
    """
    deadline = time.monotonic() + timeout_seconds
    connect_timeout = max(1, int(interval_seconds * 3))
    while True:
        try:
            with connect(connect_timeout=connect_timeout) as conn:
                conn.execute("select 1")
            return
        except DatabaseUnavailable as error:
            full = no_free_slot(error)
            # ask the server itself: the login may also have failed because it went away meanwhile
            status = None if full else ping(connect_timeout)
            if status == pq.Ping.OK and server_failed(str(error.__cause__ or error)):
                raise DatabaseRefused(str(error)) from error
            if status in (pq.Ping.OK, pq.Ping.NO_ATTEMPT):
                reason = "The server is up and refused this login"
                if status == pq.Ping.NO_ATTEMPT:
                    reason = "The connection settings are invalid"
                raise DatabaseRefused(f"{error}\n{reason}: waiting cannot help.") from error
            if time.monotonic() >= deadline:
                if full:
                    # the server's words without connect()'s advice to check the settings: they are right
                    said = str(error.__cause__ or error).strip()
                    raise DatabaseUnavailable(
                        f"the database did not accept connections within {timeout_seconds:g}s: the server "
                        "had no connection slot free for this login (its max_connections taken by other "
                        "sessions, or the role's or the database's connection limit reached). Run again "
                        "once other sessions end, or raise the limit.\n"
                        f"cannot connect to {describe_target()}: {said}"
                    ) from error
                raise DatabaseUnavailable(
                    f"the database did not accept connections within {timeout_seconds:g}s.\n{error}"
                ) from error
            time.sleep(interval_seconds)


# Serialises loader runs (held for the whole run, on the loader's session; loader.py). A pipeline build holds
# it too, from its plan to its record (pipeline.PipelineLock.loads_held): no load changes its input under it.
LOADER_LOCK_KEY = "data_platform.loader"
# the application_name of the session that holds a pipeline run's lock (pipeline.PipelineLock); a loader run
# by hand refused the loader's lock tells from it that a pipeline build holds that lock
PIPELINE_LOCK_SESSION = "data_platform pipeline lock"


def take_advisory_lock(
    conn: psycopg.Connection, key: str, timeout: float, on_wait: Callable[[], None]
) -> bool:
    """Take the session advisory lock on hashtext(key), trying each second for up to `timeout` seconds;
    `on_wait` is called once, when the first try finds another session holding it. False: still held."""
    deadline = time.monotonic() + timeout
    waited = False
    while not conn.execute("select pg_try_advisory_lock(hashtext(%s))", (key,)).fetchone()[0]:
        if time.monotonic() >= deadline:
            return False
        if not waited:
            on_wait()
            waited = True
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    return True


def release_advisory_lock(conn: psycopg.Connection, key: str) -> None:
    """Release the session advisory lock take_advisory_lock took on hashtext(key)."""
    conn.execute("select pg_advisory_unlock(hashtext(%s))", (key,))


@dataclass(frozen=True)
class LockHolder:
    """The session holding an advisory lock, as pg_stat_activity shows it."""

    backend: int
    application_name: str
    state: str | None  # None: another role's session, whose state only superusers see
    seconds: float  # since its statement started


def advisory_lock_holder(conn: psycopg.Connection, key: str) -> LockHolder | None:
    """The session holding the session advisory lock on hashtext(key) in this database, if any."""
    # pg_locks shows a lock on a bigint key (hashtext's int4, widened) as classid (its high 32 bits), objid
    # (its low 32 bits) and objsubid 1
    row = conn.execute(
        """
        select a.pid, coalesce(a.application_name, ''), a.state,
            coalesce(extract(epoch from now() - a.query_start), 0)::float8
        from pg_locks l join pg_stat_activity a on a.pid = l.pid
        where l.locktype = 'advisory' and l.granted and l.objsubid = 1
          and l.database = (select oid from pg_database where datname = current_database())
          and (l.classid::bigint << 32 | l.objid::bigint) = hashtext(%s)::bigint
        """,
        [key],
    ).fetchone()
    return LockHolder(*row) if row else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_platform.db", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    wait = commands.add_parser("wait", help="wait until the database accepts connections")
    wait.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default 60)")
    args = parser.parse_args(argv)

    try:
        wait_until_ready(args.timeout)
    except DatabaseUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"database {describe_target()} is ready")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
