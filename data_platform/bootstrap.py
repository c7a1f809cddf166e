"""Database bootstrap for runs outside Docker: apply init.sql, or start an embedded Postgres.

The postgres container applies init.sql itself at first start. The no-Docker demo and the tests
use these helpers to do the same against any server, so all three share one bootstrap script.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import types
import warnings
from contextlib import suppress
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from data_platform.paths import PROJECT_ROOT

INIT_SQL = PROJECT_ROOT / "init.sql"
# how long an embedded server may take to start: crash recovery replays up to max_wal_size (1 GB) of WAL
EMBEDDED_START_SECONDS = 600


def _pgserver() -> types.ModuleType:
    """The pgserver package, imported without platformdirs' warning that XDG_RUNTIME_DIR is unset (a shell
    without a login session, a container): pgserver's lock file then goes under /tmp, which does as well."""
    with warnings.catch_warnings():
        # by the module that warns, not by the wording: platformdirs is pgserver's, not ours
        warnings.filterwarnings("ignore", module=r"platformdirs(\.|$)")
        import pgserver
    return pgserver


def psql_binary() -> str:
    """psql from PATH, else the one bundled with the pgserver package."""
    found = shutil.which("psql")
    if found:
        return found
    return str(Path(_pgserver().__file__).parent / "pginstall" / "bin" / "psql")


def apply_init_sql(conninfo: str, env: dict[str, str] | None = None) -> None:
    """Run init.sql with psql (it uses psql meta-commands) as a superuser; raise with psql's message."""
    env = env if env is not None else dict(os.environ)
    result = _psql(conninfo, env, "-f", str(INIT_SQL))
    if result.returncode != 0:
        raise RuntimeError(
            f"init.sql failed (it needs a superuser connection{_not_a_superuser(conninfo, env)}):\n"
            f"{result.stderr.strip()}"
        )


