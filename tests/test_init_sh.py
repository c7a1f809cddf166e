"""init.sh's own behaviour, apart from the pipeline steps: secrets, waiting for the database, bad switches."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT
from pg_auth import PROBE_PASSWORD, password_checked_login

from data_platform.pipeline_settings import Settings


def run_init_sh(tmp_path: Path, cwd: Path | None = None, **env_vars: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and not k.endswith("_FILE")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # by default a socket directory where no server listens
    env.update(PGHOST=str(tmp_path), PGUSER="transformer", PGDATABASE="warehouse")
    env.update(env_vars)
    return subprocess.run(
        ["bash", str(PROJECT_ROOT / "init.sh")], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_gives_up_waiting_for_the_database_with_a_clear_message(tmp_path):
    started = time.monotonic()
    result = run_init_sh(tmp_path, DB_WAIT_SECONDS="3")
    elapsed = time.monotonic() - started
    assert result.returncode == 2
    assert "did not accept connections within 3s" in result.stderr
    assert f"transformer@{tmp_path}:5432/warehouse" in result.stderr
    assert "waiting cannot help" not in result.stderr
    assert 3 <= elapsed < 60
    assert "loading raw CSVs" not in result.stdout


def test_rejects_a_switch_that_is_not_a_boolean(tmp_path):
    result = run_init_sh(tmp_path, SERVE_DOCS="maybe", DB_WAIT_SECONDS="1")
    assert result.returncode == 2
    assert "SERVE_DOCS must be true or false, got 'maybe'" in result.stderr


def test_a_blank_setting_is_unset():
    names = ("FULL_REFRESH", "RUN_ALERTS", "SERVE_DOCS", "ALERTER_USER", "DB_WAIT_SECONDS", "DBT_THREADS")
    blank = Settings.from_environment(dict.fromkeys(names, " "))
    assert blank == Settings.from_environment({})


def test_a_switch_is_read_whatever_its_case_and_spaces():
    # compose files and shells write True, YES, Off...
    settings = Settings.from_environment({"FULL_REFRESH": " TRUE ", "RUN_ALERTS": "Off", "SERVE_DOCS": "Yes"})
    assert (settings.full_refresh, settings.run_alerts, settings.serve_docs) == (True, False, True)


def test_a_wait_of_0_seconds_is_taken_as_0_not_as_unset():
    settings = Settings.from_environment({"DB_WAIT_SECONDS": "0", "PIPELINE_LOCK_TIMEOUT": "0"})
    assert (settings.db_wait_seconds, settings.lock_timeout_seconds) == (0, 0)


@pytest.mark.parametrize("value", ["0", "abc", "-1", "2.5"])
def test_rejects_a_dbt_thread_count_that_is_not_one(tmp_path, value):
    result = run_init_sh(tmp_path, DBT_THREADS=value, DB_WAIT_SECONDS="1")
    assert result.returncode == 2
    assert f"DBT_THREADS must be a whole number from 1, got {value!r}" in result.stderr
    assert "waiting for the database" not in result.stdout


@pytest.mark.parametrize(
    ("name", "value"),
    [("DB_WAIT_SECONDS", "nan"), ("DB_WAIT_SECONDS", "inf"), ("PIPELINE_LOCK_TIMEOUT", "nan")],
)
def test_rejects_a_wait_that_would_never_end(tmp_path, name, value):
    result = run_init_sh(tmp_path, **{"DB_WAIT_SECONDS": "1", name: value})
    assert result.returncode == 2
    assert f"{name} must be a finite number of seconds, got {value!r}" in result.stderr
    assert "waiting for the database" not in result.stdout


@pytest.fixture
def taken_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


def test_a_docs_port_in_use_stops_the_run_before_it_starts(tmp_path, taken_port):
    result = run_init_sh(
        tmp_path, SERVE_DOCS="true", DOCS_HOST="127.0.0.1", DOCS_PORT=str(taken_port), DB_WAIT_SECONDS="1"
    )
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"pipeline: the docs cannot be served on DOCS_HOST=127.0.0.1 DOCS_PORT={taken_port}: "
    ), result.stderr
    assert "waiting for the database" not in result.stdout


@pytest.mark.parametrize("value", ["http", "0", "65536", "-1"])
def test_rejects_a_docs_port_that_is_not_one(tmp_path, value):
    result = run_init_sh(tmp_path, SERVE_DOCS="true", DOCS_PORT=value, DB_WAIT_SECONDS="1")
    assert result.returncode == 2
    assert f"DOCS_PORT must be a port number from 1 to 65535, got {value!r}" in result.stderr
    assert "waiting for the database" not in result.stdout
    # a run that serves no docs does not read it: it goes on to wait for the database
    without_docs = run_init_sh(tmp_path, SERVE_DOCS="false", DOCS_PORT=value, DB_WAIT_SECONDS="1")
    assert "DOCS_PORT" not in without_docs.stderr
    assert "waiting for the database" in without_docs.stdout


def docs_only_env(tmp_path: Path, port: int) -> dict[str, str]:
    """The environment of a pipeline whose run is replaced by the test's code: it only serves the docs."""
    (tmp_path / "target").mkdir()
    return {
        **os.environ,
        **{"PGHOST": "localhost", "PGUSER": "docs", "PGPASSWORD": "docs", "PGDATABASE": "docs"},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DBT_TARGET_PATH": str(tmp_path / "target"),
        "DBT_LOG_PATH": str(tmp_path / "logs"),
        "SERVE_DOCS": "true",
        "DOCS_HOST": "127.0.0.1",
        "DOCS_PORT": str(port),
    }


