"""alert_script.py end to end: a real Postgres, the real command, a real HTTP server for Slack.

The marts tables are created here by hand (as the transformer, with the columns the alerter reads) so the
alert behaviour is tested independently of the dbt project; the pipeline's end-to-end test runs the
script on real dbt output.

`run_alerts` runs `python alert_script.py` as a subprocess with the alerter's PG* variables (the way
init.sh and cron do); `run_inline` calls the same entry point, cli.main(), in this process with the
same environment, for the rule and day-selection tests where a process start per run only costs time.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import date, timedelta
from decimal import Decimal

import psycopg
import pytest
from conftest import PROJECT_ROOT, Database, wait_until
from slack_stub import (
    OK,
    QUERY_SECRET,
    SECRET,
    Reply,
    SlackStub,
    echoing_path,
    hang,
    rate_limited,
    server_error,
    slow,
)

from data_platform.alerts import cli, detect, exit_codes, store
from data_platform.alerts.delivery import ConsoleChannel
from data_platform.steps import default_sigint

FACT_DDL = """
create table marts.fct_organization_daily_financials (
    organization_id bigint not null,
    balance_date date not null,
    invoice_count bigint not null,
    invoiced_amount_usd numeric not null,
    paid_amount_usd numeric not null,
    balance_change_usd numeric not null,
    balance_usd numeric not null,
    previous_balance_usd numeric not null,
    balance_change_ratio numeric
)
"""

DIM_DDL = """
create table marts.dim_organizations (
    organization_id bigint not null,
    is_missing_from_organizations_file boolean not null,
    first_payment_date date,
    last_payment_date date,
    legal_entity_country_code bigint,
    count_total_contracts_active integer,
    organization_created_at timestamptz,
    invoice_count bigint,
    invoice_count_by_status jsonb,
    invoiced_amount_usd numeric,
    paid_amount_usd numeric,
    balance_usd numeric,
    first_invoice_date date,
    last_invoice_date date
)
"""

DRIVERS_DDL = """
create table marts.fct_organization_daily_drivers (
    organization_id bigint not null,
    balance_date date not null,
    driver_kind text not null,
    invoice_count bigint not null,
    invoiced_amount_usd numeric,
    paid_amount_usd numeric,
    balance_change_usd numeric not null,
    top_invoices jsonb not null
)
"""

ROUTES_DDL = """
create table marts.dim_alert_routes (
    priority integer not null,
    route_name text not null,
    organization_id bigint,
    legal_entity_country_code bigint,
    min_balance_usd numeric,
    max_balance_usd numeric,
    webhook_env text not null,
    sink text not null,
    mention text,
    is_default boolean
)
"""

# the alert_routing seed as shipped: every alert to SLACK_WEBHOOK_URL (or stdout when unset)
DEFAULT_ROUTE = (
    "insert into marts.dim_alert_routes "
    "values (100, 'default', null, null, null, null, 'SLACK_WEBHOOK_URL', 'slack', null, true)"
)

# what dbt's grants give the alerter (dbt/dbt_project.yml): no default privilege lets it read a marts table
ALERTER_READS = (
    "marts.fct_organization_daily_financials, marts.dim_organizations, marts.fct_organization_daily_drivers, "
    "marts.dim_alert_routes"
)
GRANT_TO_THE_ALERTER = "grant select on {} to alerter"

PROXY_VARIABLES = ("http_proxy", "https_proxy")

DAY = [date(2024, 3, 1) + timedelta(days=i) for i in range(6)]  # DAY[0] .. DAY[5]


# --- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def warehouse(make_database) -> Database:
    database = make_database()
    with database.connect("transformer", autocommit=True) as conn:
        conn.execute(FACT_DDL)
        conn.execute(DIM_DDL)
        conn.execute(DRIVERS_DDL)
        conn.execute(ROUTES_DDL)
        conn.execute(GRANT_TO_THE_ALERTER.format(ALERTER_READS))
    return database


@pytest.fixture
def db(warehouse: Database) -> Database:
    """The module's database with empty marts tables and no alert state."""
    with warehouse.connect("transformer", autocommit=True) as conn:
        conn.execute(
            "truncate marts.fct_organization_daily_financials, marts.dim_organizations, "
            "marts.fct_organization_daily_drivers, marts.dim_alert_routes"
        )
        conn.execute(DEFAULT_ROUTE)
    with warehouse.connect("alerter", autocommit=True) as conn:
        conn.execute("drop table if exists ops.alert_history, ops.alert_watermark")
    return warehouse


@pytest.fixture
def slack():
    with SlackStub() as stub:
        yield stub


def add_moves(db: Database, *moves: tuple[int, date, str, str]) -> None:
    """Fact rows from (organization_id, day, previous balance, balance), derived columns as dbt does."""
    rows = []
    for organization_id, day, previous_text, balance_text in moves:
        previous, balance = Decimal(previous_text), Decimal(balance_text)
        change = balance - previous
        ratio = change / abs(previous) if previous != 0 else None
        invoiced, paid = max(change, 0), max(-change, 0)
        rows.append((organization_id, day, 1, invoiced, paid, change, balance, previous, ratio))
    with db.connect("transformer") as conn, conn.cursor() as cur:
        cur.executemany(
            "insert into marts.fct_organization_daily_financials values (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            rows,
        )


def add_organization(
    db: Database,
    organization_id: int,
    *,
    missing: bool = False,
    contracts: int | None = 3,
    first: date | None = date(2023, 1, 2),
    last: date | None = date(2024, 2, 28),
) -> None:
    with db.connect("transformer") as conn:
        conn.execute(
            """
            insert into marts.dim_organizations (
                organization_id, is_missing_from_organizations_file,
                first_payment_date, last_payment_date, count_total_contracts_active
            ) values (%s, %s, %s, %s, %s)
            """,
            (organization_id, missing, None if missing else first, None if missing else last, contracts),
        )


def alerter_env(db: Database, webhook: str | None = None, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in db.env("alerter").items()
        # no proxy: slack-sdk would send even 127.0.0.1 through one (it ignores NO_PROXY)
        if not k.startswith(("ALERT_", "SLACK_")) and k.lower() not in PROXY_VARIABLES
    }
    # small HTTP budgets keep the suite fast; the behaviour is the same with the defaults
    env.update(
        ALERT_HTTP_TIMEOUT="2", ALERT_HTTP_RETRIES="2", ALERT_HTTP_BACKOFF="0.01", ALERT_LOCK_TIMEOUT="20"
    )
    # the tests of the ratio rule, state and delivery use small amounts and few messages: no USD floor,
    # no pacing (test_alerts_noise.py and test_alerts_routing.py test those with their defaults)
    env.update(ALERT_MIN_CHANGE_USD="0", ALERT_SLACK_MIN_INTERVAL="0")
    if webhook:
        env["SLACK_WEBHOOK_URL"] = webhook
    env.update(extra)
    return env


def command(*args: str) -> list[str]:
    return [sys.executable, str(PROJECT_ROOT / "alert_script.py"), *args]


def run_alerts(
    db: Database, *args: str, webhook: str | None = None, **extra: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(*args),
        cwd=PROJECT_ROOT,
        env=alerter_env(db, webhook, **extra),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def run_inline(monkeypatch, capsys):
    """Like run_alerts, but cli.main() in this process (environment patched, output captured)."""

    def run(
        db: Database, *args: str, webhook: str | None = None, **extra: str
    ) -> subprocess.CompletedProcess:
        ours = ("PG", "ALERT_", "SLACK_")
        for key in [key for key in os.environ if key.startswith(ours) or key.lower() in PROXY_VARIABLES]:
            monkeypatch.delenv(key)
        for key, value in alerter_env(db, webhook, **extra).items():
            if key.startswith(ours):
                monkeypatch.setenv(key, value)
        capsys.readouterr()
        try:
            code = cli.main(list(args))
        except SystemExit as error:  # argparse usage errors
            code = error.code
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, captured.out, captured.err)

    return run


def history(db: Database, destination: str | None = None) -> dict[tuple[int, date], tuple[str, int]]:
    """(status, attempts) per organization-day, for one destination (the only one, by default)."""
    rows = db.query(
        "select destination, organization_id, balance_date, status, attempts from ops.alert_history"
    )
    if destination is None:
        assert len({row[0] for row in rows}) <= 1, "rows for several destinations: name one"
    return {
        (org, day): (status, attempts)
        for dest, org, day, status, attempts in rows
        if dest == destination or destination is None
    }


def execute(db: Database, statement: str, params=None, role: str = "admin") -> None:
    with db.connect(role, autocommit=True) as conn:
        conn.execute(statement, params)


def watermark(db: Database, destination: str | None = None) -> date | None:
    rows = db.query("select destination, last_processed_date from ops.alert_watermark")
    if destination is None:
        assert len(rows) <= 1, "watermarks for several destinations: name one"
    found = [day for dest, day in rows if dest == destination or destination is None]
    return found[0] if found else None


def ops_tables(db: Database) -> set[str]:
    return {r[0] for r in db.query("select tablename from pg_tables where schemaname = 'ops'")}


def alert_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith(("[balance alert]", "[new balance]"))]


def organizations_in(bodies: list[dict]) -> list[int]:
    """Organization ids of the Slack messages, from their header block."""
    ids = []
    for body in bodies:
        header = body["blocks"][0]["text"]["text"]
        ids.append(int(re.fullmatch(r"Balance alert: organization (\d+)", header).group(1)))
    return sorted(ids)


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text
        assert "/services/T0STUB" not in text


# --- the rule ------------------------------------------------------------------------------------


def test_threshold_boundary_directions_and_negative_balances(db):
    add_moves(
        db,
        (1, DAY[1], "1000", "1500"),  # +50.00%: exactly the threshold, alerts
        (2, DAY[1], "1000", "1499.90"),  # +49.99%: just under, silent
        (3, DAY[1], "1000", "500"),  # -50.00%: decreases alert too
        (4, DAY[1], "1000", "500.10"),  # -49.99%: silent
        (5, DAY[1], "-1000", "-1500"),  # negative balance, 50% further down
        (6, DAY[1], "-1000", "-600"),  # negative balance, 40% back up: silent
        (7, DAY[1], "-200", "300"),  # crosses zero: +250%
        (8, DAY[1], "0", "250"),  # from zero: no ratio, counted not alerted
        (9, DAY[1], "0", "0"),  # nothing moved: neither alerted nor counted
    )
    result = run_alerts(db)

    assert result.returncode == 0, result.stderr
    lines = alert_lines(result.stdout)
    assert [int(re.search(r"organization (\d+)", line).group(1)) for line in lines] == [1, 3, 5, 7]
    assert "organization 1: $1,000.00 -> $1,500.00 (+50.00%)" in lines[0]
    assert "organization 3: $1,000.00 -> $500.00 (-50.00%)" in lines[1]
    assert "organization 5: -$1,000.00 -> -$1,500.00 (-50.00%)" in lines[2]
    assert "organization 7: -$200.00 -> $300.00 (+250.00%)" in lines[3]
    assert result.stdout.splitlines()[-1] == (
        "Summary: 1 day processed (2024-03-02), 4 alerts sent, 0 failed, "
        "1 skipped-from-zero (--include-from-zero alerts them); watermark 2024-03-02."
    )


