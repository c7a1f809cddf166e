"""The alerter's tables in the ops schema: a watermark per alert and destination, and the delivery history
of every alert per destination; created on the first run, an older layout brought up to date
(ops_migration)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Connection,
    Date,
    DateTime,
    Index,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.schema import CreateIndex, CreateTable

from data_platform.alerts import ops_migration
from data_platform.alerts.errors import AlertError
from data_platform.alerts.records import (
    BALANCE_CHANGE,
    DESTINATION_PATTERN,
    MAX_UNCONFIRMED_ATTEMPTS,
    NEW_BALANCE,
    PENDING,
    SENT,
    SEVERITIES,
    STATUSES,
    SUPERSEDED,
    SUPPRESSED,
    WARNING,
)
from data_platform.db import describe_target

ops = MetaData(schema="ops")


def _one_of(column: str, values: Sequence[str]) -> str:
    return f"{column} in ({', '.join(repr(value) for value in values)})"


# a destination is `console`, `slack` or a route's webhook variable (records.destination_for)
DESTINATION_CHECK = f"destination ~ '{DESTINATION_PATTERN}'"


# per alert and destination: the last day of data processed (the data's dates, capped at today)
watermark = Table(
    "alert_watermark",
    ops,
    Column("alert_name", Text, nullable=False),
    Column("destination", Text, nullable=False),
    Column("last_processed_date", Date, nullable=False),  # last balance_date fully processed
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("alert_name", "destination", name="alert_watermark_pkey"),
    CheckConstraint(DESTINATION_CHECK, name="alert_watermark_destination_check"),
)

# one row per destination, alerting organization and day; a sent row is never sent again
history = Table(
    "alert_history",
    ops,
    Column("destination", Text, nullable=False),
    Column("organization_id", BigInteger, nullable=False),
    Column("balance_date", Date, nullable=False),
    Column("alert_kind", Text, nullable=False),
    Column("previous_balance_usd", Numeric, nullable=False),
    Column("balance_usd", Numeric, nullable=False),
    Column("balance_change_ratio", Numeric),
    Column("status", Text, nullable=False, server_default=PENDING),
    Column("severity", Text, nullable=False, server_default=WARNING),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    # attempts that got no answer (timeout, crash in flight): each may have been accepted
    Column("unanswered_attempts", Integer, nullable=False, server_default=text("0")),
    Column("detected_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_attempt_at", DateTime(timezone=True)),
    Column("sent_at", DateTime(timezone=True)),
    Column("last_error", Text),
    # when a run reported that this alert was given up (its exit code 3); null while not yet reported
    Column("given_up_reported_at", DateTime(timezone=True)),
    # the digest message it was last sent in (records.Digest.digest_id); null: its organization's own
    Column("digest_id", Text),
    # a suppressed alert's --suppress-days window when it was held back, in which every run judges it
    # again (null: recorded before it was kept; judged in the widest window a run can use)
    Column("suppress_days", Integer),
    # the alert explained in words (its console line: the move, severity, the organization, why it moved
    # and its top invoices), written by each run that comes to send it: a sent alert keeps those of the run
    # that sent it, whatever a later rebuild or rules change makes of the marts that explained it (a digest
    # showed only its largest alerts' lines; each of its rows keeps its own)
    Column("alert_text", Text),
    PrimaryKeyConstraint("destination", "organization_id", "balance_date", name="alert_history_pkey"),
    CheckConstraint(DESTINATION_CHECK, name="alert_history_destination_check"),
    CheckConstraint(_one_of("status", STATUSES), name="alert_history_status_check"),
    CheckConstraint(_one_of("severity", SEVERITIES), name="alert_history_severity_check"),
    CheckConstraint(_one_of("alert_kind", (BALANCE_CHANGE, NEW_BALANCE)), name="alert_history_kind_check"),
)

# the undelivered rows are the ones each run reads; sent history only grows
undelivered_index = Index(
    "alert_history_undelivered_idx",
    history.c.destination,
    history.c.status,
    postgresql_where=history.c.status.not_in([SENT, SUPPRESSED]),
)

CLOSED = (SENT, SUPPRESSED, SUPERSEDED)  # never sent (again)


def ensure_tables(conn: Connection) -> None:
    """Create the tables on the first run; bring tables of an older layout up to date."""
    conn.execute(CreateTable(watermark, if_not_exists=True))
    conn.execute(CreateTable(history, if_not_exists=True))
    ops_migration.upgrade(
        conn, _one_of("status", STATUSES), DESTINATION_CHECK, STATUSES, CLOSED, MAX_UNCONFIRMED_ATTEMPTS
    )
    conn.execute(CreateIndex(undelivered_index, if_not_exists=True))


READ_ONLY = "default_transaction_read_only"


def check_writable(conn: Connection) -> None:
    """Refuse a session that may not write, before anything is recorded or sent.

    A read-only role or database (default_transaction_read_only) or a standby server makes the first write
    to ops fail with the very error a marts view that writes in the reader's READ ONLY transaction raises
    (25006): said here, it is not taken for a changed marts.
    """
    found = _read_only(conn)
    if found is None:
        return
    why, fix = found
    raise AlertError(
        f"the alerter cannot record alerts on {describe_target()}: its session is read-only ({why}). "
        f"Nothing was recorded or sent; the marts are not at fault. {fix}, then run it again."
    )


READ_ONLY_TRANSACTION = "25006"  # the SQLSTATE of a write refused in a read-only transaction


def check_still_writable(conn: Connection, error: Exception) -> None:
    """After a write was refused as read-only during the run: when the session itself turned read-only
    (the server's setting changed under it), say so instead of `error`, which is taken for a marts view
    that writes."""
    try:
        conn.rollback()
        found = _read_only(conn)
    except DBAPIError:
        return  # the session is gone too: the caller reports `error`
    if found is None:
        return
    why, fix = found
    raise AlertError(
        f"the alerter stopped recording alerts on {describe_target()}: its session turned read-only during "
        f"the run ({why}). What it recorded stands, and the next run goes on from there, as after a run "
        f"stopped midway; the marts are not at fault. {fix}, then run it again."
    ) from error


def _read_only(conn: Connection) -> tuple[str, str] | None:
    """Why the session may not write and what to do (read_only_reason), or None when it may."""
    read_only, standby, source, role, database = conn.execute(
        text(
            "select current_setting('transaction_read_only') = 'on', pg_is_in_recovery(), "
            "(select source from pg_settings where name = :name), quote_ident(current_user), "
            "quote_ident(current_database())"
        ),
        {"name": READ_ONLY},
    ).one()
    conn.rollback()
    return read_only_reason(standby, source, role, database) if read_only else None


def read_only_reason(standby: bool, source: str, role: str, database: str) -> tuple[str, str]:
    """Why a session is read-only, and what to do: a standby, or where default_transaction_read_only
    was set (pg_settings.source); `role` and `database` quoted as SQL identifiers (the server's quote_ident:
    a reserved word such as `user` is quoted too)."""
    if standby:
        return (
            "the server is a standby (in recovery), which takes no writes",
            "Point PGHOST and PGPORT at the primary (after a failover, the promoted server)",
        )
    return {
        "database user": (
            f"{READ_ONLY} is on for role {role} in database {database}",
            f"Turn it off: ALTER ROLE {role} IN DATABASE {database} RESET {READ_ONLY}",
        ),
        "user": (
            f"{READ_ONLY} is on for role {role}",
            f"Turn it off: ALTER ROLE {role} RESET {READ_ONLY}",
        ),
        "database": (
            f"{READ_ONLY} is on for database {database}",
            f"Turn it off: ALTER DATABASE {database} RESET {READ_ONLY}",
        ),
        "client": (f"{READ_ONLY} is on in PGOPTIONS", "Remove it from PGOPTIONS"),
    }.get(
        source,
        (
            f"{READ_ONLY} is on (pg_settings names its source: {source})",
            f"Turn it off for the alerter: ALTER ROLE {role} SET {READ_ONLY} = off",
        ),
    )
