"""SlackChannel against a real local HTTP server: retries, bounds, timeouts, and the URL kept secret."""

from __future__ import annotations

import logging
import time
from datetime import date
from decimal import Decimal

import pytest
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
from data_platform.alerts.delivery import SlackChannel, redact
from data_platform.alerts.records import Alert, Batch, Organization

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
