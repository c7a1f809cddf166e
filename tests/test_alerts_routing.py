"""Routing from the alert_routing seed (as marts.dim_alert_routes), the JSON webhook sink and Slack's
rate limit, end to end with local webhook stubs (same harness as test_alerts.py)."""

from __future__ import annotations

import signal
import subprocess
import time
from decimal import Decimal

import pytest
from conftest import PROJECT_ROOT, copy_project, dbt_by_hand
from slack_stub import (
    OK,
    SECRET,
    Reply,
    SlackStub,
    cut_short,
    hang,
    rate_limited,
    redirect,
    server_error,
    slow,
)
from sqlalchemy import create_engine
from test_alerts import (  # noqa: F401  (db, warehouse are fixtures)
    DAY,
    add_moves,
    alert_lines,
    alerter_env,
    command,
    db,
    execute,
    history,
    ops_tables,
    organizations_in,
    rebuild_day,
    run_alerts,
    start_alerts,
    stop_in_the_wait,
    warehouse,
)
from test_alerts_delivery import RawAnswers, answer

from data_platform.alerts import detect, payload, routing
from data_platform.alerts.config import HttpSettings
from data_platform.alerts.json_sink import JsonWebhookChannel
from data_platform.alerts.records import BALANCE_CHANGE, CRITICAL, Alert, Batch, Organization
from data_platform.steps import default_sigint

NO_FLOOR = {"ALERT_MIN_CHANGE_USD": "0"}


def set_routes(db, *rows) -> None:  # noqa: F811
    """Replace the routes: (priority, name, organization_id, country, min, max, env, sink, mention); a
    route without criteria is the default, as dim_alert_routes marks it."""
    execute(db, "truncate marts.dim_alert_routes", role="transformer")
    for row in rows:
        execute(
            db,
            "insert into marts.dim_alert_routes values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (*row, all(criterion is None for criterion in row[2:6])),
            role="transformer",
        )


def set_country(db, organization_id: int, country: int) -> None:  # noqa: F811
    execute(
        db,
        "insert into marts.dim_organizations (organization_id, is_missing_from_organizations_file, "
        "legal_entity_country_code) values (%s, false, %s)",
        (organization_id, country),
        role="transformer",
    )


ROUTES = (
    (10, "vip", 1, None, None, None, "VIP_WEBHOOK", "json", "<!here>"),
    (20, "uk", None, 44, None, None, "UK_WEBHOOK", "slack", "<!subteam^S0UK>"),
    # the same webhook by another rule: the same sink and mention (one webhook takes one kind of message)
    (30, "big", None, None, 50000, None, "UK_WEBHOOK", "slack", "<!subteam^S0UK>"),
    (100, "default", None, None, None, None, "SLACK_WEBHOOK_URL", "slack", None),
)


def test_a_misspelt_setting_is_said_to_change_nothing_and_a_routes_variable_is_not(db):  # noqa: F811
    # ALERT_MIN_CHANGE=5 was ignored without a word
    set_routes(db, (100, "default", None, None, None, None, "ALERT_CRITICAL", "slack", None))
    add_moves(db, (1, DAY[0], "100", "300"))

    with SlackStub() as slack:
        result = run_alerts(db, ALERT_CRITICAL=slack.url, ALERT_MIN_CHANGE="5")

    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "alert_script.py: warning: ALERT_MIN_CHANGE is not a setting of the alert run and changes nothing; "
        "did you mean ALERT_MIN_CHANGE_USD?"
    ]
    assert "1 alert sent" in result.stdout and organizations_in(slack.delivered) == [1]


def test_each_route_receives_exactly_its_organizations(db):  # noqa: F811
    set_routes(db, *ROUTES)
    set_country(db, 1, 44)  # organization 1 is in the UK too: its own route comes first
    set_country(db, 2, 44)
    set_country(db, 3, 49)
    add_moves(
        db,
        (1, DAY[0], "100", "300"),
        (2, DAY[0], "100", "300"),
        (3, DAY[0], "100", "300"),  # default
        (4, DAY[0], "40000", "60000"),  # not in dim_organizations, balance 60,000: the "big" rule
        (5, DAY[0], "100", "10"),  # default
    )

    with SlackStub() as vip, SlackStub() as uk, SlackStub() as default:
        result = run_alerts(
            db,
            webhook=default.url,
            VIP_WEBHOOK=vip.url,
            UK_WEBHOOK=uk.url,
            ALERT_SLACK_MIN_INTERVAL="0",
            **NO_FLOOR,
        )

    assert result.returncode == 0, result.stderr
    (document,) = vip.delivered
    assert document["schema"] == payload.PAYLOAD_SCHEMA and document["version"] == 1
    assert document["type"] == "alerts" and document["mention"] == "<!here>"
    assert document["organization"]["organization_id"] == "1"
    assert organizations_in(uk.delivered) == [2, 4]
    assert [body["blocks"][1]["text"]["text"] for body in uk.delivered] == ["<!subteam^S0UK>"] * 2
    assert organizations_in(default.delivered) == [3, 5]
    # delivery state per route: the default keeps the name `slack`, the others their variable
    rows = db.query("select destination, organization_id, status from ops.alert_history order by 2")
    assert rows == [
        ("VIP_WEBHOOK", 1, "sent"),
        ("UK_WEBHOOK", 2, "sent"),
        ("slack", 3, "sent"),
        ("UK_WEBHOOK", 4, "sent"),
        ("slack", 5, "sent"),
    ]
    watermarks = db.query("select destination, last_processed_date from ops.alert_watermark order by 1")
    assert watermarks == [("UK_WEBHOOK", DAY[0]), ("VIP_WEBHOOK", DAY[0]), ("slack", DAY[0])]