def test_custom_threshold(db, run_inline):
    add_moves(db, (1, DAY[1], "1000", "1300"), (2, DAY[1], "1000", "1250"))
    result = run_inline(db, "--threshold", "0.3")
    assert result.returncode == 0, result.stderr
    assert [line.split(":")[0] for line in alert_lines(result.stdout)] == [
        "[balance alert] 2024-03-02 organization 1"
    ]


def test_moves_from_zero_alert_only_with_include_from_zero(db, run_inline):
    add_moves(db, (1, DAY[0], "0", "250"), (2, DAY[0], "0", "0"), (3, DAY[0], "100", "400"))

    result = run_inline(db, "--include-from-zero")

    assert result.returncode == 0, result.stderr
    assert alert_lines(result.stdout) == [
        "[new balance] 2024-03-01 organization 1: $0.00 -> $250.00 (new balance), warning; "
        "not in dim_organizations",
        "[balance alert] 2024-03-01 organization 3: $100.00 -> $400.00 (+300.00%), critical; "
        "not in dim_organizations",
    ]
    assert "0 skipped-from-zero" in result.stdout
    assert history(db) == {(1, DAY[0]): ("sent", 1), (3, DAY[0]): ("sent", 1)}


# --- which days ----------------------------------------------------------------------------------


def test_first_run_latest_day_then_nothing_then_only_new_days(db, slack):
    add_moves(db, *[(1, day, "100", "200") for day in DAY[:3]])

    first = run_alerts(db, webhook=slack.url)
    assert first.returncode == 0, first.stderr
    assert history(db) == {(1, DAY[2]): ("sent", 1)}  # not all of history
    assert watermark(db) == DAY[2]
    assert "1 day processed (2024-03-03), 1 alert sent" in first.stdout

    again = run_alerts(db, webhook=slack.url)
    assert again.returncode == 0, again.stderr
    assert "0 days processed, 0 alerts sent" in again.stdout
    assert len(slack.requests) == 1

    add_moves(db, (1, DAY[3], "200", "400"), (2, DAY[3], "10", "10"), (1, DAY[4], "400", "100"))
    later = run_alerts(db, webhook=slack.url)
    assert later.returncode == 0, later.stderr
    assert "2 days processed (2024-03-04..2024-03-05), 2 alerts sent" in later.stdout
    assert set(history(db)) == {(1, DAY[2]), (1, DAY[3]), (1, DAY[4])}
    assert watermark(db) == DAY[4]
    # one message per organization: both new days of organization 1 together
    assert len(slack.requests) == 2
    assert "2024-03-04" in slack.requests[1].body["text"] and "2024-03-05" in slack.requests[1].body["text"]


def test_date_and_since(db, run_inline):
    add_moves(db, *[(1, day, "100", "200") for day in DAY[:5]])

    one_day = run_inline(db, "--date", "2024-03-02")
    assert one_day.returncode == 0, one_day.stderr
    assert set(history(db)) == {(1, DAY[1])}
    assert watermark(db) is None  # an old day on its own must not set where the next run starts

    backfill = run_inline(db, "--since", "2024-03-03")
    assert backfill.returncode == 0, backfill.stderr
    assert "3 days processed (2024-03-03..2024-03-05), 3 alerts sent" in backfill.stdout
    assert set(history(db)) == {(1, day) for day in DAY[1:5]}
    assert watermark(db) == DAY[4]

    repeat = run_inline(db, "--date", "2024-03-02")
    assert repeat.returncode == 0, repeat.stderr
    assert alert_lines(repeat.stdout) == []  # already sent: never again
    assert "1 day processed (2024-03-02), 0 alerts sent" in repeat.stdout
    assert watermark(db) == DAY[4]  # never backwards

    state = (history(db), watermark(db))
    not_a_date = run_inline(db, "--date", "2024-03-32")  # argparse
    assert not_a_date.returncode == 2
    assert not_a_date.stderr.endswith(
        "alert_script.py: error: argument --date: expected a date as YYYY-MM-DD, got '2024-03-32'\n"
    )
    conflicting = run_inline(db, "--date", "2024-03-02", "--since", "2024-03-01")
    assert conflicting.returncode == 2
    assert "argument --since: not allowed with argument --date" in conflicting.stderr
    assert not_a_date.stdout == conflicting.stdout == ""
    assert (history(db), watermark(db)) == state


# --- delivery ------------------------------------------------------------------------------------


def test_slack_message_content_one_per_organization(db, slack, run_inline):
    add_organization(db, 1, contracts=12)
    add_organization(db, 2, missing=True, contracts=None)
    add_moves(db, (1, DAY[0], "1234567.891", "2469135.78"), (2, DAY[0], "-5000", "-1000"))

    result = run_inline(db, webhook=slack.url)

    assert result.returncode == 0, result.stderr
    assert organizations_in(slack.delivered) == [1, 2]
    first, second = slack.delivered
    assert first["text"] == (
        "Balance alert for organization 1: 2024-03-01 $1,234,567.89 -> $2,469,135.78 (+99.99%), critical. "
        "12 active contracts, first payment 2023-01-02, last payment 2024-02-28."
    )
    assert [block["type"] for block in first["blocks"]] == ["header", "section", "context"]
    assert "$1,234,567.89 → $2,469,135.78" in first["blocks"][1]["text"]["text"]
    assert "*+99.99%*" in first["blocks"][1]["text"]["text"]
    assert "-$5,000.00 -> -$1,000.00 (+80.00%)" in second["text"]
    assert second["blocks"][2]["elements"][0]["text"] == ":warning: missing from organizations.csv"
    assert alert_lines(result.stdout) == []  # Slack replaces the console lines


def test_a_backfill_sends_each_organization_one_message_for_all_its_days(db, slack):
    # the alerts go out by organization, not by day: days interleaved with another organization's
    # still make one message
    add_moves(db, *[(org, day, "100", "300") for day in DAY[:2] for org in (1, 2)])

    result = run_alerts(db, "--since", DAY[0].isoformat(), webhook=slack.url)

    assert result.returncode == 0, result.stderr
    assert organizations_in(slack.delivered) == [1, 2]
    assert all("2024-03-01" in body["text"] and "2024-03-02" in body["text"] for body in slack.delivered)


def test_console_lines_without_webhook(db):
    add_organization(db, 1)
    add_organization(db, 2, missing=True)
    add_moves(db, (1, DAY[0], "1000", "2500.5"), (2, DAY[0], "800", "100"))

    result = run_alerts(db)

    assert result.returncode == 0, result.stderr
    assert alert_lines(result.stdout) == [
        "[balance alert] 2024-03-01 organization 1: $1,000.00 -> $2,500.50 (+150.05%), critical; "
        "3 active contracts, first payment 2023-01-02, last payment 2024-02-28",
        "[balance alert] 2024-03-01 organization 2: $800.00 -> $100.00 (-87.50%), warning; "
        "missing from organizations.csv",
    ]
    rows = db.query("select destination, status from ops.alert_history")
    assert rows == [("console", "sent"), ("console", "sent")]


def test_rate_limited_then_ok_is_delivered_once(db, slack):
    add_moves(db, (1, DAY[0], "100", "300"))
    slack.answer(rate_limited(retry_after=1))

    result = run_alerts(db, webhook=slack.url)

    assert result.returncode == 0, result.stderr
    assert [r.status for r in slack.requests] == [429, 200]
    assert slack.requests[1].at - slack.requests[0].at >= 1.0  # Retry-After honoured
    assert organizations_in(slack.delivered) == [1]
    assert history(db) == {(1, DAY[0]): ("sent", 1)}


def test_down_server_fails_then_next_run_delivers_without_duplicates(db, slack):
    add_moves(db, (1, DAY[0], "100", "300"), (2, DAY[0], "100", "10"), (3, DAY[0], "100", "50"))
    slack.always(server_error(500))

    failed = run_alerts(db, webhook=slack.url)

    assert failed.returncode == 1
    # organization 1 tried 1 + 2 retries; the others are left for the next run once Slack is down
    assert "0 alerts sent, 3 failed (2 not attempted once their webhook had failed)," in failed.stdout
    assert [r.status for r in slack.requests] == [500, 500, 500]
    assert history(db) == {(1, DAY[0]): ("failed", 1), (2, DAY[0]): ("failed", 0), (3, DAY[0]): ("failed", 0)}
    errors = [r[0] for r in db.query("select last_error from ops.alert_history order by organization_id")]
    assert errors[0] == "HTTP 500: internal_error"
    not_attempted = "not attempted: the SLACK_WEBHOOK_URL webhook failed earlier in the run"
    assert errors[1] == f"{not_attempted} (HTTP 500: internal_error)"
    # the watermark moved past the day: failed alerts come back from the history, not the watermark
    assert watermark(db) == DAY[0]

    slack.answer(server_error(503), then=OK)
    recovered = run_alerts(db, webhook=slack.url)

    assert recovered.returncode == 0, recovered.stderr
    assert "0 days processed, 3 alerts sent (1 retried from earlier runs), 0 failed" in recovered.stdout
    assert organizations_in(slack.delivered) == [1, 2, 3]
    assert {status for status, _ in history(db).values()} == {"sent"}
    # delivered: the error of the failed attempt is no longer what the row says
    assert db.query("select last_error from ops.alert_history") == [(None,)] * 3

    third = run_alerts(db, webhook=slack.url)
    assert third.returncode == 0 and "0 alerts sent" in third.stdout
    assert organizations_in(slack.delivered) == [1, 2, 3]  # no duplicates
    assert_no_secret(failed.stdout, failed.stderr, recovered.stdout, recovered.stderr, *errors)


