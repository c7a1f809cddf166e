"""The alert run: lock -> read the marts (one read-only snapshot) -> record in ops -> deliver -> summary.

Exit codes:
    0    every alert delivered (or nothing to send).
    1    some delivery failed, or stdout was closed before every alert was printed: the undelivered
         alerts stay in ops.alert_history and are retried on the next run.
    2    configuration or database error, with a message saying what to fix. Configuration errors
         (flags, environment, connection settings, another run holding the lock, a day after the
         data) stop the run before anything is sent. A database error can also stop a run during
         delivery: messages already recorded as sent stay sent and the rest are retried on the next
         run; the one message in flight was recorded `unknown` before it left, so it is sent at
         most once more.
    130  interrupted (Ctrl-C): as for a database error, what was committed stays, the rest is retried.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from data_platform.alerts import detect, records, store
from data_platform.alerts.config import ConfigError, Settings, load
from data_platform.alerts.delivery import Channel, ConsoleChannel, SlackChannel
from data_platform.alerts.plan import Plan, plan_days
from data_platform.alerts.records import CONSOLE, FAILED, SLACK, UNKNOWN, Alert, Organization
from data_platform.alerts.summary import Summary
from data_platform.db import describe_target

EXIT_OK, EXIT_DELIVERY_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_CONNECT_TIMEOUT = 10  # seconds; psycopg's own default is over two minutes
PIPELINE_HINT = "run the pipeline first (init.sh)"


class AlertError(RuntimeError):
    """A configuration or database problem: the message tells the user what to do."""


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
        conn = engine.connect()
    except DBAPIError as error:  # refused, bad password, or a bad PG* value (e.g. PGCONNECT_TIMEOUT=abc)
        raise AlertError(
            f"cannot connect to {describe_target()}: {_db_message(error)}. "
            "Check PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE and PGCONNECT_TIMEOUT."
        ) from error
    # for the whole session: no unqualified name may resolve to an object someone else created
    conn.execute(text("select pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false)"))
    conn.commit()
    return conn


def choose_channel(settings: Settings) -> Channel:
    if settings.dry_run:
        target = "Slack" if settings.webhook_url else "stdout"
        return ConsoleChannel(prefix=f"[dry-run, would go to {target}] ")
    if settings.webhook_url:
        return SlackChannel(settings.webhook_url, settings.http)
    return ConsoleChannel()


def today_utc() -> date:
    return datetime.now(UTC).date()


def run(
    settings: Settings,
    channel: Channel | None = None,
    engine: Engine | None = None,
    today: date | None = None,
) -> Summary:
    """Two connections: `reader` only ever holds read-only transactions on the marts; `ops` holds
    the run lock and writes the alerter's own tables, and never reads the marts."""
    channel = channel or choose_channel(settings)
    engine = engine or make_engine()
    with _connect(engine) as reader:
        detect.read_only(reader)
        missing = detect.missing_tables(reader)
        reader.rollback()
        if missing:
            raise AlertError(f"{', '.join(missing)} does not exist in {describe_target()}: {PIPELINE_HINT}.")
        with _connect(engine) as ops:
            try:
                with store.run_lock(ops, settings.lock_timeout):
                    return _locked_run(reader, ops, settings, channel, today or today_utc())
            except store.LockBusy as error:
                raise AlertError(f"{error}; nothing was sent. Try again when it has finished.") from error


@dataclass
class MartsView:
    """What one read-only snapshot of the marts says about this run."""

    plan: Plan
    alerts: list[Alert] = field(default_factory=list)
    organizations: dict[int, Organization] = field(default_factory=dict)


def _locked_run(
    reader: Connection, ops: Connection, settings: Settings, channel: Channel, today: date
) -> Summary:
    # a console run keeps its own delivery state: printing never counts as delivering to Slack
    destination = SLACK if settings.webhook_url else CONSOLE
    # --dry-run runs the very same statements in one transaction and rolls it back at the end
    commit: Callable[[], None] = (lambda: None) if settings.dry_run else ops.commit
    summary = Summary(dry_run=settings.dry_run, today=today)

    store.ensure_tables(ops)
    summary.watermark_before = store.read_watermark(ops, destination)
    waiting = store.undelivered_organizations(ops, destination)
    # every marts read happens here, before anything is committed to ops
    view = _read_marts(reader, settings, summary, waiting, today)
    summary.new_alerts = store.record_alerts(ops, destination, view.alerts)
    new_watermark = view.plan.new_watermark
    if new_watermark is not None and new_watermark != summary.watermark_before:
        store.write_watermark(ops, destination, new_watermark)
    summary.watermark = new_watermark
    # The alerts are durable before anything is sent, so the watermark may move past their days:
    # whatever is not delivered below is retried from ops.alert_history, not from the watermark.
    commit()

    batches = records.batches(store.undelivered(ops, destination), view.organizations)
    commit()
    _deliver(ops, destination, batches, channel, summary, commit)
    summary.given_up = store.given_up_count(ops, destination)
    if destination == CONSOLE:
        summary.waiting_for_slack = store.undelivered_count(ops, SLACK)
    commit()
    if settings.dry_run:
        ops.rollback()
    return summary


