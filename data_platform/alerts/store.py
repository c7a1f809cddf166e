"""The alerter's own state in the ops schema: watermark, alert history, and the run lock.

The ops schema exists from init.sql and belongs to the alerter role; the tables are created on the
first run (create table if not exists), under the advisory lock so two first runs cannot race.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

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
    Select,
    Table,
    Text,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.schema import CreateIndex, CreateTable

from data_platform.alerts import detect

# One run at a time per database: session-level advisory lock on this key ("dp_alert" in ASCII).
LOCK_KEY = 0x64705F616C657274
WATERMARK_NAME = "organization_balance_change"

PENDING, SENT, FAILED = "pending", "sent", "failed"

ops = MetaData(schema="ops")

# per alert: the last day of data processed (the data's dates, never the clock)
watermark = Table(
    "alert_watermark",
    ops,
    Column("alert_name", Text, primary_key=True),
    Column("last_processed_date", Date, nullable=False),  # last balance_date fully processed
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# one row per alerting organization and day; a sent row is never sent again
history = Table(
    "alert_history",
    ops,
    Column("organization_id", BigInteger, nullable=False),
    Column("balance_date", Date, nullable=False),
    Column("alert_kind", Text, nullable=False),
    Column("previous_balance_usd", Numeric, nullable=False),
    Column("balance_usd", Numeric, nullable=False),
    Column("balance_change_ratio", Numeric),
    Column("status", Text, nullable=False, server_default=PENDING),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("detected_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_attempt_at", DateTime(timezone=True)),
    Column("sent_at", DateTime(timezone=True)),
    Column("delivered_via", Text),  # slack or stdout
    Column("last_error", Text),
    PrimaryKeyConstraint("organization_id", "balance_date", name="alert_history_pkey"),
    CheckConstraint(f"status in ('{PENDING}', '{SENT}', '{FAILED}')", name="alert_history_status_check"),
    CheckConstraint(
        f"alert_kind in ('{detect.BALANCE_CHANGE}', '{detect.NEW_BALANCE}')", name="alert_history_kind_check"
    ),
)

# the undelivered rows are the ones each run reads; sent history only grows
undelivered_index = Index(
    "alert_history_undelivered_idx", history.c.status, postgresql_where=history.c.status != SENT
)


def ensure_tables(conn: Connection) -> None:
    """create table / index if not exists: the first run sets up ops, later runs change nothing."""
    conn.execute(CreateTable(watermark, if_not_exists=True))
    conn.execute(CreateTable(history, if_not_exists=True))
    conn.execute(CreateIndex(undelivered_index, if_not_exists=True))


class LockBusy(RuntimeError):
    """Another alert run holds the lock for longer than we are willing to wait."""


@contextmanager
def run_lock(conn: Connection, timeout: float, poll: float = 0.2) -> Iterator[None]:
    """Hold the session-level advisory lock for the whole run, delivery included.

    A second run waits (polling pg_try_advisory_lock) and then finds the alerts already sent;
    after `timeout` seconds it gives up with LockBusy. The lock dies with the connection, so a
    killed run never leaves it behind.
    """
    deadline = time.monotonic() + timeout
    while not conn.execute(select(func.pg_try_advisory_lock(LOCK_KEY))).scalar_one():
        conn.rollback()
        if time.monotonic() >= deadline:
            raise LockBusy(f"another alert run still holds the lock after {timeout:g} s")
        time.sleep(poll)
    conn.commit()
    try:
        yield
    finally:
        try:
            conn.rollback()
            conn.execute(select(func.pg_advisory_unlock(LOCK_KEY)))
            conn.commit()
        except DBAPIError:
            pass  # connection broken: closing it releases the lock anyway; keep the original error


def read_watermark(conn: Connection) -> date | None:
    return conn.execute(
        select(watermark.c.last_processed_date).where(watermark.c.alert_name == WATERMARK_NAME)
    ).scalar_one_or_none()


def write_watermark(conn: Connection, day: date) -> None:
    """Move the watermark to `day`; never backwards."""
    statement = pg_insert(watermark).values(alert_name=WATERMARK_NAME, last_processed_date=day)
    newer = func.greatest(watermark.c.last_processed_date, statement.excluded.last_processed_date)
    statement = statement.on_conflict_do_update(
        index_elements=[watermark.c.alert_name],
        set_={
            "last_processed_date": newer,
            "updated_at": func.now(),
        },
    )
    conn.execute(statement)


def record_alerts(conn: Connection, alerts: Select) -> int:
    """Insert the detected alerts as pending; ones already recorded (any status) are left alone.

    Returns how many are new. Runs in Postgres (insert ... select): a backfill never pulls the fact
    into Python.
    """
    columns = ["organization_id", "balance_date", "alert_kind", "previous_balance_usd", "balance_usd"]
    columns.append("balance_change_ratio")
    statement = (
        pg_insert(history)
        .from_select(columns, alerts)
        .on_conflict_do_nothing(index_elements=[history.c.organization_id, history.c.balance_date])
    )
    return conn.execute(statement).rowcount


@dataclass(frozen=True)
class Organization:
    """Context from marts.dim_organizations; None fields when unknown."""

    organization_id: int
    in_warehouse: bool  # False when dim_organizations has no row at all
    is_missing_from_organizations_file: bool | None = None
    count_total_contracts_active: int | None = None
    first_payment_date: date | None = None
    last_payment_date: date | None = None


@dataclass(frozen=True)
class Alert:
    organization_id: int
    balance_date: date
    alert_kind: str
    previous_balance_usd: Decimal
    balance_usd: Decimal
    balance_change_ratio: Decimal | None
    status: str = PENDING
    attempts: int = 0


@dataclass(frozen=True)
class Batch:
    """The alerts of one organization delivered as one message."""

    organization: Organization
    alerts: tuple[Alert, ...]


def undelivered(conn: Connection, max_days_per_message: int = 20) -> list[Batch]:
    """Every alert not yet sent (new, or failed on an earlier run), grouped per organization."""
    dim = detect.organizations
    rows = conn.execute(
        select(
            history.c.organization_id,
            history.c.balance_date,
            history.c.alert_kind,
            history.c.previous_balance_usd,
            history.c.balance_usd,
            history.c.balance_change_ratio,
            history.c.status,
            history.c.attempts,
            (dim.c.organization_id.is_not(None)).label("in_warehouse"),
            dim.c.is_missing_from_organizations_file,
            dim.c.count_total_contracts_active,
            dim.c.first_payment_date,
            dim.c.last_payment_date,
        )
        .select_from(history.outerjoin(dim, dim.c.organization_id == history.c.organization_id))
        .where(history.c.status != SENT)
        .order_by(history.c.organization_id, history.c.balance_date)
    ).all()

    batches: list[Batch] = []
    current: list[Alert] = []
    organization: Organization | None = None
    for row in rows:
        if (
            organization is None
            or organization.organization_id != row.organization_id
            or (len(current) >= max_days_per_message)
        ):
            if organization is not None:
                batches.append(Batch(organization, tuple(current)))
            organization = Organization(
                organization_id=row.organization_id,
                in_warehouse=row.in_warehouse,
                is_missing_from_organizations_file=row.is_missing_from_organizations_file,
                count_total_contracts_active=row.count_total_contracts_active,
                first_payment_date=row.first_payment_date,
                last_payment_date=row.last_payment_date,
            )
            current = []
        current.append(
            Alert(
                organization_id=row.organization_id,
                balance_date=row.balance_date,
                alert_kind=row.alert_kind,
                previous_balance_usd=row.previous_balance_usd,
                balance_usd=row.balance_usd,
                balance_change_ratio=row.balance_change_ratio,
                status=row.status,
                attempts=row.attempts,
            )
        )
    if organization is not None:
        batches.append(Batch(organization, tuple(current)))
    return batches


def record_outcome(
    conn: Connection, batch: Batch, *, delivered: bool, via: str, error: str | None, attempted: bool = True
) -> None:
    """Mark one message's alerts sent (never to be sent again) or failed (retried next run).

    attempted=False: the run gave up on the channel before reaching this message; it is marked
    failed with the reason, without counting an attempt.
    """
    days = [alert.balance_date for alert in batch.alerts]
    values: dict[str, object] = {}
    if attempted:
        values.update(attempts=history.c.attempts + 1, last_attempt_at=func.clock_timestamp())
    if delivered:
        values.update(status=SENT, sent_at=func.clock_timestamp(), delivered_via=via, last_error=None)
    else:
        values.update(status=FAILED, last_error=error)
    conn.execute(
        update(history)
        .where(
            history.c.organization_id == batch.organization.organization_id,
            history.c.balance_date.in_(days),
            history.c.status != SENT,
        )
        .values(**values)
    )