@pytest.mark.parametrize(
    ("status", "body"),
    [(404, "no_service"), (410, "channel_is_archived"), (403, "invalid_token"), (401, "Unauthorized")],
)
def test_a_revoked_webhook_is_asked_once_a_run_and_said_so_and_a_working_one_gets_every_alert(
    db, slack, status, body
):
    """A webhook revoked, or whose channel was archived, refuses every message: each alert was posted, and
    refused, every run, and nothing said what to do."""
    add_moves(db, (1, DAY[0], "100", "300"), (2, DAY[0], "100", "10"), (3, DAY[0], "100", "50"))
    slack.always(Reply(status, body))

    refused = run_alerts(db, webhook=slack.url)

    assert refused.returncode == 1
    assert [r.status for r in slack.requests] == [status]
    assert history(db) == {(1, DAY[0]): ("failed", 1), (2, DAY[0]): ("failed", 0), (3, DAY[0]): ("failed", 0)}
    said = (
        f"the SLACK_WEBHOOK_URL webhook answered HTTP {status}: {body}, which Slack gives every message to a "
        "webhook that was revoked, whose channel was archived or whose workspace restricts it: this run sent "
        "it no more, its alerts wait in ops.alert_history, and the next run tries once more (set "
        "SLACK_WEBHOOK_URL to a working webhook if it was revoked)."
    )
    assert said in refused.stdout
    # beside the failure the pipeline and a Dagster step quote
    assert f"alert_script.py: {said}" in refused.stderr.splitlines()

    slack.always(OK)  # a working webhook in its place
    delivered = run_alerts(db, webhook=slack.url)
    assert delivered.returncode == 0, delivered.stderr
    assert organizations_in(slack.delivered) == [1, 2, 3]
    assert "webhook answered" not in delivered.stdout


def rebuild_day(db: Database, day: date, balance: object, ratio: object) -> None:
    """A rebuild (a rules change, or its undo) that moves the fact's balance on `day`."""
    execute(
        db,
        "update marts.fct_organization_daily_financials set balance_usd = %s, balance_change_ratio = %s"
        " where balance_date = %s",
        (balance, ratio, day),
    )


def supersede_an_undelivered_alert(
    db: Database, slack, day: date, balance: object, ratio: object, **failing: str
) -> None:
    """The day's alert cannot be delivered; then a rebuild moves the day to `balance`, which does not
    alert, and the next run supersedes the alert."""
    slack.always(server_error(500))
    assert run_alerts(db, webhook=slack.url, ALERT_HTTP_RETRIES="0", **failing).returncode == 1
    rebuild_day(db, day, balance, ratio)
    slack.always(OK)
    assert run_alerts(db, webhook=slack.url).returncode == 0


def test_a_waiting_alert_whose_day_was_rebuilt_is_sent_as_the_fact_is_now_or_superseded(db, slack):
    # the drivers come from the marts as they are now: sending the recorded numbers with them would
    # explain a -$2,000 move with a -$500 payment
    add_moves(db, (1, DAY[0], "3000", "1000"), (2, DAY[0], "100", "300"), (3, DAY[0], "100", "10"))
    slack.always(server_error(500))
    assert run_alerts(db, webhook=slack.url, ALERT_HTTP_RETRIES="0").returncode == 1
    # a rebuild (a rule change) before the retry: organization 1 now moved 3000 -> 2500 (no alert),
    # organization 2 100 -> 400 (still an alert, other numbers); organization 3 is unchanged
    execute(db, "delete from marts.fct_organization_daily_financials where organization_id in (1, 2)")
    add_moves(db, (1, DAY[0], "3000", "2500"), (2, DAY[0], "100", "400"))
    slack.always(OK)

    retry = run_alerts(db, webhook=slack.url)

    assert retry.returncode == 0, retry.stderr
    # organization 1's failure left 2 and 3 unattempted: sent for the first time
    assert "2 alerts sent, 0 failed" in retry.stdout
    assert "1 waiting alert superseded: the fact changed since they were recorded" in retry.stdout
    assert organizations_in(slack.delivered) == [2, 3]
    texts = {body["text"].split(":")[0]: body["text"] for body in slack.delivered}
    assert "$100.00 -> $400.00 (+300.00%)" in texts["Balance alert for organization 2"]
    assert "$100.00 -> $10.00 (-90.00%)" in texts["Balance alert for organization 3"]
    assert history(db) == {(1, DAY[0]): ("superseded", 1), (2, DAY[0]): ("sent", 1), (3, DAY[0]): ("sent", 1)}
    stored = db.query("select organization_id, balance_usd from ops.alert_history order by 1")
    assert stored == [(1, Decimal("1000")), (2, Decimal("400")), (3, Decimal("10"))]
    assert run_alerts(db, webhook=slack.url).returncode == 0
    assert organizations_in(slack.delivered) == [2, 3]


def test_a_rebuilt_waiting_new_balance_is_judged_by_this_runs_include_from_zero(db, slack):
    # a rebuilt day is judged as a new alert of that day would be: without --include-from-zero, a move
    # from zero does not alert, so the waiting new balance, its numbers changed, is superseded
    add_moves(db, (1, DAY[0], "0", "250"))
    slack.always(server_error(500))
    assert run_alerts(db, "--include-from-zero", webhook=slack.url, ALERT_HTTP_RETRIES="0").returncode == 1
    execute(db, "update marts.fct_organization_daily_financials set balance_usd = 400")
    slack.always(OK)

    retry = run_alerts(db, webhook=slack.url)

    assert retry.returncode == 0, retry.stderr
    assert "1 waiting alert superseded" in retry.stdout
    assert slack.delivered == []
    assert history(db) == {(1, DAY[0]): ("superseded", 1)}


def test_a_waiting_alert_whose_day_left_the_fact_is_superseded(db, slack):
    # a rebuild drops the waiting alert's row (its organization's data corrected away): no move to send
    add_moves(db, (1, DAY[0], "100", "300"), (2, DAY[0], "100", "105"))
    slack.always(server_error(500))
    assert run_alerts(db, webhook=slack.url, ALERT_HTTP_RETRIES="0").returncode == 1
    execute(db, "delete from marts.fct_organization_daily_financials where organization_id = 1")
    slack.always(OK)

    retry = run_alerts(db, webhook=slack.url)

    assert retry.returncode == 0, retry.stderr
    assert "1 waiting alert superseded" in retry.stdout
    assert history(db) == {(1, DAY[0]): ("superseded", 1)} and slack.delivered == []


def test_a_dry_run_says_a_waiting_alert_would_be_superseded(db, slack):
    add_moves(db, (1, DAY[0], "100", "300"))
    slack.always(server_error(500))
    assert run_alerts(db, webhook=slack.url, ALERT_HTTP_RETRIES="0").returncode == 1
    rebuild_day(db, DAY[0], 110, 0.1)  # the day no longer alerts

    dry = run_alerts(db, "--dry-run", webhook=slack.url)

    assert dry.returncode == 0, dry.stderr
    assert "1 waiting alert would be superseded: the fact changed" in dry.stdout
    assert "ops.alert_history" not in dry.stdout  # the row is still 'failed' there
    assert history(db) == {(1, DAY[0]): ("failed", 1)}


def test_a_superseded_waiting_alert_does_not_hold_back_the_alert_that_replaces_it(db, slack):
    # a rebuild moved the move to the next day (a payment date corrected): the waiting alert of the old
    # day is superseded, and must not first suppress the new day's alert through --suppress-days
    add_moves(db, (1, DAY[0], "100", "300"))
    slack.always(server_error(500))
    assert run_alerts(db, webhook=slack.url, ALERT_HTTP_RETRIES="0", ALERT_SUPPRESS_DAYS="3").returncode == 1
    execute(db, "delete from marts.fct_organization_daily_financials")
    add_moves(db, (1, DAY[0], "100", "100"), (1, DAY[1], "100", "300"))
    slack.always(OK)

    retry = run_alerts(db, webhook=slack.url, ALERT_SUPPRESS_DAYS="3")

    assert retry.returncode == 0, retry.stderr
    assert organizations_in(slack.delivered) == [1]
    assert "2024-03-02 $100.00 -> $300.00" in slack.delivered[0]["text"]
    assert history(db) == {(1, DAY[0]): ("superseded", 1), (1, DAY[1]): ("sent", 1)}


def test_only_the_alerts_attempted_again_count_as_retried(db, slack):
    # both were refused (HTTP 400) by the first run; the second run's webhook is down after the first
    # message: the other is not attempted, so it is not counted as retried
    add_moves(db, (1, DAY[0], "100", "300"), (2, DAY[0], "100", "300"))
    slack.always(Reply(400, "invalid_payload"))
    assert run_alerts(db, webhook=slack.url).returncode == 1
    slack.always(server_error(500))

    again = run_alerts(db, webhook=slack.url, ALERT_HTTP_RETRIES="0")

    assert again.returncode == 1
    assert "0 alerts sent (1 retried from earlier runs), 2 failed (1 not attempted once" in again.stdout
    assert history(db) == {(1, DAY[0]): ("failed", 2), (2, DAY[0]): ("failed", 1)}


def test_an_alert_held_back_by_one_since_superseded_is_judged_again_and_sent(db, slack):
    # DAY[1]'s alert was suppressed by DAY[0]'s, which waited; a rebuild supersedes DAY[0]'s: it holds
    # back nothing now, and DAY[1]'s move, which still alerts, must be sent with the day's numbers
    add_moves(db, (1, DAY[0], "100", "300"))
    slack.always(server_error(500))
    assert run_alerts(db, webhook=slack.url, ALERT_HTTP_RETRIES="0", ALERT_SUPPRESS_DAYS="3").returncode == 1
    add_moves(db, (1, DAY[1], "300", "900"))
    assert run_alerts(db, webhook=slack.url, ALERT_HTTP_RETRIES="0", ALERT_SUPPRESS_DAYS="3").returncode == 1
    assert history(db)[(1, DAY[1])] == ("suppressed", 0)
    execute(db, "delete from marts.fct_organization_daily_financials")
    add_moves(db, (1, DAY[0], "100", "100"), (1, DAY[1], "100", "300"))
    slack.always(OK)

    retry = run_alerts(db, webhook=slack.url, ALERT_SUPPRESS_DAYS="3")

    assert retry.returncode == 0, retry.stderr
    assert organizations_in(slack.delivered) == [1]
    assert "2024-03-02 $100.00 -> $300.00" in slack.delivered[0]["text"]
    assert history(db) == {(1, DAY[0]): ("superseded", 2), (1, DAY[1]): ("sent", 1)}
    assert (
        "1 alert suppressed (--suppress-days) that nothing holds back any more judged again" in retry.stdout
    )


