"""A dbt process that gets ready while the loader runs, then runs the one command it is sent.

Importing dbt and reading its parsed project take about 3.5 s before `dbt build` runs its first node; on
a day's export that is a quarter of the pipeline. Neither needs the database, so the pipeline starts this
process before loading (`python -m data_platform.warm_dbt <dbt's project arguments>`): it imports dbt and
parses the project while the loader works, then waits for one line on stdin,

    {"args": ["build", ...], "env": {...}}

and runs that dbt command in the given environment (the build's LEDGER_WINDOW_START is only known after
the load) with the manifest it parsed. It exits with the `dbt` command's exit code: 0 success, 1 a model
or test failed, 2 dbt itself failed, 130 stopped by SIGINT (the pipeline passes its stop requests on once
it has sent the command); 0 without running anything when stdin closes first. When the pipeline leaves
without a command (the load failed, or a stop request came), it ends this process with SIGTERM. A
project that does not parse is parsed again by the command, which then reports the error once, in the
build's output. What the parse itself reads from the environment (env_var() in
dbt_project.yml, such as the grants' ALERTER_USER) comes from the environment this process started in,
not the one sent: the pipeline starts it with its own, the one it then sends with the window added.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys

EXIT_SUCCESS, EXIT_FAILURE, EXIT_ERROR = 0, 1, 2
EXIT_INTERRUPTED = 130
# exit_now skips the finalizers of dbt's two multiprocessing locks; Python's resource tracker (a helper
# process, which gets this interpreter's -W options) then releases them itself, and would say so.
QUIET_RESOURCE_TRACKER = "ignore:resource_tracker:UserWarning"


def command(project_args: list[str]) -> list[str]:
    """The command line that starts this process."""
    return [sys.executable, "-W", QUIET_RESOURCE_TRACKER, "-m", "data_platform.warm_dbt", *project_args]


def exit_code(result) -> int:
    """The `dbt` command line's exit code for a dbtRunner result."""
    if result.success:
        return EXIT_SUCCESS
    return EXIT_ERROR if result.exception is not None else EXIT_FAILURE


class CtrlC:
    """Remembers a SIGINT as well as raising KeyboardInterrupt: dbtRunner returns a KeyboardInterrupt
    as a failed result, and some of dbt's parsing code swallows it, after which this process would go on
    to run the command it was sent."""

    seen = False

    @classmethod
    def handle(cls, signum, frame) -> None:
        cls.seen = True
        raise KeyboardInterrupt


def quiet_after_ctrl_c() -> None:
    """dbt reports any exception out of its command, a KeyboardInterrupt too, as "Encountered an error:"
    with its stack trace (dbt.cli.requires.postflight): after a stop request, which the pipeline reports
    in words, that reads as a crash. Once a SIGINT came, those two events go to the log file only (at
    debug level); dbt's own lines about it (the queries it cancelled) stay on the console. Without them
    (another dbt release), nothing changes."""
    try:
        from dbt.cli import requires
        from dbt.events.types import MainEncounteredError, MainStackTrace
    except ImportError:
        return
    # both as dbt's module has them (EventLevel is dbt-common's, which this project does not depend on)
    fire, levels = getattr(requires, "fire_event", None), getattr(requires, "EventLevel", None)
    if fire is None or levels is None:
        return

    def fire_quietly_once_stopped(event, *args, **kwargs):
        if CtrlC.seen and isinstance(event, (MainEncounteredError, MainStackTrace)):
            kwargs["level"] = levels.DEBUG
        return fire(event, *args, **kwargs)

    requires.fire_event = fire_quietly_once_stopped


def one_line_for_lost_log_lines() -> None:
    """A log line of dbt's that cannot be written (the console's or the log file's disk full) printed a
    traceback of its own ("--- Logging error ---"), thousands in one build: said once, then dropped."""
    said = []

    def handle_error(handler: logging.Handler, record: logging.LogRecord) -> None:
        if said:
            return
        said.append(sys.exc_info()[1])
        with contextlib.suppress(OSError):  # stderr on that disk too
            message = f"warm_dbt: dbt's log lines cannot be written ({said[0]}): they are dropped\n"
            os.write(2, message.encode())

    logging.Handler.handleError = handle_error


def invoke(runner, args: list[str]):
    """runner.invoke(args), with a Ctrl-C during it raised again when it is over."""
    result = runner.invoke(args)
    if CtrlC.seen or isinstance(result.exception, KeyboardInterrupt):
        raise KeyboardInterrupt
    return result


def main(project_args: list[str]) -> int:
    signal.signal(signal.SIGINT, CtrlC.handle)
    try:
        # started with SIGINT blocked (pipeline.WarmDbt), so that a stop request sent during Python's
        # start-up waits for this handler: it arrives here, if it came
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        try:
            from dbt.cli.main import dbtRunner
        except ImportError as error:
            print(f"warm_dbt: dbt is not installed ({error}); run scripts/bootstrap.sh", file=sys.stderr)
            return EXIT_ERROR
        quiet_after_ctrl_c()
        one_line_for_lost_log_lines()
        # nothing on the console while the loader reports (a parse error is reported by the command,
        # which parses again); the log file keeps everything
        silent = ["--log-level", "none", "--log-level-file", "debug"]
        parsed = invoke(dbtRunner(), ["parse", *silent, *project_args])
        manifest = parsed.result if parsed.success else None
        line = sys.stdin.readline()
        if not line:
            return EXIT_SUCCESS
        request = json.loads(line)
        os.environ.clear()
        os.environ.update(request["env"])
        return exit_code(invoke(dbtRunner(manifest=manifest), request["args"]))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def exit_now(code: int) -> None:
    """Exit without the interpreter's teardown: freeing dbt's parsed project object by object takes
    about 0.6 s, which the pipeline would wait for. The logs are flushed first; nothing else is left
    (dbt closed its connections when the command ended)."""
    with contextlib.suppress(OSError, ValueError):  # a console on a full disk: the exit code says the rest
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main(sys.argv[1:]))
