"""The alerter's own state in the ops schema: watermark and delivery history per destination, and
the run lock.

The ops schema exists from init.sql and belongs to the alerter role; the tables (ops_tables) are created
on the first run, under the advisory lock so two first runs cannot race. Nothing here reads the marts:
the marts are read in a separate read-only transaction (detect).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Date,
    FromClause,
    Text,
    and_,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError

from data_platform.alerts.keys import organization_days_in, organization_ids_in
from data_platform.alerts.ops_tables import CLOSED, history, watermark
from data_platform.alerts.records import (
    CONSOLE,
    FAILED,
    MAX_UNCONFIRMED_ATTEMPTS,
    PENDING,
    SENT,
    SUPERSEDED,
    SUPPRESSED,
    UNKNOWN,
    Alert,
    Digest,
)

# One run at a time per database: session-level advisory lock on this key ("dp_alert" in ASCII).
LOCK_KEY = 0x64705F616C657274
WATERMARK_NAME = "organization_balance_change"


def _may_still_be_sent(table: FromClause) -> ColumnElement[bool]:
    """Never sent, and fewer unanswered attempts than the at-most-twice promise allows; `table`: the
    history table or an alias of it."""
    return and_(table.c.status.not_in(CLOSED), table.c.unanswered_attempts < MAX_UNCONFIRMED_ATTEMPTS)


def _alerted(table: FromClause) -> ColumnElement[bool]:
    """Sent, or may still be: what holds a later alert back (--suppress-days)."""
    return or_(table.c.status == SENT, _may_still_be_sent(table))


_deliverable = _may_still_be_sent(history)
# a superseded alert was never sent: reopened when its day alerts again
_revivable = and_(history.c.status == SUPERSEDED, history.c.unanswered_attempts < MAX_UNCONFIRMED_ATTEMPTS)
# held back by --suppress-days
_held_back = history.c.status == SUPPRESSED


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


def read_watermark(conn: Connection, destination: str) -> date | None:
    return conn.execute(
        select(watermark.c.last_processed_date).where(
            watermark.c.alert_name == WATERMARK_NAME, watermark.c.destination == destination
        )
    ).scalar_one_or_none()


def write_watermark(conn: Connection, destination: str, day: date) -> None:
    """Move the destination's watermark to `day`; never backwards."""
    statement = pg_insert(watermark).values(
        alert_name=WATERMARK_NAME, destination=destination, last_processed_date=day
    )
    newer = func.greatest(watermark.c.last_processed_date, statement.excluded.last_processed_date)
    statement = statement.on_conflict_do_update(
        index_elements=[watermark.c.alert_name, watermark.c.destination],
        set_={"last_processed_date": newer, "updated_at": func.now()},
    )
    conn.execute(statement)


# what an alert says, from the fact and the noise settings: recorded, updated after a rebuild, reopened
_NUMBERS = ("alert_kind", "previous_balance_usd", "balance_usd", "balance_change_ratio", "severity")


def _numbers(alert: Alert) -> dict[str, object]:
    return {column: getattr(alert, column) for column in _NUMBERS}


def _held_back_or_pending(held_back: bool, suppress_days: int) -> dict[str, object]:
    if held_back:
        return {"status": SUPPRESSED, "suppress_days": suppress_days}
    return {"status": PENDING, "suppress_days": None}