@pytest.mark.parametrize("suppress_days", ["3", "0"], ids=["same window", "no suppression now"])
def test_an_alert_still_held_back_by_another_stays_suppressed_when_one_holder_is_superseded(
    db, slack, suppress_days
):
    # DAY[0]'s alert was sent and DAY[1]'s waits; DAY[2]'s was held back by both, within 3 days. DAY[1]'s
    # is superseded: DAY[0]'s still holds DAY[2]'s back in the window it was held back under, whatever
    # the later run's --suppress-days, so it stays suppressed
    add_moves(db, (1, DAY[0], "100", "300"))
    assert run_alerts(db, webhook=slack.url).returncode == 0
    add_moves(db, (1, DAY[1], "300", "900"))
    slack.always(server_error(500))
    assert run_alerts(db, webhook=slack.url, ALERT_HTTP_RETRIES="0").returncode == 1
    add_moves(db, (1, DAY[2], "900", "2700"))
    assert run_alerts(db, webhook=slack.url, ALERT_HTTP_RETRIES="0", ALERT_SUPPRESS_DAYS="3").returncode == 1
    execute(db, f"delete from marts.fct_organization_daily_financials where balance_date > '{DAY[0]}'")
    add_moves(db, (1, DAY[1], "300", "300"), (1, DAY[2], "300", "900"))
    slack.always(OK)

    retry = run_alerts(db, webhook=slack.url, ALERT_SUPPRESS_DAYS=suppress_days)

    assert retry.returncode == 0, retry.stderr
    assert organizations_in(slack.delivered) == [1]  # DAY[0]'s, sent before
    assert "suppressed" not in retry.stdout and "judged again" not in retry.stdout
    assert history(db) == {
        (1, DAY[0]): ("sent", 1),
        (1, DAY[1]): ("superseded", 2),
        (1, DAY[2]): ("suppressed", 0),
    }


@pytest.mark.parametrize(
    ("first", "second_run_suppress_days"),
    [
        # a warning sent exactly --suppress-days (2) before: the first day of the window still holds
        ("16000", "2"),
        # a critical sent: it holds a later warning back (a higher severity), not only a critical; the
        # second day's alert, run without suppression, waits beside it
        ("30000", "0"),
    ],
    ids=["holder on the window's first day", "critical holder of a warning"],
)
def test_a_held_back_alert_stays_suppressed_while_a_holder_is_left_when_another_is_superseded(
    db, slack, first, second_run_suppress_days
):
    add_moves(db, (1, DAY[0], "10000", first))
    assert run_alerts(db, webhook=slack.url).returncode == 0
    slack.always(server_error(500))
    add_moves(db, (1, DAY[1], first, "100000"))  # critical, waiting
    failing = {"webhook": slack.url, "ALERT_HTTP_RETRIES": "0"}
    assert run_alerts(db, **failing, ALERT_SUPPRESS_DAYS=second_run_suppress_days).returncode == 1
    add_moves(db, (1, DAY[2], "100000", "160000"))  # a warning, held back by both
    assert run_alerts(db, **failing, ALERT_SUPPRESS_DAYS="2").returncode == 1
    assert history(db)[(1, DAY[2])] == ("suppressed", 0)
    # a rebuild: DAY[1] no longer moves, DAY[2] still moves as a warning
    execute(db, f"delete from marts.fct_organization_daily_financials where balance_date > '{DAY[0]}'")
    add_moves(db, (1, DAY[1], first, first), (1, DAY[2], first, str(Decimal(first) * Decimal("1.6"))))
    slack.always(OK)

    # judged in the window it was held back under, not by this run's (none): released, it would be sent
    retry = run_alerts(db, webhook=slack.url)

    assert retry.returncode == 0, retry.stderr
    assert organizations_in(slack.delivered) == [1]  # DAY[0]'s, sent before
    assert "judged again" not in retry.stdout
    assert history(db) == {
        (1, DAY[0]): ("sent", 1),
        (1, DAY[1]): ("superseded", 2),
        (1, DAY[2]): ("suppressed", 0),
    }


def test_a_held_back_warning_a_rebuild_makes_critical_is_sent_past_its_warning_holder(db, slack):
    # a sent warning holds back warnings only: when a rebuild grows the held-back day's move to a
    # critical one, nothing holds it back any more, and the critical move must go out
    add_moves(db, (1, DAY[0], "10000", "16000"))
    assert run_alerts(db, webhook=slack.url).returncode == 0
    add_moves(db, (1, DAY[1], "16000", "25600"))
    assert run_alerts(db, webhook=slack.url, ALERT_SUPPRESS_DAYS="3").returncode == 0
    assert history(db)[(1, DAY[1])] == ("suppressed", 0)
    rebuild_day(db, DAY[1], 40000, 1.5)
    dry = run_alerts(db, "--dry-run", webhook=slack.url, ALERT_SUPPRESS_DAYS="3")
    assert (
        "1 alert suppressed (--suppress-days) that nothing holds back any more would be judged again"
        in dry.stdout
    )
    assert history(db)[(1, DAY[1])] == ("suppressed", 0) and len(slack.delivered) == 1

    rerun = run_alerts(db, webhook=slack.url, ALERT_SUPPRESS_DAYS="3")

    assert rerun.returncode == 0, rerun.stderr
    assert organizations_in(slack.delivered) == [1, 1]
    assert "2024-03-02 $16,000.00 -> $40,000.00 (+150.00%)" in slack.delivered[1]["text"]
    assert history(db) == {(1, DAY[0]): ("sent", 1), (1, DAY[1]): ("sent", 1)}
    assert db.query(f"select severity from ops.alert_history where balance_date = '{DAY[1]}'") == [
        ("critical",)
    ]
    assert (
        "1 alert suppressed (--suppress-days) that nothing holds back any more judged again" in rerun.stdout
    )
    # judged once: the next run has nothing more to say
    again = run_alerts(db, webhook=slack.url, ALERT_SUPPRESS_DAYS="3")
    assert "judged again" not in again.stdout and len(slack.delivered) == 2


def test_a_changed_severity_setting_alone_releases_no_held_back_alert(db, slack):
    # the sent holder keeps the severity it was sent with, so the held-back day keeps its own: rated again
    # by a lower --critical-threshold, it would pass its warning holder as a critical, on every old day
    add_moves(db, (1, DAY[0], "10000", "16000"))
    assert run_alerts(db, webhook=slack.url, ALERT_SUPPRESS_DAYS="3").returncode == 0
    add_moves(db, (1, DAY[1], "16000", "25600"))
    assert run_alerts(db, webhook=slack.url, ALERT_SUPPRESS_DAYS="3").returncode == 0

    rerun = run_alerts(db, webhook=slack.url, ALERT_SUPPRESS_DAYS="3", ALERT_CRITICAL_THRESHOLD="0.5")

    assert rerun.returncode == 0, rerun.stderr
    assert "judged again" not in rerun.stdout
    assert history(db) == {(1, DAY[0]): ("sent", 1), (1, DAY[1]): ("suppressed", 0)}
    assert len(slack.delivered) == 1


def test_an_alert_held_back_before_windows_were_kept_is_judged_in_the_widest_window(db, slack):
    # organization 1's holder waits, then is superseded: nothing holds its later day back any more, and the
    # move must go out; organization 2's holder was sent: it may still hold, so it stays held back
    add_moves(db, (2, DAY[0], "100", "300"))
    assert run_alerts(db, webhook=slack.url).returncode == 0
    add_moves(db, (1, DAY[1], "100", "300"))
    slack.always(server_error(500))
    failing = {"webhook": slack.url, "ALERT_HTTP_RETRIES": "0", "ALERT_SUPPRESS_DAYS": "3"}
    assert run_alerts(db, **failing).returncode == 1
    add_moves(db, (1, DAY[2], "300", "900"), (2, DAY[2], "300", "900"))
    assert run_alerts(db, **failing).returncode == 1
    assert history(db)[(1, DAY[2])] == history(db)[(2, DAY[2])] == ("suppressed", 0)
    # as an older release recorded them
    execute(db, "update ops.alert_history set suppress_days = null", role="alerter")
    rebuild_day(db, DAY[1], 110, 0.1)  # organization 1's holder no longer alerts
    slack.always(OK)

    rerun = run_alerts(db, webhook=slack.url)

    assert rerun.returncode == 0, rerun.stderr
    assert history(db) == {
        (1, DAY[1]): ("superseded", 2),
        (1, DAY[2]): ("sent", 1),
        (2, DAY[0]): ("sent", 1),
        (2, DAY[2]): ("suppressed", 0),
    }
    assert "2024-03-03 $300.00 -> $900.00" in slack.delivered[-1]["text"]


def test_a_held_back_critical_is_sent_when_a_rebuild_makes_its_waiting_holder_a_warning(db, slack):
    add_moves(db, (1, DAY[0], "10000", "30000"))  # critical, waiting
    slack.always(server_error(500))
    failing = {"webhook": slack.url, "ALERT_HTTP_RETRIES": "0", "ALERT_SUPPRESS_DAYS": "3"}
    assert run_alerts(db, **failing).returncode == 1
    add_moves(db, (1, DAY[1], "30000", "90000"))  # critical, held back by the waiting critical
    assert run_alerts(db, **failing).returncode == 1
    assert history(db)[(1, DAY[1])] == ("suppressed", 0)
    rebuild_day(db, DAY[0], 16000, 0.6)  # a warning now: it still waits, and holds back warnings only
    slack.always(OK)

    rerun = run_alerts(db, webhook=slack.url, ALERT_SUPPRESS_DAYS="3")

    assert rerun.returncode == 0, rerun.stderr
    assert "$10,000.00 -> $16,000.00 (+60.00%)" in slack.delivered[0]["text"]
    assert "$30,000.00 -> $90,000.00 (+200.00%)" in slack.delivered[0]["text"]
    assert history(db) == {(1, DAY[0]): ("sent", 3), (1, DAY[1]): ("sent", 1)}


def test_a_held_back_alert_whose_day_no_longer_alerts_stays_suppressed_when_its_holder_goes(db, slack):
    # a rebuild supersedes the waiting holder and flattens the held-back day too: nothing to send, so
    # the row keeps the status it was held back with, and no run says it was judged again
    add_moves(db, (1, DAY[0], "100", "300"))
    slack.always(server_error(500))
    failing = {"webhook": slack.url, "ALERT_HTTP_RETRIES": "0", "ALERT_SUPPRESS_DAYS": "3"}
    assert run_alerts(db, **failing).returncode == 1
    add_moves(db, (1, DAY[1], "300", "900"))
    assert run_alerts(db, **failing).returncode == 1
    execute(db, "delete from marts.fct_organization_daily_financials")
    add_moves(db, (1, DAY[0], "100", "100"), (1, DAY[1], "100", "105"))
    slack.always(OK)

    rerun = run_alerts(db, webhook=slack.url, ALERT_SUPPRESS_DAYS="3")

    assert rerun.returncode == 0, rerun.stderr
    assert "1 waiting alert superseded" in rerun.stdout and "judged again" not in rerun.stdout
    assert history(db) == {(1, DAY[0]): ("superseded", 2), (1, DAY[1]): ("suppressed", 0)}
    assert slack.delivered == []


