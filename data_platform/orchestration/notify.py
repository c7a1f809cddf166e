"""Operations messages (a run failed, data went stale or recovered) to the balance alerts' destination.

The destination and the HTTP policy are the balance alerts' own: SLACK_WEBHOOK_URL (or the file
SLACK_WEBHOOK_URL_FILE names) and ALERT_HTTP_*, read by the same `alerts.config` functions as
alert_script.py. Only those: a bad value of the balance alerts' other settings (ALERT_MIN_CHANGE_USD...)
fails their run, and the alert about that failure must still go out; an invalid webhook or HTTP setting
sends the message to stdout, with why. A Slack message is one attempt whose socket operations time out
after at most OPS_HTTP_TIMEOUT_SECONDS, and the whole send after twice that (no retries: a sensor's next
tick is the retry), a tick's messages spaced as the balance alerts' are (at most OPS_MAX_PACE_SECONDS),
with every error text scrubbed by `alerts.delivery.redact`; the result is an
`alerts.delivery.Outcome`.
The balance alert channels format an organization's balance alerts, so an operations message has its own
two channels of the same shape (`name`, `send() -> Outcome`).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

from data_platform.alerts import attempts, config, delivery
from data_platform.alerts.records import MAX_UNCONFIRMED_ATTEMPTS

# first lines of an error shown in a message: enough to act on, short enough for Slack
ERROR_LINES_SHOWN = 8
# A sensor tick sends these, and Dagster gives up on a tick after 60 s while its sends go on (keeping the
# tick's old cursor, so what it sent goes again): one attempt per message, each socket operation of at
# most this many seconds (less when ALERT_HTTP_TIMEOUT says so) and the send of twice that, never
# retried within the tick (no 429 Retry-After or 5xx backoff waited out): the next tick sends it again.
OPS_HTTP_TIMEOUT_SECONDS = 10.0
# A tick's messages to Slack are spaced ALERT_SLACK_MIN_INTERVAL apart, as the balance alerts are (Slack
# answers a burst with 429), but by at most this much: the wait comes within the tick's minute too.
OPS_MAX_PACE_SECONDS = 5.0


@dataclass(frozen=True)
class OpsMessage:
    """One operations message: a title line, detail lines, and an optional link."""

    title: str
    details: tuple[str, ...] = ()
    link: str | None = None

    def text(self) -> str:
        return "\n".join([self.title, *self.details, *([self.link] if self.link else [])])

    def slack_text(self) -> str:
        """text() as Slack's fallback reads it: the title and details escaped (slack_escaped)."""
        lines = [slack_escaped(line) for line in (self.title, *self.details)]
        return "\n".join([*lines, *([self.link] if self.link else [])])

    def blocks(self) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": self.title[:150]}}
        ]
        if self.details:
            body = slack_escaped("\n".join(self.details))[:2900]
            if body.rfind("&") > body.rfind(";"):  # an entity cut in two
                body = body[: body.rfind("&")]
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"```{body}```"}})
        if self.link:
            blocks.append(
                {"type": "section", "text": {"type": "mrkdwn", "text": f"<{self.link}|Open in Dagster>"}}
            )
        return blocks


def slack_escaped(text: str) -> str:
    """Slack reads <...> in a message as a link or a mention (<!channel>), and & as an entity: an error
    quotes an export's values and whatever a step printed, which must show as written, never notify."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def first_lines(text: str, limit: int = ERROR_LINES_SHOWN) -> tuple[str, ...]:
    lines = [line.rstrip() for line in text.strip().splitlines() if line.strip()]
    return tuple(lines[:limit]) + (("...",) if len(lines) > limit else ())


class OpsChannel(Protocol):
    name: str

    def send(self, message: OpsMessage) -> delivery.Outcome: ...


class ConsoleOpsChannel:
    """The message on stdout (no webhook configured, or `why` Slack cannot be used): in the daemon's log."""

    name = "stdout"

    def __init__(self, out: TextIO | None = None, why: str | None = None) -> None:
        self._out = out
        self._why = why

    def send(self, message: OpsMessage) -> delivery.Outcome:
        out = self._out or sys.stdout
        if self._why:
            print(f"[ops alert] not sent to Slack: {self._why}", file=out)
        # every line tagged: a search of the logs for the tag finds the error and the link too
        print("\n".join(f"[ops alert] {line}" for line in message.text().splitlines()), file=out, flush=True)
        return delivery.Outcome(delivered=True)


class SlackOpsChannel:
    """One Block Kit message (with its text fallback) through the incoming webhook."""

    name = "slack"

    def __init__(self, url: str, http: config.HttpSettings) -> None:
        self._url = url
        self._timeout = http.timeout
        self._deadline = attempts.attempt_deadline(http)
        self._client = delivery.webhook_client(url, http)
        self.pace_seconds = min(http.slack_min_interval, OPS_MAX_PACE_SECONDS)
        self._pacer = delivery.Pacer(self.pace_seconds)

    def send(self, message: OpsMessage) -> delivery.Outcome:
        """One attempt, given up after attempts.attempt_deadline: the client's timeout bounds each socket
        operation only, and a server that answers byte by byte would hold the tick past its minute. A send
        given up on goes on in the background; it may arrive, as a lost answer's may."""
        self._pacer.wait()
        try:
            # `unanswered`: the request went out and may have been accepted, so the caller counts it
            # towards the at-most-twice limit instead of resending it every tick
            return delivery.webhook_outcome(
                lambda: delivery.slack_answer(
                    self._client.send(
                        text=message.slack_text(),
                        blocks=message.blocks(),
                        unfurl_links=False,
                        unfurl_media=False,
                    )
                ),
                deadline=self._deadline,
                attempts=None,
                describe=lambda error, sent: delivery.describe_send_error(error, self._timeout, sent),
                scrub=lambda text: delivery.redact(text, self._url),
            )
        finally:
            self._pacer.sent()


def channel_from_environment(environ: Mapping[str, str] | None = None) -> OpsChannel:
    """Slack when SLACK_WEBHOOK_URL is set, else stdout: the balance alerts' rule and settings. An
    invalid webhook or HTTP setting prints the message, with why, rather than losing it."""
    env = os.environ if environ is None else environ
    try:
        url = config.webhook_url(env)
        if not url:
            return ConsoleOpsChannel()
        http = config.http_settings(env)
        timeout = min(http.timeout, OPS_HTTP_TIMEOUT_SECONDS)
        return SlackOpsChannel(url, dataclasses.replace(http, timeout=timeout, retries=0))
    except config.ConfigError as error:  # its text never repeats the URL
        return ConsoleOpsChannel(why=str(error))


def dagster_base_url(environ: Mapping[str, str] | None = None) -> str:
    """DAGSTER_BASE_URL, else the UI on this host at DAGSTER_PORT (3000 when unset); a value of only
    whitespace counts as unset (compose's ${NAME:-default} replaces only an empty one)."""
    env = os.environ if environ is None else environ
    port = (env.get("DAGSTER_PORT") or "").strip() or "3000"
    return ((env.get("DAGSTER_BASE_URL") or "").strip() or f"http://localhost:{port}").rstrip("/")


def given_up(what: str, error: str | None) -> str:
    """The error once an alert is not sent again: the balance alerts' words for it."""
    return (
        f"{what} never confirmed after {MAX_UNCONFIRMED_ATTEMPTS} unanswered attempts: not sent again; "
        f"check the channel, where it may have arrived (last attempt: {error})"
    )
