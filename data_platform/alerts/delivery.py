"""Where alerts go: the Slack incoming webhook, or stdout when no webhook is configured.

Retries are slack-sdk's retry handlers, bounded: 429 honours Retry-After (up to a cap), 5xx and
connection errors / timeouts back off exponentially. The webhook URL is a secret: it is never
logged, printed or stored, and error texts are scrubbed of it before anyone sees them.
"""

from __future__ import annotations

import logging
import random
import sys
from dataclasses import dataclass
from http.client import RemoteDisconnected
from typing import Protocol, TextIO
from urllib.error import URLError
from urllib.parse import urlsplit

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
from slack_sdk.webhook import WebhookClient

from data_platform.alerts import messages
from data_platform.alerts.config import HttpSettings
from data_platform.alerts.store import Batch


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    error: str | None = None
    # the service itself is failing (429/5xx/network): don't spend the run on the remaining messages
    service_unavailable: bool = False


class Channel(Protocol):
    name: str

    def send(self, batch: Batch) -> Outcome: ...


class ConsoleChannel:
    """One readable line per alert on stdout (no webhook configured, or --dry-run)."""

    name = "stdout"

    def __init__(self, out: TextIO | None = None, prefix: str = "") -> None:
        self._out = out
        self._prefix = prefix

    def send(self, batch: Batch) -> Outcome:
        out = self._out or sys.stdout
        for alert in batch.alerts:
            print(f"{self._prefix}{messages.console_line(batch.organization, alert)}", file=out, flush=True)
        return Outcome(delivered=True)


class EqualJitter(Jitter):
    """Half the backoff fixed, half random (slack-sdk's default adds up to a whole extra second)."""

    def recalculate(self, duration: float) -> float:
        return duration / 2 + random.uniform(0, duration / 2)


class BoundedRateLimitRetryHandler(RateLimitErrorRetryHandler):
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


class AnyServerErrorRetryHandler(ServerErrorRetryHandler):
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


def retry_handlers(http: HttpSettings) -> list[RetryHandler]:
    """The bounded retry policy. slack-sdk counts attempts in one shared state, so `retries` is the
    total number of retries per message whatever mix of errors caused them."""
    backoff = BackoffRetryIntervalCalculator(backoff_factor=http.backoff, jitter=EqualJitter())
    return [
        BoundedRateLimitRetryHandler(max_retry_count=http.retries, max_wait=http.max_retry_after),
        AnyServerErrorRetryHandler(max_retry_count=http.retries, interval_calculator=backoff),
        ConnectionErrorRetryHandler(
            max_retry_count=http.retries,
            interval_calculator=backoff,
            # a read timeout surfaces as TimeoutError, not URLError: retry it too
            error_types=[URLError, ConnectionError, RemoteDisconnected, TimeoutError],
        ),
    ]


def _silent_logger() -> logging.Logger:
    # slack-sdk logs request URLs at debug/info level: keep its records away from any handler
    logger = logging.getLogger("data_platform.alerts.slack_sdk")
    logger.setLevel(logging.CRITICAL)
    logger.propagate = False
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    return logger


def redact(message: str, url: str) -> str:
    """Remove the webhook URL (and its secret path) from any text."""
    parts = urlsplit(url)
    for secret in (url, f"{parts.netloc}{parts.path}", parts.path):
        if secret and secret != "/":
            message = message.replace(secret, "<SLACK_WEBHOOK_URL>")
    return message


def _describe(error: Exception, timeout: float) -> str:
    reason = error.reason if isinstance(error, URLError) else error
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(error, URLError):
        return f"cannot reach Slack: {error.reason}"
    return f"{type(error).__name__}: {error}"


class SlackChannel:
    """One Block Kit message (with a text fallback) per organization via the incoming webhook."""

    name = "slack"

    def __init__(self, url: str, http: HttpSettings) -> None:
        self._url = url
        self._timeout = http.timeout
        self._client = WebhookClient(
            url, timeout=http.timeout, logger=_silent_logger(), retry_handlers=retry_handlers(http)
        )  # type: ignore[arg-type]  # slack-sdk annotates timeout as int; urllib takes a float

    def send(self, batch: Batch) -> Outcome:
        text, blocks = messages.slack_message(batch)
        try:
            response = self._client.send(text=text, blocks=blocks, unfurl_links=False, unfurl_media=False)
        except Exception as error:  # network errors once retries are spent; never let one kill the run
            message = redact(_describe(error, self._timeout), self._url)
            return Outcome(False, message, service_unavailable=True)
        if 200 <= response.status_code < 300:
            return Outcome(delivered=True)
        body = " ".join(str(response.body or "").split())[:200]
        unavailable = response.status_code == 429 or response.status_code >= 500
        return Outcome(False, redact(f"HTTP {response.status_code}: {body}", self._url), unavailable)