def test_the_undelivered_count_is_told_once_per_run_not_once_per_destination(db):  # noqa: F811
    set_routes(db, ROUTES[0], ROUTES[3])
    add_moves(db, (1, DAY[0], "100", "300"), (3, DAY[0], "100", "300"))

    with SlackStub() as vip, SlackStub() as default:
        vip.always(server_error(500))
        result = run_alerts(db, webhook=default.url, VIP_WEBHOOK=vip.url, ALERT_HTTP_RETRIES="0", **NO_FLOOR)

    assert result.returncode == 1
    assert organizations_in(default.delivered) == [3]
    # one line with the run's count, not one after each destination (the second after one that
    # delivered everything)
    told = [line for line in result.stderr.splitlines() if "not delivered" in line]
    assert told == [
        "alert_script.py: 1 alert(s) not delivered; they stay in ops.alert_history and are retried on "
        "the next run."
    ]


def test_undelivered_alerts_of_a_removed_route_are_reported_by_every_run(db):  # noqa: F811
    # they stay with their destination, which no run delivers to any more: never silently
    set_routes(db, ROUTES[0], ROUTES[3])
    add_moves(db, (1, DAY[0], "100", "300"))
    with SlackStub() as vip, SlackStub() as default:
        vip.always(server_error(500))
        env = {"ALERT_HTTP_RETRIES": "0", **NO_FLOOR}
        assert run_alerts(db, webhook=default.url, VIP_WEBHOOK=vip.url, **env).returncode == 1
        set_routes(db, ROUTES[3])  # the VIP route is removed
        add_moves(db, (3, DAY[1], "100", "300"))
        runs = [run_alerts(db, webhook=default.url, **env) for _ in range(2)]
        # a console run (no webhook set: the demo) delivers nothing, and reports them as well
        printed = run_alerts(db, **NO_FLOOR)

    assert organizations_in(default.delivered) == [3]
    note = (
        "1 alert undelivered for destinations no route names any more (VIP_WEBHOOK 1): never sent until a "
        "route names that variable again (or the rows are deleted from ops.alert_history)."
    )
    for result in [*runs, printed]:
        assert result.returncode == 1, result.stderr
        assert note in result.stdout and f"alert_script.py: {note}" in result.stderr
    assert history(db, "VIP_WEBHOOK") == {(1, DAY[0]): ("failed", 1)}


def test_a_console_run_names_every_route_with_waiting_alerts_and_exits_1(db):  # noqa: F811
    # the webhooks' variables are gone (an .env lost): the run can only print, and printing delivers
    # nothing, so the alerts still waiting for each route must not go unmentioned behind exit 0
    set_routes(db, ROUTES[0], ROUTES[3])
    add_moves(db, (1, DAY[0], "100", "300"), (3, DAY[0], "100", "300"))
    with SlackStub() as vip, SlackStub() as default:
        vip.always(server_error(500))
        default.always(server_error(500))
        env = {"ALERT_HTTP_RETRIES": "0", **NO_FLOOR}
        assert run_alerts(db, webhook=default.url, VIP_WEBHOOK=vip.url, **env).returncode == 1

    printed = run_alerts(db, **NO_FLOOR)

    assert printed.returncode == 1, printed.stderr
    note = (
        "2 alerts still undelivered (SLACK_WEBHOOK_URL 1, VIP_WEBHOOK 1): printing is not delivering; a run "
        "with those variables set sends them (or delete their rows from ops.alert_history to drop them)."
    )
    assert note in printed.stdout and f"alert_script.py: {note}" in printed.stderr
    assert history(db, "VIP_WEBHOOK") == {(1, DAY[0]): ("failed", 1)}
    assert history(db, "slack") == {(3, DAY[0]): ("failed", 1)}


def test_a_route_whose_variable_is_unset_stops_the_run_before_anything_is_sent(db):  # noqa: F811
    set_routes(db, *ROUTES)
    add_moves(db, (3, DAY[0], "100", "300"))

    with SlackStub() as vip, SlackStub() as default:
        result = run_alerts(db, webhook=default.url, VIP_WEBHOOK=vip.url, **NO_FLOOR)

    assert result.returncode == 2
    assert "route 'uk' needs UK_WEBHOOK (or UK_WEBHOOK_FILE)" in result.stderr
    assert "route 'big' needs UK_WEBHOOK" in result.stderr
    assert "Nothing was sent." in result.stderr
    assert vip.requests == [] and default.requests == []
    assert "alert_history" not in ops_tables(db)  # nothing recorded


