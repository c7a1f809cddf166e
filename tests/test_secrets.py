"""data_platform.secrets: NAME_FILE (Docker secrets) resolved into NAME; errors never show a value."""

from __future__ import annotations

import os
import subprocess
import sys
import traceback

import pytest
from conftest import PROJECT_ROOT

from data_platform import secrets

SECRET = "s3cret-value"


def write(tmp_path, content: bytes, name: str = "secret"):
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize(
    ("content", "value"),
    [
        (b"s3cret\n", "s3cret"),  # what `echo pw > file` writes
        (b"s3cret", "s3cret"),
        (b"s3cret\r\n", "s3cret"),
        (b"s3cret\n\n", "s3cret\n"),  # one newline only: the rest is part of the value
        (b"s3cret\n\r\n", "s3cret\n"),  # one line end, of either kind, not one of each
        (b"  spaced pass \n", "  spaced pass "),
        ("pässwörd\n".encode(), "pässwörd"),
    ],
)
def test_a_file_gives_its_content_minus_one_trailing_newline(tmp_path, content, value):
    env = {"PGPASSWORD_FILE": write(tmp_path, content)}
    assert secrets.resolve(env) == {"PGPASSWORD": value}


def test_only_names_with_a_file_are_resolved(tmp_path):
    env = {
        "PGPASSWORD": "plain",
        "SLACK_WEBHOOK_URL_FILE": write(tmp_path, b"https://hooks.example.invalid/T/B/x\n"),
        "ALERTER_PASSWORD_FILE": "",  # empty counts as unset
    }
    assert secrets.resolve(env) == {"SLACK_WEBHOOK_URL": "https://hooks.example.invalid/T/B/x"}


@pytest.mark.parametrize("plain", ["", " \t"])
def test_an_empty_or_blank_plain_variable_gives_way_to_its_file(tmp_path, plain):
    # compose files often set NAME: "" by default; only spaces counts as unset too, as in every other
    # setting, so the file's value is used rather than "both set"
    env = {"PGPASSWORD": plain, "PGPASSWORD_FILE": write(tmp_path, b"from-file\n")}
    assert secrets.resolve(env) == {"PGPASSWORD": "from-file"}


def test_both_set_is_an_error_naming_both_and_neither_value(tmp_path):
    env = {"ALERTER_PASSWORD": "plain-value", "ALERTER_PASSWORD_FILE": write(tmp_path, SECRET.encode())}
    with pytest.raises(secrets.SecretError) as raised:
        secrets.resolve(env)
    message = str(raised.value)
    assert "ALERTER_PASSWORD and ALERTER_PASSWORD_FILE are both set: set only one" in message
    assert "plain-value" not in message and SECRET not in message


@pytest.mark.parametrize(
    ("make_path", "reason"),
    [
        (lambda tmp_path: str(tmp_path / "missing"), "No such file or directory"),
        (lambda tmp_path: str(tmp_path), "Is a directory"),
    ],
)
def test_an_unreadable_file_is_an_error_naming_the_variable_and_path(tmp_path, make_path, reason):
    path = make_path(tmp_path)
    with pytest.raises(secrets.SecretError) as raised:
        secrets.resolve({"PGPASSWORD_FILE": path})
    assert str(raised.value).startswith(f"PGPASSWORD_FILE={path}: cannot read the file ({reason})")


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"\xffs3cret\xfe", "is not UTF-8 text"), (b"s3c\0ret", "contains a NUL byte")],
)
def test_content_no_variable_can_hold_is_refused_without_showing_it(tmp_path, content, problem):
    with pytest.raises(secrets.SecretError) as raised:
        secrets.resolve({"SLACK_WEBHOOK_URL_FILE": write(tmp_path, content)})
    message = str(raised.value)
    assert problem in message
    assert "s3c" not in message and "\\xff" not in message and "0xff" not in message


def test_an_undecodable_file_shows_none_of_its_bytes_in_the_traceback_either(tmp_path):
    # the decoding error quotes the byte it stopped at: chained, a printed traceback would show it
    path = write(tmp_path, b"s3c\xd7ret")
    with pytest.raises(secrets.SecretError) as raised:
        secrets.resolve({"SLACK_WEBHOOK_URL_FILE": path})
    shown = "".join(traceback.format_exception(raised.value))
    assert "is not UTF-8 text" in shown
    assert "0xd7" not in shown and "s3c" not in shown


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\n", b"  \n", b"\t"])
def test_an_empty_or_blank_file_is_an_error_not_an_unset_value(tmp_path, content):
    # taken as unset, it gave the demo password or no webhook at all, without a word
    path = write(tmp_path, content)
    with pytest.raises(secrets.SecretError) as raised:
        secrets.resolve({"SLACK_WEBHOOK_URL_FILE": path})
    assert str(raised.value) == (
        f"SLACK_WEBHOOK_URL_FILE={path}: the file is empty; put the value in it or unset the variable"
    )


def test_the_shell_exports_give_back_the_exact_values_and_unset_the_file_variables(tmp_path):
    # quotes, $, backslashes, spaces and newlines survive eval in bash; what init.sh runs next must see
    # one source of each value, or a child that resolves the secrets again fails with "both set"
    tricky = "a'b\"c $HOME `x` \\n\nsecond line "
    env = {
        **os.environ,
        "PGPASSWORD": "",
        "PGPASSWORD_FILE": write(tmp_path, tricky.encode() + b"\n"),
        "SLACK_WEBHOOK_URL_FILE": write(tmp_path, b"https://hooks.example.invalid/x?token=t\n", "hook"),
    }
    script = (
        f'exports="$("{sys.executable}" -m data_platform.secrets shell-exports)"; eval "$exports"; '
        'printf "%s\\0%s\\0%s\\0%s" "$PGPASSWORD" "$SLACK_WEBHOOK_URL" '
        '"${PGPASSWORD_FILE-unset}" "${SLACK_WEBHOOK_URL_FILE-unset}"'
    )
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split("\0") == [
        tricky,
        "https://hooks.example.invalid/x?token=t",
        "unset",
        "unset",
    ]


