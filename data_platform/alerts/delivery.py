"""Where alerts go: a Slack incoming webhook, or stdout when no webhook is configured (the JSON
webhook is in json_sink).

Messages to one Slack webhook are spaced `ALERT_SLACK_MIN_INTERVAL` seconds apart (Pacer).

Retries are slack-sdk's retry handlers, bounded, and only where Slack accepted nothing: 429
honours Retry-After (up to a cap), 5xx answers and connection errors back off exponentially. A
request that went out and got no answer (a read timeout, a dropped connection, an attempt still
unfinished after twice ALERT_HTTP_TIMEOUT) may have been accepted: it is never retried within the
run, and reported as unanswered instead.

Each HTTP attempt is recorded (AttemptLog) right before its request may go out, after the pacer's wait
and any retry's; an attempt answered no is recorded so before the wait for its retry.

The webhook URL is a secret: it is never logged, printed or stored, and error texts are scrubbed
of it (and of each of its parts) before anyone sees them.
"""

from __future__ import annotations

import logging
import queue
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException, HTTPMessage
from io import BytesIO
from typing import Any, Protocol, TextIO, TypeVar
from urllib.error import HTTPError, URLError
from urllib.parse import parse_qsl, urlsplit
from urllib.request import (
    BaseHandler,
    HTTPRedirectHandler,
    HTTPSHandler,
    ProxyHandler,
    Request,
    build_opener,
)

from slack_sdk.errors import SlackRequestError
from slack_sdk.http_retry import (
    BackoffRetryIntervalCalculator,
    ConnectionErrorRetryHandler,
    HttpRequest,
    HttpResponse,
    Jitter,
    RateLimitErrorRetryHandler,
    RetryHandler,
    RetryState,
)
from slack_sdk.http_retry.builtin_handlers import ServerErrorRetryHandler
from slack_sdk.webhook import WebhookClient, WebhookResponse

from data_platform.alerts import messages
from data_platform.alerts.config import HttpSettings
from data_platform.alerts.records import CONSOLE, DEFAULT_WEBHOOK_ENV, Digest, Message

T = TypeVar("T")


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    error: str | None = None
    # the service itself is failing (429/5xx/network): don't spend the run on the remaining messages
    service_unavailable: bool = False
    # the request went out and no answer came back: it may have been accepted
    unanswered: bool = False


class AttemptLog(Protocol):
    """Where one message's HTTP attempts are recorded. send_within calls it in its caller's thread (whose
    database connection records them), the sending thread waiting until each record is made."""

    def request_may_go_out(self) -> None:
        """Before each attempt, after any wait: its request may be accepted and never answered."""

    def refused(self, error: str) -> None:
        """The attempt was answered no, or never reached the webhook, and a retry's wait follows."""


class Channel(Protocol):
    # what errors and notes call it: the route's webhook variable (or `console`). Only a label: the
    # run keeps each destination's delivery state under the destination's own name
    name: str

    def send(self, message: Message, attempts: AttemptLog | None = None) -> Outcome:
        """Deliver `message`; a channel whose request may go unanswered records each one in `attempts`."""
        ...


class ConsoleChannel:
    """One readable line per alert on stdout (no webhook configured, or --dry-run)."""

    name = CONSOLE

    def __init__(self, out: TextIO | None = None, prefix: str = "", dry_run: bool = False) -> None:
        self._out = out
        self._prefix = prefix
        self._dry_run = dry_run

    def send(self, message: Message, attempts: AttemptLog | None = None) -> Outcome:
        # a line printed is never in doubt: no attempt to record before it
        out = self._out or sys.stdout
        if isinstance(message, Digest):
            lines = messages.digest_lines(message, recorded=not self._dry_run)
        else:
            lines = [messages.console_line(message.organization, alert) for alert in message.alerts]
        for line in lines:
            print(f"{self._prefix}{line}", file=out, flush=True)
        return Outcome(delivered=True)


