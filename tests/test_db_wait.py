"""`python -m data_platform.db wait` fails at once when the server is up and refuses the login or the
connection settings cannot be parsed, and gives up at its timeout while nothing answers (waiting while
the server is unreachable is also tested through init.sh in test_init_sh.py).

A wrong password, a missing role or database, or a bad setting cannot fix themselves: waiting the whole
DB_WAIT_SECONDS for them only hides the error.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import libpq_env
from pg_auth import PROBE_PASSWORD, password_checked_login

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
