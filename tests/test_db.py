"""data_platform.db: how a connection target is described in error messages; waiting for an advisory
lock; bootstrap's stop of the embedded server."""

import contextlib
import getpass
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import psycopg
from psycopg import sql

from data_platform import bootstrap, db


def test_describe_target_never_shows_the_password(monkeypatch):
    for name, value in dict(PGHOST="db", PGPORT="6543", PGUSER="alerter", PGDATABASE="warehouse").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PGPASSWORD", "s3cret")
    assert db.describe_target() == "alerter@db:6543/warehouse"


def test_describe_target_without_pguser_or_os_user_name(monkeypatch):
    # a bare container: no PGUSER and no passwd entry for the uid (getpass raises)
    for name in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE"):
        monkeypatch.delenv(name, raising=False)

    def no_user_name():
        raise KeyError("getpwuid(): uid not found: 10001")

    monkeypatch.setattr(getpass, "getuser", no_user_name)
    assert db.describe_target() == "?@localhost:5432/?"


def test_a_held_lock_is_announced_once_and_given_up_at_the_timeout(make_database):
    # the pipeline prints "another pipeline run is in progress" once, however long the other run holds it
    database = make_database()
    said = []
    with database.connect(autocommit=True) as holder, database.connect(autocommit=True) as waiter:
        holder.execute("select pg_advisory_lock(hashtext('test.lock'))")
        started = time.monotonic()
        assert db.take_advisory_lock(waiter, "test.lock", 2.5, lambda: said.append(1)) is False
        assert 2.5 <= time.monotonic() - started < 4.5
        assert said == [1]
        holder.execute("select pg_advisory_unlock(hashtext('test.lock'))")
        assert db.take_advisory_lock(waiter, "test.lock", 2.5, lambda: said.append(1)) is True
        assert said == [1]


def write_postmaster_pid(data_dir: Path, pid: int) -> None:
    # as Postgres writes it: pid, data folder, start time, port, socket folder, host, shared memory, status
    lines = [str(pid), str(data_dir), "1712346200", "5432", str(data_dir), "", "0 0", "ready"]
    (data_dir / "postmaster.pid").write_text("\n".join(lines) + "\n")


def test_stopping_an_embedded_server_that_died_starts_nothing(tmp_path):
    # the pid file a reboot or kill -9 leaves behind names a process that is gone
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_postmaster_pid(tmp_path, dead.pid)
    assert bootstrap.stop_embedded_server(tmp_path) is False
    assert sorted(path.name for path in tmp_path.iterdir()) == ["postmaster.pid"]


def test_stopping_an_embedded_server_killed_but_not_reaped_starts_nothing(tmp_path):
    # a postmaster killed with -9 stays a zombie until its parent reaps it (in a container whose first
    # process reaps nothing, for good): its pid answers, but no server runs
    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    while psutil.Process(killed.pid).status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.01)
    try:
        write_postmaster_pid(tmp_path, killed.pid)
        assert bootstrap.stop_embedded_server(tmp_path) is False
        assert sorted(path.name for path in tmp_path.iterdir()) == ["postmaster.pid"]
    finally:
        killed.wait()


def test_stopping_an_embedded_server_whose_pid_file_is_gone_stops_it(tmp_path):
    # seen after a demo stopped with Ctrl-C: the server ran on without its postmaster.pid, and `stop` said
    # that none ran in its folder
    data_dir = tmp_path / "pgdata"
    bootstrap.start_embedded_server(data_dir, "warehouse")
    (data_dir / "postmaster.pid").unlink()
    postmasters = [
        process
        for process in psutil.process_iter(["cmdline"])
        if str(data_dir) in (process.info["cmdline"] or [])
    ]
    assert len(postmasters) == 1
    try:
        assert bootstrap.stop_embedded_server(data_dir) is True

        assert not postmasters[0].is_running()
        assert bootstrap.stop_embedded_server(data_dir) is False
    finally:  # no server left running when the stop failed
        with contextlib.suppress(psutil.NoSuchProcess):
            postmasters[0].send_signal(signal.SIGINT)
            postmasters[0].wait(timeout=60)


def test_the_embedded_server_commands_say_nothing_about_an_unset_xdg_runtime_dir(tmp_path):
    # a shell without a login session, or a container: platformdirs warns, pgserver falls back to /tmp
    env = {name: value for name, value in os.environ.items() if name != "XDG_RUNTIME_DIR"}
    stop = [sys.executable, "-m", "data_platform.bootstrap", "stop", "--data-dir", str(tmp_path / "none")]
    result = subprocess.run(stop, env=env, capture_output=True, text=True, timeout=60)
    expected = (f"no embedded Postgres runs in {tmp_path / 'none'}", "")
    assert (result.stdout.strip(), result.stderr) == expected, result


