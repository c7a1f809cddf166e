"""Alert pieces without a database: day planning (the watermark rule), message text, settings, database
errors in words."""

from __future__ import annotations

import errno
import re
from dataclasses import replace
from datetime import date, timedelta
from decimal import Decimal

import psycopg
import pytest
import yaml
from sqlalchemy.exc import DBAPIError, ProgrammingError

from data_platform.alerts import config, messages, payload
from data_platform.alerts.errors import database_error, db_message
from data_platform.alerts.plan import Plan, plan_days
from data_platform.alerts.records import BALANCE_CHANGE, NEW_BALANCE, SINKS, Alert, Batch, Organization
from data_platform.alerts.summary import Summary
from data_platform.paths import DBT_PROJECT_DIR, PROJECT_ROOT

D = [date(2024, 3, 1) + timedelta(days=i) for i in range(10)]  # D[0] .. D[9]
MAX = date.max  # a garbage 9999-12-31 in the data must not overflow the planning


# --- which days, and where the watermark goes --------------------------------------------------------


# case: (watermark, latest day in the fact, --date, --since) -> (start, end, watermark afterwards)
PLANS = {
    "empty fact": ((None, None, None, None), (None, None, None)),
    "first run: latest day only": ((None, D[5], None, None), (D[5], D[5], D[5])),
    "new days after the watermark": ((D[2], D[5], None, None), (D[3], D[5], D[5])),
    "nothing new": ((D[5], D[5], None, None), (None, None, D[5])),
    "data shrank: never backwards": ((D[7], D[5], None, None), (None, None, D[7])),
    "watermark on the last date Python has": ((MAX, MAX, None, None), (None, None, MAX)),
    "--date with the watermark on the last date": ((MAX, MAX, D[1], None), (D[1], D[1], MAX)),
    "--since up to the last date": ((D[1], MAX, None, D[2]), (D[2], MAX, MAX)),
    "--date old day, no watermark": ((None, D[5], D[1], None), (D[1], D[1], None)),
    "--date latest day, no watermark": ((None, D[5], D[5], None), (D[5], D[5], D[5])),
    "--date right after watermark": ((D[2], D[5], D[3], None), (D[3], D[3], D[3])),
    "--date past a gap": ((D[2], D[5], D[4], None), (D[4], D[4], D[2])),
    "--date already covered": ((D[4], D[5], D[1], None), (D[1], D[1], D[4])),
    "--date beyond the data": ((D[2], D[5], D[9], None), (D[9], D[9], D[2])),
    # a day with no data yet: the watermark stays, or that day would be skipped once it arrives
    "--date right after the watermark, beyond the data": ((D[5], D[5], D[6], None), (D[6], D[6], D[5])),
    "--since, no watermark": ((None, D[5], None, D[1]), (D[1], D[5], D[5])),
    "--since before watermark": ((D[3], D[5], None, D[1]), (D[1], D[5], D[5])),
    "--since right after watermark": ((D[3], D[5], None, D[4]), (D[4], D[5], D[5])),
    "--since past a gap": ((D[1], D[5], None, D[4]), (D[4], D[5], D[1])),
    "--since beyond the data": ((D[1], D[5], None, D[8]), (D[8], D[5], D[1])),
}


@pytest.mark.parametrize(("given", "expected"), PLANS.values(), ids=PLANS.keys())
def test_plan_days(given, expected):
    watermark, latest, only_date, since = given
    assert plan_days(watermark=watermark, latest=latest, only_date=only_date, since=since) == Plan(*expected)


def test_plan_is_empty():
    assert plan_days(watermark=D[5], latest=D[5]).is_empty
    assert plan_days(watermark=None, latest=None).is_empty
    assert not plan_days(watermark=None, latest=D[5]).is_empty


# --- message text --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        ("0", "$0.00"),
        ("1234567.891", "$1,234,567.89"),
        ("999.995", "$1,000.00"),
        ("-1500", "-$1,500.00"),
        ("-0.004", "$0.00"),
        ("-0.005", "-$0.01"),
        # more digits than Decimal's default 28: exact, never an error that blocks delivery
        ("123456789012345678901234567.125", "$123,456,789,012,345,678,901,234,567.13"),
        ("-1E+24", "-$1,000,000,000,000,000,000,000,000.00"),
    ],
)
def test_usd(amount, text):
    assert messages.usd(Decimal(amount)) == text


