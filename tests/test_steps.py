"""Steps as child processes (data_platform/steps.py): a stop request reaches them, they die with their
runner, and their stderr passes through while its last lines are kept for the run's error."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from conftest import PROJECT_ROOT
from process_support import assert_dies_with

from data_platform import pipeline, steps


def test_a_step_gets_the_stop_request_even_when_the_pipeline_was_started_ignoring_ctrl_c():
    """Started with SIGINT ignored (`nohup init.sh &`), the steps would inherit that and ignore the
    SIGINT the pipeline passes on to stop them."""
    python_default = (
        "import signal, sys; sys.exit(signal.getsignal(signal.SIGINT) is not signal.default_int_handler)"
    )
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert steps.run_child([sys.executable, "-c", python_default]) == 0
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "docker-stop"])
def test_ctrl_c_and_a_stop_request_both_stop_the_run_and_the_previous_handlers_come_back(signum):
    """Ctrl-C is a stop request as SIGTERM is: Python's own KeyboardInterrupt would end the pipeline with a
    traceback instead of its "stopped by SIGINT" and 130."""
    previous = signal.getsignal(signum)
    try:
        with steps.stop_on_signals():
            signal.raise_signal(signum)
    except BaseException as error:  # a KeyboardInterrupt must fail this test, not end the test session
        raised = error
    assert isinstance(raised, steps.Stopped), repr(raised)
    assert raised.signum == signum
    assert signal.getsignal(signum) is previous


def test_a_step_dies_with_a_pipeline_killed_outright(tmp_path):
    """SIGKILL (or the OOM killer) gives the pipeline no chance to stop its steps, and releases its lock:
    a step left running would write beside the next run."""
    step_pid = tmp_path / "step.pid"
    pipeline_like = (
        "import sys, time; from data_platform import steps; "
        "child = steps.start_child([sys.executable, '-c', 'import time; time.sleep(120)']); "
        f"open({str(step_pid)!r}, 'w').write(str(child.pid)); child.wait()"
    )
    parent = subprocess.Popen([sys.executable, "-c", pipeline_like], cwd=PROJECT_ROOT)
    assert_dies_with(parent, step_pid, "the step")


def test_a_steps_stderr_passes_through_whole_and_only_its_last_lines_are_kept_shortened(capfd):
    """A failed load quotes the loader's last lines; whatever a step prints, that tail stays small, and a
    long line keeps its start and its end (where an error's reason is)."""
    noisy = (
        "import sys; [print(f'line {n}', file=sys.stderr) for n in range(10_000)]; "
        "print('a' * 600 + 'x' * 1_000_000 + 'z' * 600, file=sys.stderr); "
        "print('last', file=sys.stderr, end='')"
    )
    code, lines = steps.run_child_quoting_stderr([sys.executable, "-c", noisy], keep=3, mark="error: ")
    assert code == 0
    limit = steps.MAX_QUOTED_LINE_CHARS
    half = (limit - 3) // 2
    assert lines == ["line 9999", "a" * half + "..." + "z" * (limit - 3 - half), "last"]
    passed_on = "".join(f"line {n}\n" for n in range(10_000)) + "a" * 600 + "x" * 1_000_000 + "z" * 600
    assert capfd.readouterr().err == passed_on + "\nlast"
    # a step that prints nothing ends as any other
    assert steps.run_child_quoting_stderr([sys.executable, "-c", "exit(4)"], 3, "error: ") == (4, [])


def test_the_quote_starts_at_the_last_error_line_however_many_lines_follow_it():
    """A connection error lists every host tried: its first line must not scroll out of the quote."""
    loud = (
        "import sys; print('error: an earlier one', file=sys.stderr); print('noise', file=sys.stderr); "
        "print('error: cannot connect', file=sys.stderr); "
        "[print(f'  host {n}', file=sys.stderr) for n in range(30)]; exit(2)"
    )
    code, lines = steps.run_child_quoting_stderr([sys.executable, "-c", loud], keep=5, mark="error: ")
    assert (code, lines) == (2, ["error: cannot connect", "  host 0", "  host 1", "  host 2", "  host 3"])
    assert pipeline.loader_error(lines).startswith("cannot connect\n  host 0\n")


def test_only_a_line_starting_with_the_mark_starts_the_quote():
    # a later line that only mentions "error: " (a hint quoting another message) must not push out the error
    said = (
        "import sys; print('error: cannot connect', file=sys.stderr); "
        "print('hint: the server said error: refused', file=sys.stderr); exit(2)"
    )
    code, lines = steps.run_child_quoting_stderr([sys.executable, "-c", said], keep=5, mark="error: ")
    assert (code, lines) == (2, ["error: cannot connect", "hint: the server said error: refused"])


def test_a_step_whose_stderr_cannot_be_shown_still_runs_to_its_end():
    """With the pipeline's stderr closed (2>&-), the step's lines are still read, so it never meets a
    broken pipe: a load that would succeed succeeds."""
    step = "import sys; [print(f'progress {n}', file=sys.stderr) for n in range(100_000)]"
    script = (
        "import sys; sys.stderr = None; from data_platform import steps; "
        f"print(steps.run_child_quoting_stderr([sys.executable, '-c', {step!r}], 2, 'error: '))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "(0, ['progress 99998', 'progress 99999'])", result.stdout + result.stderr


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, "DagsterExecutionInterruptedError"])
def test_a_step_interrupted_by_anything_stops_its_child_before_it_ends(interruption):
    """Dagster stops a step with KeyboardInterrupt or its own BaseException, not the pipeline's signals;
    the child runs in its own session and would go on writing after its step and lock ended."""
    if isinstance(interruption, str):
        from dagster._core.errors import DagsterExecutionInterruptedError as interruption
    child = steps.start_child([sys.executable, "-c", "import time; time.sleep(60)"])
    wait = child.wait
    interrupted = []

    def interrupted_once(timeout=None):
        if not interrupted:
            interrupted.append(True)
            raise interruption()
        return wait(timeout=timeout)

    child.wait = interrupted_once
    try:
        with pytest.raises(interruption):
            steps.wait_child(child)
        assert child.poll() is not None, "the step's child outlived it"
        assert child.returncode != 0
    finally:
        if child.poll() is None:
            child.kill()
            wait()


def test_a_step_reads_a_relative_secret_file_from_the_callers_folder_not_the_projects(tmp_path, monkeypatch):
    # the pipeline checks the alert run's webhook file before its load, from the folder it was started
    # in; the alert run, a step, runs in the project's folder and must read that same file
    (tmp_path / "webhook").write_text("from the caller's folder")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLACK_WEBHOOK_URL_FILE", "webhook")
    read = "import os; print(open(os.environ['SLACK_WEBHOOK_URL_FILE']).read())"

    inherited = steps.start_child([sys.executable, "-c", read], stdout=subprocess.PIPE, text=True)
    given = steps.start_child(
        [sys.executable, "-c", read],
        {"SLACK_WEBHOOK_URL_FILE": "webhook"},
        stdout=subprocess.PIPE,
        text=True,
    )

    for child in (inherited, given):
        out, _ = child.communicate(timeout=60)
        assert child.returncode == 0
        assert out == "from the caller's folder\n"
    assert steps.files_from_callers_folder({"PGHOST": "db", "X_FILE": "/run/secrets/x", "Y_FILE": ""}) == {
        "PGHOST": "db",
        "X_FILE": "/run/secrets/x",
        "Y_FILE": "",
    }