def test_an_embedded_server_in_a_folder_whose_path_a_shell_would_split_is_refused_with_a_reason(
    tmp_path, capsys
):
    """A clone under a folder with a space (scripts/demo.sh's default data folder is inside the clone) failed
    with a 60-line pgserver traceback."""
    data_dir = tmp_path / "my projects" / ".pgdata"
    assert bootstrap.main(["embedded", "--data-dir", str(data_dir)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(
        f"error: the embedded Postgres cannot run in {str(data_dir)!r}: its path holds ' '"
    )
    assert "DEMO_PGDATA" in error
    assert not data_dir.exists()


def test_an_embedded_server_that_cannot_start_is_an_error_in_words_not_a_traceback(tmp_path, capsys):
    data_dir = tmp_path / "pgdata"
    data_dir.mkdir()
    (data_dir / "stray").write_text("not a database\n")  # initdb refuses a folder that is not empty
    assert bootstrap.main(["embedded", "--data-dir", str(data_dir)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: the embedded Postgres did not start in {data_dir}: initdb exited 1")


def test_creating_the_demo_database_twice_at_once_creates_it_once(admin_conninfo):
    """Two demos started at once on a new data folder: both found the database missing, and the second's
    create failed with a unique violation once the first had committed."""
    name = f"demo_{uuid.uuid4().hex}"
    admin = admin_conninfo
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def create() -> None:
        try:
            with psycopg.connect(admin, autocommit=True) as conn:
                barrier.wait()
                bootstrap.create_database(conn, name)
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=create) for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("drop database if exists {}").format(sql.Identifier(name)))


def test_every_session_overrides_what_a_role_sets_against_it(make_database, monkeypatch):
    """psycopg reads no other date style, an idle session holds an advisory lock, and a commit of an alert's
    record lost to a server crash would let the alert go again with no trace of the first."""
    from psycopg import sql
    from sqlalchemy import text

    from data_platform.alerts import cli

    database = make_database()
    set_by_role = {"datestyle": "SQL, DMY", "idle_session_timeout": "1s", "synchronous_commit": "off"}
    wanted = {"datestyle": "ISO, YMD", "idle_session_timeout": "0", "synchronous_commit": "local"}

    def role_sets(role: str, name: str, value: str) -> None:
        with database.connect("admin", autocommit=True) as admin:
            admin.execute(
                sql.SQL("alter role {} in database {} set {} to {}").format(
                    sql.Identifier(role),
                    sql.Identifier(database.name),
                    sql.Identifier(name),
                    sql.Literal(value),
                )
            )

    for role in ("transformer", "alerter"):
        for name, value in set_by_role.items():
            role_sets(role, name, value)
    assert database.query("show synchronous_commit", role="alerter") == [("off",)]
    settings = "select " + ", ".join(f"current_setting('{name}')" for name in wanted)
    for name, value in database.env("transformer").items():
        monkeypatch.setenv(name, value)
    with db.connect() as conn:
        assert conn.execute(settings).fetchone() == tuple(wanted.values())
    for name, value in database.env("alerter").items():
        monkeypatch.setenv(name, value)
    with cli._connect(cli.make_engine()) as conn:
        assert tuple(conn.execute(text(settings)).one()) == tuple(wanted.values())
    # a commit setting stronger than off stays
    role_sets("alerter", "synchronous_commit", "remote_apply")
    with cli._connect(cli.make_engine()) as conn:
        assert conn.execute(text("show synchronous_commit")).scalar() == "remote_apply"


SLOW_PG_CTL = """
import subprocess, sys, time
import psutil
from data_platform import bootstrap
import pgserver.postgres_server

real_pg_ctl = pgserver.postgres_server.pg_ctl


def pg_ctl_giving_up(args, pgdata, **kwargs):
    # as pgserver's 10 s wait for a start that takes longer: pg_ctl is stopped, the server goes on starting
    if args[-1] != "start":
        return real_pg_ctl(args, pgdata=pgdata, **kwargs)
    real_pg_ctl(["-W" if arg == "-w" else arg for arg in args], pgdata=pgdata, **kwargs)
    pid_file = pgdata / "postmaster.pid"
    while not pid_file.exists() or len(pid_file.read_text().splitlines()) < 8:
        time.sleep(0.01)
    if sys.argv[2] == "dies":  # its recovery failed
        postmaster = psutil.Process(int(pid_file.read_text().split()[0]))
        postmaster.kill()
        while postmaster.is_running() and postmaster.status() != psutil.STATUS_ZOMBIE:
            time.sleep(0.01)
    raise subprocess.TimeoutExpired("pg_ctl", 10)


pgserver.postgres_server.pg_ctl = pg_ctl_giving_up
sys.exit(bootstrap.main(["embedded", "--data-dir", sys.argv[1], "--database", "warehouse"]))
"""


def test_an_embedded_server_slower_to_start_than_pgservers_wait_is_waited_for(tmp_path):
    """A server recovering after a crash took longer than the 10 s pgserver gives `pg_ctl start`: the demo
    ended in pgserver's TimeoutExpired traceback while the server went on starting."""
    data_dir = tmp_path / "pgdata"
    started = subprocess.run(
        [sys.executable, "-c", SLOW_PG_CTL, str(data_dir), "starts"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    try:
        assert started.returncode == 0, started.stderr
        assert "Traceback" not in started.stderr
        exported = dict(line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines())
        with psycopg.connect(
            **{
                "host": exported["PGHOST"],
                "port": exported["PGPORT"],
                "user": exported["PGUSER"],
                "dbname": exported["PGDATABASE"],
            }
        ) as conn:
            assert conn.execute("select current_database()").fetchone() == ("warehouse",)
    finally:
        bootstrap.stop_embedded_server(data_dir)


def test_an_embedded_servers_status_is_read_from_its_pid_file_as_the_server_writes_it(tmp_path):
    assert bootstrap._postmaster(tmp_path) is None
    write_postmaster_pid(tmp_path, os.getpid())
    assert bootstrap._postmaster(tmp_path) == (os.getpid(), "ready")
    # the lines come in steps, and the status line is padded: "starting" is overwritten in place
    lines = (tmp_path / "postmaster.pid").read_text().splitlines()
    (tmp_path / "postmaster.pid").write_text("\n".join(lines[:6]) + "\n")
    assert bootstrap._postmaster(tmp_path) == (os.getpid(), "starting")
    (tmp_path / "postmaster.pid").write_text("\n".join([*lines[:7], "starting"]) + "\n")
    assert bootstrap._postmaster(tmp_path) == (os.getpid(), "starting")
    (tmp_path / "postmaster.pid").write_text("")  # created, not written yet
    assert bootstrap._postmaster(tmp_path) == (None, "starting")


def test_an_embedded_server_that_dies_while_starting_slowly_is_an_error_in_words_at_once(tmp_path):
    data_dir = tmp_path / "pgdata"
    command = [sys.executable, "-c", SLOW_PG_CTL, str(data_dir), "dies"]
    started = subprocess.run(command, capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 2, started.stderr
        said = f"error: the embedded Postgres did not start in {data_dir}: see its log, {data_dir / 'log'}\n"
        assert started.stderr.endswith(said), started.stderr
    finally:
        bootstrap.stop_embedded_server(data_dir)


def test_a_login_the_server_failed_on_its_own_side_is_not_blamed_on_the_settings():
    """A server whose disk filled, restarted: its logins failed with "could not write init file", which the
    runs took for a refusal, saying to check PGHOST, PGPORT, PGUSER, PGPASSWORD and PGDATABASE."""
    said = (
        'connection failed: connection to server on socket "/tmp/.s.PGSQL.5432" failed: FATAL:  could not '
        "write init file"
    )
    assert db.server_failed(said)
    assert db.server_failed('FATAL:  could not write to file "pg_wal/xlogtemp.80": No space left on device')
    refused = [
        'FATAL:  password authentication failed for user "transformer"',
        'FATAL:  role "transformer" does not exist',
        'FATAL:  database "warehouse" does not exist',
        'FATAL:  no pg_hba.conf entry for host "10.0.0.2", user "alerter", database "warehouse"',
        "FATAL:  sorry, too many clients already",
    ]
    assert not any(db.server_failed(words) for words in refused)


def hold_in_recovery(data_dir: Path, seconds: int) -> None:
    """The server's next start recovers from an archive whose every fetch takes `seconds` and finds nothing:
    it stays starting that long per file it asks for, as a server replaying a crash's writes does."""
    with (data_dir / "postgresql.auto.conf").open("a") as conf:
        conf.write(f"restore_command = 'sleep {seconds}; false'\n")
    (data_dir / "recovery.signal").write_text("")
    shutil.chown(data_dir / "recovery.signal", data_dir.owner(), data_dir.group())


def starting(data_dir: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (bootstrap._postmaster(data_dir) or (0, ""))[1] != "starting":
        assert time.monotonic() < deadline, "the server never said it was starting"
        time.sleep(0.05)


def test_a_server_still_starting_is_waited_for_by_a_second_start_and_stopped_by_stop(tmp_path):
    """pgserver took a server still starting (recovering) for a failure: a second `embedded` (a demo run
    again after a Ctrl-C) or a `stop` then ended in its AssertionError traceback."""
    data_dir = tmp_path / "pgdata"
    embedded = [sys.executable, "-m", "data_platform.bootstrap", "embedded", "--data-dir", str(data_dir)]
    stop = [sys.executable, "-m", "data_platform.bootstrap", "stop", "--data-dir", str(data_dir)]
    try:
        assert subprocess.run(embedded, capture_output=True, timeout=120).returncode == 0
        assert subprocess.run(stop, capture_output=True, timeout=120).returncode == 0

        hold_in_recovery(data_dir, 10)
        first = subprocess.Popen(embedded, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        starting(data_dir)
        second = subprocess.run(embedded, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stderr
        assert "is still starting" in second.stderr
        assert first.wait(timeout=300) == 0, first.stderr.read()
        assert bootstrap._postmaster(data_dir)[1] == "ready"

        assert subprocess.run(stop, capture_output=True, timeout=120).returncode == 0
        hold_in_recovery(data_dir, 10)
        first = subprocess.Popen(embedded, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        starting(data_dir)
        stopped = subprocess.run(stop, capture_output=True, text=True, timeout=120)
        assert (stopped.returncode, stopped.stdout.strip()) == (0, f"stopped {data_dir}"), stopped.stderr
        first.wait(timeout=300)
        assert "Traceback" not in first.stderr.read()
    finally:
        bootstrap.stop_embedded_server(data_dir)


def test_a_server_still_stopping_is_started_again_once_it_has_stopped(tmp_path):
    """A demo run again while its server was still stopping (here a smart shutdown waiting for a session)
    ended in pgserver's AssertionError traceback."""
    data_dir = tmp_path / "pgdata"
    embedded = [sys.executable, "-m", "data_platform.bootstrap", "embedded", "--data-dir", str(data_dir)]
    try:
        started = subprocess.run(embedded, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stderr
        exported = dict(line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines())
        session = psycopg.connect(
            host=exported["PGHOST"], port=exported["PGPORT"], user=exported["PGUSER"], dbname="postgres"
        )
        stopping_server = psutil.Process(bootstrap._postmaster(data_dir)[0])
        stopping_server.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while bootstrap._postmaster(data_dir)[1] != "stopping":
            assert time.monotonic() < deadline, "the server never said it was stopping"
            time.sleep(0.05)
        again = subprocess.Popen(embedded, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # a start that hung without a word would hang the test: it fails instead
        assert select.select([again.stderr], [], [], 120)[0], "the second start said nothing in 120 s"
        said = again.stderr.readline()
        assert "is still stopping: it is started again once it has stopped" in said, said
        assert bootstrap._runs(stopping_server.pid)
        session.close()  # the smart shutdown's last session: the server stops, and is started again
        assert again.wait(timeout=300) == 0, again.stderr.read()
        assert not bootstrap._runs(stopping_server.pid)
        assert bootstrap._postmaster(data_dir)[1] == "ready"
    finally:
        bootstrap.stop_embedded_server(data_dir)


def test_an_embedded_server_that_cannot_start_on_a_full_disk_is_said_to_need_space(tmp_path):
    # as root, the message was the advice about pgserver's user reading .venv, beside a log that said why
    (tmp_path / "log").write_text(
        'PANIC:  could not write to file "pg_wal/xlogtemp.80": No space left on device\n'
        "LOG:  startup process (PID 80) was terminated by signal 6: Aborted\n"
    )
    pg_ctl = subprocess.CalledProcessError(1, ["/venv/pgserver/pginstall/bin/pg_ctl", "start"])
    assert bootstrap._not_started(tmp_path, pg_ctl) == (
        f"the embedded Postgres did not start in {tmp_path}: pg_ctl exited 1 (above): its disk is full (its "
        f"log, {tmp_path / 'log'}, says No space left on device): free space"
    )