def record_alerts(
    conn: Connection,
    destination: str,
    alerts: Sequence[Alert],
    chunk: int = 1000,
    suppressed: frozenset[tuple[int, date]] | set[tuple[int, date]] = frozenset(),
    suppress_days: int = 0,
) -> int:
    """Insert the detected alerts as pending for `destination` (`suppressed` for the organization-days
    given); ones already recorded are left alone, so a rebuilt fact never re-sends a day, except a
    `superseded` one, which was never sent: its day alerts again, so it is reopened with the new
    numbers (its attempts kept, so it is still sent at most twice). A suppressed one keeps the window,
    `suppress_days`, it was held back under. Returns how many of the rows new or reopened are suppressed
    (an alert recorded before keeps its status, whatever the suppression rule says now)."""
    suppressed_rows = 0
    for offset in range(0, len(alerts), chunk):
        rows = [
            {
                "destination": destination,
                "organization_id": alert.organization_id,
                "balance_date": alert.balance_date,
                **_numbers(alert),
                **_held_back_or_pending(
                    (alert.organization_id, alert.balance_date) in suppressed, suppress_days
                ),
            }
            for alert in alerts[offset : offset + chunk]
        ]
        insert = pg_insert(history).values(rows)
        reopened = (*_NUMBERS, "status", "suppress_days", "detected_at")
        reopen = {column: insert.excluded[column] for column in reopened}
        statement = insert.on_conflict_do_update(
            constraint="alert_history_pkey",
            set_={**reopen, "last_error": None, "digest_id": None},
            where=history.c.status == SUPERSEDED,
        ).returning(history.c.status)
        statuses = conn.execute(statement).scalars().all()
        suppressed_rows += statuses.count(SUPPRESSED)
    return suppressed_rows


def recorded_elsewhere(conn: Connection, destination: str, alerts: Sequence[Alert]) -> set[tuple[int, date]]:
    """The organization-days of `alerts` that another destination was sent or may still send and
    `destination` has not: the routes sent them there when they were recorded (a route removed, then put
    back), and an alert stays with the destination it was recorded for. Not one that was sent to no one
    (suppressed, superseded) or only printed (console rows: printing is a view, not a delivery)."""
    if not alerts:
        return set()
    keys = {(alert.organization_id, alert.balance_date) for alert in alerts}
    rows = conn.execute(
        select(history.c.destination, history.c.organization_id, history.c.balance_date).where(
            history.c.destination != CONSOLE,
            history.c.status.not_in([SUPPRESSED, SUPERSEDED]),
            organization_days_in(history.c.organization_id, history.c.balance_date, keys),
        )
    ).all()
    own = {(row.organization_id, row.balance_date) for row in rows if row.destination == destination}
    return {(row.organization_id, row.balance_date) for row in rows if row.destination != destination} - own


def undelivered(conn: Connection, destination: str) -> list[Alert]:
    """Every alert the destination may still be sent, by organization and day."""
    return _alerts(conn, destination, _deliverable)


def superseded(conn: Connection, destination: str) -> list[Alert]:
    """The destination's superseded alerts, never sent, that could still be (their day may alert again)."""
    return _alerts(conn, destination, _revivable)


def held_back(conn: Connection, destination: str) -> list[tuple[Alert, int | None]]:
    """The destination's alerts held back by --suppress-days, each with the window (days) it was held
    back under (None: held back before windows were kept)."""
    found = []
    for row in conn.execute(_select_alerts(destination, _held_back).add_columns(history.c.suppress_days)):
        fields = dict(row._mapping)
        window = fields.pop("suppress_days")
        found.append((Alert(**fields), window))
    return found


def _alerts(conn: Connection, destination: str, condition) -> list[Alert]:
    return [Alert(**row._mapping) for row in conn.execute(_select_alerts(destination, condition))]


def _select_alerts(destination: str, condition):
    return (
        select(
            history.c.organization_id,
            history.c.balance_date,
            history.c.alert_kind,
            history.c.previous_balance_usd,
            history.c.balance_usd,
            history.c.balance_change_ratio,
            history.c.status,
            history.c.attempts,
            history.c.severity,
        )
        .where(history.c.destination == destination, condition)
        .order_by(history.c.organization_id, history.c.balance_date)
    )


def rechecked_organization_days(conn: Connection, destinations: Sequence[str]) -> set[tuple[int, date]]:
    """The organization-days whose alert for any of `destinations` is still waiting, superseded, or held
    back: each run reads the fact of those days as it is now (a rebuild may have changed them, or what
    holds them back)."""
    return {
        (row.organization_id, row.balance_date)
        for row in conn.execute(
            select(history.c.organization_id, history.c.balance_date)
            .distinct()
            .where(history.c.destination.in_(destinations), or_(_deliverable, _revivable, _held_back))
        )
    }


