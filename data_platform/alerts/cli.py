"""The alert run: lock -> read the marts (one read-only snapshot) -> record in ops -> deliver -> summary.

Exit codes:
    0    every alert delivered (or nothing to send).
    1    some delivery failed, or stdout was closed before every alert was printed: the undelivered
         alerts stay in ops.alert_history and are retried on the next run. Also while undelivered
         alerts wait for a destination no route names any more (never delivered until one does), or,
         in a console run, for any route's webhook (delivered by a run with it set).
    3    this run gave up on some alert: its last allowed attempt (MAX_UNCONFIRMED_ATTEMPTS) went
         unanswered, so it is never sent again and may never have arrived; someone must check the
         channel. Or it found one given up that no run had reported (that run died first). Wins over
         1: the other undelivered alerts are still retried on the next run. Each give-up is reported
         once (given_up_reported_at); later runs' summaries still note it.
    2    configuration or database error, with a message saying what to fix. Configuration errors
         (flags, environment, connection settings, another run holding the lock, a day after the
         data, a full rebuild of the marts that has not succeeded) stop the run before anything is
         sent. A database error can also stop a run during delivery: messages already recorded as
         sent stay sent and the rest are retried on the next run; the one message in flight was
         recorded `unknown` before it left, so it is sent at most once more.
    130  interrupted (Ctrl-C): as for a database error, what was committed stays, the rest is retried.
         An alert whose send was waiting (the pacer, a Retry-After, a backoff) had nothing in flight:
         it is left as it was, or `failed` after an answer that refused it, never `unknown`.
    143  stopped by SIGTERM (`kill`, `timeout`, a supervisor): as for Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from data_platform.alerts import (
    config,
    detect,
    exit_codes,
    marts_view,
    messages,
    ops_tables,
    recording,
    records,
    routing,
    store,
)
from data_platform.alerts.config import ConfigError, Settings, load, misspelt_settings
from data_platform.alerts.delivery import Channel, ConsoleChannel, SlackChannel
from data_platform.alerts.errors import PIPELINE_HINT, AlertError, AlertRunBusy, database_error, db_message
from data_platform.alerts.json_sink import JsonWebhookChannel
from data_platform.alerts.records import (
    CONSOLE,
    FAILED,
    JSON_SINK,
    MAX_UNCONFIRMED_ATTEMPTS,
    SLACK,
    UNKNOWN,
    Alert,
    Route,
    Why,
)
from data_platform.alerts.routing import Destination
from data_platform.alerts.summary import GIVEN_UP_ADVICE, Summary
from data_platform.db import SERVER_FAILED_ADVICE, SESSION_SETTINGS, describe_target, server_failed
from data_platform.wording import plural


def make_engine() -> Engine:
    """SQLAlchemy Core on psycopg 3; an empty URL lets libpq read PGHOST, PGPORT, PGUSER, ...

    NullPool: closing the connection really closes it, so the session advisory lock goes with it.
    PGCONNECT_TIMEOUT is left to libpq / psycopg (a bad value fails the connect, reported by
    _connect); only when it is unset do we pass a shorter default than psycopg's.
    """
    connect_args: dict[str, object] = {"application_name": "data_platform alerts"}
    if not os.environ.get("PGCONNECT_TIMEOUT", "").strip():
        connect_args["connect_timeout"] = config.DEFAULT_CONNECT_TIMEOUT
    return create_engine("postgresql+psycopg://", poolclass=NullPool, connect_args=connect_args)


def _connect(engine: Engine) -> Connection:
    try:
        conn = engine.connect()
    except DBAPIError as error:  # refused, bad password, or a bad PG* value (e.g. PGCONNECT_TIMEOUT=abc)
        said = db_message(error)
        advice = (
            SERVER_FAILED_ADVICE
            if server_failed(said)
            else "Check PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE and PGCONNECT_TIMEOUT."
        )
        raise AlertError(f"cannot connect to {describe_target()}: {said}. {advice}") from error
    # for the whole session: no unqualified name may resolve to an object someone else created
    conn.execute(text("select pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false)"))
    conn.execute(text(SESSION_SETTINGS))
    conn.commit()
    return conn


def choose_channel(settings: Settings, destination: Destination | None = None) -> Channel:
    destination = destination or Destination(
        SLACK if settings.webhook_url else CONSOLE, url=settings.webhook_url
    )
    if settings.dry_run:
        target = {SLACK: "Slack", CONSOLE: "stdout"}.get(destination.name, destination.label)
        return ConsoleChannel(prefix=f"[dry-run, would go to {target}] ", dry_run=True)
    if destination.url is None:
        return ConsoleChannel()
    if destination.route is not None and destination.route.sink == JSON_SINK:
        return JsonWebhookChannel(destination.url, settings.http, name=destination.label)
    return SlackChannel(destination.url, settings.http, name=destination.label)


def today_utc() -> date:
    return datetime.now(UTC).date()


def run(
    settings: Settings,
    channel: Channel | None = None,
    engine: Engine | None = None,
    today: date | None = None,
) -> Summary:
    """Two connections: `reader` only ever holds read-only transactions on the marts; `ops` holds
    the run lock and writes the alerter's own tables, and never reads the marts.

    `channel`, when given, replaces every destination's channel (tests)."""
    engine = engine or make_engine()
    with _connect(engine) as reader:
        detect.read_only(reader)
        missing = detect.missing_tables(reader)
        routes = [] if missing else detect.alert_routes(reader)
        reader.rollback()
        if missing:
            raise AlertError(f"{', '.join(missing)} does not exist in {describe_target()}: {PIPELINE_HINT}.")
        # a route without its webhook stops the run here, before anything is recorded or sent
        found = routing.destinations(routes, settings)
        for warning in misspelt_settings(settings.environment, {route.webhook_env for route in routes}):
            _tell(f"warning: {warning}")
        channels = {name: channel or choose_channel(settings, dest) for name, dest in found.items()}
        with _connect(engine) as ops:
            ops_tables.check_writable(ops)
            try:
                with store.run_lock(ops, settings.lock_timeout):
                    return _locked_run(
                        reader, ops, settings, Routing(routes, found, channels), today or today_utc()
                    )
            except store.LockBusy as error:
                raise AlertRunBusy(f"{error}; nothing was sent. Try again when it has finished.") from error
            except DBAPIError as error:
                # a write refused in a read-only transaction: the marts reader's (a view that writes), or
                # ops', when the server turned read-only during the run (a managed one whose disk filled)
                if getattr(error.orig, "sqlstate", None) == ops_tables.READ_ONLY_TRANSACTION:
                    ops_tables.check_still_writable(ops, error)
                raise