class Pacer:
    """Spaces the messages to one webhook at least `interval` seconds apart (Slack accepts about one
    message per second per webhook and answers a burst with 429)."""

    def __init__(
        self,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._interval = interval
        self._clock = clock
        self._sleep = sleep
        self._next: float | None = None

    def wait(self) -> None:
        if self._next is not None:
            delay = self._next - self._clock()
            if delay > 0:
                self._sleep(delay)

    def sent(self) -> None:
        self._next = self._clock() + self._interval


class EqualJitter(Jitter):
    """Half the backoff fixed, half random (slack-sdk's default adds up to a whole extra second)."""

    def recalculate(self, duration: float) -> float:
        return duration / 2 + random.uniform(0, duration / 2)


class RefusalRecordedBeforeTheWait(RetryHandler):
    """A retry handler that has the attempt it retries recorded as refused before its wait: stopped then,
    the run leaves the alert failed, not in doubt. The handlers of retry_handlers retry only what nothing
    accepted: an answer that refused it, or a connection that failed."""

    def prepare_for_next_attempt(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        retry_wait_begins(None if response is None else response.status_code)
        super().prepare_for_next_attempt(state=state, request=request, response=response, error=error)


class BoundedRateLimitRetryHandler(RefusalRecordedBeforeTheWait, RateLimitErrorRetryHandler):
    """429: slack-sdk sleeps for Retry-After; we only let it when the wait is within `max_wait`.

    A longer (or unreadable) Retry-After leaves the message failed for the next run instead of
    stalling this one.
    """

    def __init__(self, max_retry_count: int, max_wait: float) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.max_wait = max_wait

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if not super()._can_retry(state=state, request=request, response=response, error=error):
            return False
        assert response is not None  # the parent only retries a 429 response
        values = next((v for k, v in response.headers.items() if k.lower() == "retry-after"), None)
        if not values:
            return True  # slack-sdk waits 1-2 s
        try:
            seconds = int(values[0])
        except ValueError:
            return False
        return 0 <= seconds <= self.max_wait


class AnyServerErrorRetryHandler(RefusalRecordedBeforeTheWait, ServerErrorRetryHandler):
    """slack-sdk's handler retries 500 and 503 only; proxies answer 502 and 504 as well."""

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        return response is not None and 500 <= response.status_code <= 599


class UnreachedRetryHandler(RefusalRecordedBeforeTheWait, ConnectionErrorRetryHandler):
    """Connection errors, retried after a backoff (the error types say which)."""


def retry_handlers(http: HttpSettings) -> list[RetryHandler]:
    """The bounded retry policy. slack-sdk counts attempts in one shared state, so `retries` is the
    total number of retries per message whatever mix of errors caused them."""
    backoff = BackoffRetryIntervalCalculator(backoff_factor=http.backoff, jitter=EqualJitter())
    return [
        BoundedRateLimitRetryHandler(max_retry_count=http.retries, max_wait=http.max_retry_after),
        AnyServerErrorRetryHandler(max_retry_count=http.retries, interval_calculator=backoff),
        UnreachedRetryHandler(
            max_retry_count=http.retries,
            interval_calculator=backoff,
            # urllib wraps what fails while connecting and sending in URLError; what fails while
            # waiting for the answer (TimeoutError, RemoteDisconnected, a reset) comes unwrapped and
            # may follow an accepted request: never retried
            error_types=[URLError],
        ),
    ]


class _AnswerRedirects(HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises the 3xx, which slack-sdk turns into the answer


class AttemptOverdue(Exception):
    """An HTTP attempt ran past its deadline and was given up on. `request_sent`: its request had gone
    out, so the message may still arrive; else nothing was sent, and nothing will be."""

    def __init__(self, deadline: float, request_sent: bool):
        if request_sent:
            said = f"no answer within {deadline:g} s (the message may have arrived)"
        else:  # a name lookup, connection or TLS handshake that hung
            said = f"cannot reach the webhook: no connection within {deadline:g} s (nothing was sent)"
        super().__init__(said)
        self.request_sent = request_sent


class SendFailed(Exception):
    """The send raised `error`; `request_sent`: whether the request of its last attempt had gone out."""

    def __init__(self, error: Exception, request_sent: bool):
        super().__init__(str(error))
        self.error = error
        self.request_sent = request_sent


def attempt_deadline(http: HttpSettings) -> float:
    # the timeout bounds each connect, send and read; an attempt makes a few: twice it is plenty
    return 2 * http.timeout


class _WatchedSend:
    """One message's send, running in a worker thread, watched by the thread waiting for it, which also
    records its attempts (AttemptLog): the worker waits for each record before it goes on."""

    def __init__(self, attempts: AttemptLog | None) -> None:
        self._lock = threading.Lock()
        self._attempt_began: float | None = time.monotonic()
        self._given_up = False
        self.request_sent = False  # by the attempt under way, or the last one
        self._attempts = attempts
        # (record, done) for the waiting thread to run; None: the worker has ended
        self.records: queue.SimpleQueue[tuple[Callable[[], None], threading.Event] | None] = (
            queue.SimpleQueue()
        )
        self._record_waited_for: threading.Event | None = None

    def attempt_begins(self) -> None:
        with self._lock:
            if self._given_up:  # a retry after the deadline would be a second copy
                raise AttemptOverdue(0, request_sent=False)
            after_a_wait = self._attempt_began is None  # the first attempt was recorded before the worker
        if after_a_wait and self._attempts is not None:
            self._recorded(self._attempts.request_may_go_out)
        with self._lock:
            self._attempt_began = time.monotonic()
            self.request_sent = False

    def attempt_ends(self) -> None:
        with self._lock:
            self._attempt_began = None

    def retry_wait_begins(self, status: int | None) -> None:
        if self._attempts is not None:
            refused = f"HTTP {status}" if status is not None else "cannot reach the webhook"
            attempts = self._attempts
            self._recorded(lambda: attempts.refused(f"{refused} (retrying)"))

    def request_goes_out(self) -> None:
        with self._lock:
            if self._given_up:  # reported as not sent: it must not go out now
                raise AttemptOverdue(0, request_sent=False)
            self.request_sent = True

    def time_left(self, deadline: float) -> float | None:
        """Seconds the attempt under way has left (None between attempts); at 0 the send is given up, and
        whether its request went out is settled."""
        with self._lock:
            if self._attempt_began is None:
                return None
            left = self._attempt_began + deadline - time.monotonic()
            if left <= 0:
                self._given_up = True
            return left

    def _recorded(self, record: Callable[[], None]) -> None:
        """In the worker: have the waiting thread run `record`, and go on once it has."""
        done = threading.Event()
        with self._lock:
            if self._given_up:
                raise AttemptOverdue(0, request_sent=False)
            self._record_waited_for = done
        self.records.put((record, done))
        done.wait()
        with self._lock:
            if self._given_up:  # the waiting thread left without the record: nothing may go out
                raise AttemptOverdue(0, request_sent=False)

    def abandon(self) -> None:
        """The waiting thread leaves (an answer, the deadline, an error or a stop): the worker, if it goes
        on, records and sends nothing more."""
        with self._lock:
            self._given_up = True
            waiting = self._record_waited_for
        if waiting is not None:
            waiting.set()


_sending = threading.local()


def attempt_begins() -> None:
    """The HTTP clients' hook as each attempt starts (nothing outside send_within)."""
    watched = getattr(_sending, "send", None)
    if watched is not None:
        watched.attempt_begins()


def attempt_ends() -> None:
    """The HTTP clients' hook as an attempt ends: waiting out a backoff or Retry-After is no attempt."""
    watched = getattr(_sending, "send", None)
    if watched is not None:
        watched.attempt_ends()


def retry_wait_begins(status: int | None) -> None:
    """The retry policies' hook before a retry's wait: the attempt was answered `status`, or (None) never
    reached the webhook; the policies retry nothing that may have been accepted."""
    watched = getattr(_sending, "send", None)
    if watched is not None:
        watched.retry_wait_begins(status)


def _note_request_sent(event: str, _args: tuple) -> None:
    # http.client raises this audit event as it writes a request's bytes: urllib's connections (Slack's
    # client) and urllib3's (requests) are both http.client's. Until then a failed send sent nothing: a
    # name lookup, a connection, a TLS handshake or a URL that cannot be used.
    if event == "http.client.send":
        watched = getattr(_sending, "send", None)
        if watched is not None:
            watched.request_goes_out()


sys.addaudithook(_note_request_sent)


def send_within(send: Callable[[], T], deadline: float, attempts: AttemptLog | None = None) -> T:
    """`send()`, raising AttemptOverdue once one of its HTTP attempts has run `deadline` seconds, and
    SendFailed for any error it raises. Each attempt is recorded in `attempts`, in this thread, before its
    request may go out: the first one here, a retry after its wait (the HTTP clients' hooks).

    A socket timeout bounds each read only: an answer trickled a byte at a time would hold the run, and
    its locks, for as long as the server likes. The attempt given up on goes on in a daemon thread and,
    if its request had gone out, may arrive (so it counts as unanswered); no further request goes out."""
    if attempts is not None:
        attempts.request_may_go_out()
    watched = _WatchedSend(attempts)  # the first attempt's time starts once it is recorded
    result: list[tuple[bool, Any]] = []

    def work() -> None:
        _sending.send = watched
        try:
            result.append((True, send()))
        except BaseException as error:
            result.append((False, error))
        finally:
            watched.records.put(None)

    worker = threading.Thread(target=work, name="alert-send", daemon=True)
    try:
        worker.start()
        while True:
            left = watched.time_left(deadline)
            if left is not None and left <= 0 and not result:
                raise AttemptOverdue(deadline, watched.request_sent)
            try:
                asked = watched.records.get(timeout=deadline if left is None else max(left, 0))
            except queue.Empty:
                continue
            if asked is None:
                break
            record, done = asked
            record()
            done.set()
    finally:
        watched.abandon()
    succeeded, value = result[0]
    if succeeded:
        return value
    if isinstance(value, Exception):
        raise SendFailed(value, watched.request_sent) from value
    raise value


class UnredirectedWebhookClient(WebhookClient):
    """slack-sdk's client, except that a redirect is the answer: urllib would follow it with a GET that
    drops the message, and the 200 of whatever page it lands on would count as delivered."""

    def _perform_http_request_internal(self, url: str, req: Request) -> WebhookResponse:
        if not url.lower().startswith("http"):
            # as slack-sdk does: no file:// and the like
            raise SlackRequestError("the webhook URL must be http(s)")
        handlers: list[BaseHandler] = [_AnswerRedirects(), HTTPSHandler(context=self.ssl)]
        if self.proxy:
            handlers.append(ProxyHandler({"http": self.proxy, "https": self.proxy}))
        attempt_begins()  # one attempt: slack-sdk's retry handlers wait between two calls
        try:
            with build_opener(*handlers).open(req, timeout=self.timeout) as answer:
                body = answer_text(answer.read(), answer.headers.get_content_charset())
        except HTTPError as error:
            # slack-sdk decodes an error answer's body strictly: hand it one that decodes
            raise _decodable(error) from None
        finally:
            attempt_ends()
        return WebhookResponse(url=url, status_code=answer.status, body=body, headers=answer.headers)


def answer_text(body: bytes, charset: str | None) -> str:
    """An answer's body as text, whatever its charset says: the status is the answer, and a body that does
    not decode must not turn an accepted message into an error."""
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except (LookupError, ValueError):  # an unknown charset, or one without "replace" (idna)
        return body.decode("utf-8", errors="replace")


def _decodable(error: HTTPError) -> HTTPError:
    """The same error answer with its body re-encoded as utf-8, and said so."""
    with error:
        body = answer_text(error.read(), error.headers.get_content_charset())
    headers = HTTPMessage()
    for name, value in error.headers.items():
        headers[name] = value
    if headers.get_content_charset() is not None:
        headers.set_param("charset", "utf-8")
    return HTTPError(error.url, error.code, error.msg, headers, BytesIO(body.encode()))


def webhook_client(url: str, http: HttpSettings) -> UnredirectedWebhookClient:
    """slack-sdk's client for one webhook: `http`'s timeout and retries, no log that could show the URL."""
    return UnredirectedWebhookClient(
        url, timeout=http.timeout, logger=_silent_logger(), retry_handlers=retry_handlers(http)
    )  # type: ignore[arg-type]  # slack-sdk annotates timeout as int; urllib takes a float


def _silent_logger() -> logging.Logger:
    # slack-sdk logs request URLs at debug/info level: keep its records away from any handler
    logger = logging.getLogger("data_platform.alerts.slack_sdk")
    logger.setLevel(logging.CRITICAL)
    logger.propagate = False
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    return logger


REDACTED = f"<{DEFAULT_WEBHOOK_ENV}>"
_SHORTEST_SECRET_PART = 4  # shorter path segments or query values ("T0", "v1") would mangle texts


def _secret_parts(url: str) -> list[str]:
    """The whole URL and every part of it that could carry its secret, longest first."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return [url]
    after_host = url.split(parts.netloc, 1)[-1] if parts.netloc else url
    candidates = {url, after_host, parts.path, parts.query, parts.fragment, password or ""}
    candidates.update(segment for segment in parts.path.split("/"))
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        candidates.update((f"{name}={value}", value))
    secrets = {part for part in candidates if len(part) >= _SHORTEST_SECRET_PART}
    return sorted(secrets, key=len, reverse=True)


def redact(message: str, url: str, placeholder: str = REDACTED) -> str:
    """Remove the webhook URL, and each part of it that could carry the secret, from any text;
    `placeholder` (the variable it came from, say) takes its place."""
    for secret in _secret_parts(url):
        message = message.replace(secret, placeholder)
    return message


def describe_send_error(error: Exception, timeout: float, request_sent: bool = True) -> tuple[str, bool]:
    """(what happened, whether the request may have been accepted); request_sent: whether the request had
    gone out (SendFailed)."""
    if isinstance(error, URLError):  # failed while connecting or sending: nothing accepted
        if isinstance(error.reason, TimeoutError):
            return f"cannot reach Slack: no connection within {timeout:g} s", False
        return f"cannot reach Slack: {error.reason}", False
    if not request_sent:  # a URL or proxy that cannot be used, say
        return f"{type(error).__name__}: {error} (nothing was sent)", False
    if isinstance(error, TimeoutError):
        return f"no answer within {timeout:g} s (the message may have arrived)", True
    if isinstance(error, SlackRequestError):  # refused before sending (the URL, the proxy)
        return f"{type(error).__name__}: {error}", False
    if isinstance(error, (OSError, HTTPException)):  # dropped or garbled while waiting for the answer
        return f"no answer: {type(error).__name__}: {error} (the message may have arrived)", True
    # any other error may follow an accepted message: taken for "nothing accepted", it would be sent
    # again by every run instead of counting towards its two attempts
    return f"{type(error).__name__}: {error} (the message may have arrived)", True


class SlackChannel:
    """One Block Kit message (with a text fallback) per organization via the incoming webhook."""

    def __init__(self, url: str, http: HttpSettings, name: str = DEFAULT_WEBHOOK_ENV) -> None:
        self.name = name
        self._url = url
        self._timeout = http.timeout
        self._deadline = attempt_deadline(http)
        self._pacer = Pacer(http.slack_min_interval)
        self._client = webhook_client(url, http)

    def send(self, message: Message, attempts: AttemptLog | None = None) -> Outcome:
        text, blocks = messages.slack_message(message)
        self._pacer.wait()
        try:
            response = send_within(
                lambda: self._client.send(text=text, blocks=blocks, unfurl_links=False, unfurl_media=False),
                self._deadline,
                attempts,
            )
        except AttemptOverdue as overdue:
            return Outcome(False, str(overdue), service_unavailable=True, unanswered=overdue.request_sent)
        except SendFailed as failed:  # network errors once retries are spent; never let one kill the run
            description, unanswered = describe_send_error(failed.error, self._timeout, failed.request_sent)
            return Outcome(False, self._redact(description), service_unavailable=True, unanswered=unanswered)
        finally:
            self._pacer.sent()
        if 200 <= response.status_code < 300:
            return Outcome(delivered=True)
        body = " ".join(str(response.body or "").split())[:200]
        unavailable = response.status_code == 429 or response.status_code >= 500
        return Outcome(False, self._redact(f"HTTP {response.status_code}: {body}"), unavailable)

    def _redact(self, text: str) -> str:
        return redact(text, self._url, f"<{self.name}>")