def test_each_held_back_alert_is_judged_by_the_holders_of_its_own_window(db, slack):
    # DAY[1]'s alert is held back by DAY[0]'s, DAY[5]'s by DAY[4]'s: both holders sent. DAY[0] is before
    # DAY[5]'s window, but in DAY[1]'s: a later run must still find it, and send neither held-back day
    add_moves(
        db,
        (1, DAY[0], "100", "300"),
        (1, DAY[1], "300", "900"),
        (1, DAY[4], "900", "2700"),
        (1, DAY[5], "2700", "8100"),
    )
    suppressing = {"webhook": slack.url, "ALERT_SUPPRESS_DAYS": "3"}
    assert run_alerts(db, "--since", DAY[0].isoformat(), **suppressing).returncode == 0
    held = {(1, DAY[0]): ("sent", 1), (1, DAY[1]): ("suppressed", 0)}
    held |= {(1, DAY[4]): ("sent", 1), (1, DAY[5]): ("suppressed", 0)}
    assert history(db) == held

    rerun = run_alerts(db, **suppressing)

    assert rerun.returncode == 0, rerun.stderr
    assert "judged again" not in rerun.stdout
    assert history(db) == held
    assert len(slack.delivered) == 1  # the first run's one message for DAY[0] and DAY[4]


def test_an_alert_nothing_holds_back_in_its_window_is_held_back_again_under_the_runs_wider_one(db, slack):
    # DAY[3]'s alert was held back by DAY[2]'s, waiting, in a 1-day window; a rebuild supersedes DAY[2]'s.
    # In that window nothing holds DAY[3]'s back now: released, it is judged as a new alert, under this
    # run's 3 days, where DAY[0]'s sent alert holds it back again. Suppressed by an earlier run, it is not
    # this run's to count as suppressed, nor a reopened superseded alert
    add_moves(db, (1, DAY[0], "100", "300"))
    assert run_alerts(db, webhook=slack.url).returncode == 0
    slack.always(server_error(500))
    failing = {"webhook": slack.url, "ALERT_HTTP_RETRIES": "0", "ALERT_SUPPRESS_DAYS": "1"}
    add_moves(db, (1, DAY[2], "300", "900"))
    assert run_alerts(db, **failing).returncode == 1
    add_moves(db, (1, DAY[3], "900", "2700"))
    assert run_alerts(db, **failing).returncode == 1
    assert history(db)[(1, DAY[3])] == ("suppressed", 0)
    rebuild_day(db, DAY[2], 300, 0)  # DAY[2] no longer moves
    slack.always(OK)

    rerun = run_alerts(db, webhook=slack.url, ALERT_SUPPRESS_DAYS="3")

    assert rerun.returncode == 0, rerun.stderr
    assert (
        "1 alert suppressed (--suppress-days) that nothing holds back any more judged again" in rerun.stdout
    )
    assert "suppressed (--suppress-days;" not in rerun.stdout and "reopened" not in rerun.stdout
    assert history(db) == {
        (1, DAY[0]): ("sent", 1),
        (1, DAY[2]): ("superseded", 2),
        (1, DAY[3]): ("suppressed", 0),
    }
    assert db.query(f"select suppress_days from ops.alert_history where balance_date = '{DAY[3]}'") == [(3,)]
    assert len(slack.delivered) == 1


def test_a_held_back_alert_whose_day_left_the_fact_stays_suppressed(db, slack):
    # a rebuild drops the held-back day's row (its organization's data corrected away): nothing to judge
    add_moves(db, (1, DAY[0], "100", "300"))
    assert run_alerts(db, webhook=slack.url).returncode == 0
    add_moves(db, (1, DAY[1], "300", "900"))
    assert run_alerts(db, webhook=slack.url, ALERT_SUPPRESS_DAYS="3").returncode == 0
    execute(db, f"delete from marts.fct_organization_daily_financials where balance_date = '{DAY[1]}'")

    rerun = run_alerts(db, webhook=slack.url, ALERT_SUPPRESS_DAYS="3")

    assert rerun.returncode == 0, rerun.stderr
    assert "judged again" not in rerun.stdout
    assert history(db) == {(1, DAY[0]): ("sent", 1), (1, DAY[1]): ("suppressed", 0)}


def test_an_alert_held_back_by_one_given_up_later_is_sent_by_the_next_run(db, slack):
    # DAY[1]'s alert is held back by DAY[0]'s, still waiting; that run's attempt at DAY[0]'s goes
    # unanswered for the second time: given up, it holds back nothing, and DAY[1]'s move must go out
    add_moves(db, (1, DAY[0], "100", "300"))
    slack.always(hang(10))
    run_alerts(db, webhook=slack.url, ALERT_HTTP_TIMEOUT="0.3", ALERT_SUPPRESS_DAYS="3")
    add_moves(db, (1, DAY[1], "300", "900"))
    run_alerts(db, webhook=slack.url, ALERT_HTTP_TIMEOUT="0.3", ALERT_SUPPRESS_DAYS="3")
    # given up after the run judged what it holds back: the next run judges DAY[1]'s again
    assert history(db) == {(1, DAY[0]): ("unknown", 2), (1, DAY[1]): ("suppressed", 0)}
    slack.always(OK)

    later = run_alerts(db, webhook=slack.url, ALERT_SUPPRESS_DAYS="3")

    assert organizations_in(slack.delivered) == [1], later.stdout
    assert (
        "1 alert suppressed (--suppress-days) that nothing holds back any more judged again" in later.stdout
    )
    assert "2024-03-02 $300.00 -> $900.00" in slack.delivered[0]["text"]
    assert history(db) == {(1, DAY[0]): ("unknown", 2), (1, DAY[1]): ("sent", 1)}


def test_an_alert_given_up_on_holds_back_no_later_one(db, slack):
    # never confirmed, it may never have reached the channel: the next move is the only word of it
    add_moves(db, (1, DAY[0], "100", "300"))
    slack.always(hang(10))
    for _ in range(2):
        run_alerts(db, webhook=slack.url, ALERT_HTTP_TIMEOUT="0.3", ALERT_SUPPRESS_DAYS="3")
    assert history(db)[(1, DAY[0])] == ("unknown", 2)
    add_moves(db, (1, DAY[1], "300", "900"))
    slack.always(OK)

    later = run_alerts(db, webhook=slack.url, ALERT_SUPPRESS_DAYS="3")

    assert organizations_in(slack.delivered) == [1], later.stdout
    assert history(db)[(1, DAY[1])] == ("sent", 1)


def test_a_superseded_day_that_alerts_again_is_sent_by_the_next_plain_run(db, slack):
    # a rules change superseded the waiting alert, and undoing it makes its day alert again: the daily
    # run, which does not process that day again, must still send it, not leave it superseded for good
    # (first tried in a digest: the reopened row is no longer listed as that digest's)
    add_moves(db, (1, DAY[0], "100", "300"))
    supersede_an_undelivered_alert(db, slack, DAY[0], 110, 0.1, ALERT_DIGEST_OVER="0")
    assert db.query("select digest_id is not null from ops.alert_history") == [(True,)]
    assert history(db) == {(1, DAY[0]): ("superseded", 1)} and slack.delivered == []
    rebuild_day(db, DAY[0], 400, 3)
    dry = run_alerts(db, "--dry-run", webhook=slack.url)
    assert "1 superseded alert would be reopened: its day alerts again." in dry.stdout

    rerun = run_alerts(db, webhook=slack.url)

    assert rerun.returncode == 0, rerun.stderr
    assert "1 alert sent" in rerun.stdout
    assert "1 superseded alert reopened, to be sent as the fact is now" in rerun.stdout
    assert organizations_in(slack.delivered) == [1]
    assert "$100.00 -> $400.00 (+300.00%)" in slack.delivered[0]["text"]
    assert history(db) == {(1, DAY[0]): ("sent", 2)}
    assert db.query("select digest_id from ops.alert_history") == [(None,)]
    assert run_alerts(db, webhook=slack.url).returncode == 0
    assert organizations_in(slack.delivered) == [1]


def test_a_reopened_alert_is_held_back_by_suppress_days_as_a_new_one_would_be(db, slack):
    # the organization was alerted the day before: with --suppress-days, its next day's alert, reopened
    # after a rebuild, is suppressed as it would have been when first recorded, not sent
    add_moves(db, (1, DAY[0], "100", "300"))
    assert run_alerts(db, webhook=slack.url).returncode == 0
    add_moves(db, (1, DAY[1], "300", "900"))
    supersede_an_undelivered_alert(db, slack, DAY[1], 310, 0.0333)
    assert history(db)[(1, DAY[1])] == ("superseded", 1)
    rebuild_day(db, DAY[1], 900, 2)

    rerun = run_alerts(db, webhook=slack.url, ALERT_SUPPRESS_DAYS="3")

    assert rerun.returncode == 0, rerun.stderr
    assert history(db) == {(1, DAY[0]): ("sent", 1), (1, DAY[1]): ("suppressed", 1)}
    assert organizations_in(slack.delivered) == [1]  # the first day's, only
    # held back by this run: counted as this run's, and not said to be sent
    assert "1 suppressed (--suppress-days; recorded in ops.alert_history)" in rerun.stdout
    assert "reopened" not in rerun.stdout


def test_a_superseded_day_that_alerts_again_is_reopened_and_sent(db, slack):
    # superseded means never sent: when a corrected rebuild makes the day alert again, a run that
    # processes it (here --date) sends it, and its attempts still count toward the at-most-twice bound
    add_moves(db, (1, DAY[0], "100", "300"))
    supersede_an_undelivered_alert(db, slack, DAY[0], 110, 0.1)
    assert history(db) == {(1, DAY[0]): ("superseded", 1)} and slack.delivered == []
    rebuild_day(db, DAY[0], 300, 2)

    rerun = run_alerts(db, "--date", DAY[0].isoformat(), webhook=slack.url)

    assert rerun.returncode == 0, rerun.stderr
    assert "1 alert sent" in rerun.stdout
    assert organizations_in(slack.delivered) == [1]
    assert history(db) == {(1, DAY[0]): ("sent", 2)}
    stored = db.query("select balance_usd, last_error from ops.alert_history")
    assert stored == [(Decimal("300"), None)]