def test_no_route_variable_set_prints_everything(db):  # noqa: F811
    set_routes(db, *ROUTES)
    add_moves(db, (1, DAY[0], "100", "300"), (3, DAY[0], "100", "300"))
    result = run_alerts(db, **NO_FLOOR)
    assert result.returncode == 0, result.stderr
    assert len(alert_lines(result.stdout)) == 2
    assert {row[0] for row in db.query("select destination from ops.alert_history")} == {"console"}


def test_no_default_route_is_a_configuration_error(db):  # noqa: F811
    set_routes(db, ROUTES[0])
    add_moves(db, (1, DAY[0], "100", "300"))
    result = run_alerts(db, **NO_FLOOR)
    assert result.returncode == 2
    assert "marts.dim_alert_routes has no default route" in result.stderr


def test_an_unknown_sink_is_a_configuration_error_before_anything_is_sent(db):  # noqa: F811
    # a sink the alerter cannot write (a typo) would otherwise post Slack's Block Kit to that receiver
    set_routes(db, (100, "default", None, None, None, None, "SLACK_WEBHOOK_URL", "teams", None))
    add_moves(db, (1, DAY[0], "100", "300"))
    with SlackStub() as default:
        result = run_alerts(db, webhook=default.url, **NO_FLOOR)
    assert result.returncode == 2
    assert (
        "route 'default' (priority 100) in dbt/seeds/alert_routing.csv: sink must be one of" in result.stderr
    )
    assert default.requests == [] and ops_tables(db) == set()


@pytest.mark.parametrize(
    "webhook_env",
    [
        "https://hooks.example/T/B/secret-x",
        # the .env line pasted whole: it starts as a variable's name would
        "SLACK_WEBHOOK_URL=https://hooks.example/T/B/secret-x",
    ],
)
def test_a_url_in_the_routes_is_refused_without_echoing_it(db, webhook_env):  # noqa: F811
    set_routes(db, (100, "default", None, None, None, None, webhook_env, "slack", None))
    result = run_alerts(db, **NO_FLOOR)
    assert result.returncode == 2
    assert "must name an environment variable" in result.stderr and "secret-x" not in result.stderr


def test_each_routes_errors_and_notes_name_that_route_not_slack(db):  # noqa: F811
    set_routes(
        db,
        (10, "vip", 1, None, None, None, "VIP_WEBHOOK", "json", None),
        (20, "finance", None, None, 50000, None, "FINANCE_SLACK_WEBHOOK", "slack", None),
        DEFAULT,
    )
    add_moves(
        db,
        (1, DAY[0], "100", "300"),
        (2, DAY[0], "40000", "60000"),
        (3, DAY[0], "40000", "70000"),
        (4, DAY[0], "100", "300"),
    )
    with SlackStub() as vip, SlackStub() as finance, SlackStub() as default:
        vip.always(hang(5))
        finance.always(Reply(503, "no such hook: {path}"))  # an error page quoting the webhook's path
        result = run_alerts(
            db,
            webhook=default.url,
            VIP_WEBHOOK=vip.url,
            FINANCE_SLACK_WEBHOOK=finance.url,
            ALERT_HTTP_RETRIES="0",
            ALERT_HTTP_TIMEOUT="0.3",
            **NO_FLOOR,
        )

    assert result.returncode == 1, result.stderr
    assert organizations_in(default.delivered) == [4]
    assert "1 alert got no answer from the VIP_WEBHOOK webhook and may have arrived" in result.stdout
    errors = dict(
        db.query("select organization_id, last_error from ops.alert_history where organization_id in (2, 3)")
    )
    refused = "HTTP 503: no such hook: <FINANCE_SLACK_WEBHOOK>"
    assert errors == {
        2: refused,
        3: f"not attempted: the FINANCE_SLACK_WEBHOOK webhook failed earlier in the run ({refused})",
    }
    assert f"organization 2: {refused}" in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_unanswered_and_given_up_alerts_are_told_for_every_destination(db):  # noqa: F811
    # the notes and the give-up report cover each destination's alerts, not only the first route's
    set_routes(db, ROUTES[0], ROUTES[3])  # VIP (priority 10) before the default route
    add_moves(db, (1, DAY[0], "100", "300"), (3, DAY[0], "100", "300"))
    with SlackStub() as vip, SlackStub() as default:
        vip.always(slow(5))  # both arrive, answered too late
        default.always(slow(5))
        env = {"VIP_WEBHOOK": vip.url, "ALERT_HTTP_TIMEOUT": "0.3", **NO_FLOOR}
        first = run_alerts(db, webhook=default.url, **env)
        second = run_alerts(db, webhook=default.url, **env)

    assert first.returncode == 1, first.stderr
    assert (
        "2 alerts got no answer from their webhooks (SLACK_WEBHOOK_URL 1, VIP_WEBHOOK 1) and may have arrived"
        in first.stdout
    )
    assert second.returncode == 3, second.stderr
    assert "alert_script.py: 2 alert(s) never confirmed after 2 unanswered attempts" in second.stderr


