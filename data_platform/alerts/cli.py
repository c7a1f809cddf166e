"""The alert run: lock -> plan and record (one snapshot of the fact) -> deliver -> summary.

Exit codes:
    0    every alert delivered (or nothing to send).
    1    some delivery failed, or stdout was closed before every alert was printed: the undelivered
         alerts stay in ops.alert_history and are retried on the next run.
    2    configuration or database error, with a message saying what to fix. Configuration errors
         (flags, environment, connection settings, another run holding the lock, a day after the
         data) stop the run before anything is sent. A database error can also stop a run during
         delivery: messages already recorded as sent stay sent and the rest are retried on the next
         run, so the one message in flight when the database failed may be sent a second time.
    130  interrupted (Ctrl-C): as for a database error, what was committed stays, the rest is retried.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import date

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from data_platform.alerts import detect, store
from data_platform.alerts.config import ConfigError, Settings, load
from data_platform.alerts.delivery import Channel, ConsoleChannel, SlackChannel
from data_platform.db import describe_target

EXIT_OK, EXIT_DELIVERY_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_CONNECT_TIMEOUT = 10  # seconds; psycopg's own default is over two minutes
PIPELINE_HINT = "run the pipeline first (init.sh)"


class AlertError(RuntimeError):
    """A configuration or database problem: the message tells the user what to do."""


@dataclass
class Summary:
    dry_run: bool = False
    days_processed: int = 0
    first_day: date | None = None
    last_day: date | None = None
    new_alerts: int = 0
    retried: int = 0  # alerts that had failed on an earlier run and were attempted again
    sent: int = 0
    failed: int = 0
    skipped_from_zero: int = 0
    watermark_before: date | None = None
    watermark: date | None = None

    def line(self) -> str:
        days = f"{self.days_processed} day{'' if self.days_processed == 1 else 's'} processed"
        if self.first_day and self.last_day:
            span = self.first_day.isoformat()
            if self.last_day != self.first_day:
                span += f"..{self.last_day.isoformat()}"
            days += f" ({span})"
        verb = "would be sent" if self.dry_run else "sent"
        sent = f"{self.sent} alert{'' if self.sent == 1 else 's'} {verb}"
        if self.retried:
            sent += f" ({self.retried} retried from earlier runs)"
        skipped = f"{self.skipped_from_zero} skipped-from-zero"
        if self.skipped_from_zero:
            skipped += " (--include-from-zero alerts them)"
        watermark = f"watermark {self.watermark.isoformat() if self.watermark else 'not set'}"
        if self.dry_run and self.watermark != self.watermark_before:
            watermark = f"watermark would move to {self.watermark}"
        prefix = "Summary (dry run, nothing changed)" if self.dry_run else "Summary"
        return f"{prefix}: {days}, {sent}, {self.failed} failed, {skipped}; {watermark}."


def make_engine() -> Engine:
    """SQLAlchemy Core on psycopg 3; an empty URL lets libpq read PGHOST, PGPORT, PGUSER, ...

    NullPool: closing the connection really closes it, so the session advisory lock goes with it.
    PGCONNECT_TIMEOUT is left to libpq / psycopg (a bad value fails the connect, reported by
    _connect); only when it is unset do we pass a shorter default than psycopg's.
    """
    connect_args: dict[str, object] = {"application_name": "data_platform alerts"}
    if not os.environ.get("PGCONNECT_TIMEOUT", "").strip():
        connect_args["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT
    return create_engine("postgresql+psycopg://", poolclass=NullPool, connect_args=connect_args)


def _db_message(error: DBAPIError) -> str:
    # the driver's own message (never the SQL or parameters SQLAlchemy would append)
    return " ".join(str(error.orig).split()) if error.orig is not None else type(error).__name__


def _connect(engine: Engine) -> Connection:
    try:
        return engine.connect()
    except DBAPIError as error:  # refused, bad password, or a bad PG* value (e.g. PGCONNECT_TIMEOUT=abc)
        raise AlertError(
            f"cannot connect to {describe_target()}: {_db_message(error)}. "
            "Check PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE and PGCONNECT_TIMEOUT."
        ) from error


def choose_channel(settings: Settings) -> Channel:
    if settings.dry_run:
        target = "Slack" if settings.webhook_url else "stdout"
        return ConsoleChannel(prefix=f"[dry-run, would go to {target}] ")
    if settings.webhook_url:
        return SlackChannel(settings.webhook_url, settings.http)
    return ConsoleChannel()


def run(settings: Settings, channel: Channel | None = None, engine: Engine | None = None) -> Summary:
    channel = channel or choose_channel(settings)
    with _connect(engine or make_engine()) as conn:
        missing = detect.missing_tables(conn)
        conn.rollback()
        if missing:
            raise AlertError(f"{', '.join(missing)} does not exist in {describe_target()}: {PIPELINE_HINT}.")
        try:
            with store.run_lock(conn, settings.lock_timeout):
                return _locked_run(conn, settings, channel)
        except store.LockBusy as error:
            raise AlertError(f"{error}; nothing was sent. Try again when it has finished.") from error


def _locked_run(conn: Connection, settings: Settings, channel: Channel) -> Summary:
    # --dry-run runs the very same statements in one transaction and rolls it back at the end
    commit: Callable[[], None] = (lambda: None) if settings.dry_run else conn.commit
    summary = _plan_and_record(conn, settings)
    # The alerts are durable before anything is sent, so the watermark may move past their days:
    # whatever is not delivered below is retried from ops.alert_history, not from the watermark.
    commit()

    batches = store.undelivered(conn)
    commit()  # no snapshot held open during slow HTTP calls
    _deliver(conn, batches, channel, summary, commit)
    if settings.dry_run:
        conn.rollback()
    return summary


def _check_requested_day(settings: Settings, latest: date | None) -> None:
    """--date / --since after the data's latest day is a mistake (or data not loaded yet), not a no-op."""
    requested = settings.date or settings.since
    if requested is None or (latest is not None and requested <= latest):
        return
    flag = "--date" if settings.date else "--since"
    if latest is None:
        raise AlertError(f"{flag} {requested}: {detect.REQUIRED_TABLES[0]} has no rows yet: {PIPELINE_HINT}.")
    raise AlertError(
        f"{flag} {requested} is after the latest day in {detect.REQUIRED_TABLES[0]} ({latest}): "
        "nothing to process. Load and build newer data first, or pick an earlier day."
    )