@pytest.mark.parametrize(
    ("ratio", "text"),
    [
        ("0.5", "+50.00%"),
        ("-0.5", "-50.00%"),
        ("-0.4999", "-49.99%"),
        ("12.345678", "+1,234.57%"),
        ("-0.6666666666", "-66.67%"),
        # not rounded onto a whole percent it has not reached: short of 100% (critical's threshold), or of
        # 50% (an alert's), never reads as reaching it
        ("0.9999996", "+99.99%"),
        ("-0.999998", "-99.99%"),
        ("0.49999", "+49.99%"),
        ("0.49999999999999999999999999999", "+49.99%"),  # past Decimal's default 28 digits
        ("1.9999999", "+199.99%"),
        ("1E+25", "+1,000,000,000,000,000,000,000,000,000.00%"),
        ("1234567890123456789012345678.12345", "+123,456,789,012,345,678,901,234,567,812.35%"),
    ],
)
def test_signed_percent(ratio, text):
    assert messages.signed_percent(Decimal(ratio)) == text


def alert(previous: str, balance: str, day: date = D[0], kind: str = BALANCE_CHANGE) -> Alert:
    prev, bal = Decimal(previous), Decimal(balance)
    ratio = (bal - prev) / abs(prev) if prev else None
    return Alert(7, day, NEW_BALANCE if not prev else kind, prev, bal, ratio)


KNOWN = Organization(7, True, False, 1, date(2023, 1, 2), None)


def test_context_phrases():
    assert messages.context(KNOWN) == "1 active contract, first payment 2023-01-02, last payment none"
    assert messages.context(Organization(7, True, True)) == "missing from organizations.csv"
    assert messages.context(Organization(7, False)) == "not in dim_organizations"
    many = Organization(7, True, False, 1200, date(2023, 1, 2), date(2024, 2, 1))
    assert messages.context(many).startswith("1,200 active contracts")


def test_console_lines():
    assert messages.console_line(KNOWN, alert("-1000", "-1500")) == (
        "[balance alert] 2024-03-01 organization 7: -$1,000.00 -> -$1,500.00 (-50.00%), warning; "
        "1 active contract, first payment 2023-01-02, last payment none"
    )
    assert messages.console_line(KNOWN, alert("0", "250")).startswith(
        "[new balance] 2024-03-01 organization 7: $0.00 -> $250.00 (new balance), warning; "
    )


def test_numbers_that_are_not_finite_are_shown_not_raised():
    # Postgres numeric allows NaN and Infinity; Decimal raises when rounding or comparing them, and an
    # alert that cannot be formatted would stop delivery on every run
    nan = Alert(7, D[0], BALANCE_CHANGE, Decimal("100"), Decimal("NaN"), Decimal("NaN"))
    assert messages.console_line(KNOWN, nan).startswith(
        "[balance alert] 2024-03-01 organization 7: $100.00 -> NaN (NaN%), warning; "
    )
    _, blocks = messages.slack_message(Batch(KNOWN, (nan,)))
    assert blocks[1]["text"]["text"] == ":warning: *2024-03-01*  $100.00 → NaN  *NaN%*  warning"
    nan_before = Alert(7, D[0], BALANCE_CHANGE, Decimal("NaN"), Decimal("100"), Decimal("NaN"))
    _, blocks = messages.slack_message(Batch(KNOWN, (nan_before,)))
    assert blocks[1]["text"]["text"] == ":warning: *2024-03-01*  NaN → $100.00  *NaN%*  warning"
    assert messages.usd(Decimal("-Infinity")) == "-Infinity"
    assert messages.signed_percent(Decimal("Infinity")) == "+Infinity%"


def test_slack_message_blocks_and_fallback():
    critical = replace(alert("300", "30", D[1]), severity="critical")
    batch = Batch(Organization(7, True, True), (alert("100", "300", D[0]), critical))
    text, blocks = messages.slack_message(batch)
    assert text == (
        "Balance alert for organization 7: 2024-03-01 $100.00 -> $300.00 (+200.00%), warning; "
        "2024-03-02 $300.00 -> $30.00 (-90.00%), critical. missing from organizations.csv."
    )
    assert blocks[0] == {
        "type": "header",
        "text": {"type": "plain_text", "text": "Balance alert: organization 7"},
    }
    assert blocks[1]["text"]["text"].splitlines() == [
        ":chart_with_upwards_trend: *2024-03-01*  $100.00 → $300.00  *+200.00%*  warning",
        ":chart_with_downwards_trend: *2024-03-02*  $300.00 → $30.00  *-90.00%*  :rotating_light: critical",
    ]
    assert blocks[2] == {
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": ":warning: missing from organizations.csv"}],
    }
    _, blocks = messages.slack_message(Batch(Organization(7, False), (alert("100", "300", D[0]),)))
    assert blocks[-1]["elements"][0]["text"] == ":warning: not in dim_organizations"
    _, blocks = messages.slack_message(Batch(KNOWN, (alert("100", "300", D[0]),)))
    assert not blocks[-1]["elements"][0]["text"].startswith(":warning:")