def test_hanging_server_times_out_then_the_next_run_delivers_each_once(db, slack):
    add_moves(db, (1, DAY[0], "100", "300"), (2, DAY[0], "100", "10"))
    slack.always(hang())  # the request is lost and no answer comes

    hung = run_alerts(db, webhook=slack.url, ALERT_HTTP_TIMEOUT="0.3", ALERT_HTTP_RETRIES="1")

    assert hung.returncode == 1
    # organization 1 once (no answer may mean accepted: never retried in the run); 2 not attempted
    assert len(slack.requests) == 1
    assert "no answer within 0.3 s (the message may have arrived)" in hung.stderr
    assert history(db) == {(1, DAY[0]): ("unknown", 1), (2, DAY[0]): ("failed", 0)}
    assert "1 alert got no answer from the SLACK_WEBHOOK_URL webhook and may have arrived" in hung.stdout
    assert slack.delivered == []

    slack.always(OK)
    retry = run_alerts(db, webhook=slack.url)

    assert retry.returncode == 0, retry.stderr
    assert "2 alerts sent (1 retried from earlier runs), 0 failed" in retry.stdout
    assert organizations_in(slack.delivered) == [1, 2]  # each arrived exactly once
    assert history(db) == {(1, DAY[0]): ("sent", 2), (2, DAY[0]): ("sent", 1)}
    assert run_alerts(db, webhook=slack.url).returncode == 0
    assert organizations_in(slack.delivered) == [1, 2]
    assert_no_secret(hung.stdout, hung.stderr, retry.stdout, retry.stderr)


def test_an_unanswered_alert_left_untried_after_a_failure_stays_unknown(db, slack):
    # `unknown` says the message may have arrived; a run that gives up on the webhook before trying it
    # again learned nothing new about it: it must not turn into `failed` (nothing accepted)
    add_moves(db, (1, DAY[0], "100", "300"), (2, DAY[0], "100", "10"))
    slack.answer(Reply(400, "invalid_payload"), then=hang())  # 1 refused, 2 lost without an answer
    first = run_alerts(db, webhook=slack.url, ALERT_HTTP_TIMEOUT="0.3")
    assert first.returncode == 1
    assert history(db) == {(1, DAY[0]): ("failed", 1), (2, DAY[0]): ("unknown", 1)}
    slack.always(server_error(500))

    down = run_alerts(db, webhook=slack.url, ALERT_HTTP_RETRIES="0")

    assert down.returncode == 1
    assert len(slack.requests) == 3  # organization 2 was not tried again
    assert history(db) == {(1, DAY[0]): ("failed", 2), (2, DAY[0]): ("unknown", 1)}
    error = db.query("select last_error from ops.alert_history where organization_id = 2")[0][0]
    assert error.startswith("not attempted: the SLACK_WEBHOOK_URL webhook failed earlier in the run")


def test_slow_slack_that_accepts_gets_a_message_at_most_twice(db, slack):
    add_moves(db, (1, DAY[0], "100", "300"))
    slack.always(slow())  # accepts every post, answers after the client gave up

    first = run_alerts(db, webhook=slack.url, ALERT_HTTP_TIMEOUT="0.3")
    assert first.returncode == 1
    assert len(slack.delivered) == 1  # not retried within the run
    assert history(db) == {(1, DAY[0]): ("unknown", 1)}

    second = run_alerts(db, webhook=slack.url, ALERT_HTTP_TIMEOUT="0.3")
    # the run that gives up says so with its own exit code: no later run exits non-zero for it
    assert second.returncode == 3, second.stderr
    assert "1 alert sent (1 retried" not in second.stdout
    assert len(slack.delivered) == 2  # retried once by a later run
    assert "1 alert never confirmed after 2 unanswered attempts: not sent again" in second.stdout
    # the same alert's "no answer" note does not promise another send
    assert (
        "1 alert got no answer from the SLACK_WEBHOOK_URL webhook and may have arrived: that was the last "
        "allowed attempt (below)." in second.stdout
    )
    assert "a later run sends it again" not in second.stdout
    assert "retried on the next run" not in second.stderr
    assert (
        "alert_script.py: 1 alert(s) never confirmed after 2 unanswered attempts: not sent again; check "
        "the channel" in second.stderr
    )

    slack.always(OK)
    third = run_alerts(db, webhook=slack.url)
    assert third.returncode == 0, third.stderr
    assert len(slack.requests) == 2  # never a third copy
    assert history(db) == {(1, DAY[0]): ("unknown", 2)}
    assert third.stdout.startswith("Summary: 0 days processed, 0 alerts sent, 0 failed")
    assert "1 alert never confirmed after 2 unanswered attempts" in third.stdout
    stored = db.query("select last_error, unanswered_attempts from ops.alert_history")
    assert stored == [("no answer within 0.3 s (the message may have arrived)", 2)]

    # it never arrived: what the message says to do sends it once more, and only it
    assert "to send one again, delete its row there, then run alert_script.py --since its day" in third.stdout
    db.query("delete from ops.alert_history where organization_id = 1 returning 1")
    resent = run_alerts(db, "--since", DAY[0].isoformat(), webhook=slack.url)
    assert resent.returncode == 0, resent.stderr
    assert len(slack.delivered) == 3
    assert history(db) == {(1, DAY[0]): ("sent", 1)}


