"""One place for database connections.

Every component connects through libpq's standard variables (PGHOST, PGPORT, PGUSER,
PGPASSWORD, PGDATABASE), so the loader, dbt, the alert script and the tests all agree
on the target without a config file of their own.
"""

from __future__ import annotations

import os

import psycopg

LIBPQ_VARIABLES = ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE")


class DatabaseUnavailable(RuntimeError):
    """The database named by the PG* variables could not be reached."""


def describe_target() -> str:
    """The connection target as user@host:port/database, never with the password."""
    host = os.environ.get("PGHOST", "localhost")
    port = os.environ.get("PGPORT", "5432")
    user = os.environ.get("PGUSER", os.environ.get("USER", "?"))
    database = os.environ.get("PGDATABASE", user)
    return f"{user}@{host}:{port}/{database}"


def connect(**kwargs) -> psycopg.Connection:
    """Open a psycopg connection from the PG* environment variables."""
    try:
        return psycopg.connect("", **kwargs)
    except psycopg.OperationalError as error:
        raise DatabaseUnavailable(
            f"cannot connect to {describe_target()}: {str(error).strip()}\n"
            "Check PGHOST, PGPORT, PGUSER, PGPASSWORD and PGDATABASE."
        ) from error
