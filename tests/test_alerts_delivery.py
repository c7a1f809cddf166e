"""SlackChannel against a real local HTTP server: retries, bounds, timeouts, and the URL kept secret."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import date
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import PROJECT_ROOT
from slack_stub import (
    OK,
    QUERY_SECRET,
    SECRET,
    Reply,
    SlackStub,
    echoing_path,
    hang,
    rate_limited,
    redirect,
    server_error,
    slow,
)

from data_platform.alerts.config import HttpSettings
from data_platform.alerts.delivery import SlackChannel, describe_send_error, redact
from data_platform.alerts.json_sink import JsonWebhookChannel
from data_platform.alerts.records import Alert, Batch, Organization
from data_platform.orchestration import notify

FAST = HttpSettings(timeout=0.5, retries=2, backoff=0.01, max_retry_after=5)
BATCH = Batch(
    Organization(42, True, False, 3, date(2023, 1, 2), date(2024, 2, 28)),
    (Alert(42, date(2024, 3, 1), "balance_change", Decimal("1000"), Decimal("1500"), Decimal("0.5")),),
)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    # slack-sdk would send even 127.0.0.1 through a configured proxy (it ignores NO_PROXY)
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def slack():
    with SlackStub() as stub:
        yield stub


def test_delivers_block_kit_with_text_fallback(slack):
    outcome = SlackChannel(slack.url, FAST).send(BATCH)

    assert outcome.delivered and outcome.error is None
    [request] = slack.requests
    assert request.path == f"/services/T0STUB/B0STUB/{SECRET}"
    assert request.body["text"].startswith("Balance alert for organization 42: 2024-03-01 $1,000.00 -> ")
    assert [block["type"] for block in request.body["blocks"]] == ["header", "section", "context"]
    assert request.body["unfurl_links"] is False


def test_rate_limit_honours_retry_after(slack):
    slack.answer(rate_limited(retry_after=1))

    outcome = SlackChannel(slack.url, FAST).send(BATCH)

    assert outcome.delivered
    assert [r.status for r in slack.requests] == [429, 200]
    assert slack.requests[1].at - slack.requests[0].at >= 1.0


def test_retry_after_beyond_the_cap_is_left_for_the_next_run(slack):
    slack.always(rate_limited(retry_after=120))
    started = time.monotonic()

    outcome = SlackChannel(slack.url, FAST).send(BATCH)

    assert not outcome.delivered and outcome.service_unavailable
    assert outcome.error == "HTTP 429: rate_limited"
    assert len(slack.requests) == 1
    assert time.monotonic() - started < 1


@pytest.mark.parametrize("channel", [SlackChannel, JsonWebhookChannel])
def test_a_retry_after_of_exactly_the_cap_is_waited_out(slack, channel):
    # ALERT_HTTP_MAX_RETRY_AFTER is the longest wait honoured: that wait itself is still honoured
    slack.answer(rate_limited(retry_after=1))
    outcome = channel(slack.url, replace(FAST, max_retry_after=1)).send(BATCH)
    assert outcome.delivered
    assert [r.status for r in slack.requests] == [429, 200]
    assert slack.requests[1].at - slack.requests[0].at >= 1


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_back_off_and_retry(slack, status):
    slack.answer(server_error(status))
    assert SlackChannel(slack.url, FAST).send(BATCH).delivered
    assert [r.status for r in slack.requests] == [status, 200]


def test_server_errors_back_off_whatever_retry_after_they_carry(slack):
    # slack-sdk's server-error handler waits its own backoff, never the answer's Retry-After
    slack.answer(Reply(503, "busy", retry_after=3600))
    started = time.monotonic()
    assert SlackChannel(slack.url, FAST).send(BATCH).delivered
    assert [r.status for r in slack.requests] == [503, 200]
    assert time.monotonic() - started < 2


def test_retries_are_bounded(slack):
    slack.always(server_error(500))

    outcome = SlackChannel(slack.url, FAST).send(BATCH)

    assert not outcome.delivered and outcome.service_unavailable
    assert len(slack.requests) == 1 + FAST.retries
    assert outcome.error == "HTTP 500: internal_error"


def test_retry_budget_is_shared_across_error_kinds(slack):
    slack.answer(server_error(500), rate_limited(retry_after=0), server_error(503), then=OK)
    outcome = SlackChannel(slack.url, FAST).send(BATCH)
    assert not outcome.delivered
    assert [r.status for r in slack.requests] == [500, 429, 503]


def test_client_errors_are_not_retried(slack):
    slack.always(Reply(400, "invalid_blocks"))

    outcome = SlackChannel(slack.url, FAST).send(BATCH)

    assert not outcome.delivered and not outcome.service_unavailable
    assert outcome.error == "HTTP 400: invalid_blocks"
    assert len(slack.requests) == 1


def test_any_2xx_answer_counts_as_delivered(slack):
    # a relay answering 204 took the message: failed, it would be sent again by every run
    slack.always(Reply(204, ""))

    assert SlackChannel(slack.url, FAST).send(BATCH).delivered


def test_a_redirect_is_an_undelivered_answer_not_followed(slack):
    # followed, the message would be dropped (the POST becomes a GET) and the page's 200 count as sent
    slack.always(redirect())

    outcome = SlackChannel(slack.url, FAST).send(BATCH)

    assert not outcome.delivered and not outcome.service_unavailable
    assert outcome.error == "HTTP 302: moved"
    assert len(slack.requests) == 1


def test_no_answer_is_never_retried_within_the_run(slack):
    slack.answer(hang(), then=OK)

    outcome = SlackChannel(slack.url, FAST).send(BATCH)

    assert not outcome.delivered and outcome.unanswered and outcome.service_unavailable
    assert outcome.error == "no answer within 0.5 s (the message may have arrived)"
    assert len(slack.requests) == 1  # a retry could have been a second copy


def test_slow_slack_that_accepts_then_answers_late_gets_one_copy(slack):
    slack.always(slow())

    outcome = SlackChannel(slack.url, FAST).send(BATCH)

    assert outcome.unanswered and not outcome.delivered
    assert len(slack.delivered) == 1


def test_unreachable_slack_is_not_unanswered():
    with SlackStub() as gone:
        url = gone.url
    outcome = SlackChannel(url, FAST).send(BATCH)
    # nothing was sent: safe to retry (within the run and the next)
    assert not outcome.delivered and not outcome.unanswered
    assert outcome.error.startswith("cannot reach Slack: ")


def test_error_page_quoting_the_url_is_redacted_query_included():
    with SlackStub(query=f"token={QUERY_SECRET}") as slack:
        slack.always(echoing_path(404))
        outcome = SlackChannel(slack.url, FAST).send(BATCH)
    assert outcome.error.startswith("HTTP 404: no such hook: <SLACK_WEBHOOK_URL>")
    assert SECRET not in outcome.error and QUERY_SECRET not in outcome.error


def test_webhook_url_is_never_logged_or_reported(caplog):
    caplog.set_level(logging.DEBUG)  # even with every logger at DEBUG
    with SlackStub() as gone:
        url = gone.url  # nothing listens here any more

    outcome = SlackChannel(url, FAST).send(BATCH)

    assert not outcome.delivered and outcome.service_unavailable
    assert outcome.error.startswith("cannot reach Slack: ")
    assert SECRET not in outcome.error
    assert SECRET not in caplog.text


def test_redact():
    url = f"https://hooks.slack.com/services/T0/B0/{SECRET}?token={QUERY_SECRET}&v=1"
    assert redact(f"Invalid URL detected: {url}", url) == "Invalid URL detected: <SLACK_WEBHOOK_URL>"
    for leak in (
        f"POST /services/T0/B0/{SECRET} failed",
        f"POST /services/T0/B0/{SECRET}?token={QUERY_SECRET}&v=1 failed",
        f"bad query token={QUERY_SECRET}",
        f"value {QUERY_SECRET} refused",
        f"hook {SECRET} unknown",
    ):
        redacted = redact(leak, url)
        assert SECRET not in redacted and QUERY_SECRET not in redacted, redacted
    assert redact("HTTP 500: internal_error", url) == "HTTP 500: internal_error"


def test_redact_replaces_each_quoted_part_whole_and_every_time():
    # one placeholder for the path or the query a text quotes, not the secret cut out of what is around it
    url = f"https://hooks.slack.com/services/T0/B0/{SECRET}?token={QUERY_SECRET}&v=1"
    assert redact(f"POST /services/T0/B0/{SECRET} failed", url) == "POST <SLACK_WEBHOOK_URL> failed"
    assert redact(f"bad query token={QUERY_SECRET}&v=1", url) == "bad query <SLACK_WEBHOOK_URL>"
    assert redact(f"bad query token={QUERY_SECRET}", url) == "bad query <SLACK_WEBHOOK_URL>"
    assert (
        redact(f"hook {SECRET}, again {SECRET}", url) == "hook <SLACK_WEBHOOK_URL>, again <SLACK_WEBHOOK_URL>"
    )


def test_redact_hides_a_password_a_user_name_and_a_fragment():
    url = f"https://key-{SECRET}:pw-{SECRET}@hooks.example.invalid/T0/B0/x#frag-{QUERY_SECRET}"
    redacted = redact(
        f"login key-{SECRET}:pw-{SECRET}@hooks.example.invalid refused, user key-{SECRET}, "
        f"anchor frag-{QUERY_SECRET}",
        url,
    )
    assert (
        redacted == "login <SLACK_WEBHOOK_URL> refused, user <SLACK_WEBHOOK_URL>, anchor <SLACK_WEBHOOK_URL>"
    )


def test_redact_hides_a_host_that_carries_the_secret_as_a_client_lowercases_it():
    # services such as Pipedream name each webhook by a host of its own
    url = f"https://eo{SECRET}.m.pipedream.invalid/"
    redacted = redact(f"Failed to resolve 'eo{SECRET.lower()}.m.pipedream.invalid'", url)
    assert redacted == "Failed to resolve '<SLACK_WEBHOOK_URL>'"


def test_redact_hides_parts_in_any_case_and_never_inside_its_placeholder():
    url = f"https://hooks.example.invalid/services/hook/{SECRET}"
    assert redact(f"error at /SERVICES/HOOK/{SECRET.upper()}", url) == "error at <SLACK_WEBHOOK_URL>"
    # "hook" is a part, and the placeholder's name holds it in another case
    assert redact(f"hook {SECRET}", url) == "<SLACK_WEBHOOK_URL> <SLACK_WEBHOOK_URL>"


def test_redact_hides_a_url_that_does_not_parse():
    # a client's error quotes such a URL whole: its parts cannot be told apart, the whole is hidden
    url = f"https://[hooks.example.invalid/T0/B0/{SECRET}"
    assert redact(f"Invalid URL {url}: bad host", url) == "Invalid URL <SLACK_WEBHOOK_URL>: bad host"


def test_redact_hides_parts_of_four_characters_and_leaves_shorter_ones():
    # a 4-character path segment or query value may be the secret; "T0" or "v=1" would mangle texts
    url = "https://hooks.example.invalid/T0/abcd/xyz?v=1&k=wxyz"
    assert redact("abcd xyz v=1 T0 wxyz", url) == "<SLACK_WEBHOOK_URL> xyz v=1 T0 <SLACK_WEBHOOK_URL>"


# --- answers SlackStub cannot give: bodies that do not decode, answers trickled byte by byte ------------


class RawAnswers:
    """A local server answering each POST with raw bytes, the next of `answers` (the last repeated),
    `pause` seconds between bytes from the answer `trickle_from` on (the ones before sent whole)."""

    def __init__(self, *answers: bytes, pause: float = 0.0, trickle_from: int = 0) -> None:
        self.received: list[dict] = []
        self._answers = list(answers)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                server.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                answer = server._answers.pop(0) if len(server._answers) > 1 else server._answers[0]
                step = 1 if pause and len(server.received) > trickle_from else len(answer)
                try:
                    for at in range(0, len(answer), step):
                        self.wfile.write(answer[at : at + step])
                        self.wfile.flush()
                        time.sleep(pause if step == 1 else 0)
                except OSError:
                    pass  # the client gave up
                self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/services/T0/B0/{SECRET}"

    def __enter__(self) -> RawAnswers:
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def answer(status: int, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


UNDECODABLE = {
    "charset=binary": ("text/plain; charset=binary", b"ok"),
    "unknown charset": ("text/plain; charset=x-no-such-charset", b"ok"),
    "not utf-8": ("text/html; charset=utf-8", b"<html>\xff ok</html>"),
    "idna": ("text/plain; charset=idna", b"\xff"),
}


@pytest.mark.parametrize(("content_type", "body"), UNDECODABLE.values(), ids=UNDECODABLE.keys())
def test_a_2xx_whose_body_does_not_decode_is_delivered(content_type, body):
    # the message was accepted: taken for "nothing accepted", every run sent it again
    with RawAnswers(answer(200, content_type, body)) as webhook:
        outcome = SlackChannel(webhook.url, FAST).send(BATCH)
    assert outcome.delivered, outcome
    assert len(webhook.received) == 1


@pytest.mark.parametrize(("content_type", "body"), UNDECODABLE.values(), ids=UNDECODABLE.keys())
def test_an_error_answer_whose_body_does_not_decode_is_still_an_answer(content_type, body):
    # slack-sdk decodes an error answer's body too: the 503 must still be retried, the 400 reported
    with RawAnswers(answer(503, content_type, body), answer(200, "text/plain", b"ok")) as webhook:
        assert SlackChannel(webhook.url, FAST).send(BATCH).delivered
        assert len(webhook.received) == 2
    with RawAnswers(answer(400, content_type, body)) as webhook:
        outcome = SlackChannel(webhook.url, FAST).send(BATCH)
    assert not outcome.delivered and not outcome.unanswered and not outcome.service_unavailable
    assert (outcome.error or "").startswith("HTTP 400: ")


@pytest.mark.parametrize(("content_type", "body"), UNDECODABLE.values(), ids=UNDECODABLE.keys())
def test_the_ops_channel_takes_a_2xx_whose_body_does_not_decode_as_delivered(content_type, body):
    # it sends through the same client: the sensor would send the message again on every tick
    with RawAnswers(answer(200, content_type, body)) as webhook:
        channel = notify.channel_from_environment({"SLACK_WEBHOOK_URL": webhook.url})
        assert channel.send(notify.OpsMessage("Pipeline run failed")).delivered
        assert len(webhook.received) == 1


def test_an_ops_message_shows_what_it_quotes_as_written_never_as_a_mention(slack):
    # a failed load quotes the export's value: `<!channel>` in a CSV must not notify a whole channel
    channel = notify.channel_from_environment({"SLACK_WEBHOOK_URL": slack.url})
    message = notify.OpsMessage(
        "Pipeline run failed: daily_pipeline, step raw_tables",
        details=('line 2, column PAYMENT_METHOD, value "<!channel> a&b"',),
        link="http://dagster.test/runs/1",
    )
    assert channel.send(message).delivered
    (body,) = slack.delivered
    quoted = 'value "&lt;!channel&gt; a&amp;b"'
    assert body["text"].splitlines()[1].endswith(quoted)
    assert body["blocks"][1]["text"]["text"] == f"```line 2, column PAYMENT_METHOD, {quoted}```"
    assert body["text"].endswith("\nhttp://dagster.test/runs/1")


@pytest.mark.parametrize(("content_type", "body"), UNDECODABLE.values(), ids=UNDECODABLE.keys())
def test_the_json_sink_takes_a_2xx_whose_body_does_not_decode_as_delivered(content_type, body):
    # requests decodes with errors="replace" (and utf-8 for an unknown charset), and only an error's body
    with RawAnswers(answer(200, content_type, body)) as webhook:
        assert JsonWebhookChannel(webhook.url, FAST).send(BATCH).delivered
    with RawAnswers(answer(400, content_type, body)) as webhook:
        outcome = JsonWebhookChannel(webhook.url, FAST).send(BATCH)
    assert not outcome.delivered and not outcome.unanswered
    assert (outcome.error or "").startswith("HTTP 400: ")


def test_an_error_of_unknown_kind_may_follow_an_accepted_message():
    # "nothing accepted" would have it sent again by every run, never counted towards its two attempts
    description, unanswered = describe_send_error(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid"), 10)
    assert unanswered and description.endswith("(the message may have arrived)")


TRICKLED = answer(200, "text/plain", b"ok" + b" " * 20)  # about 80 bytes


@pytest.mark.parametrize("channel", [SlackChannel, JsonWebhookChannel])
def test_an_answer_trickled_byte_by_byte_is_given_up_after_twice_the_timeout(channel):
    # the timeout bounds each socket read only: 80 bytes 0.3 s apart held one attempt (and the run's
    # locks) for 24 s with a timeout of 0.5 s
    with RawAnswers(TRICKLED, pause=0.3) as webhook:
        started = time.monotonic()
        outcome = channel(webhook.url, FAST).send(BATCH)
        took = time.monotonic() - started
    assert took < 2 * FAST.timeout + 0.5, took
    assert not outcome.delivered and outcome.unanswered and outcome.service_unavailable
    assert outcome.error == "no answer within 1 s (the message may have arrived)"
    assert len(webhook.received) == 1


@pytest.mark.parametrize("channel", [SlackChannel, JsonWebhookChannel])
def test_an_attempt_given_up_on_is_not_retried_in_the_background(channel):
    # its answer, a 503, comes after the deadline: the send going on in the background must not retry
    trickled_503 = answer(503, "text/plain", b"busy" + b" " * 20)
    with RawAnswers(trickled_503, answer(200, "text/plain", b"ok"), pause=0.02) as webhook:
        outcome = channel(webhook.url, FAST).send(BATCH)
        time.sleep(len(trickled_503) * 0.02 + 1)  # the 503 in full, and more than the backoff
        assert outcome.unanswered and len(webhook.received) == 1


@pytest.mark.parametrize("channel", [SlackChannel, JsonWebhookChannel])
def test_a_retry_trickled_byte_by_byte_is_given_up_at_its_own_deadline(channel):
    # each attempt has its deadline, the retries too: not only the first one
    with RawAnswers(answer(503, "text/plain", b"busy"), TRICKLED, pause=0.3, trickle_from=1) as webhook:
        outcome = channel(webhook.url, FAST).send(BATCH)
        assert len(webhook.received) == 2
    assert not outcome.delivered and outcome.unanswered
    assert outcome.error == "no answer within 1 s (the message may have arrived)"


@pytest.mark.parametrize("channel", [SlackChannel, JsonWebhookChannel])
def test_waiting_out_a_retry_after_is_no_part_of_an_attempt(channel):
    with RawAnswers(
        answer(429, "text/plain\r\nRetry-After: 2", b"slow down"), answer(200, "text/plain", b"ok")
    ) as webhook:
        assert channel(webhook.url, FAST).send(BATCH).delivered
        assert len(webhook.received) == 2


def ops_channel(url: str, http: HttpSettings) -> notify.SlackOpsChannel:
    return notify.SlackOpsChannel(url, http)


def send_one(channel, url: str, http: HttpSettings):
    message = notify.OpsMessage("Data is stale") if channel is ops_channel else BATCH
    return channel(url, http).send(message)


@pytest.mark.parametrize(
    ("channel", "placeholder"),
    [
        (SlackChannel, "<SLACK_WEBHOOK_URL>"),
        (JsonWebhookChannel, "<JSON webhook>"),
        (ops_channel, "<SLACK_WEBHOOK_URL>"),
    ],
)
def test_every_channel_redacts_an_error_page_quoting_its_url(channel, placeholder):
    with SlackStub(query=f"token={QUERY_SECRET}") as webhook:
        webhook.always(echoing_path(404))
        outcome = send_one(channel, webhook.url, FAST)
    assert outcome.error == f"HTTP 404: no such hook: {placeholder}"


# what each client says of a URL it cannot use, quoting it: a space in its path, no scheme
UNUSABLE_URLS = {
    "slack": (SlackChannel, f"http://127.0.0.1:9/services/T0/B0/{SECRET} x", "<SLACK_WEBHOOK_URL>"),
    "json": (
        lambda url, http: JsonWebhookChannel(url, http, name="VIP_WEBHOOK"),
        f"hooks.example.invalid/services/T0/B0/{SECRET}",
        "<VIP_WEBHOOK>",
    ),
    "ops": (ops_channel, f"http://127.0.0.1:9/services/T0/B0/{SECRET} x", "<SLACK_WEBHOOK_URL>"),
}


@pytest.mark.parametrize(("channel", "url", "placeholder"), UNUSABLE_URLS.values(), ids=UNUSABLE_URLS.keys())
def test_an_error_quoting_the_webhook_url_before_sending_is_reported_without_it(channel, url, placeholder):
    outcome = send_one(channel, url, FAST)
    assert not outcome.delivered and not outcome.unanswered
    assert placeholder in outcome.error and SECRET not in outcome.error, outcome.error


@pytest.mark.parametrize("channel", [SlackChannel, JsonWebhookChannel, ops_channel])
def test_a_name_lookup_that_hangs_past_the_deadline_sent_nothing(channel, monkeypatch):
    """Dead name servers hang the lookup, which no socket timeout bounds: given up on at the deadline, the
    send was counted as a message that may have arrived, and given up for good after two of them."""
    resolve = socket.getaddrinfo

    def hung_then_resolved(*args, **kwargs):
        time.sleep(3 * FAST.timeout)
        return resolve(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hung_then_resolved)
    with SlackStub() as webhook:
        outcome = send_one(channel, webhook.url.replace("127.0.0.1", "localhost"), FAST)
        time.sleep(3 * FAST.timeout)  # the lookup ends in the background: nothing may go out then
        assert webhook.delivered == []
    assert not outcome.delivered and not outcome.unanswered
    assert outcome.error == "cannot reach the webhook: no connection within 1 s (nothing was sent)"


@pytest.mark.parametrize("channel", [SlackChannel, JsonWebhookChannel, ops_channel])
def test_a_webhook_url_that_fails_before_its_request_goes_out_sent_nothing(channel):
    # a host name label over 63 characters: IDNA refuses it while the request is being made
    outcome = send_one(channel, f"http://{'x' * 64}.invalid/hook", FAST)
    assert not outcome.delivered and not outcome.unanswered, outcome.error


class AttemptsSeen:
    """An AttemptLog noting each record: what, when, the requests the webhook had by then, and in which
    thread (the run's database connection is its main thread's)."""

    def __init__(self, webhook: SlackStub) -> None:
        self._webhook = webhook
        self.seen: list[tuple[str, int]] = []
        self.at: list[float] = []
        self.threads: set[threading.Thread] = set()

    def _note(self, what: str) -> None:
        self.seen.append((what, len(self._webhook.requests)))
        self.at.append(time.monotonic())
        self.threads.add(threading.current_thread())

    def request_may_go_out(self) -> None:
        self._note("request may go out")

    def refused(self, error: str) -> None:
        self._note(error)


@pytest.mark.parametrize("channel", [SlackChannel, JsonWebhookChannel])
def test_each_attempt_is_recorded_before_its_request_and_a_refusal_before_the_wait(channel, slack):
    slack.answer(rate_limited(retry_after=1), server_error(503))
    attempts = AttemptsSeen(slack)

    assert channel(slack.url, FAST).send(BATCH, attempts).delivered

    assert attempts.seen == [
        ("request may go out", 0),
        ("HTTP 429 (retrying)", 1),
        ("request may go out", 1),
        ("HTTP 503 (retrying)", 2),
        ("request may go out", 2),
    ]
    assert slack.requests[1].at - attempts.at[1] >= 0.9  # the 429 recorded before its Retry-After
    assert attempts.threads == {threading.main_thread()}


@pytest.mark.parametrize("channel", [SlackChannel, JsonWebhookChannel])
def test_a_retry_whose_record_did_not_happen_never_goes_out(channel, slack):
    class StoppedWhileRecording(AttemptsSeen):
        def refused(self, error: str) -> None:
            raise KeyboardInterrupt

    slack.answer(server_error(503))
    with pytest.raises(KeyboardInterrupt):
        channel(slack.url, FAST).send(BATCH, StoppedWhileRecording(slack))
    time.sleep(0.5)  # many times the backoff
    assert len(slack.requests) == 1


@pytest.mark.parametrize("channel", [SlackChannel, JsonWebhookChannel])
def test_a_connection_refused_is_recorded_as_unreached_before_each_retry(channel):
    with SlackStub() as gone:
        url = gone.url  # nothing listens here any more
    attempts = AttemptsSeen(gone)

    outcome = channel(url, FAST).send(BATCH, attempts)

    assert not outcome.delivered and not outcome.unanswered
    assert [what for what, _ in attempts.seen] == [
        "request may go out",
        "cannot reach the webhook (retrying)",
        "request may go out",
        "cannot reach the webhook (retrying)",
        "request may go out",
    ]


@pytest.mark.parametrize("channel", [SlackChannel, JsonWebhookChannel])
def test_a_retry_goes_out_only_once_its_attempt_is_recorded(channel, slack):
    # the record is the run's promise that the message may be in flight: it must come first, however long
    # the database takes to make it
    class SlowToRecord(AttemptsSeen):
        def request_may_go_out(self) -> None:
            before = len(slack.requests)
            time.sleep(0.5)
            self.seen.append(("requests while recording", len(slack.requests) - before))

    slack.answer(server_error(503))
    attempts = SlowToRecord(slack)

    assert channel(slack.url, FAST).send(BATCH, attempts).delivered

    while_recording = [requests for what, requests in attempts.seen if what == "requests while recording"]
    assert while_recording == [0, 0]
    assert len(slack.requests) == 2


@pytest.mark.parametrize("channel", [SlackChannel, ops_channel])
def test_a_retry_whose_connection_hangs_after_a_refused_attempt_sent_nothing(channel, monkeypatch):
    # the first attempt's request went out (answered 503); the retry's never did: not "may have arrived"
    resolve = socket.getaddrinfo
    lookups = []

    def second_lookup_hangs(*args, **kwargs):
        lookups.append(args[0])
        if len(lookups) > 1:
            time.sleep(3 * FAST.timeout)
        return resolve(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", second_lookup_hangs)
    with SlackStub() as webhook:
        webhook.answer(server_error(503))
        outcome = send_one(channel, webhook.url.replace("127.0.0.1", "localhost"), replace(FAST, retries=1))
        assert len(webhook.requests) == 1
    assert not outcome.delivered and not outcome.unanswered
    assert outcome.error == "cannot reach the webhook: no connection within 1 s (nothing was sent)"


def test_a_send_given_up_on_does_not_keep_the_process_alive():
    # a hung send goes on in the background: the run must still exit once it is done
    code = (
        "import threading\n"
        "from data_platform.alerts.attempts import AttemptOverdue, send_within\n"
        "try:\n"
        "    send_within(threading.Event().wait, 0.2)\n"
        "except AttemptOverdue as overdue:\n"
        "    print(overdue)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "cannot reach the webhook: no connection within 0.2 s (nothing was sent)\n"


class NothingNoted:
    """An AttemptLog that lets each attempt go on, noting nothing."""

    def request_may_go_out(self) -> None:
        pass

    def refused(self, error: str) -> None:
        pass


def workers_started(during) -> list[threading.Thread]:
    before = set(threading.enumerate())
    during()
    return [
        thread for thread in threading.enumerate() if thread.name == "alert-send" and thread not in before
    ]


@pytest.mark.parametrize("channel", [SlackChannel, JsonWebhookChannel])
def test_a_send_stopped_while_recording_leaves_no_worker_waiting(channel, slack):
    # a daemon's every tick would leave one more thread blocked for good
    class StoppedWhileRecording(AttemptsSeen):
        def refused(self, error: str) -> None:
            raise KeyboardInterrupt

    def stopped() -> None:
        with pytest.raises(KeyboardInterrupt):
            channel(slack.url, FAST).send(BATCH, StoppedWhileRecording(slack))

    slack.answer(server_error(503))
    for worker in workers_started(stopped):
        worker.join(timeout=10)
        assert not worker.is_alive()


@pytest.mark.parametrize("channel", [SlackChannel, JsonWebhookChannel])
def test_a_send_given_up_on_leaves_no_worker_waiting_once_its_late_answer_comes(channel):
    # the late 503 would be retried: its refusal is no longer recorded, and the worker ends there
    trickled_503 = answer(503, "text/plain", b"busy" + b" " * 20)
    with RawAnswers(trickled_503, answer(200, "text/plain", b"ok"), pause=0.02) as webhook:

        def given_up() -> None:
            outcome = channel(webhook.url, FAST).send(BATCH, NothingNoted())
            assert outcome.unanswered

        for worker in workers_started(given_up):
            worker.join(timeout=len(trickled_503) * 0.02 + 10)
            assert not worker.is_alive()
        assert len(webhook.received) == 1