def test_a_not_a_number_balance_matches_no_balance_band_and_takes_the_default_route(db):  # noqa: F811
    # `balance >= min` on a NaN raised InvalidOperation: exit 2 on every run, nothing sent anywhere
    set_routes(db, (20, "big", None, None, 100000, None, "BIG_WEBHOOK", "slack", None), DEFAULT)
    add_moves(db, (1, DAY[0], "100000", "200000"))
    execute(
        db,
        "insert into marts.fct_organization_daily_financials "
        "values (2, %s, 1, 0, 0, 'NaN', 'NaN', 100, 'NaN')",
        (DAY[0],),
        role="transformer",
    )
    with SlackStub() as big, SlackStub() as default:
        result = run_alerts(db, webhook=default.url, BIG_WEBHOOK=big.url, ALERT_SLACK_MIN_INTERVAL="0")

    assert result.returncode == 0, result.stderr
    assert organizations_in(big.delivered) == [1]
    assert organizations_in(default.delivered) == [2]


# --- routes added while days wait to be processed ----------------------------------------------------

VIP = (10, "vip", 1, None, None, None, "VIP_WEBHOOK", "json", None)
DEFAULT = ROUTES[3]


def alerted_days(documents: list[dict]) -> list[tuple[str, str]]:
    """(organization_id, balance_date) of every alert in the JSON sink's documents."""
    return sorted((a["organization_id"], a["balance_date"]) for d in documents for a in d["alerts"])


def test_a_route_added_during_a_catch_up_gets_its_alerts_of_the_days_caught_up(db):  # noqa: F811
    # The pipeline stopped after DAY[0]; meanwhile a route claims organization 1. The new destination
    # has no watermark (on its own it would start at the latest day), but the days its alerts fall on
    # are still owed by the default destination: they go where the route says, never nowhere.
    set_routes(db, DEFAULT)
    add_moves(db, (3, DAY[0], "100", "300"))
    with SlackStub() as default:
        assert run_alerts(db, webhook=default.url).returncode == 0
    add_moves(
        db,
        (1, DAY[1], "100", "300"),  # a day of the catch-up: the new route's
        (3, DAY[2], "300", "100"),
        (1, DAY[3], "300", "900"),  # the latest day
    )
    set_routes(db, VIP, DEFAULT)

    with SlackStub() as vip, SlackStub() as default:
        result = run_alerts(db, webhook=default.url, VIP_WEBHOOK=vip.url, **NO_FLOOR)

    assert result.returncode == 0, result.stderr
    assert alerted_days(vip.delivered) == [("1", "2024-03-02"), ("1", "2024-03-04")]
    assert organizations_in(default.delivered) == [3]
    assert history(db, "VIP_WEBHOOK") == {(1, DAY[1]): ("sent", 1), (1, DAY[3]): ("sent", 1)}
    assert history(db, "slack") == {(3, DAY[0]): ("sent", 1), (3, DAY[2]): ("sent", 1)}
    assert "3 days processed (2024-03-02..2024-03-04), 3 alerts sent, 0 failed" in result.stdout
    watermarks = db.query("select destination, last_processed_date from ops.alert_watermark order by 1")
    assert watermarks == [("VIP_WEBHOOK", DAY[3]), ("slack", DAY[3])]


def test_a_destination_ahead_of_the_catch_up_gets_only_what_it_never_got(db):  # noqa: F811
    # VIP's first run was a --date run of the latest day, which set its watermark there while the
    # default's stayed behind (a --date run moves no watermark over a gap). The next run catches the
    # default up: VIP gets its alert of the day in between, and not again the one it was sent.
    set_routes(db, DEFAULT)
    add_moves(db, (3, DAY[0], "100", "300"))
    with SlackStub() as default:
        assert run_alerts(db, webhook=default.url).returncode == 0
    add_moves(db, (1, DAY[1], "100", "300"), (3, DAY[1], "300", "100"), (1, DAY[2], "300", "900"))
    set_routes(db, VIP, DEFAULT)

    with SlackStub() as vip, SlackStub() as default:
        env = {"webhook": default.url, "VIP_WEBHOOK": vip.url, **NO_FLOOR}
        one_day = run_alerts(db, "--date", DAY[2].isoformat(), **env)
        assert one_day.returncode == 0, one_day.stderr
        assert alerted_days(vip.delivered) == [("1", "2024-03-03")]
        assert default.delivered == []
        watermarks = db.query("select destination, last_processed_date from ops.alert_watermark order by 1")
        assert watermarks == [("VIP_WEBHOOK", DAY[2]), ("slack", DAY[0])]

        catch_up = run_alerts(db, **env)

    assert catch_up.returncode == 0, catch_up.stderr
    assert alerted_days(vip.delivered) == [("1", "2024-03-02"), ("1", "2024-03-03")]  # each once
    assert organizations_in(default.delivered) == [3]
    assert history(db, "VIP_WEBHOOK") == {(1, DAY[1]): ("sent", 1), (1, DAY[2]): ("sent", 1)}
    assert history(db, "slack") == {(3, DAY[0]): ("sent", 1), (3, DAY[1]): ("sent", 1)}
    assert "2 days processed (2024-03-02..2024-03-03), 2 alerts sent" in catch_up.stdout
    watermarks = db.query("select destination, last_processed_date from ops.alert_watermark order by 1")
    assert watermarks == [("VIP_WEBHOOK", DAY[2]), ("slack", DAY[2])]


