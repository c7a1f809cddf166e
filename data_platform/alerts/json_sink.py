"""The generic JSON webhook: the versioned payload (payload.py) POSTed with requests.

Retries are urllib3's Retry, bounded, and only where the receiver accepted nothing: 429 and 5xx
answers (any Retry-After honoured up to ALERT_HTTP_MAX_RETRY_AFTER) and failed connections. A request
that went out and got no full answer (a read timeout, a dropped connection, an answer cut short, an
attempt still unfinished after twice the timeout: attempts.send_within) may have been accepted: it is
never retried within the run (read=False re-raises it) and reported as unanswered.
"""

from __future__ import annotations

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, ResponseError
from urllib3.util.retry import Retry

from data_platform.alerts import payload
from data_platform.alerts.attempts import (
    AttemptLog,
    attempt_begins,
    attempt_deadline,
    attempt_ends,
    retry_wait_begins,
)
from data_platform.alerts.config import HttpSettings
from data_platform.alerts.delivery import Outcome, answer_text, redact, webhook_outcome
from data_platform.alerts.records import Message

RETRY_STATUSES = frozenset({429, *range(500, 600)})


class BoundedRetry(Retry):
    """Retry, except that an answer asking to wait longer than `max_retry_after` is left for the next run.

    urllib3 sleeps for the Retry-After of any answer it retries (a 503 or a 500 too, not only a 429),
    all the while holding the run's locks."""

    max_retry_after: float = 60.0

    def new(self, **kwargs) -> BoundedRetry:
        retry = super().new(**kwargs)
        retry.max_retry_after = self.max_retry_after
        return retry

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        if response is not None:  # a retried answer; errors have no Retry-After
            try:
                wait = self.get_retry_after(response)
            except Exception:  # unreadable Retry-After: nothing says when to come back
                wait = self.max_retry_after + 1
            if wait is not None and wait > self.max_retry_after:
                # with raise_on_status=False the caller gets that answer back
                raise MaxRetryError(_pool, url, ResponseError(f"Retry-After {wait:g} s is too long"))
        return super().increment(method, url, response, error, _pool, _stacktrace)

    def sleep(self, response=None) -> None:
        attempt_ends()  # waiting out a backoff or Retry-After is no part of an attempt
        # only what nothing accepted is retried (a refusing answer, or no connection): recorded so first
        retry_wait_begins(None if response is None else response.status)
        super().sleep(response)
        attempt_begins()


def retry_policy(http: HttpSettings) -> Retry:
    retry = BoundedRetry(
        total=http.retries,
        connect=http.retries,
        read=False,  # an unanswered request may have been accepted: never sent twice in a run
        status=http.retries,
        other=0,
        redirect=0,
        allowed_methods=frozenset({"POST"}),
        status_forcelist=RETRY_STATUSES,
        backoff_factor=http.backoff,
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    retry.max_retry_after = http.max_retry_after
    return retry


class JsonWebhookChannel:
    """One JSON document (payload version 1) per message, POSTed to the route's webhook."""

    def __init__(self, url: str, http: HttpSettings, name: str = "JSON webhook") -> None:
        self.name = name
        self._url = url
        self._timeout = http.timeout
        self._deadline = attempt_deadline(http)
        self._session = requests.Session()
        self._session.mount("http://", HTTPAdapter(max_retries=retry_policy(http)))
        self._session.mount("https://", HTTPAdapter(max_retries=retry_policy(http)))

    def send(self, message: Message, attempts: AttemptLog | None = None) -> Outcome:
        document = payload.json_payload(message)
        return webhook_outcome(
            lambda: _answer(
                self._session.post(self._url, json=document, timeout=self._timeout, allow_redirects=False)
            ),
            deadline=self._deadline,
            attempts=attempts,
            describe=lambda error, request_sent: _describe(error, self._timeout, request_sent),
            scrub=self._redact,
        )

    def _redact(self, text: str) -> str:
        return redact(text, self._url, f"<{self.name}>")


def _answer(response: requests.Response) -> tuple[int, str]:
    # not response.text: a charset without "replace" (idna) raises there, and would crash the run
    return response.status_code, answer_text(response.content, response.encoding)


# requests raises these while preparing the request, before anything goes out
_REFUSED_BEFORE_SENDING = (
    requests.exceptions.InvalidURL,  # InvalidProxyURL too
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidHeader,
    requests.exceptions.URLRequired,
    requests.exceptions.InvalidJSONError,
)


def _describe(error: Exception, timeout: float, request_sent: bool = True) -> tuple[str, bool]:
    """(what happened, whether the request may have been accepted); request_sent: whether the request had
    gone out (SendFailed).

    Only errors known to come before the request went out mean nothing was accepted; any other (an
    answer cut short, a body that cannot be decoded, ...) may follow an accepted message, which must
    then count towards its two attempts rather than be sent again by every run."""
    if isinstance(error, requests.ConnectTimeout):
        return f"cannot reach the webhook: no connection within {timeout:g} s", False
    if isinstance(error, requests.ReadTimeout):
        return f"no answer within {timeout:g} s (the message may have arrived)", True
    if isinstance(error, _REFUSED_BEFORE_SENDING):
        return f"{type(error).__name__}: {error}", False
    cause = error.args[0] if error.args else None
    if isinstance(error, requests.ConnectionError) and isinstance(cause, MaxRetryError):
        # connecting (the TLS handshake, the proxy) failed on every attempt: nothing was sent. Read errors
        # are re-raised unwrapped (read=False), except a TLS error while reading the answer, taken for a
        # failed handshake too: rare, while a broken certificate must keep its alerts retried, not given up
        return f"cannot reach the webhook: {cause.reason}", False
    if not request_sent:
        return f"{type(error).__name__}: {error} (nothing was sent)", False
    if isinstance(error, requests.ConnectionError):
        return f"no answer: {cause or error} (the message may have arrived)", True
    return f"{type(error).__name__}: {error} (the message may have arrived)", True
