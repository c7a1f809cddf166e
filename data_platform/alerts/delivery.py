"""Where alerts go: a Slack incoming webhook, or stdout when no webhook is configured (the JSON
webhook is in json_sink).

Messages to one Slack webhook are spaced `ALERT_SLACK_MIN_INTERVAL` seconds apart (Pacer).

Retries are slack-sdk's retry handlers, bounded, and only where Slack accepted nothing (retries.py): 429
honours Retry-After (up to a cap), 5xx answers and connection errors back off exponentially. A
request that went out and got no answer (a read timeout, a dropped connection, an attempt still
unfinished after twice ALERT_HTTP_TIMEOUT) may have been accepted: it is never retried within the
run, and reported as unanswered instead.

Each HTTP attempt is recorded (attempts.py: AttemptLog, send_within) right before its request may go
out, after the pacer's wait and any retry's; an attempt answered no is recorded so before the wait for
its retry.

The webhook URL is a secret: it is never logged, printed or stored, and error texts are scrubbed
of it (and of each of its parts) before anyone sees them.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException, HTTPMessage
from io import BytesIO
from typing import Protocol, TextIO
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
from slack_sdk.webhook import WebhookClient, WebhookResponse

from data_platform.alerts import messages
from data_platform.alerts.attempts import (
    AttemptLog,
    AttemptOverdue,
    SendFailed,
    attempt_begins,
    attempt_deadline,
    attempt_ends,
    send_within,
)
from data_platform.alerts.config import HttpSettings
from data_platform.alerts.records import CONSOLE, DEFAULT_WEBHOOK_ENV, Digest, Message
from data_platform.alerts.retries import retry_handlers

# Slack's answers that refuse every message to come, not only this one (the messages name no channel of
# their own): the webhook revoked (404 no_service, channel_not_found), its token refused or its workspace
# restricting it (401, 403 invalid_token, action_prohibited), its channel archived (410). A 400 is this
# message's. A JSON receiver's 4xx may be about one document: not taken so.
SLACK_WEBHOOK_GONE = frozenset({401, 403, 404, 410})


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    error: str | None = None
    # the service itself is failing (429/5xx/network): don't spend the run on the remaining messages
    service_unavailable: bool = False
    # the request went out and no answer came back: it may have been accepted
    unanswered: bool = False
    # the webhook refuses every message (SLACK_WEBHOOK_GONE): the rest are not sent this run
    webhook_gone: bool = False


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


class _AnswerRedirects(HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises the 3xx, which slack-sdk turns into the answer


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
    """The whole URL and every part of it that could carry its secret, longest first. The host and user
    name too: some services put the secret in the host (`<token>.m.pipedream.net`), others take an API key
    as the user name."""
    try:
        parts = urlsplit(url)
        password, username, hostname = parts.password, parts.username, parts.hostname
    except ValueError:
        return [url]
    after_host = url.split(parts.netloc, 1)[-1] if parts.netloc else url
    candidates = {url, after_host, parts.path, parts.query, parts.fragment}
    candidates.update(part or "" for part in (password, username, hostname, parts.netloc))
    candidates.update(segment for segment in parts.path.split("/"))
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        candidates.update((f"{name}={value}", value))
    secrets = {part for part in candidates if len(part) >= _SHORTEST_SECRET_PART}
    return sorted(secrets, key=len, reverse=True)


def redact(message: str, url: str, placeholder: str = REDACTED) -> str:
    """Remove the webhook URL, and each part of it that could carry the secret, from any text;
    `placeholder` (the variable it came from, say) takes its place. In any case (a client lowercases the
    host, an error page may shout the path), and in one pass, so no part is found inside a placeholder."""
    secrets = re.compile("|".join(map(re.escape, _secret_parts(url))), re.IGNORECASE)
    return secrets.sub(lambda _: placeholder, message)


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


def webhook_outcome(
    post: Callable[[], tuple[int, str]],
    *,
    deadline: float,
    attempts: AttemptLog | None,
    describe: Callable[[Exception, bool], tuple[str, bool]],
    scrub: Callable[[str], str],
    gone: frozenset[int] = frozenset(),
) -> Outcome:
    """One message through a webhook, whichever client: `post` sends it and returns the answer's status and
    body; `describe` says what a failed send means, (what happened, whether it may have been accepted),
    given whether the request had gone out; `scrub` removes the URL from any text shown; `gone`: the
    answers that refuse every message to come (Outcome.webhook_gone)."""
    try:
        status, body = send_within(post, deadline, attempts)
    except AttemptOverdue as overdue:
        return Outcome(False, str(overdue), service_unavailable=True, unanswered=overdue.request_sent)
    except SendFailed as failed:  # network errors once retries are spent; never let one kill the run
        description, unanswered = describe(failed.error, failed.request_sent)
        return Outcome(False, scrub(description), service_unavailable=True, unanswered=unanswered)
    if 200 <= status < 300:
        return Outcome(delivered=True)
    body = " ".join(body.split())[:200]
    return Outcome(
        False,
        scrub(f"HTTP {status}: {body}"),
        service_unavailable=status == 429 or status >= 500,
        webhook_gone=status in gone,
    )


def slack_answer(response: WebhookResponse) -> tuple[int, str]:
    return response.status_code, str(response.body or "")


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
            return webhook_outcome(
                lambda: slack_answer(
                    self._client.send(text=text, blocks=blocks, unfurl_links=False, unfurl_media=False)
                ),
                deadline=self._deadline,
                attempts=attempts,
                describe=lambda error, request_sent: describe_send_error(error, self._timeout, request_sent),
                gone=SLACK_WEBHOOK_GONE,
                scrub=self._redact,
            )
        finally:
            self._pacer.sent()

    def _redact(self, text: str) -> str:
        return redact(text, self._url, f"<{self.name}>")
