"""Each step of a run as a child process that a stop request reaches: the pipeline's and engines.build's.

A step runs in its own process group, so a Ctrl-C in the terminal reaches it only through its runner:
within `stop_on_signals`, SIGTERM or SIGINT raises `Stopped` in the runner, which passes the stop on to
the running step as SIGINT (dbt then cancels its queries, the loader rolls back), waits for it
(STOP_GRACE_SECONDS, then kills it) and ends with 128 + the signal number. A step dies with its runner.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import io
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

from data_platform.paths import PROJECT_ROOT

# How long a step may take to stop after its runner was asked to stop, before it is killed.
STOP_GRACE_SECONDS = 60
# A quoted line of a step's stderr keeps its start and end within this length (a line may hold a value
# from a file, or be anything a crash printed).
MAX_QUOTED_LINE_CHARS = 1000
# How long a step's last output is waited for once it ended (something it started may hold the pipe).
STDERR_DRAIN_SECONDS = 5


def step(title: str) -> None:
    """Announce the step that starts, as every runner's output shows it."""
    say(f"\n==> {title}")


class _Output:
    lost = False  # a line of this process's report could not be written: said once


def output_lost() -> bool:
    """Whether a line of this process's report could not be written (say)."""
    return _Output.lost


def say(line: str, stream: IO[str] | None = None) -> None:
    """Print a line of a run's report (stdout, or `stream`). A line that cannot be written (its log on a
    full disk, a closed pipe) does not stop the work it reports on, which the warehouse records and the exit
    code says: a loader that died printing its line after an export committed said the export had failed,
    and a pipeline that died printing a heading after its build skipped its alerts. Said once, on stderr,
    if stderr can take it."""
    try:
        print(line, file=stream or sys.stdout, flush=True)
    except OSError as error:
        if _Output.lost:
            return
        _Output.lost = True
        with contextlib.suppress(OSError, ValueError):
            print(
                f"warning: this run's output could not be written ({error}): it goes on, and its exit code "
                "says how it ended",
                file=sys.stderr,
                flush=True,
            )