def test_the_command_fails_with_exit_2_and_prints_no_exports(tmp_path):
    env = {**os.environ, "PGPASSWORD": SECRET, "PGPASSWORD_FILE": write(tmp_path, b"other")}
    result = subprocess.run(
        [sys.executable, "-m", "data_platform.secrets", "shell-exports"],
        env=env,
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: PGPASSWORD and PGPASSWORD_FILE are both set")
    assert SECRET not in result.stderr


def test_apply_to_environ_resolves_into_the_environment_and_unsets_the_file_variables(tmp_path):
    environ = {
        "PGPASSWORD_FILE": write(tmp_path, b"from-file\n"),
        "SLACK_WEBHOOK_URL": "https://hooks.example.invalid/plain",
        "OTHER": "kept",
    }
    secrets.apply_to_environ(environ)
    assert environ == {
        "PGPASSWORD": "from-file",
        "SLACK_WEBHOOK_URL": "https://hooks.example.invalid/plain",
        "OTHER": "kept",
    }


def test_apply_to_environ_resolves_the_usable_files_and_returns_the_errors_of_the_others(tmp_path):
    # a long-running process must keep working; what needs the value resolves it again and fails
    environ = {
        "PGPASSWORD_FILE": write(tmp_path, b"fine\n"),
        "ALERTER_PASSWORD_FILE": str(tmp_path / "missing"),
        "SLACK_WEBHOOK_URL": "https://hooks.example.invalid/plain",
        "SLACK_WEBHOOK_URL_FILE": write(tmp_path, b"https://hooks.example.invalid/file\n", "webhook"),
    }
    broken = {
        name: environ[name]
        for name in ("ALERTER_PASSWORD_FILE", "SLACK_WEBHOOK_URL", "SLACK_WEBHOOK_URL_FILE")
    }
    errors = secrets.apply_to_environ(environ)
    assert [str(error).split(":")[0].split(" ")[0] for error in errors] == [
        f"ALERTER_PASSWORD_FILE={tmp_path / 'missing'}",
        "SLACK_WEBHOOK_URL",
    ]
    assert environ == {"PGPASSWORD": "fine", **broken}
    with pytest.raises(secrets.SecretError, match="ALERTER_PASSWORD_FILE"):
        secrets.resolve(environ)


def test_apply_to_environ_goes_on_past_an_unusable_first_variable(tmp_path):
    # the first name's error leaves nothing resolved for it: the next names are still resolved
    environ = {
        "PGPASSWORD_FILE": str(tmp_path / "missing"),
        "ALERTER_PASSWORD_FILE": write(tmp_path, b"alerter-pw\n"),
    }
    errors = secrets.apply_to_environ(environ)
    assert [str(error).split(":")[0] for error in errors] == [f"PGPASSWORD_FILE={tmp_path / 'missing'}"]
    assert environ == {"PGPASSWORD_FILE": str(tmp_path / "missing"), "ALERTER_PASSWORD": "alerter-pw"}


def run_dagster_process(tmp_path, code: str, **extra: str) -> subprocess.CompletedProcess:
    """`code` in a new Python process with a Dagster process's environment, PGPASSWORD in a secret file."""
    from orchestration_support import dagster_env

    env = dagster_env(
        PGPASSWORD="",
        PGPASSWORD_FILE=write(tmp_path, b"pw-from-file\n"),
        DBT_TARGET_PATH=str(tmp_path / "target"),
        DBT_LOG_PATH=str(tmp_path / "logs"),
        **extra,
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=300
    )


@pytest.mark.slow  # imports Dagster and parses the dbt project (about 10 s)
def test_the_dagster_processes_resolve_the_secret_files_when_they_load_their_definitions(tmp_path):
    # the daily profile's webserver, daemon and run workers never run init.sh
    code = (
        "import os, data_platform.orchestration.definitions; "
        "print(os.environ['PGPASSWORD'], 'PGPASSWORD_FILE' in os.environ)"
    )
    result = run_dagster_process(tmp_path, code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["pw-from-file", "False"]


@pytest.mark.slow  # imports Dagster and parses the dbt project (about 10 s)
def test_an_unusable_secret_file_fails_every_step_but_not_the_definitions(tmp_path):
    # the definitions hold the schedule and the sensors, the failure alerts among them: they must load
    code = """
import os
from dagster import Failure, build_asset_context
from data_platform.orchestration import definitions
from data_platform.orchestration.assets import raw_tables
print(len(definitions.defs.resolve_all_job_defs()), os.environ["PGPASSWORD"])
try:
    raw_tables(build_asset_context())
except Failure as failure:
    print("step failed:", failure.description)
"""
    result = run_dagster_process(tmp_path, code, SLACK_WEBHOOK_URL_FILE=str(tmp_path / "missing"))
    assert result.returncode == 0, result.stderr
    missing = f"SLACK_WEBHOOK_URL_FILE={tmp_path / 'missing'}: cannot read the file"
    assert f"error: {missing}" in result.stderr
    loaded, outcome = result.stdout.strip().split("\n", 1)
    jobs, password = loaded.split()
    assert int(jobs) >= 1 and password == "pw-from-file"
    assert outcome.startswith(f"step failed: {missing}"), result.stdout