def test_the_run_summary_writes_every_count_alike():
    # plural() writes "1,500 alerts": the counts beside it in the same line and notes read the same way
    summary = Summary(
        days_processed=1096,
        first_day=date(2021, 7, 1),
        last_day=date(2024, 6, 30),
        sent=1500,
        retried=1200,
        failed=2001,
        not_attempted=1999,
        unanswered={"slack": 1001, "VIP_WEBHOOK": 1000},
        skipped_from_zero=3000,
        held_back=4000,
        suppressed=5000,
        watermark=date(2024, 6, 30),
        waiting_for_webhook={"slack": 6000},
        unrouted={"OLD_WEBHOOK": 7000},
    )
    line = summary.line()
    assert line.startswith(
        "Summary: 1,096 days processed (2021-07-01..2024-06-30), 1,500 alerts sent (1,200 retried from "
        "earlier runs), 2,001 failed (1,999 not attempted once their webhook had failed), 3,000 "
        "skipped-from-zero (--include-from-zero alerts them), 4,000 below --min-change-usd, 5,000 suppressed "
        "(--suppress-days; recorded in ops.alert_history); "
    ), line
    assert "(SLACK_WEBHOOK_URL 1,001, VIP_WEBHOOK 1,000)" in line
    assert "(SLACK_WEBHOOK_URL 6,000)" in line and "(OLD_WEBHOOK 7,000)" in line
    assert not re.search(r"\d{4}", re.sub(r"\d{4}-\d{2}-\d{2}", "", line)), line


# --- settings ------------------------------------------------------------------------------------


def test_defaults():
    settings = config.load([], {})
    assert settings.threshold == Decimal("0.5")
    assert settings.webhook_url is None
    assert not settings.dry_run and not settings.include_from_zero
    assert settings.http == config.HttpSettings()