def test_a_route_put_back_is_not_sent_what_another_destination_got_meanwhile(db):  # noqa: F811
    # VIP's route is removed for a day, then put back: its watermark is still that of its last run, so
    # the next run reads the day in between, whose alert the default destination already delivered
    set_routes(db, VIP, DEFAULT)
    add_moves(db, (1, DAY[0], "100", "300"))
    with SlackStub() as vip, SlackStub() as default:
        assert run_alerts(db, webhook=default.url, VIP_WEBHOOK=vip.url).returncode == 0
        set_routes(db, DEFAULT)
        add_moves(db, (1, DAY[1], "300", "900"))
        assert run_alerts(db, webhook=default.url).returncode == 0
        set_routes(db, VIP, DEFAULT)
        add_moves(db, (1, DAY[2], "900", "100"))

        back = run_alerts(db, webhook=default.url, VIP_WEBHOOK=vip.url)

    assert back.returncode == 0, back.stderr
    assert alerted_days(vip.delivered) == [("1", "2024-03-01"), ("1", "2024-03-03")]
    assert [body["blocks"][0]["text"]["text"] for body in default.delivered] == [
        "Balance alert: organization 1"
    ]
    assert history(db, "VIP_WEBHOOK") == {(1, DAY[0]): ("sent", 1), (1, DAY[2]): ("sent", 1)}
    assert history(db, "slack") == {(1, DAY[1]): ("sent", 1)}
    assert "2 days processed (2024-03-02..2024-03-03), 1 alert sent" in back.stdout
    assert (
        "1 alert already sent, or waiting, to another destination before the routes changed: not sent again."
        in back.stdout
    )


def test_a_superseded_alert_is_not_reopened_where_its_day_was_sent_elsewhere_meanwhile(db):  # noqa: F811
    # VIP's alert could not be sent, then a rebuild superseded it; with VIP's route removed, a --date
    # run sent the day, alerting again, to the default destination. VIP's route put back must not reopen
    # its superseded row and send the same day a second time.
    set_routes(db, VIP, DEFAULT)
    add_moves(db, (1, DAY[0], "100", "300"))
    with SlackStub() as vip, SlackStub() as default:
        vip.always(server_error(500))
        env = {"webhook": default.url, "VIP_WEBHOOK": vip.url, "ALERT_HTTP_RETRIES": "0"}
        assert run_alerts(db, **env).returncode == 1
        rebuild_day(db, DAY[0], 110, 0.1)
        vip.always(OK)
        assert run_alerts(db, **env).returncode == 0
        assert history(db, "VIP_WEBHOOK") == {(1, DAY[0]): ("superseded", 1)}
        set_routes(db, DEFAULT)
        rebuild_day(db, DAY[0], 300, 2)
        assert run_alerts(db, "--date", DAY[0].isoformat(), webhook=default.url).returncode == 0
        assert organizations_in(default.delivered) == [1]
        set_routes(db, VIP, DEFAULT)

        back = run_alerts(db, **env)

    assert back.returncode == 0, back.stderr
    assert vip.delivered == []
    assert history(db, "VIP_WEBHOOK") == {(1, DAY[0]): ("superseded", 1)}
    assert history(db, "slack") == {(1, DAY[0]): ("sent", 1)}
    assert "reopened" not in back.stdout and "1 alert sent" not in back.stdout


def test_only_an_alert_sent_or_waiting_elsewhere_keeps_a_route_from_recording_it(db):  # noqa: F811
    # one held back by --suppress-days or superseded was sent to no one, and printing is not sending:
    # the route that names the organization now may still send it
    from dataclasses import replace

    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from data_platform.alerts import ops_tables, store
    from data_platform.alerts.records import CONSOLE

    engine = create_engine("postgresql+psycopg://", creator=lambda: db.connect("alerter"), poolclass=NullPool)
    pending, held, superseded, printed = (replace(ALERT, organization_id=n) for n in (1, 2, 3, 4))
    with engine.connect() as conn:
        ops_tables.ensure_tables(conn)
        store.record_alerts(conn, "slack", [pending, superseded])
        store.record_alerts(conn, "slack", [held], suppressed={(2, DAY[0])})
        store.record_superseded(conn, "slack", [superseded])
        store.record_alerts(conn, CONSOLE, [printed])
        alerts = [pending, held, superseded, printed]
        assert store.recorded_elsewhere(conn, "VIP_WEBHOOK", alerts) == {(1, DAY[0])}
        assert store.recorded_elsewhere(conn, "slack", alerts) == set()


# --- Slack's rate limit ------------------------------------------------------------------------------


def test_slack_answering_429_to_a_burst_gets_every_message_once_spaced_as_asked(db):  # noqa: F811
    add_moves(db, *[(i, DAY[0], "100", "300") for i in range(1, 4)])

    with SlackStub() as slack:
        # Slack's limit: a message within 1.5 s of the previous one gets 429 "come back in 2 s"
        slack.limit_rate(min_interval=1.5, retry_after=2)
        result = run_alerts(
            db, webhook=slack.url, ALERT_SLACK_MIN_INTERVAL="1", ALERT_HTTP_RETRIES="3", **NO_FLOOR
        )

    assert result.returncode == 0, result.stderr
    assert organizations_in(slack.delivered) == [1, 2, 3]  # each exactly once
    requests = slack.requests
    assert [r.status for r in requests] == [200, 429, 200, 429, 200]
    for limited, retried in ((requests[1], requests[2]), (requests[3], requests[4])):
        assert retried.at - limited.at >= 2  # Retry-After honoured
    first, *others = [r for r in requests if r.accepted]
    # paced: never two messages within a second, even before Slack complains
    assert requests[1].at - requests[0].at >= 1
    assert all(later.at - earlier.at >= 1.5 for earlier, later in zip([first, *others], others, strict=False))
    assert set(history(db).values()) == {("sent", 1)}