def _plan_and_record(conn: Connection, settings: Settings) -> Summary:
    """Plan the days and record their alerts as pending, in one snapshot of the fact (not committed)."""
    detect.begin_consistent_read(conn)
    store.ensure_tables(conn)
    watermark = store.read_watermark(conn)
    latest = detect.latest_day(conn)
    _check_requested_day(settings, latest)
    summary = Summary(dry_run=settings.dry_run, watermark_before=watermark)
    plan = detect.plan_days(watermark=watermark, latest=latest, only_date=settings.date, since=settings.since)
    if not plan.is_empty:
        assert plan.start is not None and plan.end is not None
        stats = detect.range_stats(conn, plan.start, plan.end)
        summary.days_processed, summary.first_day, summary.last_day = (
            stats.days_processed,
            stats.first_day,
            stats.last_day,
        )
        summary.skipped_from_zero = 0 if settings.include_from_zero else stats.moves_from_zero
        query = detect.alerts_query(plan.start, plan.end, settings.threshold, settings.include_from_zero)
        summary.new_alerts = store.record_alerts(conn, query)
    if plan.new_watermark is not None and plan.new_watermark != watermark:
        store.write_watermark(conn, plan.new_watermark)
    summary.watermark = plan.new_watermark
    return summary


def _deliver(
    conn: Connection,
    batches: list[store.Batch],
    channel: Channel,
    summary: Summary,
    commit: Callable[[], None],
) -> None:
    service_down: str | None = None
    for batch in batches:
        count = len(batch.alerts)
        summary.retried += sum(1 for alert in batch.alerts if alert.status == store.FAILED)
        if service_down:
            # Slack is rate limiting or down even after retries: leave the rest for the next run
            # rather than spending the whole retry budget on every message
            reason = f"not attempted: {channel.name} failing earlier in the run ({service_down})"
            store.record_outcome(
                conn, batch, delivered=False, via=channel.name, error=reason, attempted=False
            )
            commit()
            summary.failed += count
            continue
        outcome = channel.send(batch)
        store.record_outcome(conn, batch, delivered=outcome.delivered, via=channel.name, error=outcome.error)
        commit()  # commit per message: a crash can at worst resend the one message in flight
        if outcome.delivered:
            summary.sent += count
        else:
            summary.failed += count
            service_down = outcome.error if outcome.service_unavailable else None
            print(
                f"alert_script.py: delivery failed for organization {batch.organization.organization_id}: "
                f"{outcome.error}",
                file=sys.stderr,
            )
    if summary.failed:
        print(
            f"alert_script.py: {summary.failed} alert(s) not delivered; they stay in ops.alert_history "
            "and are retried on the next run.",
            file=sys.stderr,
        )


def _database_error(error: DBAPIError) -> str:
    sqlstate = getattr(error.orig, "sqlstate", None)
    message = f"database error on {describe_target()}: {_db_message(error)}"
    if sqlstate == "42P01":  # undefined table: dropped between our check and the query
        return f"{message}: {PIPELINE_HINT}."
    if sqlstate == "42501":  # insufficient privilege
        return f"{message}. Run as the alerter role (PGUSER=alerter): it reads marts and owns ops."
    return message


def _tell(message: str) -> None:
    with suppress(OSError):  # stderr closed too (e.g. 2>&1 | head): the exit code still says it
        print(f"alert_script.py: {message}", file=sys.stderr, flush=True)


def _discard_stdout() -> None:
    # the reader is gone: send what is still buffered to /dev/null so the interpreter's final flush
    # does not fail again with "Exception ignored ... BrokenPipeError"
    with suppress(OSError, ValueError, AttributeError):  # no real file behind sys.stdout
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    summary: Summary | None = None
    try:
        settings = load(argv, os.environ)
        summary = run(settings)
        print(summary.line(), flush=True)
    except (ConfigError, AlertError) as error:
        _tell(f"error: {error}")
        return EXIT_ERROR
    except DBAPIError as error:
        _tell(f"error: {_database_error(error)}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        # open transactions were rolled back on the way out; what was committed stays
        _tell("interrupted. Alerts recorded as sent stay sent; the rest are retried on the next run.")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout closed early, e.g. `alert_script.py | head -1`
        _discard_stdout()
        if summary is None:  # an alert line could not be printed: that alert was not delivered
            _tell("stdout was closed before every alert was printed; the rest are retried on the next run.")
            return EXIT_DELIVERY_FAILED
    return EXIT_DELIVERY_FAILED if summary.failed else EXIT_OK
