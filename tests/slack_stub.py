"""A local HTTP server standing in for Slack's incoming webhook.

It records every request and answers from a script: 200, 429 with Retry-After, 5xx, a redirect to a
page, a slow answer (accepted, answered late), a hang (not accepted, no answer until the test ends), or
a 200 whose body is cut short (accepted, the connection dropped mid-answer).
The URL carries a fake secret in its path and query so tests can prove it never leaks into output or
the database.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SECRET = "XOXB-not-a-real-secret-7f3a9c"
QUERY_SECRET = "qs-token-not-real-5d2e"


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: str = "ok"
    retry_after: int | str | None = None  # a str: any header value, readable or not
    delay: float = 0.0  # seconds before answering; longer than the client's timeout = no answer
    accepted: bool = True  # whether a 200 means the message reached the channel (False: a hang)
    location: str | None = None  # a redirect's Location header
    cut_short: bool = False  # announce a chunked body, send part of it and drop the connection


OK = Reply()


def rate_limited(retry_after: int = 1) -> Reply:
    return Reply(429, "rate_limited", retry_after=retry_after)


def server_error(status: int = 500) -> Reply:
    return Reply(status, "internal_error")


def hang(seconds: float = 30.0) -> Reply:
    """The message is lost and no answer comes."""
    return Reply(delay=seconds, accepted=False)


def slow(seconds: float = 30.0) -> Reply:
    """The message reaches the channel; the answer comes too late for the client."""
    return Reply(delay=seconds)


def cut_short(status: int = 200) -> Reply:
    """The message reaches the channel; the answer's body breaks off (a proxy or server dying)."""
    return Reply(status, "ok", cut_short=True)


def redirect(status: int = 302) -> Reply:
    """The webhook moved: a client following it asks for a page (GET, answered 200) without the message."""
    return Reply(status, "moved", location="/moved")


def echoing_path(status: int = 404) -> Reply:
    """An error page that quotes the requested path and query, as many proxies do."""
    return Reply(status, "no such hook: {path}")


@dataclass
class Received:
    path: str
    body: dict[str, Any]
    status: int  # what the stub answered (or meant to, for a hang)
    accepted: bool = True  # the message reached the channel (a 200 that was not a hang)
    at: float = field(default_factory=time.monotonic)


class SlackStub:
    """Start with `with SlackStub() as slack:`; point SLACK_WEBHOOK_URL at `slack.url`."""

    def __init__(self, query: str = "") -> None:
        self._query = query
        self.requests: list[Received] = []
        self._script: deque[Reply] = deque()
        self._default = OK
        self._rate_limit: tuple[float, int] | None = None  # (min seconds between messages, Retry-After)
        self._last_accepted: float | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        query = f"?{self._query}" if self._query else ""
        return f"http://{host}:{port}/services/T0STUB/B0STUB/{SECRET}{query}"

    def answer(self, *replies: Reply, then: Reply | None = None) -> None:
        """Answer the next requests with `replies` in order, then `then` (default: keep the default)."""
        with self._lock:
            self._script.extend(replies)
            if then is not None:
                self._default = then

    def limit_rate(self, min_interval: float, retry_after: int) -> None:
        """Answer 429 with Retry-After to a message arriving sooner than `min_interval` seconds after
        the last accepted one, as Slack does to a burst (the scripted replies apply to the rest)."""
        with self._lock:
            self._rate_limit = (min_interval, retry_after)

    def _too_soon(self, now: float) -> bool:
        if self._rate_limit is None or self._last_accepted is None:
            return False
        return now - self._last_accepted < self._rate_limit[0]

    def always(self, reply: Reply) -> None:
        with self._lock:
            self._script.clear()
            self._default = reply

    @property
    def delivered(self) -> list[dict[str, Any]]:
        """Bodies of the accepted requests (200, not a hang): what actually reached the channel."""
        return [r.body for r in self.requests if r.accepted]

    def _next_reply(self) -> Reply:
        with self._lock:
            return self._script.popleft() if self._script else self._default

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                now = time.monotonic()
                with stub._lock:
                    too_soon = stub._too_soon(now)
                if too_soon:
                    assert stub._rate_limit is not None
                    reply = rate_limited(stub._rate_limit[1])
                else:
                    reply = stub._next_reply()
                with stub._lock:
                    accepted = reply.status == 200 and reply.accepted
                    if accepted:
                        stub._last_accepted = now
                    stub.requests.append(
                        Received(self.path, json.loads(raw or b"{}"), reply.status, accepted, at=now)
                    )
                if reply.delay and stub._stopping.wait(reply.delay):
                    return  # the test is over: drop the connection
                payload = reply.body.replace("{path}", self.path).encode()
                if reply.cut_short:
                    # a chunk announced as 10 bytes, 2 sent, then the connection closes
                    head = f"HTTP/1.1 {reply.status} OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n"
                    self.wfile.write(head.encode() + payload)
                    self.close_connection = True
                    return
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(payload)))
                    if reply.retry_after is not None:
                        self.send_header("Retry-After", str(reply.retry_after))
                    if reply.location is not None:
                        self.send_header("Location", reply.location)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (a hang test)

            def do_GET(self) -> None:
                payload = b"a page, not the webhook"
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output quiet

        return Handler

    def __enter__(self) -> SlackStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