@pytest.mark.parametrize("when", ["before the check", "between the check and the bind"])
def test_a_docs_port_taken_while_the_pipeline_ran_ends_it_with_one_line(tmp_path, when):
    # the port is free when the run starts; the pipeline's work is replaced by something taking it, a
    # socket kept open while the docs server starts (or, the check passed, just before dbt binds it)
    code = f"""
import socket, sys
from data_platform import docs_server, pipeline

def run(settings):
    global taken
    taken = socket.create_server(("127.0.0.1", int(settings.docs_port)))
    if {when == "between the check and the bind"}:
        docs_server.check_docs_address = lambda settings: None

pipeline.run = run
sys.exit(pipeline.main([]))
"""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env=docs_only_env(tmp_path, port),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    where = f"DOCS_HOST=127.0.0.1 DOCS_PORT={port}"
    said = f"pipeline: the docs cannot be served on {where}: Address already in use\n"
    if when == "before the check":
        assert "Traceback" not in result.stdout + result.stderr
        assert result.stderr == said
    else:  # after dbt's own report of the error
        assert result.stderr.endswith(said)


@pytest.fixture(scope="module")
def login(admin_conninfo):
    """PG* variables for a role whose password the server checks (PROBE_PASSWORD)."""
    with password_checked_login(admin_conninfo) as variables:
        yield variables


def test_a_wrong_password_fails_at_once(tmp_path, login):
    # DB_WAIT_SECONDS is far longer than the run may take: a run that waited it out fails
    started = time.monotonic()
    result = run_init_sh(
        tmp_path, **login, PGPASSWORD="not-the-password", DB_WAIT_SECONDS="60", CSV_DIR=str(tmp_path)
    )
    assert time.monotonic() - started < 30, result.stderr
    assert result.returncode == 2
    assert "password authentication failed" in result.stderr
    assert "refused this login: waiting cannot help" in result.stderr
    assert "did not accept connections within" not in result.stderr
    assert "not-the-password" not in result.stdout + result.stderr
    assert "loading raw CSVs" not in result.stdout


@pytest.mark.parametrize(("content", "accepted"), [(PROBE_PASSWORD + "\n", True), ("wrong\n", False)])
def test_the_password_can_come_from_a_file(tmp_path, login, content, accepted):
    (tmp_path / "password").write_text(content)
    (tmp_path / "no-csv-here").mkdir()
    result = run_init_sh(
        tmp_path,
        **login,
        PGPASSWORD="",  # empty counts as unset, as compose leaves it
        PGPASSWORD_FILE=str(tmp_path / "password"),
        DB_WAIT_SECONDS="60",
        CSV_DIR=str(tmp_path / "no-csv-here"),  # the run stops at the load: only the login matters here
        ALERTER_USER=login["PGUSER"],  # a role this server has (it has no alerter), checked before the load
    )
    target = f"{login['PGUSER']}@{login['PGHOST']}:{login['PGPORT']}/{login['PGDATABASE']}"
    assert (f"database {target} is ready" in result.stdout) is accepted, result.stderr
    assert ("password authentication failed" in result.stderr) is not accepted
    # accepted: the loader finds no files and fails (1); refused: the login fails at once (2)
    assert result.returncode == (1 if accepted else 2)


