"""The Slack client's bounded retry policy: slack-sdk's retry handlers, retrying only what nothing
accepted (an answer that refused the message, a connection that failed), each attempt recorded as refused
before the wait for its retry."""

from __future__ import annotations

import random
from urllib.error import URLError

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

from data_platform.alerts.attempts import retry_wait_begins
from data_platform.alerts.config import HttpSettings


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