# --- the JSON sink on its own ------------------------------------------------------------------------

FAST = HttpSettings(timeout=0.5, retries=2, backoff=0.01, max_retry_after=5)
ALERT = Alert(
    42, DAY[0], BALANCE_CHANGE, Decimal("1000"), Decimal("3000.125"), Decimal("2.000125"), severity=CRITICAL
)
BATCH = Batch(Organization(42, True, False, 3, None, None), (ALERT,), mention="<!here>")


@pytest.fixture
def receiver():
    with SlackStub() as slack:
        yield slack


def test_json_payload_version_1(receiver):
    assert JsonWebhookChannel(receiver.url, FAST).send(BATCH).delivered
    (document,) = receiver.delivered
    assert document == {
        "schema": "data_platform.balance_alerts",
        "version": 1,
        "type": "alerts",
        "mention": "<!here>",
        "text": document["text"],
        "organization": {
            "organization_id": "42",
            "in_warehouse": True,
            "missing_from_organizations_file": False,
            "active_contracts": 3,
            "first_payment_date": None,
            "last_payment_date": None,
            "context": "3 active contracts, first payment none, last payment none",
        },
        "alerts": [
            {
                "organization_id": "42",
                "balance_date": "2024-03-01",
                "alert_kind": "balance_change",
                "severity": "critical",
                "previous_balance_usd": "1000.00",
                "balance_usd": "3000.13",
                "change_usd": "2000.13",
                "change_ratio": "2.000125",
                "drivers": [],
                "top_invoices": [],
            }
        ],
    }


def test_json_sink_retries_429_and_5xx_with_urllib3(receiver):
    receiver.answer(rate_limited(retry_after=1), server_error(503))
    outcome = JsonWebhookChannel(receiver.url, FAST).send(BATCH)
    assert outcome.delivered
    assert [r.status for r in receiver.requests] == [429, 503, 200]
    assert receiver.requests[1].at - receiver.requests[0].at >= 1


def test_json_sink_retries_a_429_without_retry_after(receiver):
    # urllib3 retries a 429 that says when to come back by itself; one that does not is retried only
    # because the policy lists 429 (with its backoff), as slack-sdk's handler does for Slack
    receiver.answer(Reply(429, "rate_limited"))
    outcome = JsonWebhookChannel(receiver.url, FAST).send(BATCH)
    assert outcome.delivered
    assert [r.status for r in receiver.requests] == [429, 200]


@pytest.mark.parametrize(
    ("reply", "delivered"),
    [(Reply(204, ""), True), (redirect(), False), (Reply(404, "no such hook"), False)],
    ids=["204", "302", "404"],
)
def test_json_sink_counts_only_a_2xx_answer_as_delivered(receiver, reply, delivered):
    # a refused alert recorded as sent would never be sent again
    receiver.always(reply)
    outcome = JsonWebhookChannel(receiver.url, FAST).send(BATCH)
    assert outcome.delivered is delivered
    if not delivered:
        assert outcome.error == f"HTTP {reply.status}: {reply.body}" and not outcome.service_unavailable
    assert len(receiver.requests) == 1  # neither retried nor followed


def test_json_sink_leaves_a_long_retry_after_for_the_next_run(receiver):
    receiver.answer(rate_limited(retry_after=30))
    outcome = JsonWebhookChannel(receiver.url, FAST).send(BATCH)
    assert not outcome.delivered and outcome.service_unavailable and not outcome.unanswered
    assert len(receiver.requests) == 1 and "HTTP 429" in (outcome.error or "")


@pytest.mark.parametrize(("status", "retry_after"), [(503, 30), (500, 30), (503, "soon")])
def test_json_sink_leaves_a_long_retry_after_on_5xx_for_the_next_run(receiver, status, retry_after):
    # urllib3 waits for any retried answer's Retry-After, not only a 429's: uncapped, one message could
    # hold the run (and the locks it holds) for as long as the receiver asks
    receiver.always(Reply(status, "busy", retry_after=retry_after))
    started = time.monotonic()
    outcome = JsonWebhookChannel(receiver.url, FAST).send(BATCH)
    assert time.monotonic() - started < 2
    assert not outcome.delivered and outcome.service_unavailable and not outcome.unanswered
    assert outcome.error == f"HTTP {status}: busy"
    assert len(receiver.requests) == 1


def test_json_sink_no_answer_is_never_retried_within_the_run(receiver):
    from slack_stub import hang

    receiver.answer(hang(5))
    outcome = JsonWebhookChannel(receiver.url, FAST).send(BATCH)
    assert not outcome.delivered and outcome.unanswered
    assert len(receiver.requests) == 1