@dataclass(frozen=True)
class Routing:
    routes: list[Route]
    destinations: dict[str, Destination]
    channels: dict[str, Channel]


def _locked_run(
    reader: Connection, ops: Connection, settings: Settings, routing_: Routing, today: date
) -> Summary:
    names = list(routing_.destinations)
    # --dry-run runs the very same statements in one transaction and rolls it back at the end
    commit: Callable[[], None] = (lambda: None) if settings.dry_run else ops.commit
    summary = Summary(dry_run=settings.dry_run, today=today)

    ops_tables.ensure_tables(ops)
    watermarks = {name: store.read_watermark(ops, name) for name in names}
    summary.watermark_before = _earliest(watermarks.values())
    waiting = store.rechecked_organization_days(ops, names)
    # every marts read happens here, before anything is committed to ops
    view = marts_view.read_marts(reader, settings, summary, watermarks, waiting, today)
    for name in names:
        recording.judge_waiting(ops, name, view, settings, summary)
    recording.record_new(ops, view, routing_.routes, routing_.destinations, settings, summary)
    for name, plan in view.plans.items():
        if plan.new_watermark is not None and plan.new_watermark != watermarks[name]:
            store.write_watermark(ops, name, plan.new_watermark)
    summary.watermark = _earliest(plan.new_watermark for plan in view.plans.values())
    # The alerts are durable before anything is sent, so the watermark may move past their days:
    # whatever is not delivered below is retried from ops.alert_history, not from the watermark.
    commit()

    for name, destination in routing_.destinations.items():
        outgoing = _messages(store.undelivered(ops, name), view, destination, settings.digest_over)
        for digest in (message for message in outgoing if isinstance(message, records.Digest)):
            store.record_digest(ops, name, digest)
        store.record_texts(ops, name, _texts(outgoing, view.organizations))
        commit()
        given_up_before = store.given_up_count(ops, name)
        _deliver(ops, name, outgoing, routing_.channels[name], summary, commit)
        given_up = store.given_up_count(ops, name)
        summary.given_up += given_up
        summary.gave_up += given_up - given_up_before
    # Reported after every destination's deliveries, whose commits would save the mark early: only
    # the run's last commit, below, saves it, so a run that dies first leaves the report to the next.
    summary.given_up_reported = sum(store.report_given_up(ops, name) for name in names)
    # An alert stays with the destination it was recorded for. Every run names those waiting for one it
    # does not deliver to: a console run (printing is not delivering: the webhooks may have been lost
    # with an .env) those of every route, any run those of destinations no route names any more.
    named = {route.destination for route in routing_.routes}
    for name, count in store.undelivered_elsewhere(ops, names).items():
        (summary.waiting_for_webhook if name in named else summary.unrouted)[name] = count
    _tell_undelivered(summary)
    commit()
    if settings.dry_run:
        ops.rollback()
    return summary


