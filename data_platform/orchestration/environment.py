"""os.environ swapped for a block: dagster-dbt's DbtCliResource hands dbt the process environment, so a
build plan's variables (LEDGER_WINDOW_START) reach dbt only through it. Safe because each step runs alone
in its process; the tests use it to stand for a daemon's environment."""

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager


@contextmanager
def process_environment(env: Mapping[str, str]) -> Iterator[None]:
    """os.environ replaced by `env` for the block, restored after."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