def test_flags_and_environment():
    env = {
        "SLACK_WEBHOOK_URL": " https://hooks.example.com/services/T/B/x ",
        "ALERT_HTTP_TIMEOUT": "0.5",
        "ALERT_HTTP_RETRIES": "1",
        "ALERT_LOCK_TIMEOUT": "3",
    }
    settings = config.load(["--threshold", "0.25", "--since", "2024-03-01", "--include-from-zero"], env)
    assert settings.threshold == Decimal("0.25")
    assert settings.since == date(2024, 3, 1)
    assert settings.include_from_zero
    assert settings.webhook_url == "https://hooks.example.com/services/T/B/x"
    assert (settings.http.timeout, settings.http.retries, settings.lock_timeout) == (0.5, 1, 3.0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--threshold", "0"], "the threshold must be a positive ratio up to 1000000"),
        (["--threshold", "-0.5"], "the threshold must be a positive ratio"),
        (["--threshold", "half"], "expected a number such as 0.5"),
        (["--threshold", "nan"], "the threshold must be a positive ratio"),
        (["--threshold", "Infinity"], "the threshold must be a positive ratio"),
        # beyond what Postgres numeric holds: would fail later as a database error
        (["--threshold", "1e1000000"], "the threshold must be a positive ratio up to 1000000"),
        (["--threshold", "1000000.01"], "the threshold must be a positive ratio up to 1000000"),
        (["--threshold", "1e-20000"], "the threshold takes at most 12 decimal places"),
        (["--threshold", "0.0000000000001"], "the threshold takes at most 12 decimal places"),
        (["--date", "2024-02-30"], "expected a date as YYYY-MM-DD"),
        (["--since", "+002024-03-01"], "expected a date as YYYY-MM-DD"),
        (["--date", "10000-01-01"], "expected a date as YYYY-MM-DD"),
        # forms fromisoformat reads, which a typo can land on
        (["--date", "20240628"], "expected a date as YYYY-MM-DD"),
        (["--since", "2024-W26-5"], "expected a date as YYYY-MM-DD"),
    ],
)
def test_bad_flags_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        config.load(argv, {})
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("threshold", ["1000000", "0.000000000001", "0.50000000000000000000", "5E-1"])
def test_threshold_bounds_are_inclusive(threshold):
    assert config.load(["--threshold", threshold], {}).threshold == Decimal(threshold)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ALERT_HTTP_TIMEOUT": "soon"}, "ALERT_HTTP_TIMEOUT must be a number"),
        ({"ALERT_HTTP_RETRIES": "-1"}, "ALERT_HTTP_RETRIES must be a number from 0 to 10"),
        # too large for the socket / sleep calls: would fail every delivery instead of the config
        ({"ALERT_HTTP_TIMEOUT": "1e300"}, "ALERT_HTTP_TIMEOUT must be a number from 0.01 to 300"),
        ({"ALERT_HTTP_BACKOFF": "inf"}, "ALERT_HTTP_BACKOFF must be a number from 0 to 60"),
        ({"ALERT_HTTP_MAX_RETRY_AFTER": "1e9"}, "ALERT_HTTP_MAX_RETRY_AFTER must be a number from 0 to 3600"),
        ({"ALERT_LOCK_TIMEOUT": "nan"}, "ALERT_LOCK_TIMEOUT must be a number from 0 to 86400"),
        ({"ALERT_HTTP_RETRIES": "1000000"}, "ALERT_HTTP_RETRIES must be a number from 0 to 10"),
        ({"ALERT_HTTP_RETRIES": "1.5"}, "ALERT_HTTP_RETRIES must be a whole number, got '1.5'"),
        *[
            ({"SLACK_WEBHOOK_URL": url}, f"SLACK_WEBHOOK_URL is set but is not a valid webhook URL: {why}")
            for url, why in (
                ("ftp://secret-host/abc", "it must start with https://"),
                ("https://secret-host:99999/abc", "it does not parse"),
                ("https://secret-host:port/abc", "it does not parse"),
                ("https://:443/secret-host", "it has no host"),
                ("https://hooks.example.com/secret-host abc", "it contains spaces"),
                ("https://hooks.example.com/secret-host\x07", "it contains spaces"),
                ("https://hooks.example.com/secret-host\u00e9", "it contains spaces, control or non-ASCII"),
                # urllib raised on these at send time: exit 1, "retried next run", forever
                ("https://[hooks.slack.com/services/secret-host", "it does not parse as a URL"),
                ("https://hooks.slack.com]/services/secret-host", "it does not parse as a URL"),
                # the secret would cross the network in clear text
                ("http://hooks.slack.com/services/secret-host", "it must start with https://"),
                ("http://127.0.0.1.secret-host.example/x", "it must start with https://"),
            )
        ],
        (
            {"SLACK_WEBHOOK_URL": "https://a/secret-host", "SLACK_WEBHOOK_URL_FILE": "/run/secrets/x"},
            "SLACK_WEBHOOK_URL and SLACK_WEBHOOK_URL_FILE are both set: set only one",
        ),
    ],
)
def test_bad_environment(env, message):
    with pytest.raises(config.ConfigError, match=re.escape(message)) as error:
        config.load([], env)
    assert "secret-host" not in str(error.value)


@pytest.mark.parametrize(
    "url", ["https://hooks.slack.com/services/T/B/x?token=y", "http://127.0.0.1:8080/x", "http://localhost/x"]
)
def test_good_webhook_urls(url):
    assert config.load([], {"SLACK_WEBHOOK_URL": url}).webhook_url == url


def test_webhook_url_from_a_secrets_file(tmp_path):
    secret = tmp_path / "slack_webhook_url"
    secret.write_text("https://hooks.slack.com/services/T/B/secret-host\n")
    settings = config.load([], {"SLACK_WEBHOOK_URL_FILE": str(secret), "SLACK_WEBHOOK_URL": " "})
    assert settings.webhook_url == "https://hooks.slack.com/services/T/B/secret-host"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read the file (No such file or directory)"),
        (b"", "the file is empty; put the value in it or unset the variable"),
        (b" \n", "the file is empty; put the value in it or unset the variable"),
        (b"\xff\xfesecret-host", "the file is not UTF-8 text"),
        (
            b"https://[secret-host/services",
            "is set but is not a valid webhook URL: it does not parse as a URL",
        ),
        (b"secret-host", "is set but is not a valid webhook URL: it must start with https://"),
    ],
)
def test_bad_secrets_file_is_a_configuration_error(tmp_path, content, message):
    path = tmp_path / "slack_webhook_url"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(config.ConfigError, match=re.escape(message)) as error:
        config.load([], {"SLACK_WEBHOOK_URL_FILE": str(path)})
    assert str(path) in str(error.value)  # the file is named; what it holds is not
    assert "secret-host" not in str(error.value)


