"""`python -m data_platform.db wait` fails at once when the server is up and refuses the login or the
connection settings cannot be parsed, and gives up at its timeout while nothing answers (waiting while
the server is unreachable is also tested through init.sh in test_init_sh.py). A server with no connection
slot free for the login is waited for like one that starts: sessions end.

A wrong password, a missing role or database, or a bad setting cannot fix themselves: waiting the whole
DB_WAIT_SECONDS for them only hides the error.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid

import pytest
from conftest import libpq_env
from pg_auth import PROBE_PASSWORD, password_checked_login
from psycopg import sql

from data_platform import db

WAIT_SECONDS = "60"  # longer than any of these calls may take: run_wait fails a call that waited


@pytest.fixture(scope="module")
def login(admin_conninfo):
    with password_checked_login(admin_conninfo) as variables:
        yield variables


def run_wait(env: dict[str, str]) -> subprocess.CompletedProcess:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "data_platform.db", "wait", "--timeout", WAIT_SECONDS],
        env=env,
        capture_output=True,
        text=True,
        timeout=3 * int(WAIT_SECONDS),
    )
    # none of these calls may wait: one that retried until the timeout, then said the right thing, failed
    assert time.monotonic() - started < int(WAIT_SECONDS) / 2, result.stderr
    return result


def env_with(variables: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return {**env, **variables}


def test_the_right_password_is_ready(login):
    result = run_wait(env_with({**login, "PGPASSWORD": PROBE_PASSWORD}))
    assert result.returncode == 0, result.stderr
    assert "is ready" in result.stdout


def test_a_wrong_password_fails_at_once_without_showing_it(login):
    result = run_wait(env_with({**login, "PGPASSWORD": "not-the-password"}))
    assert result.returncode == 2
    target = f"{login['PGUSER']}@{login['PGHOST']}:{login['PGPORT']}/{login['PGDATABASE']}"
    assert f"cannot connect to {target}" in result.stderr
    assert "password authentication failed" in result.stderr
    assert "refused this login: waiting cannot help" in result.stderr
    assert "did not accept connections within" not in result.stderr
    assert "not-the-password" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("setting", "value", "server_says"),
    [
        ("PGDATABASE", "no_such_database", 'database "no_such_database" does not exist'),
        ("PGUSER", "no_such_role", 'role "no_such_role" does not exist'),
    ],
)
def test_a_missing_database_or_role_fails_at_once(admin_conninfo, setting, value, server_says):
    env = libpq_env(admin_conninfo)
    env[setting] = value
    result = run_wait(env)
    assert result.returncode == 2
    assert server_says in result.stderr
    assert "refused this login: waiting cannot help" in result.stderr
    assert "did not accept connections within" not in result.stderr


def test_connection_settings_that_cannot_be_parsed_fail_at_once(tmp_path):
    result = run_wait(env_with({"PGHOST": str(tmp_path), "PGSSLMODE": "bogus", "PGUSER": "x"}))
    assert result.returncode == 2
    assert "The connection settings are invalid: waiting cannot help." in result.stderr
    assert "did not accept connections within" not in result.stderr


def test_the_wait_for_an_unreachable_server_ends_at_its_timeout(tmp_path, monkeypatch):
    for name in ("PGPORT", "PGPASSWORD", "PGSERVICE", "PGSSLMODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PGHOST", str(tmp_path))  # a socket folder where no server listens
    monkeypatch.setenv("PGUSER", "nobody")
    started = time.monotonic()
    with pytest.raises(db.DatabaseUnavailable, match="did not accept connections within 2s"):
        db.wait_until_ready(2, interval_seconds=0.2)
    assert 2 <= time.monotonic() - started < 3.5


@pytest.fixture(params=["database", "role"])
def connection_limit(request, make_database):
    """Env vars of a login the server refuses for want of a connection slot (too many connections, SQLSTATE
    53300: a connection limit of 0 on the database or on the role), and a function that sets that limit.

    Filling the test server's max_connections (100, shared by the other tests) is no option; the limit
    makes the server answer the same way at once, and lifting it frees the slot as an ended session would.
    """
    database = make_database()

    def admin(statement: str, *args) -> None:
        with database.connect("admin", autocommit=True) as conn:
            conn.execute(sql.SQL(statement).format(*args))

    env = database.env("transformer")
    if request.param == "database":
        limited = ("alter database {} connection limit {}", sql.Identifier(database.name))
    else:  # a role of its own: roles are cluster-wide, and the server may be shared
        role = f"dp_slot_probe_{uuid.uuid4().hex[:8]}"
        admin("create role {} login password {}", sql.Identifier(role), role)
        admin("grant connect on database {} to {}", sql.Identifier(database.name), sql.Identifier(role))
        env = {**env, "PGUSER": role, "PGPASSWORD": role}
        limited = ("alter role {} connection limit {}", sql.Identifier(role))

    def set_limit(limit: int) -> None:
        admin(*limited, limit)

    set_limit(0)
    yield env, set_limit
    if request.param == "role":
        admin("revoke connect on database {} from {}", sql.Identifier(database.name), sql.Identifier(role))
        admin("drop role {}", sql.Identifier(role))


def test_a_server_with_no_connection_slot_free_is_waited_for_until_one_is(connection_limit, monkeypatch):
    env, set_limit = connection_limit
    for name, value in env.items():
        if name.startswith("PG"):
            monkeypatch.setenv(name, value)
    lift = threading.Timer(1.0, set_limit, args=(-1,))
    started = time.monotonic()
    lift.start()
    try:
        db.wait_until_ready(30, interval_seconds=0.2)
    finally:
        lift.cancel()
        lift.join()
    assert 1.0 <= time.monotonic() - started < 15


def test_a_server_still_full_at_the_timeout_says_so_without_blaming_the_settings(connection_limit):
    env, _ = connection_limit
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "data_platform.db", "wait", "--timeout", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert time.monotonic() - started >= 2, result.stderr
    assert "did not accept connections within 2s" in result.stderr
    assert "no connection slot free" in result.stderr
    assert "too many connections for" in result.stderr  # the server's own words
    assert "waiting cannot help" not in result.stderr
    assert "Check PGHOST" not in result.stderr