def _psql(conninfo: str, env: dict[str, str], *args: str, timeout: float | None = None):
    return subprocess.run(
        [psql_binary(), "--no-psqlrc", "--quiet", "-d", conninfo, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _not_a_superuser(conninfo: str, env: dict[str, str]) -> str:
    """Why a failed init.sql may have failed, when its connection's role is no superuser: most often the
    PG* variables that the alert or Dagster commands export for the demo's database, still set in the shell
    that runs the demo again (which then takes that database for the user's own server). Asked the way
    init.sql was run, so of the same server and role."""
    query = "select current_user, rolsuper from pg_roles where rolname = current_user"
    try:
        asked = _psql(conninfo, {"PGCONNECT_TIMEOUT": "10", **env}, "-AtF,", "-c", query, timeout=30)
    except subprocess.TimeoutExpired:
        return ""
    role, _, superuser = asked.stdout.strip().rpartition(",")
    if asked.returncode != 0 or not role or superuser != "f":
        return ""  # psql's own message says why init.sql failed
    return (
        f", and {role} is not one; PG* variables left set by the alert or Dagster commands? "
        "`unset PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE`; scripts/demo.sh then starts its own database"
    )


# pgserver hands the data folder to a shell unquoted: a path holding one of these fails with its traceback
SHELL_SPECIAL = set("'\"$\\;&()`|<>")


def shell_unsafe(path: Path) -> list[str]:
    """The characters of the path pgserver cannot start a server under."""
    return sorted({char for char in str(path.resolve()) if char.isspace() or char in SHELL_SPECIAL})


def _refuse_unusable(data_dir: Path) -> None:
    found = shell_unsafe(data_dir)
    if found:
        path = str(data_dir.resolve())
        raise RuntimeError(
            f"the embedded Postgres cannot run in {path!r}: its path holds "
            f"{', '.join(repr(char) for char in found)}, which pgserver passes on to a shell unquoted. "
            "Choose a folder without them (scripts/demo.sh: DEMO_PGDATA=/path/to/folder)"
        )


def start_embedded_server(data_dir: Path, database: str) -> dict[str, str]:
    """Start (or reuse) a pgserver Postgres in `data_dir`; create `database`; return its PG* variables.

    The server keeps running after this process exits, so the pipeline and the docs server can use it.
    """
    _refuse_unusable(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    admin_uri = _admin_uri(data_dir)
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        create_database(conn, database)
    params = conninfo_to_dict(admin_uri)
    return {
        "PGHOST": str(params["host"]),
        "PGPORT": str(params.get("port", "5432")),
        "PGUSER": str(params.get("user", "postgres")),
        "PGDATABASE": database,
    }


def create_database(conn: psycopg.Connection, name: str) -> None:
    """Create the database unless it exists; two demos started at once both find it missing, and the
    second's create fails (a unique violation, or duplicate database) once the first's has committed."""
    if conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone():
        return
    with suppress(psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))


def _admin_uri(data_dir: Path) -> str:
    """The superuser's URI of pgserver's server in `data_dir`, once it takes connections. pgserver gives
    `pg_ctl start` 10 s, and a server recovering after a crash (a machine that lost power, a killed demo)
    or on a slow disk may take longer: pg_ctl is stopped, the server goes on starting. pgserver takes a
    server still starting, or still stopping, for a failure of its own (an assertion), so that start or
    stop is waited for first: another demo's moments ago, this command's own run before a Ctrl-C, or a
    `bootstrap stop` (or a shutdown) still waiting for its sessions to end."""
    pgserver = _pgserver()
    _wait_while_starting_or_stopping(data_dir)
    try:
        server = pgserver.get_server(data_dir, cleanup_mode=None)
    except subprocess.CalledProcessError as error:  # pgserver has logged the command's output
        raise RuntimeError(_not_started(data_dir, error)) from None
    except subprocess.TimeoutExpired:
        # pgserver keeps it as started, without its address: read from its pid file once it is ready
        _wait_while_starting_or_stopping(data_dir)
        postmaster = _postmaster(data_dir)
        if postmaster is None or postmaster[1] != "ready" or not _runs(postmaster[0]):
            raise RuntimeError(
                f"the embedded Postgres did not start in {data_dir}: see its log, {data_dir / 'log'}"
            ) from None
        return pgserver.utils.PostmasterInfo.read_from_pgdata(data_dir.resolve()).get_uri()
    return server.get_uri()


def _wait_while_starting_or_stopping(data_dir: Path) -> None:
    """Return once the server in `data_dir` is neither starting nor stopping: ready, or not running."""
    deadline = time.monotonic() + EMBEDDED_START_SECONDS
    said = None
    while (postmaster := _postmaster(data_dir)) and postmaster[1] in ("starting", "stopping"):
        pid, status = postmaster
        if pid is not None and not _runs(pid):
            return  # the pid file of a server that stopped: pgserver starts it again, or says why not
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the embedded Postgres in {data_dir} was still {status} after {EMBEDDED_START_SECONDS} s: "
                + (
                    f"see its log, {data_dir / 'log'}"
                    if status == "starting"
                    else "a smart shutdown waits for its sessions to end (close them), or `python -m "
                    "data_platform.bootstrap stop` shuts it down fast"
                )
            )
        if said != status:
            print(
                f"the embedded Postgres in {data_dir} is still {status}"
                + (
                    " (after a crash it first recovers)"
                    if status == "starting"
                    else ": it is started again once it has stopped"
                )
                + f"; waiting up to {EMBEDDED_START_SECONDS} s",
                file=sys.stderr,
            )
            said = status
        time.sleep(1)


def _postmaster(data_dir: Path) -> tuple[int | None, str] | None:
    """The server's pid and status (starting, ready, stopping) from its pid file; None without the file.
    The server writes the file's lines in steps: before its status line, it is starting (and before its
    first, its pid is not known yet)."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    pid = int(lines[0]) if lines and lines[0].strip().isdigit() else None
    return pid, lines[7].strip() if len(lines) > 7 else "starting"


def _runs(pid: int | None) -> bool:
    import psutil  # pgserver's own dependency

    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _not_started(data_dir: Path, error: subprocess.CalledProcessError) -> str:
    command = Path(str(error.cmd[0])).name if error.cmd else "Postgres"
    message = (
        f"the embedded Postgres did not start in {data_dir}: {command} exited {error.returncode} (above)"
    )
    log = data_dir / "log"
    with suppress(OSError):
        if "No space left on device" in log.read_text(errors="replace")[-20_000:]:
            return f"{message}: its disk is full (its log, {log}, says No space left on device): free space"
    if os.geteuid() == 0:
        message += (
            ". As root, pgserver runs Postgres as its own user, pgserver, which must be able to read .venv"
            " (a clone made under umask 077 cannot be read: chmod -R go+rX .venv, remove the data folder,"
            " and run again)"
        )
    return message


def stop_embedded_server(data_dir: Path) -> bool:
    """Stop the pgserver Postgres in `data_dir` (pgserver's own shutdown, as the OS user it runs as: not
    root); False when none runs there."""
    pgserver = _pgserver()
    import psutil  # pgserver's own dependency

    postmaster = _postmaster(data_dir)
    if postmaster is None:
        return _stop_unlisted(data_dir)
    # a pid file left by a reboot or a kill -9 names a process that is gone, or a zombie nobody reaped
    # (its pid still answers), and get_server would then fail to stop it with a traceback, or start the
    # server only to stop it
    if not _runs(postmaster[0]):
        return False
    if postmaster[1] != "ready":  # starting (pgserver would fail on it) or stopping
        _shut_down_fast(psutil.Process(postmaster[0]))
        return True
    # a handle that stops the server when it closes, and is the only one: `embedded` keeps none open
    pgserver.get_server(data_dir, cleanup_mode="stop").cleanup()
    return True


def _stop_unlisted(data_dir: Path) -> bool:
    """Stop a postmaster serving `data_dir` whose postmaster.pid is gone (seen after a demo stopped with
    Ctrl-C, cause unknown): found by its command line, as pgserver starts it (`postgres -D <data_dir>`),
    and asked to shut down fast, as `pg_ctl stop` does. False when none runs there."""
    import psutil  # pgserver's own dependency

    target = data_dir.resolve()
    for process in psutil.process_iter(["name", "cmdline"]):
        arguments = process.info["cmdline"] or []
        if process.info["name"] != "postgres" or "-D" not in arguments[:-1]:
            continue
        if Path(arguments[arguments.index("-D") + 1]).resolve() != target:
            continue
        _shut_down_fast(process)
        return True
    return False


def _shut_down_fast(postmaster) -> None:
    """Ask the server to shut down fast (SIGINT), as `pg_ctl stop` does, and wait for it."""
    import psutil  # pgserver's own dependency

    with suppress(psutil.NoSuchProcess):
        postmaster.send_signal(signal.SIGINT)
        postmaster.wait(timeout=60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_platform.bootstrap", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    embedded = commands.add_parser(
        "embedded", help="start an embedded Postgres and print its PG* variables as shell exports"
    )
    data_dir_help = "the embedded Postgres's data folder (default: the project's .pgdata)"
    embedded.add_argument("--data-dir", type=Path, default=PROJECT_ROOT / ".pgdata", help=data_dir_help)
    embedded.add_argument(
        "--database", default="warehouse", help="the database to create if missing (default: warehouse)"
    )
    stop = commands.add_parser("stop", help="stop the embedded Postgres (its data stays)")
    stop.add_argument("--data-dir", type=Path, default=PROJECT_ROOT / ".pgdata", help=data_dir_help)
    commands.add_parser("init-sql", help="apply init.sql to the database named by the PG* variables")
    args = parser.parse_args(argv)

    try:
        if args.command == "embedded":
            variables = start_embedded_server(args.data_dir, args.database)
            for name, value in variables.items():
                print(f"export {name}={shlex.quote(value)}")
        elif args.command == "stop":
            stopped = stop_embedded_server(args.data_dir)
            print(f"{'stopped' if stopped else 'no embedded Postgres runs in'} {args.data_dir}")
        else:
            apply_init_sql("")
    except (RuntimeError, psycopg.Error) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