def test_future_days_are_never_planned():
    today = D[4]
    # the fact's latest day is after today: the run stops at today and the watermark never passes it
    assert plan_days(watermark=D[2], latest=D[9], today=today) == Plan(D[3], D[4], D[4])
    assert plan_days(watermark=None, latest=D[9], today=today) == Plan(D[4], D[4], D[4])
    assert plan_days(watermark=D[2], latest=D[9], since=D[3], today=today) == Plan(D[3], D[4], D[4])
    assert plan_days(watermark=D[2], latest=D[9], only_date=D[6], today=today).is_empty
    # the day right after today is no nearer to being news
    assert plan_days(watermark=D[2], latest=D[5], today=today) == Plan(D[3], D[4], D[4])
    # today itself is a day like the others
    assert plan_days(watermark=D[3], latest=D[9], only_date=today, today=today) == Plan(D[4], D[4], D[4])


# --- noise settings, routes, pacing -----------------------------------------------------------------


def test_noise_defaults_environment_and_flags():
    from data_platform.alerts.noise import NoiseSettings

    assert config.load([], {}).noise == NoiseSettings() and config.load([], {}).digest_over == 20
    env = {"ALERT_MIN_CHANGE_USD": "250", "ALERT_SUPPRESS_DAYS": "3", "ALERT_CRITICAL_USD": "5,000"}
    settings = config.load(["--suppress-days", "0", "--critical-threshold", "2"], env)
    assert settings.noise == NoiseSettings(Decimal(250), Decimal(2), Decimal(5000), 0)  # the flag wins
    grouped = config.load(["--min-change-usd", "1,234,567.5", "--critical-usd", "10_000"], {})
    assert (grouped.noise.min_change_usd, grouped.noise.critical_usd) == (Decimal("1234567.5"), 10000)
    assert "environment" not in repr(settings)  # the webhooks in it are secrets


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ALERT_MIN_CHANGE_USD": "a lot"}, "ALERT_MIN_CHANGE_USD: expected an amount in USD"),
        # a comma or an underscore only between groups of three digits: 1,5 is not 15
        ({"ALERT_MIN_CHANGE_USD": "1,5"}, "ALERT_MIN_CHANGE_USD: expected an amount in USD"),
        ({"ALERT_CRITICAL_USD": "1,0,0,0"}, "ALERT_CRITICAL_USD: expected an amount in USD"),
        ({"ALERT_MIN_CHANGE_USD": "10,00.5"}, "ALERT_MIN_CHANGE_USD: expected an amount in USD"),
        ({"ALERT_MIN_CHANGE_USD": "1_0"}, "ALERT_MIN_CHANGE_USD: expected an amount in USD"),
        ({"ALERT_DIGEST_OVER": "-1"}, "ALERT_DIGEST_OVER: expected a whole number from 0"),
        ({"ALERT_CRITICAL_THRESHOLD": "0"}, "ALERT_CRITICAL_THRESHOLD: the threshold must be a positive"),
    ],
)
def test_bad_noise_environment(env, message):
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        config.load([], env)


def test_a_noise_flag_wins_over_its_malformed_variable_and_help_ignores_them(capsys):
    env = {"ALERT_MIN_CHANGE_USD": "a lot", "ALERT_DIGEST_OVER": "-1"}
    settings = config.load(["--min-change-usd", "10", "--digest-over", "5"], env)
    assert (settings.noise.min_change_usd, settings.digest_over) == (Decimal(10), 5)
    with pytest.raises(SystemExit) as exit_info:
        config.load(["--help"], env)
    assert exit_info.value.code == 0
    assert "--min-change-usd" in capsys.readouterr().out


def test_help_names_every_exit_code_the_command_returns(capsys):
    from data_platform.alerts import exit_codes

    with pytest.raises(SystemExit):
        config.load(["--help"], {})
    text = " ".join(capsys.readouterr().out.split())
    documented = text.split("Exit codes: ")[1].split(". Connection from")[0]
    named = [int(code) for code in re.findall(r"(?:^|[;,] )(\d+) ", documented)]
    exits = {
        exit_codes.OK,
        exit_codes.DELIVERY_FAILED,
        exit_codes.ERROR,
        exit_codes.GIVEN_UP,
        exit_codes.BUSY,
        exit_codes.INTERRUPTED,
        exit_codes.TERMINATED,
    }
    assert named == sorted(exits)
    assert "no route names" in documented  # exit 1 for alerts stranded by a route change too