def test_json_sink_answer_cut_short_may_have_arrived(receiver):
    # the receiver took the message and its answer broke off: sending it again may be a second copy
    receiver.always(cut_short())
    outcome = JsonWebhookChannel(receiver.url, FAST).send(BATCH)
    assert not outcome.delivered and outcome.unanswered
    assert (outcome.error or "").endswith("(the message may have arrived)")
    assert len(receiver.requests) == 1


@pytest.mark.parametrize(
    "url",
    ["hooks.example/T0/B0/x", "ftp://hooks.example/T0/B0/x", "http://"],
    ids=["no scheme", "ftp", "no host"],
)
def test_json_sink_request_refused_before_sending_is_not_unanswered(url):
    outcome = JsonWebhookChannel(url, FAST).send(BATCH)
    assert not outcome.delivered and not outcome.unanswered


def test_json_sink_unreachable_is_not_unanswered():
    with SlackStub() as gone:
        url = gone.url
    outcome = JsonWebhookChannel(url, FAST).send(BATCH)
    assert not outcome.delivered and not outcome.unanswered
    assert "XOXB" not in (outcome.error or "")


def test_a_json_answer_cut_short_every_time_is_sent_at_most_twice(db):  # noqa: F811
    set_routes(db, VIP, DEFAULT)
    add_moves(db, (1, DAY[0], "100", "300"))
    with SlackStub() as vip, SlackStub() as default:
        vip.always(cut_short())
        env = {"webhook": default.url, "VIP_WEBHOOK": vip.url, **NO_FLOOR}
        runs = [run_alerts(db, **env) for _ in range(3)]

    assert [run.returncode for run in runs] == [1, 3, 0], runs[-1].stderr
    assert len(vip.requests) == 2  # each arrived: a third copy would be one too many
    assert history(db, "VIP_WEBHOOK") == {(1, DAY[0]): ("unknown", 2)}
    assert "never confirmed after 2 unanswered attempts: not sent again" in runs[2].stdout


def test_a_run_stopped_while_urllib3_waits_out_a_retry_after_leaves_the_json_alert_failed(db):  # noqa: F811
    # the 429 was an answer: nothing was accepted, and nothing was in flight when the run stopped
    set_routes(db, VIP, DEFAULT)
    add_moves(db, (1, DAY[0], "100", "300"))
    with SlackStub() as vip, SlackStub() as default:
        vip.answer(rate_limited(retry_after=5))
        run = start_alerts(db, default.url, VIP_WEBHOOK=vip.url, **NO_FLOOR)
        stderr = stop_in_the_wait(
            run,
            lambda: len(vip.requests) == 1,
            "the message answered 429, then its 5 s Retry-After",
            signal.SIGINT,
        )
        assert run.returncode == 130, stderr
        assert len(vip.requests) == 1
        state = "select status, attempts, unanswered_attempts, last_error from ops.alert_history"
        assert db.query(state) == [("failed", 1, 0, "HTTP 429 (retrying)")]

        again = run_alerts(db, webhook=default.url, VIP_WEBHOOK=vip.url, **NO_FLOOR)
    assert again.returncode == 0, again.stderr
    assert len(vip.delivered) == 1
    assert db.query(state) == [("sent", 2, 0, None)]


def test_a_slack_answer_accepted_with_a_body_that_does_not_decode_is_sent_once(db):  # noqa: F811
    # it was recorded failed ("nothing accepted"), and every later run sent it again
    add_moves(db, (1, DAY[0], "1000", "5000"))
    with RawAnswers(answer(200, "text/plain; charset=binary", b"ok")) as webhook:
        runs = [run_alerts(db, webhook=webhook.url) for _ in range(2)]
    assert [run.returncode for run in runs] == [0, 0], runs[0].stdout + runs[0].stderr
    assert len(webhook.received) == 1
    assert history(db) == {(1, DAY[0]): ("sent", 1)}


# --- ops tables from before routing ------------------------------------------------------------------

BEFORE_ROUTING = """
alter table ops.alert_history drop constraint alert_history_severity_check;
alter table ops.alert_history drop column severity;
alter table ops.alert_history drop constraint alert_history_status_check;
alter table ops.alert_history add constraint alert_history_status_check
    check (status in ('pending', 'sent', 'failed', 'unknown'));
alter table ops.alert_history drop constraint alert_history_destination_check;
alter table ops.alert_history add constraint alert_history_destination_check
    check (destination in ('slack', 'console'));
alter table ops.alert_watermark drop constraint alert_watermark_destination_check;
alter table ops.alert_watermark add constraint alert_watermark_destination_check
    check (destination in ('slack', 'console'));
"""