def test_relative_paths_are_taken_from_the_callers_directory(tmp_path, login):
    # as `python -m data_platform.loader --csv-dir mydata` takes them, though init.sh runs in its own folder
    caller = tmp_path / "caller"
    (caller / "secrets").mkdir(parents=True)
    (caller / "secrets" / "password").write_text(PROBE_PASSWORD + "\n")
    result = run_init_sh(
        tmp_path,
        cwd=caller,
        **login,
        PGPASSWORD="",
        PGPASSWORD_FILE="secrets/password",
        CSV_DIR="mydata",
        DB_WAIT_SECONDS="60",
        ALERTER_USER=login["PGUSER"],  # a role this server has (it has no alerter)
    )
    assert "is ready" in result.stdout, result.stderr
    # no such folder there: a setting to fix (2), named as the run took it, not an export to fix or remove
    assert result.returncode == 2
    assert f"CSV_DIR {caller / 'mydata'} is not a folder" in result.stderr
    assert "fix or remove it" not in result.stderr


def test_a_secret_file_problem_stops_before_anything_runs(tmp_path):
    (tmp_path / "webhook").write_text("https://hooks.example.invalid/T/B/secret-token\n")
    result = run_init_sh(
        tmp_path,
        SLACK_WEBHOOK_URL="https://hooks.example.invalid/plain-token",
        SLACK_WEBHOOK_URL_FILE=str(tmp_path / "webhook"),
        DB_WAIT_SECONDS="1",
    )
    assert result.returncode == 2
    assert "SLACK_WEBHOOK_URL and SLACK_WEBHOOK_URL_FILE are both set: set only one" in result.stderr
    assert "token" not in result.stdout + result.stderr
    assert "waiting for the database" not in result.stdout


def port_in_time_wait() -> int:
    """A port whose server has stopped, its last connection closed by the server side first, as after a
    docs server's answer: the port lingers in TIME_WAIT for a minute, refused to a plain bind."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            answered, _ = server.accept()
            answered.close()
            client.recv(1)  # the server's close reached the client before it closes in turn
    return port


@pytest.mark.skipif(sys.platform != "linux", reason="the port is taken so on Linux only")
def test_the_docs_are_served_again_on_the_port_a_stopped_server_left_in_time_wait(tmp_path):
    # the demo run again right after its Ctrl-C: both the check at the start and dbt's own bind take it
    port = port_in_time_wait()
    with pytest.raises(OSError, match="Address already in use"), socket.socket() as plain:
        plain.bind(("127.0.0.1", port))  # else the test would prove nothing
    code = "import sys\nfrom data_platform import pipeline\npipeline.run = lambda settings: None\n"
    code += "sys.exit(pipeline.main([]))\n"
    server = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env=docs_only_env(tmp_path, port),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    served = False
    try:
        deadline = time.monotonic() + 120
        while not served and server.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
                    served = page.status == 200
            except OSError:
                time.sleep(0.5)
    finally:
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=60)
    assert served, output
    assert "pipeline: the docs server stopped (SIGINT)." in output, output
    assert server.returncode == 128 + signal.SIGINT, output


def test_the_demo_runs_from_a_shell_without_user_or_pguser(tmp_path):
    """cron and systemd give no USER: the demo's first line about the database stopped it, under set -u.
    The real demo.sh, with the steps it calls stubbed (the step after that line fails on purpose)."""
    shutil.copytree(PROJECT_ROOT / "scripts", tmp_path / "scripts")
    (tmp_path / "scripts" / "bootstrap.sh").write_text("exit 0\n")
    stub = tmp_path / ".venv" / "bin" / "python"
    stub.parent.mkdir(parents=True)
    stub.write_text('#!/bin/sh\necho "python $*"\nexit 7\n')
    stub.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PGHOST": "db.invalid", "PGDATABASE": "w"}
    result = subprocess.run(
        ["bash", str(tmp_path / "scripts" / "demo.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    user = getpass.getuser()
    assert (result.returncode, result.stderr) == (7, ""), result
    assert (
        f"==> applying init.sql to {user}@db.invalid/w\npython -m data_platform.bootstrap init-sql"
        in result.stdout
    )
