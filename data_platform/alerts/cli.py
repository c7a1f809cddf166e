"""The alert run: lock -> detect and record -> deliver -> summary, with meaningful exit codes.

Exit codes: 0 every alert delivered; 1 some delivery failed (kept in ops.alert_history and retried
on the next run); 2 configuration or database error (nothing was sent).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import NullPool

from data_platform.alerts import detect, store
from data_platform.alerts.config import ConfigError, Settings, load
from data_platform.alerts.delivery import Channel, ConsoleChannel, SlackChannel
from data_platform.db import describe_target

EXIT_OK, EXIT_DELIVERY_FAILED, EXIT_ERROR = 0, 1, 2
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
    """
    connect_args = {
        "application_name": "data_platform alerts",
        "connect_timeout": int(os.environ.get("PGCONNECT_TIMEOUT") or 10),
    }
    return create_engine("postgresql+psycopg://", poolclass=NullPool, connect_args=connect_args)


def _db_message(error: DBAPIError) -> str:
    # the driver's own message (never the SQL or parameters SQLAlchemy would append)
    return " ".join(str(error.orig).split()) if error.orig is not None else type(error).__name__


def _connect(engine: Engine) -> Connection:
    try:
        return engine.connect()
    except OperationalError as error:
        raise AlertError(
            f"cannot connect to {describe_target()}: {_db_message(error)}. "
            "Check PGHOST, PGPORT, PGUSER, PGPASSWORD and PGDATABASE."
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
    store.ensure_tables(conn)
    watermark = store.read_watermark(conn)
    summary = Summary(dry_run=settings.dry_run, watermark_before=watermark)
    plan = detect.plan_days(
        watermark=watermark, latest=detect.latest_day(conn), only_date=settings.date, since=settings.since
    )
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
    # The alerts are durable before anything is sent, so the watermark may move past their days:
    # whatever is not delivered below is retried from ops.alert_history, not from the watermark.
    commit()

    batches = store.undelivered(conn)
    commit()  # no snapshot held open during slow HTTP calls
    _deliver(conn, batches, channel, summary, commit)
    if settings.dry_run:
        conn.rollback()
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


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load(argv, os.environ)
        summary = run(settings)
    except (ConfigError, AlertError) as error:
        print(f"alert_script.py: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except DBAPIError as error:
        print(f"alert_script.py: error: {_database_error(error)}", file=sys.stderr)
        return EXIT_ERROR
    print(summary.line(), flush=True)
    return EXIT_DELIVERY_FAILED if summary.failed else EXIT_OK