def test_a_run_that_dies_during_an_alerts_last_attempt_leaves_exit_3_to_the_next_run(db, slack):
    # the give-up is counted before the request: a run stopped while it waits never reports it, and a
    # later run that only noted it would end green (Dagster's retry of a crashed step, for one)
    add_moves(db, (1, DAY[0], "100", "300"))
    slack.always(slow(5))
    assert run_alerts(db, webhook=slack.url, ALERT_HTTP_TIMEOUT="0.3").returncode == 1
    slack.always(hang(30))
    stopped = subprocess.Popen(
        command(),
        cwd=PROJECT_ROOT,
        env=alerter_env(db, slack.url, ALERT_HTTP_TIMEOUT="20"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    deadline = time.monotonic() + 30
    while len(slack.requests) < 2:  # the last allowed attempt is in flight
        assert time.monotonic() < deadline and stopped.poll() is None, "the second attempt was not sent"
        time.sleep(0.05)
    stopped.send_signal(signal.SIGINT)
    assert stopped.wait(timeout=30) == 130
    assert history(db) == {(1, DAY[0]): ("unknown", 2)}

    reported = run_alerts(db, webhook=slack.url)
    assert reported.returncode == 3, reported.stderr
    assert "1 alert(s) never confirmed after 2 unanswered attempts: not sent again" in reported.stderr
    assert len(slack.requests) == 2  # not sent a third time
    assert run_alerts(db, webhook=slack.url).returncode == 0  # reported once


def test_a_give_up_found_from_an_earlier_run_leaves_this_runs_undelivered_count_alone(db, slack):
    add_moves(db, (1, DAY[0], "100", "300"))
    slack.always(slow(5))
    assert run_alerts(db, webhook=slack.url, ALERT_HTTP_TIMEOUT="0.3").returncode == 1
    # what a run stopped during the alert's last attempt leaves (the test above)
    execute(db, "update ops.alert_history set status = 'unknown', attempts = 2, unanswered_attempts = 2")
    add_moves(db, (2, DAY[1], "100", "300"))
    slack.always(server_error(500))

    result = run_alerts(db, webhook=slack.url, ALERT_HTTP_RETRIES="0")

    assert result.returncode == 3, result.stderr
    assert "alert_script.py: 1 alert(s) not delivered; they stay in ops.alert_history" in result.stderr
    assert "alert_script.py: 1 alert(s) never confirmed after 2 unanswered attempts" in result.stderr


def test_unreachable_webhook_never_leaks_the_url(db):
    add_moves(db, (1, DAY[0], "100", "300"))
    with SlackStub() as gone:
        url = gone.url  # a port nobody listens on once the stub stops

    result = run_alerts(db, webhook=url)

    assert result.returncode == 1
    assert "cannot reach Slack" in result.stderr
    stored = db.query("select last_error from ops.alert_history")[0][0]
    assert_no_secret(result.stdout, result.stderr, stored)


def test_invalid_webhook_url_is_a_config_error_without_echo(db):
    add_moves(db, (1, DAY[0], "100", "300"))
    https_only = "it must start with https:// (plain http only to localhost)"
    for url, problem in (
        (f"hooks.slack.com/services/{SECRET}", https_only),
        # urllib raised on this one at send time: exit 1 and "retried next run", on every run
        (f"https://[hooks.slack.com/services/T0STUB/{SECRET}", "it does not parse as a URL"),
        (f"http://hooks.slack.com/services/T0STUB/{SECRET}", https_only),
    ):
        result = run_alerts(db, webhook=url)
        assert result.returncode == 2
        assert result.stderr == (
            "alert_script.py: error: SLACK_WEBHOOK_URL is set but is not a valid webhook URL: "
            f"{problem}. Fix it, or unset it to print to stdout.\n"
        )
        assert result.stdout == ""
        assert_no_secret(result.stdout, result.stderr)
    assert ops_tables(db) == set()  # refused before touching anything


def test_webhook_from_a_secrets_file(db, slack, tmp_path):
    add_moves(db, (1, DAY[0], "100", "300"))
    secret_file = tmp_path / "slack_webhook_url"
    secret_file.write_text(slack.url + "\n")

    result = run_alerts(db, SLACK_WEBHOOK_URL_FILE=str(secret_file))

    assert result.returncode == 0, result.stderr
    assert organizations_in(slack.delivered) == [1]
    assert history(db, "slack") == {(1, DAY[0]): ("sent", 1)}

    secret_file.write_text(f"https://[hooks/{SECRET}")
    broken = run_alerts(db, SLACK_WEBHOOK_URL_FILE=str(secret_file))
    assert broken.returncode == 2
    assert f"the file SLACK_WEBHOOK_URL_FILE names ({secret_file}) is set but is not a valid" in broken.stderr
    assert_no_secret(broken.stdout, broken.stderr)


def test_secret_in_the_query_string_is_never_printed_or_stored(db):
    add_moves(db, (1, DAY[0], "100", "300"))
    with SlackStub(query=f"token={QUERY_SECRET}") as slack:
        slack.always(echoing_path(404))  # an error page quoting the requested URL
        result = run_alerts(db, webhook=slack.url)

    assert result.returncode == 1
    [stored] = [row[0] for row in db.query("select last_error from ops.alert_history")]
    assert stored == "HTTP 404: no such hook: <SLACK_WEBHOOK_URL>"
    assert "organization 1: HTTP 404: no such hook: <SLACK_WEBHOOK_URL>" in result.stderr
    for text in (result.stdout, result.stderr, stored):
        assert QUERY_SECRET not in text
    assert_no_secret(result.stdout, result.stderr, stored)


# --- dry run, locking, errors --------------------------------------------------------------------


def test_dry_run_changes_nothing(db, slack, run_inline):
    add_moves(db, (1, DAY[0], "100", "300"))
    never_run = run_inline(db, "--dry-run", webhook=slack.url)
    assert never_run.returncode == 0, never_run.stderr
    assert "[dry-run, would go to Slack] [balance alert] 2024-03-01 organization 1" in never_run.stdout
    assert ops_tables(db) == set()  # not even the tables
    assert slack.requests == []

    slack.always(server_error(500))
    assert run_inline(db, webhook=slack.url).returncode == 1
    add_moves(db, (2, DAY[1], "100", "300"))
    before = (history(db), watermark(db), db.query("select * from ops.alert_history"))
    requests_before = len(slack.requests)

    dry = run_inline(db, "--dry-run", webhook=slack.url)

    assert dry.returncode == 0, dry.stderr
    assert [line.split(":")[0] for line in dry.stdout.splitlines()[:-1]] == [
        "[dry-run, would go to Slack] [balance alert] 2024-03-01 organization 1",  # the retry
        "[dry-run, would go to Slack] [balance alert] 2024-03-02 organization 2",  # the new day
    ]
    assert dry.stdout.splitlines()[-1] == (
        "Summary (dry run, nothing changed): 1 day processed (2024-03-02), 2 alerts would be sent "
        "(1 retried from earlier runs), 0 failed, 0 skipped-from-zero; watermark would move to 2024-03-02."
    )
    assert (history(db), watermark(db), db.query("select * from ops.alert_history")) == before
    assert len(slack.requests) == requests_before

    slack.always(OK)
    assert run_inline(db, webhook=slack.url).returncode == 0
    nothing_new = run_inline(db, "--dry-run", webhook=slack.url)
    assert nothing_new.stdout.splitlines()[-1] == (
        "Summary (dry run, nothing changed): 0 days processed, 0 alerts would be sent, 0 failed, "
        "0 skipped-from-zero; watermark 2024-03-02."
    )


def test_concurrent_runs_never_double_send(db, slack):
    add_moves(db, *[(org, DAY[0], "100", "300") for org in (1, 2, 3)])
    slack.always(Reply(delay=0.3))  # slow answers widen the race window
    env = alerter_env(db, slack.url)

    runs = [
        subprocess.Popen(command(), cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=60)[0] for run in runs]

    assert [run.returncode for run in runs] == [0, 0]
    assert organizations_in(slack.delivered) == [1, 2, 3]
    assert len(slack.requests) == 3
    assert sorted("3 alerts sent" in out for out in outputs) == [False, True]


def test_lock_held_by_another_run_stops_busy(db, slack):
    add_moves(db, (1, DAY[0], "100", "300"))
    with db.connect("alerter", autocommit=True) as other:
        other.execute("select pg_advisory_lock(%s)", (store.LOCK_KEY,))
        blocked = run_alerts(db, webhook=slack.url, ALERT_LOCK_TIMEOUT="0.5")
    # busy, not 2: nothing is broken, and a scheduler may simply run it again
    assert blocked.returncode == exit_codes.BUSY == 4
    assert "another alert run still holds the lock after 0.5 s; nothing was sent" in blocked.stderr
    assert slack.requests == []

    assert run_alerts(db, webhook=slack.url).returncode == 0  # the lock went with the other session
    assert organizations_in(slack.delivered) == [1]


def test_missing_fact_table_exit_2_with_clear_message(make_database):
    empty = make_database()
    result = run_alerts(empty)
    assert result.returncode == 2
    assert (
        "marts.fct_organization_daily_financials, marts.dim_organizations, "
        "marts.fct_organization_daily_drivers, marts.dim_alert_routes does not exist"
    ) in result.stderr
    assert "run the pipeline first (init.sh)" in result.stderr
    assert "Traceback" not in result.stderr


def test_cannot_connect_names_the_target_not_the_password(db):
    password = "pw-that-must-not-leak-91"
    result = run_alerts(db, PGDATABASE="no_such_database", PGPASSWORD=password)
    env = alerter_env(db)
    target = f"alerter@{env['PGHOST']}:{env['PGPORT']}/no_such_database"
    assert result.returncode == 2
    assert f"cannot connect to {target}" in result.stderr
    assert password not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_wrong_role_gets_a_hint(db):
    add_moves(db, (1, DAY[0], "100", "300"))
    result = run_alerts(db, PGUSER="transformer", PGPASSWORD="transformer")  # may not write ops
    assert result.returncode == 2
    assert "permission denied for schema ops" in result.stderr
    assert (
        "Role transformer may not write the alerts' state: run as the role that owns the ops schema "
        "(the alerter; ALERTER_USER in init.sh)."
    ) in result.stderr


def test_marts_not_granted_names_the_role_and_the_grant(db):
    add_moves(db, (1, DAY[0], "100", "300"))
    execute(db, "revoke select on all tables in schema marts from alerter")
    try:
        result = run_alerts(db)
    finally:
        execute(db, "grant select on all tables in schema marts to alerter")
    assert result.returncode == 2
    assert "permission denied for table dim_alert_routes" in result.stderr  # the first marts read
    assert (
        "Role alerter may not read the marts: dbt grants select on them to ALERTER_USER "
        "(+grants in dbt/dbt_project.yml); rebuild with ALERTER_USER=alerter"
    ) in result.stderr
    assert "alert_history" not in ops_tables(db)  # the run stopped before recording anything


def test_empty_fact_is_a_quiet_success(db, run_inline):
    result = run_inline(db)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "Summary: 0 days processed, 0 alerts sent, 0 failed, 0 skipped-from-zero; watermark not set."
    )


def test_bad_pgconnect_timeout_is_a_configuration_error(db):
    result = run_alerts(db, PGCONNECT_TIMEOUT="abc")
    assert result.returncode == 2
    assert "cannot connect to" in result.stderr
    assert "bad value for connect_timeout: 'abc'" in result.stderr
    assert "PGCONNECT_TIMEOUT" in result.stderr
    assert "Traceback" not in result.stderr


def test_pgconnect_timeout_set_or_empty_connects(db, run_inline, monkeypatch):
    add_moves(db, (1, DAY[0], "100", "300"))
    timeout_set = run_inline(db, PGCONNECT_TIMEOUT="3")
    assert (timeout_set.returncode, timeout_set.stderr) == (0, "")
    assert "1 day processed (2024-03-01), 1 alert sent" in timeout_set.stdout
    add_moves(db, (2, DAY[1], "100", "300"))
    # empty counts as unset (psycopg would reject '' for connect_timeout): the default applies
    timeout_empty = run_inline(db, PGCONNECT_TIMEOUT="")
    assert (timeout_empty.returncode, timeout_empty.stderr) == (0, "")
    assert "1 day processed (2024-03-02), 1 alert sent" in timeout_empty.stdout
    monkeypatch.delenv("PGCONNECT_TIMEOUT")  # the test's own connections, like psycopg, refuse ''
    assert history(db) == {(1, DAY[0]): ("sent", 1), (2, DAY[1]): ("sent", 1)}


def test_day_after_the_data_is_a_clear_error(db, run_inline):
    no_data = run_inline(db, "--date", "2024-03-01")
    assert no_data.returncode == 2
    assert no_data.stderr == (
        "alert_script.py: error: --date 2024-03-01: marts.fct_organization_daily_financials has no rows "
        "yet: run the pipeline first (init.sh).\n"
    )
    add_moves(db, (1, DAY[0], "100", "300"), (1, DAY[1], "300", "100"))
    for flag in ("--date", "--since"):
        result = run_inline(db, flag, "2024-03-03")
        assert result.returncode == 2
        assert result.stderr == (
            f"alert_script.py: error: {flag} 2024-03-03 is after the latest day in "
            "marts.fct_organization_daily_financials (2024-03-02): nothing to process. "
            "Load and build newer data first, or pick an earlier day.\n"
        )
    assert ops_tables(db) == set()  # stopped before recording anything, not even the tables
    latest = run_inline(db, "--date", "2024-03-02")  # the latest day itself is fine
    assert latest.returncode == 0, latest.stderr
    assert "1 day processed (2024-03-02), 1 alert sent" in latest.stdout
    assert history(db) == {(1, DAY[1]): ("sent", 1)}


def test_not_a_number_in_the_fact_is_shown_not_a_crash(db, run_inline):
    with db.connect("transformer") as conn:
        conn.execute(
            "insert into marts.fct_organization_daily_financials "
            "values (1, %s, 1, 0, 0, 'NaN', 'NaN', 100, 'NaN')",
            (DAY[0],),
        )
    result = run_inline(db)
    assert result.returncode == 0, result.stderr
    assert alert_lines(result.stdout) == [
        "[balance alert] 2024-03-01 organization 1: $100.00 -> NaN (NaN%), warning; not in dim_organizations"
    ]


def test_interrupt_exits_130_and_keeps_what_was_committed(db, slack):
    add_moves(db, (1, DAY[0], "100", "300"), (2, DAY[0], "100", "10"))
    slack.answer(OK, then=hang())
    env = alerter_env(db, slack.url, ALERT_HTTP_TIMEOUT="30")
    run = subprocess.Popen(
        command(),
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=default_sigint,  # whatever the test run inherited (`nohup ... &` ignores Ctrl-C)
    )
    try:
        wait_until(lambda: len(slack.requests) == 2, "organization 2's message in flight")
        run.send_signal(signal.SIGINT)  # Ctrl-C
        _, stderr = run.communicate(timeout=30)
    finally:
        run.kill()
        run.wait()

    assert run.returncode == 130
    assert stderr.decode() == (
        "alert_script.py: interrupted. Alerts recorded as sent stay sent; "
        "the rest are retried on the next run.\n"
    )
    # organization 2's message left before the interrupt: it may have arrived, and is counted so
    assert history(db) == {(1, DAY[0]): ("sent", 1), (2, DAY[0]): ("unknown", 1)}
    assert db.query("select last_error from ops.alert_history where organization_id = 2") == [
        (
            "no answer recorded yet: the request went out, and if the run ended before its answer, the "
            "message may have arrived",
        )
    ]
    assert watermark(db) == DAY[0]

    slack.always(OK)
    again = run_alerts(db, webhook=slack.url)
    assert again.returncode == 0, again.stderr
    # only organization 2 again (its first request never got an answer); organization 1 not twice
    assert organizations_in([request.body for request in slack.requests[2:]]) == [2]
    assert {status for status, _ in history(db).values()} == {"sent"}


def delivery_state(db: Database) -> dict[int, tuple[str, int, int]]:
    """(status, attempts, unanswered_attempts) per organization (one day, one destination)."""
    rows = db.query("select organization_id, status, attempts, unanswered_attempts from ops.alert_history")
    return {organization: (status, tried, unanswered) for organization, status, tried, unanswered in rows}


def start_alerts(db: Database, webhook: str, **extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        command(),
        cwd=PROJECT_ROOT,
        env=alerter_env(db, webhook, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )


def stop_in_the_wait(run: subprocess.Popen, ready, what: str, signum: int) -> str:
    """Once `ready()` (what: the wait that follows it), stop the run with `signum` a second into that wait,
    and wait for it to end; its stderr."""
    try:
        wait_until(ready, what)
        time.sleep(1)
        run.send_signal(signum)
        return run.communicate(timeout=30)[1]
    finally:
        run.kill()
        run.wait()


def test_a_run_stopped_while_the_pacer_waits_leaves_the_next_alert_untried(db, slack):
    # the attempt was recorded before the pacer's wait: stopped there, an alert never sent was `unknown`
    # with an unanswered attempt, and one real timeout later given up for good
    add_moves(db, (1, DAY[0], "100", "300"), (2, DAY[0], "100", "10"))
    run = start_alerts(db, slack.url, ALERT_SLACK_MIN_INTERVAL="4")
    stderr = stop_in_the_wait(
        run,
        lambda: len(slack.requests) == 1 and delivery_state(db)[1][0] == "sent",
        "organization 1 sent and recorded, then the pacer's 4 s before organization 2's message",
        signal.SIGINT,
    )

    assert run.returncode == 130, stderr
    assert len(slack.requests) == 1
    assert delivery_state(db) == {1: ("sent", 1, 0), 2: ("pending", 0, 0)}

    again = run_alerts(db, webhook=slack.url)
    assert again.returncode == 0, again.stderr
    assert organizations_in(slack.delivered) == [1, 2]
    assert delivery_state(db) == {1: ("sent", 1, 0), 2: ("sent", 1, 0)}


def test_sigterm_while_waiting_out_a_retry_after_leaves_the_alert_failed_not_unknown(db, slack):
    # the 429 was an answer: nothing was accepted, and nothing was in flight when the run stopped
    add_moves(db, (1, DAY[0], "100", "300"))
    slack.answer(rate_limited(retry_after=5))
    run = start_alerts(db, slack.url)
    stderr = stop_in_the_wait(
        run,
        lambda: len(slack.requests) == 1,
        "the message answered 429, then its 5 s Retry-After",
        signal.SIGTERM,
    )

    assert run.returncode == 143, stderr
    assert stderr == (
        "alert_script.py: stopped by SIGTERM. Alerts recorded as sent stay sent; "
        "the rest are retried on the next run.\n"
    )
    assert len(slack.requests) == 1
    assert delivery_state(db) == {1: ("failed", 1, 0)}
    assert db.query("select last_error from ops.alert_history") == [("HTTP 429 (retrying)",)]

    again = run_alerts(db, webhook=slack.url)
    assert again.returncode == 0, again.stderr
    assert "1 alert sent (1 retried from earlier runs)" in again.stdout
    assert organizations_in(slack.delivered) == [1]
    assert delivery_state(db) == {1: ("sent", 2, 0)}


def test_a_retry_after_a_429_that_gets_no_answer_counts_one_unanswered_attempt(db, slack):
    slack.answer(rate_limited(retry_after=1), then=hang())
    add_moves(db, (1, DAY[0], "100", "300"))

    result = run_alerts(db, webhook=slack.url, ALERT_HTTP_TIMEOUT="0.3")

    assert result.returncode == 1, result.stderr
    assert [r.status for r in slack.requests] == [429, 200]  # the second one hangs
    assert delivery_state(db) == {1: ("unknown", 1, 1)}


def run_with_closed_stdout(db: Database) -> subprocess.CompletedProcess:
    # like `alert_script.py | head -0`: the reader is gone before the first line is written
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            command(),
            cwd=PROJECT_ROOT,
            env=alerter_env(db),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)


def test_closed_stdout_in_console_mode_is_not_a_crash(db):
    add_moves(db, (1, DAY[0], "100", "300"), (2, DAY[0], "100", "10"))

    closed = run_with_closed_stdout(db)
    assert closed.returncode == 1
    assert closed.stderr == (
        "alert_script.py: stdout was closed before every alert was printed; "
        "the rest are retried on the next run.\n"
    )
    assert history(db) == {(1, DAY[0]): ("pending", 0), (2, DAY[0]): ("pending", 0)}

    printed = run_alerts(db)
    assert printed.returncode == 0 and len(alert_lines(printed.stdout)) == 2

    nothing_to_print = run_with_closed_stdout(db)  # only the summary line is lost: all was delivered
    assert (nothing_to_print.returncode, nothing_to_print.stderr) == (0, "")


def test_a_summary_line_lost_to_a_full_disk_does_not_fail_a_run_that_delivered_everything(db, slack):
    # a log on a full disk: the run posted and recorded its alerts, then could not print its summary; exit 1
    # ("undelivered") made the pipeline and Dagster retry a run that had nothing left to send
    add_moves(db, (1, DAY[0], "100", "300"))
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            command(),
            cwd=PROJECT_ROOT,
            env={**alerter_env(db), "SLACK_WEBHOOK_URL": slack.url},
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        "alert_script.py: warning: the run's summary could not be written to stdout: [Errno 28] No space "
        "left on device\n"
    )
    assert organizations_in(slack.delivered) == [1]
    assert history(db) == {(1, DAY[0]): ("sent", 1)}