def test_an_unexpected_error_exits_2_with_its_traceback_not_1_for_undelivered(monkeypatch, capsys):
    from data_platform.alerts import cli, exit_codes

    def broken(settings):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "run", broken)
    assert cli.main([]) == exit_codes.ERROR == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: a bug" in err
    assert "alert_script.py: error: the run stopped on an unexpected error (above)" in err


def test_alerts_that_could_not_be_printed_are_undelivered_not_a_bug(monkeypatch, capsys):
    from data_platform.alerts import cli, exit_codes

    def disk_full(settings):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cli, "run", disk_full)
    assert cli.main([]) == exit_codes.DELIVERY_FAILED == 1
    err = capsys.readouterr().err
    assert err == (
        "alert_script.py: error: [Errno 28] No space left on device; alerts not printed are retried on the"
        " next run.\n"
    )


def test_only_what_looks_like_a_typo_of_a_setting_is_said_to_change_nothing():
    env = dict.fromkeys(
        [
            "ALERT_MIN_CHANGE",  # cut short
            "ALERT_SUPRESS_DAYS",  # a letter off
            "ALERT_LOCK_TIMOUT",
            "ALERT_HTTP_TIMEOUT",  # a setting
            "ALERT_CRITICAL",  # a route's webhook variable, though ALERT_CRITICAL_USD cut short
            "ALERT_CRITICAL_FILE",  # and its file
            "ALERT_CRITICAL_URL",  # two letters off ALERT_CRITICAL_USD: no typo
            "ALERT_TIMEOUT",  # another tool's: no typo of ALERT_LOCK_TIMEOUT
            "ALERT_THRESHOLD",
            "ALERT_LOCK_FILE",
            "SUPRESS_DAYS",
        ],
        "1",
    )
    said = "is not a setting of the alert run and changes nothing; did you mean"
    assert config.misspelt_settings(env, ["ALERT_CRITICAL"]) == [
        f"ALERT_LOCK_TIMOUT {said} ALERT_LOCK_TIMEOUT?",
        f"ALERT_MIN_CHANGE {said} ALERT_MIN_CHANGE_USD?",
        f"ALERT_SUPRESS_DAYS {said} ALERT_SUPPRESS_DAYS?",
    ]
    # without the route, its variable looks like a typo too
    assert f"ALERT_CRITICAL {said} ALERT_CRITICAL_THRESHOLD?" in config.misspelt_settings(env)