def _earliest(days: Iterable[date | None]) -> date | None:
    known = [day for day in days if day is not None]
    return min(known) if known else None


def _messages(
    alerts: list[Alert], view: marts_view.MartsView, destination: Destination, digest_over: int
) -> list[records.Message]:
    """One message per organization, or one digest when the destination has more than `digest_over`."""
    alerts = [
        replace(alert, why=view.why.get((alert.organization_id, alert.balance_date), Why()))
        for alert in alerts
    ]
    mention = destination.route.mention if destination.route else None
    if len(alerts) > digest_over:
        return [records.Digest(destination.name, tuple(alerts), view.organizations, mention)]
    return list(records.batches(alerts, view.organizations, mention=mention))


def _texts(
    outgoing: list[records.Message], organizations: Mapping[int, records.Organization]
) -> list[tuple[Alert, str]]:
    """Each alert of the messages in words (its console line), as ops.alert_history keeps it."""
    return [
        (alert, messages.console_line(records.organization_of(organizations, alert.organization_id), alert))
        for message in outgoing
        for alert in message.alerts
    ]


def _deliver(
    ops: Connection,
    destination: str,
    outgoing: list[records.Message],
    channel: Channel,
    summary: Summary,
    commit: Callable[[], None],
) -> None:
    service_down: str | None = None
    for message in outgoing:
        alerts, count = message.alerts, len(message.alerts)
        if service_down:
            # the webhook is rate limiting or down even after retries, or refuses every message: leave the
            # rest for the next run rather than spending the whole retry budget on every message
            reason = f"not attempted: the {channel.name} webhook failed earlier in the run ({service_down})"
            store.record_not_attempted(ops, destination, alerts, reason)
            commit()
            summary.failed += count
            summary.not_attempted += count
            continue
        # a `failed` alert may never have been attempted (left when the webhook was down): not a retry
        summary.retried += sum(1 for alert in alerts if alert.status in (FAILED, UNKNOWN) and alert.attempts)
        attempts = RecordedAttempts(ops, destination, alerts, commit)
        outcome = channel.send(message, attempts)
        if outcome.delivered:
            store.record_delivered(ops, destination, alerts, attempt_recorded=attempts.in_flight)
        elif outcome.unanswered:
            store.record_unanswered(ops, destination, alerts, outcome.error or "no answer")
        else:
            store.record_failed(
                ops, destination, alerts, outcome.error or "failed", attempt_recorded=attempts.in_flight
            )
        commit()  # commit per message: a crash can at worst resend the one message in flight
        if outcome.delivered:
            summary.sent += count
            summary.digests += isinstance(message, records.Digest)
            continue
        summary.failed += count
        if outcome.unanswered:
            summary.unanswered[destination] = summary.unanswered.get(destination, 0) + count
        if outcome.webhook_gone:
            summary.webhook_gone.setdefault(destination, outcome.error or "refused")
        service_down = outcome.error if outcome.service_unavailable or outcome.webhook_gone else None
        what = (
            f"the digest of {plural(count, 'alert')}"
            if isinstance(message, records.Digest)
            else f"organization {message.organization.organization_id}"
        )
        print(
            f"{exit_codes.DELIVERY_FAILED_LINE}{destination} failed for {what}: {outcome.error}",
            file=sys.stderr,
        )