def test_lines_left_unprinted_by_a_console_run_do_not_fail_a_webhook_run(db, slack):
    # printing is a view, not a delivery: console rows still waiting are no route's lost alerts, and a
    # run with the webhook set neither reports them nor exits 1 for them
    add_moves(db, (1, DAY[0], "100", "300"))
    assert run_with_closed_stdout(db).returncode == 1
    assert history(db, "console") == {(1, DAY[0]): ("pending", 0)}

    sent = run_alerts(db, webhook=slack.url)

    assert sent.returncode == 0, sent.stderr
    assert "no route names" not in sent.stdout + sent.stderr
    assert organizations_in(slack.delivered) == [1]


def test_plan_and_record_see_one_version_of_the_fact(db, run_inline, monkeypatch):
    add_moves(db, (1, DAY[0], "100", "300"), (1, DAY[1], "300", "900"))
    latest_day = detect.latest_day
    isolation = []

    def latest_day_then_a_build_commits(conn, up_to=None):
        latest = latest_day(conn, up_to)
        isolation.append(conn.exec_driver_sql("show transaction_isolation").scalar_one())
        isolation.append(conn.exec_driver_sql("show transaction_read_only").scalar_one())
        # an incremental dbt build commits between planning and recording: it rewrites the planned
        # day (organization 1 now moves less than 50%) and adds organizations on it
        with db.connect("transformer") as build:
            build.execute(
                "delete from marts.fct_organization_daily_financials where balance_date = %s", (DAY[1],)
            )
        add_moves(db, (1, DAY[1], "300", "310"), (2, DAY[1], "100", "300"), (3, DAY[1], "0", "50"))
        return latest

    monkeypatch.setattr(detect, "latest_day", latest_day_then_a_build_commits)
    result = run_inline(db)

    assert result.returncode == 0, result.stderr
    assert isolation == ["repeatable read", "on"]
    # everything from the version the plan saw: one alert on the latest day, nothing from zero
    assert history(db) == {(1, DAY[1]): ("sent", 1)}
    assert "1 day processed (2024-03-02), 1 alert sent, 0 failed, 0 skipped-from-zero" in result.stdout


def test_full_refresh_swapping_the_fact_mid_run_is_seen_whole(db):
    add_moves(db, (1, DAY[0], "100", "300"))
    with db.connect("transformer") as build:  # dbt's table materialization, caught before its commit
        build.execute("alter table marts.fct_organization_daily_financials rename to fct_backup")
        build.execute("create table marts.fct_organization_daily_financials (like marts.fct_backup)")
        build.execute(
            "insert into marts.fct_organization_daily_financials select * from marts.fct_backup "
            "union all select 2, %s, 1, 200, 0, 200, 300, 100, 2",
            (DAY[1],),
        )
        build.execute(GRANT_TO_THE_ALERTER.format("marts.fct_organization_daily_financials"))
        run = subprocess.Popen(
            command(),
            cwd=PROJECT_ROOT,
            env=alerter_env(db),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        waiting = (
            "select count(*) from pg_stat_activity "
            "where datname = current_database() and usename = 'alerter' and wait_event_type = 'Lock'"
        )
        try:
            wait_until(lambda: db.query(waiting)[0][0] == 1, "the alert run to wait for the swap")
        except AssertionError:
            run.kill()
            raise
        build.commit()
    with db.connect("transformer", autocommit=True) as build:
        build.execute("drop table marts.fct_backup")
    stdout, stderr = run.communicate(timeout=60)

    assert run.returncode == 0, stderr
    # the new table whole, not the empty table an older snapshot would see
    assert "1 day processed (2024-03-02), 1 alert sent" in stdout
    assert history(db) == {(2, DAY[1]): ("sent", 1)}


def swap_in_a_rebuilt_dim_organizations(db: Database) -> bool:
    """dbt's table materialization of dim_organizations, whole: True when it committed, False when it had
    to wait for a lock (it gives up at once rather than hang the test)."""
    with db.connect("transformer") as build:
        build.execute("set lock_timeout = '200ms'")
        try:
            build.execute(
                "create table marts.dim_organizations__dbt_tmp as select * from marts.dim_organizations"
            )
            build.execute("alter table marts.dim_organizations rename to dim_organizations__dbt_backup")
            build.execute("alter table marts.dim_organizations__dbt_tmp rename to dim_organizations")
            build.execute(GRANT_TO_THE_ALERTER.format("marts.dim_organizations"))
            build.execute("drop table marts.dim_organizations__dbt_backup")
        except psycopg.errors.LockNotAvailable:
            build.rollback()
            return False
        build.commit()
    return True


def test_a_rebuilt_dim_organizations_is_swapped_in_after_the_marts_are_read_not_during(
    db, run_inline, monkeypatch
):
    # read after a swap that committed since the snapshot began, the new table's rows are invisible to
    # it: every organization was "not in dim_organizations", and a route on its country missed it
    add_organization(db, 1)
    add_moves(db, (1, DAY[0], "100", "300"))
    swapped: list[bool] = []
    latest_day, send = detect.latest_day, ConsoleChannel.send

    def latest_day_then_a_build_swaps_the_organizations(conn, up_to=None):
        latest = latest_day(conn, up_to)  # the snapshot is taken; the organizations are read later
        swapped.append(swap_in_a_rebuilt_dim_organizations(db))
        return latest

    def swap_then_send(self, *args, **kwargs):
        swapped.append(swap_in_a_rebuilt_dim_organizations(db))  # delivery holds no lock on the marts
        return send(self, *args, **kwargs)

    monkeypatch.setattr(detect, "latest_day", latest_day_then_a_build_swaps_the_organizations)
    monkeypatch.setattr(ConsoleChannel, "send", swap_then_send)
    result = run_inline(db)

    assert result.returncode == 0, result.stderr
    assert alert_lines(result.stdout) == [
        "[balance alert] 2024-03-01 organization 1: $100.00 -> $300.00 (+200.00%), critical; "
        "3 active contracts, first payment 2023-01-02, last payment 2024-02-28"
    ]
    assert swapped == [False, True]  # the swap waits for the reading, never for the delivery