def recent_alerts(
    conn: Connection, destination: str, organization_ids: Sequence[int], since: date
) -> dict[int, list[tuple[date, str]]]:
    """(day, severity) of each organization's alerts from `since` on that were sent or may still be: not
    one held back, superseded, or given up (never confirmed: the channel may never have had it)."""
    found: dict[int, list[tuple[date, str]]] = {}
    rows = conn.execute(
        select(history.c.organization_id, history.c.balance_date, history.c.severity).where(
            history.c.destination == destination,
            organization_ids_in(history.c.organization_id, organization_ids),
            history.c.balance_date >= since,
            _alerted(history),
        )
    )
    for row in rows:
        found.setdefault(row.organization_id, []).append((row.balance_date, row.severity))
    return found


def undelivered_elsewhere(conn: Connection, destinations: Sequence[str]) -> dict[str, int]:
    """{destination: alerts it may still be sent} for each destination not among `destinations`: a route
    removed or renamed since they were recorded. Console rows aside: printing is a view, not a delivery."""
    rows = conn.execute(
        select(history.c.destination, func.count())
        .where(history.c.destination.not_in([*destinations, CONSOLE]), _deliverable)
        .group_by(history.c.destination)
        .order_by(history.c.destination)
    )
    return {destination: count for destination, count in rows}


_given_up = and_(history.c.status.not_in(CLOSED), history.c.unanswered_attempts >= MAX_UNCONFIRMED_ATTEMPTS)


def given_up_count(conn: Connection, destination: str) -> int:
    """Alerts never confirmed and not sent again: every allowed attempt went unanswered."""
    return conn.execute(
        select(func.count()).where(history.c.destination == destination, _given_up)
    ).scalar_one()


def report_given_up(conn: Connection, destination: str) -> int:
    """Mark the given-up alerts no run has reported yet as reported now; how many were reported. The run
    that commits this says so with its exit code, so a run that died during an alert's last attempt
    leaves the report to the next run. A given-up alert holds nothing back (_alerted): the next run
    judges the alerts it held back again (recording._released)."""
    return conn.execute(
        update(history)
        .where(history.c.destination == destination, _given_up, history.c.given_up_reported_at.is_(None))
        .values(given_up_reported_at=func.now())
    ).rowcount


def _days_of(alerts: Sequence[Alert]) -> ColumnElement[bool]:
    """The history rows of the alerts' organization-days."""
    return organization_days_in(
        history.c.organization_id,
        history.c.balance_date,
        ((alert.organization_id, alert.balance_date) for alert in alerts),
    )


def _rows(destination: str, alerts: Sequence[Alert]):
    """The alerts' rows (one message's: one organization's days, or a digest's many organizations)."""
    return history.c.destination == destination, _days_of(alerts), history.c.status.not_in(CLOSED)


def record_digest(conn: Connection, destination: str, digest: Digest) -> None:
    """Name the digest's alerts with its id before it is sent: the query in the message finds them."""
    conn.execute(update(history).where(*_rows(destination, digest.alerts)).values(digest_id=digest.digest_id))


def record_texts(conn: Connection, destination: str, texts: Sequence[tuple[Alert, str]]) -> None:
    """Each alert's words as this run sends them, before it does: the row of an alert once sent keeps the
    words it went with (a closed row is never written again). One statement, the words bound as arrays
    (keys.py), however many alerts a digest holds."""
    if not texts:
        return
    given = select(
        func.unnest(literal([alert.organization_id for alert, _ in texts], ARRAY(BigInteger))).label("org"),
        func.unnest(literal([alert.balance_date for alert, _ in texts], ARRAY(Date))).label("day"),
        func.unnest(literal([words for _, words in texts], ARRAY(Text))).label("words"),
    ).subquery()
    conn.execute(
        update(history)
        .where(
            history.c.destination == destination,
            history.c.organization_id == given.c.org,
            history.c.balance_date == given.c.day,
            history.c.status.not_in(CLOSED),
        )
        .values(alert_text=given.c.words)
    )