class RecordedAttempts:
    """One message's HTTP attempts in ops.alert_history (attempts.AttemptLog), each committed right before
    its request may go out: a run that dies with one in flight leaves the alerts `unknown` (they may have
    arrived), one stopped while the send waits (the pacer, a Retry-After, a backoff) leaves them as they
    were, or `failed` after an answer that refused them."""

    def __init__(
        self, ops: Connection, destination: str, alerts: Sequence[Alert], commit: Callable[[], None]
    ) -> None:
        self._ops, self._destination, self._alerts, self._commit = ops, destination, alerts, commit
        self._counted = False  # the send is counted in `attempts` by its first request, not by a retry
        self.in_flight = False  # an attempt is counted unanswered and no answer settled it yet

    def request_may_go_out(self) -> None:
        store.record_attempt(self._ops, self._destination, self._alerts, retry=self._counted)
        self._commit()
        self._counted = self.in_flight = True

    def refused(self, error: str) -> None:
        store.record_failed(self._ops, self._destination, self._alerts, error, attempt_recorded=True)
        self._commit()
        self.in_flight = False


def _tell_undelivered(summary: Summary) -> None:
    """Once per run, after every destination: the run's count, not a running total per destination."""
    retried = summary.failed - summary.gave_up
    if retried:
        print(
            f"alert_script.py: {retried} alert(s) not delivered; they stay in ops.alert_history "
            "and are retried on the next run.",
            file=sys.stderr,
        )
    for note in summary.webhook_gone_notes():  # what to do, beside the failure the pipeline quotes
        print(f"alert_script.py: {note}", file=sys.stderr)
    if summary.waiting_for_webhook:
        print(f"alert_script.py: {summary.waiting_for_webhook_note()}", file=sys.stderr)
    if summary.unrouted:
        print(f"alert_script.py: {summary.unrouted_note()}", file=sys.stderr)
    if summary.given_up_reported:
        print(
            f"alert_script.py: {summary.given_up_reported} alert(s) never confirmed after "
            f"{MAX_UNCONFIRMED_ATTEMPTS} unanswered attempts: {GIVEN_UP_ADVICE}.",
            file=sys.stderr,
        )


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


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived. A KeyboardInterrupt, as Ctrl-C is: psycopg cancels the running statement and the
    run stops the same way, saying what it left."""


def _raise_terminated(_signum: int, _frame) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return _run_and_report(argv)
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)  # a caller in this process (a test) keeps its own


def _run_and_report(argv: Sequence[str] | None) -> int:
    summary: Summary | None = None
    try:
        settings = load(argv, os.environ)
        summary = run(settings)
        print(summary.line(), flush=True)
    except AlertRunBusy as error:
        _tell(f"error: {error}")
        return exit_codes.BUSY
    except (ConfigError, AlertError) as error:
        _tell(f"error: {error}")
        return exit_codes.ERROR
    except DBAPIError as error:
        _tell(f"error: {database_error(error)}")
        return exit_codes.ERROR
    except KeyboardInterrupt as interrupt:
        # open transactions were rolled back on the way out; what was committed stays
        terminated = isinstance(interrupt, Terminated)
        stopped = "stopped by SIGTERM" if terminated else "interrupted"
        _tell(f"{stopped}. Alerts recorded as sent stay sent; the rest are retried on the next run.")
        return exit_codes.TERMINATED if terminated else exit_codes.INTERRUPTED
    except BrokenPipeError:  # stdout closed early, e.g. `alert_script.py | head -1`
        _discard_stdout()
        if summary is None:  # an alert line could not be printed: that alert was not delivered
            _tell("stdout was closed before every alert was printed; the rest are retried on the next run.")
            return exit_codes.DELIVERY_FAILED
    except OSError as error:  # stdout could not be written (a full disk, an I/O error)
        if summary is None:  # an alert line could not be printed: that alert was not delivered
            _tell(f"error: {error}; alerts not printed are retried on the next run.")
            return exit_codes.DELIVERY_FAILED
        # only the summary line is lost: what the run delivered is recorded, and its exit code says it
        _tell(f"warning: the run's summary could not be written to stdout: {error}")
    except Exception:  # a bug: Python would exit 1, which says "undelivered, retried", not "broken"
        with suppress(OSError):
            traceback.print_exc()
        _tell(
            "error: the run stopped on an unexpected error (above). Alerts recorded as sent stay sent; the "
            "rest are retried on the next run."
        )
        return exit_codes.ERROR
    if summary.given_up_reported:
        return exit_codes.GIVEN_UP
    return exit_codes.DELIVERY_FAILED if summary.still_undelivered else exit_codes.OK