class Stopped(Exception):
    """SIGTERM or SIGINT arrived."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_status(code: int) -> int:
    """A step's exit code as a shell reports it: 128 + the signal for a step a signal ended (Popen's
    negative code, which `sys.exit` would turn into 256 minus the signal)."""
    return 128 - code if code < 0 else code


def failed(code: int, *, show_code: bool = False) -> str:
    """How a step that did not succeed ended, in words: 'failed' (with its exit code: 'failed (exit 2)'),
    or the signal that ended it."""
    if code >= 0:
        return f"failed (exit {code})" if show_code else "failed"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    # SIGKILL comes from outside: the OOM killer, `kill -9`, a supervisor's timeout
    return f"was killed by {name}" + (" (out of memory?)" if -code == signal.SIGKILL else "")


def _raise_stopped(signum: int, _frame) -> None:
    raise Stopped(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within it SIGTERM and SIGINT raise Stopped, so that the step running (wait_child) is stopped and
    waited for; the previous handlers after it (a caller in the same process, such as a test, keeps its
    own Ctrl-C)."""
    previous = {signum: signal.signal(signum, _raise_stopped) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# Linux's prctl(PR_SET_PDEATHSIG): a signal the kernel sends a process when its parent dies
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
PR_SET_PDEATHSIG = 1


def default_sigint() -> None:
    """Ctrl-C (SIGINT) at its default, for a child. A process started with SIGINT ignored (`nohup ... &`,
    some supervisors) passes that on through exec: a step would then ignore the stop request below and
    only be killed after the grace period."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _child_setup(parent: int, block_sigint: bool) -> None:
    """A step's preexec_fn: SIGINT at its default, and killed when its runner dies. The pipeline lock is
    held by the pipeline's own session, so a step left running after a `kill -9` (or the OOM killer) would
    go on writing while the next run, which got the lock, loads and builds. Its open transaction rolls
    back, as for any killed step. block_sigint: SIGINT waits, blocked, until the child unblocks it."""
    default_sigint()
    if block_sigint:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # it died before prctl took effect
            os._exit(1)


def files_from_callers_folder(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with each relative NAME_FILE path made absolute from the current folder: a step runs in the
    project's folder, and a secret file given relative to the caller's must be the same file for the
    step as it was for the checks made before it (as CSV_DIR is, csv_dir_from_environment)."""
    return {
        name: str(Path(value).absolute())
        if name.endswith("_FILE") and value and not Path(value).is_absolute()
        else value
        for name, value in env.items()
    }


def start_child(
    argv: Sequence[str], env: dict[str, str] | None = None, *, block_sigint: bool = False, **popen
) -> subprocess.Popen:
    """A step in its own process group, so that Ctrl-C reaches it only through `wait_child`, and bound to
    this process's life. Wait for it in the thread that started it (the kernel ties it to that thread).
    block_sigint: for a Python child that unblocks SIGINT once it handles it (warm_dbt): a stop request in
    its first milliseconds is otherwise lost in Python's start-up, which then runs on."""
    parent = os.getpid()
    return subprocess.Popen(
        list(argv),
        cwd=PROJECT_ROOT,
        env=files_from_callers_folder(os.environ if env is None else env),
        start_new_session=True,
        preexec_fn=lambda: _child_setup(parent, block_sigint),
        **popen,
    )


def run_child(argv: Sequence[str], env: dict[str, str] | None = None) -> int:
    """Run one step and return its exit code; a stop request is passed on to it as SIGINT."""
    return wait_child(start_child(argv, env))


def _shortened(head: str, end: str) -> str:
    """A line read as its first chunk and the last characters after it, at most MAX_QUOTED_LINE_CHARS
    long: its start and its end kept (an error message ends with its reason)."""
    line = (head + end).rstrip("\r\n")
    if not end or len(line) <= MAX_QUOTED_LINE_CHARS:
        return line
    half = (MAX_QUOTED_LINE_CHARS - 3) // 2
    return line[:half] + "..." + line[-(MAX_QUOTED_LINE_CHARS - 3 - half) :]


def _echo_to_stderr(chunk: str) -> None:
    # neither a closed nor a missing stderr may stop the reading: the step would block on a full pipe
    stream = sys.stderr
    if stream is not None:
        with contextlib.suppress(Exception):
            stream.write(chunk)
            stream.flush()


class StderrTail:
    """A step's stderr (a pipe) passed on to this process's stderr line by line as it comes, keeping its
    lines from the last one starting with `mark` (at most `keep`), or else its last `keep` lines, each
    shortened: memory stays bounded whatever the step prints. A daemon thread reads the pipe until the
    step (and anything it started) closes it, so it never holds up this process's exit."""

    def __init__(self, pipe: IO[bytes], keep: int, mark: str):
        self._keep, self._mark = keep, mark
        self._last: collections.deque[str] = collections.deque(maxlen=keep)
        self._marked: list[str] | None = None
        self._thread = threading.Thread(target=self._read, args=(pipe,), name="step stderr", daemon=True)
        self._thread.start()

    def _read(self, pipe: IO[bytes]) -> None:
        head: str | None = None  # the first chunk of the line being read, and what came after it
        end = ""
        with io.TextIOWrapper(pipe, errors="backslashreplace", newline="\n") as text:
            while chunk := text.readline(MAX_QUOTED_LINE_CHARS):
                _echo_to_stderr(chunk)
                if head is None:
                    head, end = chunk, ""
                else:
                    end = (end + chunk)[-MAX_QUOTED_LINE_CHARS:]
                if chunk.endswith("\n"):
                    self._add(_shortened(head, end))
                    head = None
            if head is not None:
                self._add(_shortened(head, end))

    def _add(self, line: str) -> None:
        self._last.append(line)
        if line.startswith(self._mark):
            self._marked = [line]
        elif self._marked is not None and len(self._marked) < self._keep:
            self._marked.append(line)

    def quoted(self) -> list[str]:
        """Once the step ended (after waiting a moment for what is still in the pipe): its lines from the
        last one starting with `mark`, or else its last lines."""
        self._thread.join(STDERR_DRAIN_SECONDS)
        return list(self._marked if self._marked is not None else self._last)


def run_child_quoting_stderr(
    argv: Sequence[str], keep: int, mark: str, env: dict[str, str] | None = None
) -> tuple[int, list[str]]:
    """As `run_child`, its stderr still shown as it comes: (its exit code, what StderrTail quotes)."""
    child = start_child(argv, env, stderr=subprocess.PIPE)
    tail = StderrTail(child.stderr, keep, mark)
    try:
        code = wait_child(child)
    finally:
        lines = tail.quoted()  # on a stop request too: its last words are shown before the run's
    return code, lines


def wait_child(child: subprocess.Popen) -> int:
    """The step's exit code; a stop request meanwhile is passed on to it as SIGINT.

    Any interruption counts, not only the pipeline's own signals: Dagster stops a step with
    KeyboardInterrupt or DagsterExecutionInterruptedError (a BaseException), and the child, in its own
    session, would otherwise go on writing after the step (and its lock) ended."""
    try:
        return child.wait()
    except BaseException:
        child.send_signal(signal.SIGINT)
        wait_or_kill(child)
        raise


def wait_or_kill(child: subprocess.Popen) -> None:
    """Give the child STOP_GRACE_SECONDS to end, then kill it; so does a second stop request."""
    try:
        child.wait(timeout=STOP_GRACE_SECONDS)
    except BaseException:
        child.kill()
        child.wait()