def test_the_settings_known_are_those_the_readme_documents():
    readme = (PROJECT_ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `(ALERT_[A-Z_]+)` \|", readme, re.M))
    flagged = {name for name, _, _ in config.NOISE_OPTIONS.values()}  # documented beside their flags
    assert config.setting_names() == documented | flagged
    assert not config.misspelt_settings({name: "1" for name in documented | flagged})


def test_routes_match_in_priority_order():
    from data_platform.alerts.records import Route, route_for

    routes = [
        Route(10, "vip", "VIP", organization_id=7),
        Route(20, "uk", "UK", legal_entity_country_code=44),
        Route(30, "band", "BAND", min_balance_usd=Decimal(1000), max_balance_usd=Decimal(5000)),
        Route(100, "default", "SLACK_WEBHOOK_URL"),
    ]
    uk = Organization(8, True, False, legal_entity_country_code=44)
    assert (
        route_for(routes, Organization(7, True, False, legal_entity_country_code=44), alert("1", "2")).name
        == "vip"
    )
    assert route_for(routes, uk, alert("1", "2")).name == "uk"
    assert route_for(routes, Organization(9, False), alert("1", "1000")).name == "band"
    assert route_for(routes, Organization(9, False), alert("1", "5000")).name == "default"  # max excluded
    assert routes[3].destination == "slack" and routes[0].destination == "VIP"


@pytest.mark.parametrize(
    ("sink", "mention"), [("json", "<!subteam^S0123ABC>"), ("slack", None)], ids=["sink", "mention"]
)
def test_routes_sharing_a_webhook_must_send_the_same_kind_of_message(sink, mention):
    # one destination per variable: vip's alerts would have gone as big-balances' Slack Block Kit, with
    # its mention, whatever vip's row said
    from data_platform.alerts.records import Route
    from data_platform.alerts.routing import check_routes

    big = Route(10, "big-balances", "FIN", "slack", "<!subteam^S0123ABC>", min_balance_usd=Decimal(10**6))
    routes = [
        big,
        Route(20, "vip", "FIN", sink, mention, organization_id=7),
        Route(100, "all", "SLACK_WEBHOOK_URL", is_default=True),
    ]
    with pytest.raises(config.ConfigError, match=r"routes 'big-balances' and 'vip' in .* both send to FIN"):
        check_routes(routes)
    check_routes([big, replace(big, priority=20, name="vip", organization_id=7), routes[2]])


def test_a_balance_that_is_not_finite_matches_no_band():
    from data_platform.alerts.records import Route, route_for

    routes = [
        Route(10, "from", "FROM", min_balance_usd=Decimal(1000)),
        Route(20, "below", "BELOW", max_balance_usd=Decimal(5000)),
        Route(100, "default", "SLACK_WEBHOOK_URL"),
    ]
    for balance in ("NaN", "Infinity", "-Infinity"):
        assert route_for(routes, Organization(9, False), alert("1", balance)).name == "default", balance


def test_a_digest_shows_a_change_that_is_not_a_number_first():
    # as its query lists them: Postgres sorts NaN above every number, `order by abs(...) desc` first
    from data_platform.alerts.records import Digest

    alerts = [
        replace(alert("10", balance), organization_id=i) for i, balance in enumerate(["20", "NaN", "5"])
    ]
    assert [a.organization_id for a in Digest("console", tuple(alerts), {}).top] == [1, 0, 2]


def test_pacer_spaces_messages():
    from data_platform.alerts.delivery import Pacer

    now, slept = [100.0], []
    pacer = Pacer(
        1.0, clock=lambda: now[0], sleep=lambda s: (slept.append(s), now.__setitem__(0, now[0] + s))
    )
    pacer.wait()  # the first message goes at once
    pacer.sent()
    now[0] += 0.25
    pacer.wait()
    assert slept == [0.75]


def test_the_json_ratio_is_not_rounded_onto_a_whole_percent_it_has_not_reached():
    # "1.000000" beside severity warning read as the 100% that makes an alert critical
    short = replace(alert("25000", "49999.99"), balance_change_ratio=Decimal("0.9999996"))
    document = payload.json_payload(Batch(KNOWN, (short,)))
    assert document["alerts"][0]["change_ratio"] == "0.999999"
    half = replace(short, balance_change_ratio=Decimal("0.6666666666"))
    assert payload.json_payload(Batch(KNOWN, (half,)))["alerts"][0]["change_ratio"] == "0.666667"


def test_a_top_invoice_shows_the_status_its_change_replaced_in_every_message():
    """An invoice of $18,733.33 credited while it was owed moved the balance by -$37,466.66, its status
    alone, credited, shown: the amount no longer owed was not."""
    from data_platform.alerts.records import TopInvoice, Why

    credited = TopInvoice(7, "credited", Decimal("-37466.66"), previous_status="skipped")
    new = TopInvoice(8, "open", Decimal("500"))
    corrected = TopInvoice(9, "open", Decimal("5"), previous_status="open")  # an amount, not a status
    moved = replace(alert("100000", "62000"), why=Why((), (credited, new, corrected)))
    batch = Batch(KNOWN, (moved,))

    _, blocks = messages.slack_message(batch)
    document = payload.json_payload(batch)

    expected = "top invoices: 7 credited (was skipped) -$37,466.66, 8 open +$500.00, 9 open +$5.00"
    assert messages.console_line(KNOWN, moved).endswith(expected)
    fields = [field["text"] for block in blocks for field in block.get("fields", [])]
    assert (
        "*Top invoices*\n`7` credited (was skipped) -$37,466.66\n`8` open +$500.00\n`9` open +$5.00" in fields
    )
    assert document["alerts"][0]["top_invoices"] == [
        {
            "invoice_id": "7",
            "status": "credited",
            "previous_status": "skipped",
            "balance_change_usd": "-37466.66",
        },
        {"invoice_id": "8", "status": "open", "previous_status": None, "balance_change_usd": "500.00"},
        {"invoice_id": "9", "status": "open", "previous_status": "open", "balance_change_usd": "5.00"},
    ]


def test_a_balance_beyond_28_digits_formats_in_every_message():
    # amounts up to 1e16 at an FX rate of 1e-8 make ~1e24 USD; over a cent the ratio is far larger
    huge = alert("0.01", "1000000000000000000000000.01")
    batch = Batch(KNOWN, (huge,))

    text, _ = messages.slack_message(batch)
    document = payload.json_payload(batch)

    assert (
        "$0.01 -> $1,000,000,000,000,000,000,000,000.01 (+10,000,000,000,000,000,000,000,000,000.00%)" in text
    )
    assert document["alerts"][0]["change_ratio"] == "100000000000000000000000000.000000"


# --- database errors in words ----------------------------------------------------------------------


def driver_error(kind: type[psycopg.Error], message: str) -> DBAPIError:
    # as SQLAlchemy raises it: its own text appends the statement and the parameters
    return ProgrammingError("select balance from marts.x where id = %(id)s", {"id": 424242}, kind(message))


@pytest.fixture
def alerter_target(monkeypatch):
    for name, value in {"PGUSER": "alerter", "PGHOST": "db", "PGPORT": "5432", "PGDATABASE": "wh"}.items():
        monkeypatch.setenv(name, value)


def test_a_database_error_gives_the_drivers_message_on_one_line_never_the_statement(alerter_target):
    error = driver_error(psycopg.errors.DivisionByZero, "division by zero\nCONTEXT:  a view\n  line 2")
    said = database_error(error)
    assert said == "database error on alerter@db:5432/wh: division by zero CONTEXT: a view line 2"
    assert db_message(DBAPIError("select 1", None, None)) == "DBAPIError"  # no driver error to quote


def test_a_table_dropped_while_the_run_reads_it_says_to_run_the_pipeline(alerter_target):
    # the run checks the marts exist first: a table gone after that check fails only its query
    said = database_error(driver_error(psycopg.errors.UndefinedTable, 'relation "marts.x" does not exist'))
    assert said == (
        'database error on alerter@db:5432/wh: relation "marts.x" does not exist: '
        "run the pipeline first (init.sh)."
    )


OPS_STATE = "Role alerter may not write the alerts' state: run as the role that owns the ops schema"
MARTS = "Role alerter may not read the marts: dbt grants select on them to ALERTER_USER"
LACKING = "Role alerter lacks a privilege the alert run needs."
DENIED = {
    "schema ops": ("permission denied for schema ops", OPS_STATE),
    "an ops table": ("permission denied for table alert_history", OPS_STATE),
    "schema marts": ("permission denied for schema marts", MARTS),
    "a marts table": ("permission denied for table fct_organization_daily_financials", MARTS),
    "a marts view": ("permission denied for view dim_alert_routes", MARTS),
    "anything else": ("permission denied for function pg_sleep", LACKING),
}


@pytest.mark.parametrize(("denied", "hint"), DENIED.values(), ids=DENIED.keys())
def test_a_missing_privilege_says_which_side_lacks_it_and_for_which_role(alerter_target, denied, hint):
    said = database_error(driver_error(psycopg.errors.InsufficientPrivilege, denied))
    assert said.startswith(f"database error on alerter@db:5432/wh: {denied}. {hint}"), said
    assert [known for known in (OPS_STATE, MARTS, LACKING) if known in said] == [hint]


def test_the_no_answer_note_promises_another_send_only_to_the_alerts_not_given_up():
    # this run's last allowed attempts got no answer too: a later run never sends those again
    summary = Summary(failed=3, unanswered={"slack": 3}, given_up=1, gave_up=1)
    assert (
        "3 alerts got no answer from the SLACK_WEBHOOK_URL webhook and may have arrived: a later run sends 2 "
        "of them again; for the other 1 that was the last allowed attempt (below)." in summary.notes()
    )
    assert (
        "1 alert never confirmed after 2 unanswered attempts: not sent again; check the channel (status "
        "'unknown' in ops.alert_history): to send one again, delete its row there, then run alert_script.py "
        "--since its day." in summary.notes()
    )


def test_every_driver_kind_the_drivers_mart_gives_has_its_words_in_messages():
    # the kinds are the model's CASE: a kind added there and not here would read "1 new_kind" in Slack
    model = (DBT_PROJECT_DIR / "models" / "marts" / "fct_organization_daily_drivers.sql").read_text()
    case = model[model.index("case", model.index("classified as")) : model.index("end as driver_kind")]
    assert set(re.findall(r"then '(\w+)'", case)) == set(messages.DRIVER_NOUNS)


def test_the_seed_accepts_exactly_the_sinks_the_alerts_can_write():
    seeds = yaml.safe_load((DBT_PROJECT_DIR / "seeds" / "_seeds.yml").read_text())
    (routing_seed,) = (seed for seed in seeds["seeds"] if seed["name"] == "alert_routing")
    (sink,) = (column for column in routing_seed["columns"] if column["name"] == "sink")
    (accepted,) = (test["accepted_values"] for test in sink["data_tests"] if "accepted_values" in test)
    assert tuple(accepted["arguments"]["values"]) == SINKS
