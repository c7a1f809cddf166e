"""Database errors in words a person can act on: which role, which side (the marts or ops), what to do.
The driver's message only, never the SQL or its parameters."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError

from data_platform.db import describe_target

PIPELINE_HINT = "run the pipeline first (init.sh)"


class AlertError(RuntimeError):
    """A configuration or database problem: the message tells the user what to do."""


class AlertRunBusy(AlertError):
    """Another alert run held the lock too long: nothing is wrong, nothing was sent."""


def db_message(error: DBAPIError) -> str:
    # the driver's own message (never the SQL or parameters SQLAlchemy would append)
    return " ".join(str(error.orig).split()) if error.orig is not None else type(error).__name__


def _role() -> str:
    return describe_target().split("@", 1)[0]


def database_error(error: DBAPIError) -> str:
    sqlstate = getattr(error.orig, "sqlstate", None)
    message = f"database error on {describe_target()}: {db_message(error)}"
    if sqlstate == "42P01":  # undefined table: dropped between our check and the query
        return f"{message}: {PIPELINE_HINT}."
    if sqlstate == "42501":  # insufficient privilege: say which side is missing, for which role
        role = _role()
        if " schema ops" in message or " table alert_" in message:
            return (
                f"{message}. Role {role} may not write the alerts' state: run as the role that owns the "
                "ops schema (the alerter; ALERTER_USER in init.sh)."
            )
        if " schema marts" in message or " table " in message or " view " in message:
            return (
                f"{message}. Role {role} may not read the marts: dbt grants select on them to "
                f"ALERTER_USER (+grants in dbt/dbt_project.yml); rebuild with ALERTER_USER={role}, or "
                "run as the role they were granted to."
            )
        return f"{message}. Role {role} lacks a privilege the alert run needs."
    # a write inside the reader's READ ONLY marts transaction: the ops session, the only one that writes,
    # was found writable before the run and after such an error (ops_tables.check_writable and
    # check_still_writable)
    if sqlstate == "25006":
        return (
            f"{message}: something in marts tried to write while the alerter read it, and was stopped; "
            "nothing was recorded. The marts are not what dbt built: check who changed them, then "
            "rebuild (FULL_REFRESH=true ./init.sh)."
        )
    return message
