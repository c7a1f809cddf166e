"""One message's send, bounded by a deadline per HTTP attempt, each attempt recorded before its request
may go out (send_within).

A socket timeout bounds each read only: an answer trickled a byte at a time would hold the run, and its
locks, for as long as the server likes. So the send runs in a worker thread, watched by the caller's,
which gives an attempt up once it has run its deadline, and which records each attempt (AttemptLog, in the
caller's database connection) while the worker waits. The HTTP clients and their retry policies call the
hooks here (attempt_begins, attempt_ends, retry_wait_begins); an audit hook tells when a request's bytes
go out, which settles whether a failed attempt may have been accepted.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from data_platform.alerts.config import HttpSettings

T = TypeVar("T")


class AttemptLog(Protocol):
    """Where one message's HTTP attempts are recorded. send_within calls it in its caller's thread (whose
    database connection records them), the sending thread waiting until each record is made."""

    def request_may_go_out(self) -> None:
        """Before each attempt, after any wait: its request may be accepted and never answered."""

    def refused(self, error: str) -> None:
        """The attempt was answered no, or never reached the webhook, and a retry's wait follows."""


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