def record_current_numbers(conn: Connection, destination: str, alert: Alert) -> None:
    """A waiting alert whose day a rebuild changed: the row takes the fact's current numbers, the ones
    the drivers sent with it explain."""
    conn.execute(update(history).where(*_rows(destination, [alert])).values(**_numbers(alert)))


def record_superseded(conn: Connection, destination: str, alerts: Sequence[Alert]) -> None:
    """Waiting alerts whose day no longer alerts since a rebuild: closed, never sent."""
    reason = "superseded: the fact changed since it was recorded and the day no longer alerts"
    conn.execute(
        update(history).where(*_rows(destination, alerts)).values(status=SUPERSEDED, last_error=reason)
    )


def record_released(conn: Connection, destination: str, alerts: Sequence[Alert]) -> None:
    """Held-back alerts that nothing holds back now: marked superseded, never sent, so that the run judges
    them again as the fact is now (recording._reopened_if_alerting_again: sent, or held back again)."""
    if not alerts:
        return
    reason = "held back, then nothing in its window held it back as the fact is now: judged again"
    conn.execute(
        update(history)
        .where(history.c.destination == destination, _held_back, _days_of(alerts))
        .values(status=SUPERSEDED, last_error=reason)
    )


NO_ANSWER_RECORDED = (
    "no answer recorded yet: the request went out, and if the run ended before its answer, the message may "
    "have arrived"
)


def record_attempt(
    conn: Connection, destination: str, alerts: Sequence[Alert], *, retry: bool = False
) -> None:
    """Before a request that may be accepted without an answer: count it as unanswered until it is.

    Committed right before the request may go out, after any wait (the pacer, a Retry-After, a backoff):
    a run that dies in flight leaves the alert `unknown`, and a later run knows it may already have
    arrived; a run stopped while waiting leaves it as it was. `retry`: another request of the same send,
    after an answer that refused the message; `attempts` counts the sends.
    """
    values: dict[str, object] = {
        "status": UNKNOWN,
        "unanswered_attempts": history.c.unanswered_attempts + 1,
        "last_attempt_at": func.clock_timestamp(),
        # what the row says if no answer replaces it: the run ended with the request in flight
        "last_error": NO_ANSWER_RECORDED,
    }
    if not retry:
        values["attempts"] = history.c.attempts + 1
    conn.execute(update(history).where(*_rows(destination, alerts)).values(**values))


def record_delivered(
    conn: Connection, destination: str, alerts: Sequence[Alert], *, attempt_recorded: bool
) -> None:
    values: dict[str, object] = {"status": SENT, "sent_at": func.clock_timestamp(), "last_error": None}
    values.update(_answered(attempt_recorded))
    conn.execute(update(history).where(*_rows(destination, alerts)).values(**values))


def record_failed(
    conn: Connection, destination: str, alerts: Sequence[Alert], error: str, *, attempt_recorded: bool
) -> None:
    """The destination answered no (or was never reached): nothing was accepted, retry next run (or,
    before a retry's wait, within this one)."""
    values: dict[str, object] = {"status": FAILED, "last_error": error}
    values.update(_answered(attempt_recorded))
    conn.execute(update(history).where(*_rows(destination, alerts)).values(**values))


def record_unanswered(conn: Connection, destination: str, alerts: Sequence[Alert], error: str) -> None:
    """The request went out and no answer came: it stays `unknown`, counted as possibly delivered."""
    conn.execute(update(history).where(*_rows(destination, alerts)).values(status=UNKNOWN, last_error=error))


def record_not_attempted(conn: Connection, destination: str, alerts: Sequence[Alert], reason: str) -> None:
    """The run gave up on the destination before this message: keep its state, note why."""
    status = func.coalesce(func.nullif(history.c.status, PENDING), FAILED)
    conn.execute(update(history).where(*_rows(destination, alerts)).values(status=status, last_error=reason))


def _answered(attempt_recorded: bool) -> dict[str, object]:
    if attempt_recorded:  # record_attempt counted it as unanswered: it was answered after all
        return {"unanswered_attempts": history.c.unanswered_attempts - 1}
    return {"attempts": history.c.attempts + 1, "last_attempt_at": func.clock_timestamp()}
