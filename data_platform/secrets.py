"""Secrets from files (Docker secrets): NAME_FILE names a file holding NAME's value.

Compose mounts each secret as a file under /run/secrets, so `docker compose config` and `docker inspect`
show only its path. init.sh calls

    python -m data_platform.secrets shell-exports

and evaluates the `export NAME=...` lines it prints, so dbt, the loader and the alert script read the
plain variables as before. The daily profile's Dagster processes never run init.sh: loading their
definitions calls `apply_to_environ()`, which does the same to their own environment, and each step of
a run checks again: a secret file that cannot be used fails the run with its error, as it fails init.sh,
while the schedule and the sensors (the failure alerts among them) keep running.

A file's content is the value with one trailing newline (LF or CRLF) removed; an empty or blank file is
an error. An empty variable counts as unset, as in the postgres image's own POSTGRES_PASSWORD_FILE.
Errors name the variable and the file, never the content.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from pathlib import Path

# What the pipeline container reads: the transformer's and the alerter's passwords, the Slack webhook.
SECRET_VARIABLES = ("PGPASSWORD", "ALERTER_PASSWORD", "SLACK_WEBHOOK_URL")


class SecretError(ValueError):
    """A NAME_FILE variable cannot be used; the message says which one and why."""


def file_variable(name: str) -> str:
    return f"{name}_FILE"


def read_secret_file(name: str, path: str) -> str:
    """The value of `name` stored in `path`, without one trailing line end (\n or \r\n, as init.sql)."""
    source = f"{file_variable(name)}={path}"
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        message = f"{source}: cannot read the file ({reason}); mount it readable or unset the variable"
        raise SecretError(message) from None
    try:
        value = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError(f"{source}: the file is not UTF-8 text") from None
    if "\0" in value:
        raise SecretError(f"{source}: the file contains a NUL byte, which no environment variable can hold")
    for line_end in ("\r\n", "\n"):
        if value.endswith(line_end):
            value = value[: -len(line_end)]
            break
    if not value.strip():
        # an empty secret would pass as unset: the demo's password, or no webhook at all
        raise SecretError(f"{source}: the file is empty; put the value in it or unset the variable")
    return value


def resolve(environ: Mapping[str, str], names: Iterable[str] = SECRET_VARIABLES) -> dict[str, str]:
    """{NAME: value} for every NAME whose NAME_FILE is set; raise SecretError when one cannot be used."""
    resolved = {}
    for name in names:
        path = environ.get(file_variable(name), "")
        if not path:
            continue
        if environ.get(name, "").strip():
            raise SecretError(
                f"{name} and {file_variable(name)} are both set: set only one "
                f"({file_variable(name)} for a secrets file, {name} for a plain value)"
            )
        resolved[name] = read_secret_file(name, path)
    return resolved


def shell_exports(values: Mapping[str, str]) -> str:
    """`export NAME=value` lines, quoted for a POSIX shell's eval, each unsetting its NAME_FILE: what runs
    next sees one source of the value, never both."""
    return "".join(
        f"export {name}={shlex.quote(value)}\nunset {file_variable(name)}\n" for name, value in values.items()
    )


def apply_to_environ(environ: MutableMapping[str, str] | None = None) -> list[SecretError]:
    """Resolve every usable NAME_FILE into NAME in `environ` (default os.environ) and unset NAME_FILE, as
    init.sh's eval of shell_exports() does for its own process and children. A NAME_FILE that cannot be
    used is left as it is and its error returned: a long-running process (the Dagster daemon) must keep
    working, and whatever needs that value later resolves it again and fails with the same error."""
    environ = os.environ if environ is None else environ
    errors = []
    for name in SECRET_VARIABLES:
        try:
            values = resolve(environ, [name])
        except SecretError as error:
            errors.append(error)
            continue
        if name in values:
            environ[name] = values[name]
            del environ[file_variable(name)]
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_platform.secrets", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "shell-exports",
        help=f"print `export NAME=...` for each of {', '.join(SECRET_VARIABLES)} whose NAME_FILE is set",
    )
    parser.parse_args(argv)

    try:
        values = resolve(os.environ, list(SECRET_VARIABLES))
    except SecretError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(shell_exports(values))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