def _read_marts(
    reader: Connection, settings: Settings, summary: Summary, waiting: Iterable[int], today: date
) -> MartsView:
    """One read-only snapshot: plan the days, find their alerts and every organization's context."""
    detect.read_only_snapshot(reader)
    try:
        latest = detect.latest_day(reader, up_to=today)
        summary.future_days, summary.last_future_day = detect.days_after(reader, today)
        _check_requested_day(settings, latest, today)
        plan = plan_days(
            watermark=summary.watermark_before,
            latest=latest,
            only_date=settings.date,
            since=settings.since,
            today=today,
        )
        view = MartsView(plan)
        if not plan.is_empty:
            assert plan.start is not None and plan.end is not None
            stats = detect.range_stats(reader, plan.start, plan.end)
            summary.days_processed, summary.first_day, summary.last_day = (
                stats.days_processed,
                stats.first_day,
                stats.last_day,
            )
            summary.skipped_from_zero = 0 if settings.include_from_zero else stats.moves_from_zero
            query = detect.alerts_query(plan.start, plan.end, settings.threshold, settings.include_from_zero)
            view.alerts = detect.fetch_alerts(reader, query)
        wanted = {*waiting, *(alert.organization_id for alert in view.alerts)}
        view.organizations = detect.organization_context(reader, wanted)
        return view
    finally:
        reader.rollback()  # read only: nothing to keep


def _check_requested_day(settings: Settings, latest: date | None, today: date) -> None:
    """--date / --since after the data's latest day is a mistake (or data not loaded yet), not a no-op."""
    requested = settings.date or settings.since
    if requested is None or (latest is not None and requested <= latest):
        return
    flag = "--date" if settings.date else "--since"
    if requested > today:
        raise AlertError(
            f"{flag} {requested} is after today ({today}, UTC): future days are never processed."
        )
    if latest is None:
        raise AlertError(f"{flag} {requested}: {detect.REQUIRED_TABLES[0]} has no rows yet: {PIPELINE_HINT}.")
    raise AlertError(
        f"{flag} {requested} is after the latest day in {detect.REQUIRED_TABLES[0]} ({latest}): "
        "nothing to process. Load and build newer data first, or pick an earlier day."
    )


def _deliver(
    ops: Connection,
    destination: str,
    batches: list[records.Batch],
    channel: Channel,
    summary: Summary,
    commit: Callable[[], None],
) -> None:
    service_down: str | None = None
    for batch in batches:
        alerts, count = batch.alerts, len(batch.alerts)
        summary.retried += sum(1 for alert in alerts if alert.status in (FAILED, UNKNOWN))
        if service_down:
            # Slack is rate limiting or down even after retries: leave the rest for the next run
            # rather than spending the whole retry budget on every message
            reason = f"not attempted: {channel.name} failing earlier in the run ({service_down})"
            store.record_not_attempted(ops, destination, alerts, reason)
            commit()
            summary.failed += count
            continue
        recorded = channel.may_go_unanswered
        if recorded:
            store.record_attempt(ops, destination, alerts)
            commit()  # before the request: a run that dies in flight still counts it
        outcome = channel.send(batch)
        if outcome.delivered:
            store.record_delivered(ops, destination, alerts, attempt_recorded=recorded)
        elif outcome.unanswered:
            store.record_unanswered(ops, destination, alerts, outcome.error or "no answer")
        else:
            store.record_failed(
                ops, destination, alerts, outcome.error or "failed", attempt_recorded=recorded
            )
        commit()  # commit per message: a crash can at worst resend the one message in flight
        if outcome.delivered:
            summary.sent += count
            continue
        summary.failed += count
        summary.unanswered += count if outcome.unanswered else 0
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


def _role() -> str:
    return describe_target().split("@", 1)[0]


def _database_error(error: DBAPIError) -> str:
    sqlstate = getattr(error.orig, "sqlstate", None)
    message = f"database error on {describe_target()}: {_db_message(error)}"
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
    if sqlstate == "25006":  # a write inside the read-only marts transaction
        return (
            f"{message}: something in marts tried to write while the alerter read it, and was stopped; "
            "nothing was recorded. The marts are not what dbt built: check who changed them, then "
            "rebuild (FULL_REFRESH=true ./init.sh)."
        )
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