def test_ops_tables_from_before_routing_are_upgraded_in_place(db):  # noqa: F811
    add_moves(db, (3, DAY[0], "100", "300"))
    with SlackStub() as slack:
        slack.always(server_error(500))
        assert run_alerts(db, webhook=slack.url, **NO_FLOOR).returncode == 1  # a failed Slack alert waits
    for statement in BEFORE_ROUTING.split(";"):
        if statement.strip():
            execute(db, statement, role="alerter")
    set_routes(db, ROUTES[0], ROUTES[3])
    add_moves(db, (1, DAY[1], "100", "300"))

    with SlackStub() as vip, SlackStub() as slack:
        result = run_alerts(
            db, webhook=slack.url, VIP_WEBHOOK=vip.url, ALERT_SLACK_MIN_INTERVAL="0", **NO_FLOOR
        )

    assert result.returncode == 0, result.stderr
    assert organizations_in(slack.delivered) == [3]  # the waiting alert, kept through the upgrade
    assert vip.delivered[0]["organization"]["organization_id"] == "1"
    rows = db.query("select destination, organization_id, severity, status from ops.alert_history order by 2")
    assert rows == [("VIP_WEBHOOK", 1, "critical", "sent"), ("slack", 3, "warning", "sent")]


def test_a_give_up_is_reported_by_a_run_that_ends_not_by_one_that_dies_on_a_later_destination(db):  # noqa: F811
    # the later destination's commits must not save the earlier one's report: the run died before it
    # could exit 3, so the next run must
    set_routes(db, ROUTES[0], ROUTES[3])  # VIP (priority 10) is delivered before the default route
    add_moves(db, (1, DAY[0], "100", "300"), (3, DAY[0], "100", "300"))
    with SlackStub() as vip, SlackStub() as default:
        vip.always(slow(5))  # arrives, answered too late
        assert (
            run_alerts(db, webhook=default.url, VIP_WEBHOOK=vip.url, ALERT_HTTP_TIMEOUT="0.3").returncode == 1
        )
        add_moves(db, (3, DAY[1], "100", "300"))  # a new alert for the default route
        default.always(hang(30))
        stopped = subprocess.Popen(
            command(),
            cwd=PROJECT_ROOT,
            env=alerter_env(db, default.url, VIP_WEBHOOK=vip.url, ALERT_HTTP_TIMEOUT="3"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=default_sigint,
        )
        deadline = time.monotonic() + 30
        while len(default.requests) < 2:  # VIP's last attempt given up; the default's send in flight
            assert time.monotonic() < deadline and stopped.poll() is None, "the run did not get there"
            time.sleep(0.05)
        stopped.send_signal(signal.SIGINT)
        assert stopped.wait(timeout=30) == 130
        vip.always(OK)
        default.always(OK)
        after = run_alerts(db, webhook=default.url, VIP_WEBHOOK=vip.url)
    assert after.returncode == 3, after.stderr
    assert "1 alert(s) never confirmed after 2 unanswered attempts" in after.stderr


def test_the_pipeline_reads_the_seed_as_the_built_routes_mart_gives_it(make_database, tmp_path):
    # the pipeline checks the seed file's routes before its build (routing.routes_in_seed), the alert run
    # reads them from marts.dim_alert_routes: a row must mean the same to both (an empty sink is Slack's,
    # an empty mention none, a route with no criterion the default)
    project = copy_project(tmp_path / "project")
    seed = project / "dbt" / "seeds" / "alert_routing.csv"
    seed.write_text(
        "priority,route_name,organization_id,legal_entity_country_code,min_balance_usd,max_balance_usd,"
        "webhook_env,sink,mention\n"
        "10,large,,,100000.5,,LARGE_WEBHOOK,json,\n"
        "20,one,42,,,,ONE_WEBHOOK,,<!here>\n"
        "30,country,,7,,1000,COUNTRY_WEBHOOK,slack,\n"
        "100,default,,,,,SLACK_WEBHOOK_URL,,\n"
    )
    database = make_database()
    dbt_by_hand(database, project / "csv_data", project, "seed", "-s", "alert_routing")
    dbt_by_hand(database, project / "csv_data", project, "run", "-s", "dim_alert_routes")
    engine = create_engine("postgresql+psycopg://", creator=lambda: database.connect("alerter"))
    with engine.connect() as conn:
        built = detect.alert_routes(conn)
    engine.dispose()
    assert routing.routes_in_seed(seed) == built
    assert [(route.sink, route.mention, route.is_default) for route in built] == [
        ("json", None, False),
        ("slack", "<!here>", False),
        ("slack", None, False),
        ("slack", None, True),
    ]


def test_a_json_receivers_404_refuses_its_document_only(db):  # noqa: F811
    """A receiver's 4xx may be about one document (an organization it does not know): the destination's
    other alerts still go, as Slack's webhook-wide refusals (a revoked webhook) do not."""
    set_routes(db, (100, "default", None, None, None, None, "SLACK_WEBHOOK_URL", "json", None))
    add_moves(db, (1, DAY[0], "100", "300"), (2, DAY[0], "100", "10"), (3, DAY[0], "100", "50"))
    with SlackStub() as receiver:
        receiver.answer(Reply(404, "organization 1 not found"), then=OK)
        result = run_alerts(db, webhook=receiver.url, **NO_FLOOR)

    assert result.returncode == 1
    assert [r.status for r in receiver.requests] == [404, 200, 200]
    assert history(db) == {(1, DAY[0]): ("failed", 1), (2, DAY[0]): ("sent", 1), (3, DAY[0]): ("sent", 1)}
    assert "webhook answered" not in result.stdout + result.stderr
