"""alert_script.py's state end to end: per-destination delivery, the ops upgrade, what the marts may
do to the alerter, a session that may not write ops, the clock, backfill splitting and rebuilt facts.
Same harness as test_alerts.py."""

from __future__ import annotations

import json
import subprocess
from datetime import date, timedelta

import pytest
from conftest import PROJECT_ROOT, wait_until
from slack_stub import OK, server_error, slow
from sqlalchemy import create_engine, select
from sqlalchemy.pool import NullPool
from test_alerts import (  # noqa: F401  (db, slack, warehouse and run_inline are fixtures)
    DAY,
    add_moves,
    add_organization,
    alert_lines,
    alerter_env,
    command,
    db,
    execute,
    history,
    ops_tables,
    organizations_in,
    run_alerts,
    run_inline,
    slack,
    warehouse,
    watermark,
)
from test_alerts_noise import add_drivers

from data_platform.alerts import cli, detect
from data_platform.alerts import ops_tables as ops_tables_module
from data_platform.alerts.keys import organization_days_in, organization_ids_in

WAITING_FOR_SLACK = (
    "1 alert still undelivered (SLACK_WEBHOOK_URL 1): printing is not delivering; a run with that variable "
    "set sends it (or delete its row from ops.alert_history to drop it)."
)

# --- destinations ---------------------------------------------------------------------------------


def test_console_run_is_a_view_and_consumes_nothing_of_slack(db, slack):  # noqa: F811
    add_moves(db, (1, DAY[0], "100", "300"))
    slack.always(server_error(500))
    assert run_alerts(db, webhook=slack.url).returncode == 1
    add_moves(db, (2, DAY[1], "100", "300"))

    by_hand = run_alerts(db)  # no SLACK_WEBHOOK_URL: a person looking, not a delivery

    assert by_hand.returncode == 1, by_hand.stderr  # Slack's alert is still undelivered
    # its own first run: the latest day only; Slack's failed alert is not printed as if delivered
    assert alert_lines(by_hand.stdout) == [
        "[balance alert] 2024-03-02 organization 2: $100.00 -> $300.00 (+200.00%), critical; "
        "not in dim_organizations"
    ]
    assert by_hand.stdout.splitlines()[-1] == (
        "Summary: 1 day processed (2024-03-02), 1 alert sent, 0 failed, 0 skipped-from-zero; "
        f"watermark 2024-03-02. {WAITING_FOR_SLACK}"
    )
    assert history(db, "slack") == {(1, DAY[0]): ("failed", 1)}
    assert history(db, "console") == {(2, DAY[1]): ("sent", 1)}
    assert (watermark(db, "slack"), watermark(db, "console")) == (DAY[0], DAY[1])

    slack.always(OK)
    delivered = run_alerts(db, webhook=slack.url)

    assert delivered.returncode == 0, delivered.stderr
    # the failed alert and the day the console run printed both reach Slack
    assert "1 day processed (2024-03-02), 2 alerts sent (1 retried from earlier runs), 0 failed" in (
        delivered.stdout
    )
    assert organizations_in(slack.delivered) == [1, 2]
    assert history(db, "slack") == {(1, DAY[0]): ("sent", 2), (2, DAY[1]): ("sent", 1)}

    quiet = run_alerts(db)
    assert quiet.stdout == (
        "Summary: 0 days processed, 0 alerts sent, 0 failed, 0 skipped-from-zero; watermark 2024-03-02.\n"
    )


def test_webhook_configured_later_starts_at_the_latest_day(db, slack):  # noqa: F811
    add_moves(db, (1, DAY[0], "100", "300"))
    assert len(alert_lines(run_alerts(db).stdout)) == 1
    add_moves(db, (2, DAY[1], "100", "300"))
    assert len(alert_lines(run_alerts(db).stdout)) == 1

    first_slack_run = run_alerts(db, webhook=slack.url)

    assert first_slack_run.returncode == 0, first_slack_run.stderr
    # Slack's first run, like any first run, takes the latest day only: the printed history is
    # not replayed into the channel, the latest day is sent even though it was printed
    assert "1 day processed (2024-03-02), 1 alert sent" in first_slack_run.stdout
    assert organizations_in(slack.delivered) == [2]
    assert history(db, "slack") == {(2, DAY[1]): ("sent", 1)}

    add_moves(db, (3, DAY[2], "100", "300"))
    assert run_alerts(db, webhook=slack.url).returncode == 0
    assert organizations_in(slack.delivered) == [2, 3]
    assert history(db, "console") == {(1, DAY[0]): ("sent", 1), (2, DAY[1]): ("sent", 1)}

    backfill = run_alerts(db, "--since", "2024-03-01", webhook=slack.url)  # the printed-only day
    assert backfill.returncode == 0, backfill.stderr
    assert "3 days processed (2024-03-01..2024-03-03), 1 alert sent" in backfill.stdout
    assert organizations_in(slack.delivered) == [1, 2, 3]


# --- ops tables of the older layout ------------------------------------------------------------------

OLD_OPS_DDL = """
create table ops.alert_watermark (
    alert_name text not null,
    last_processed_date date not null,
    updated_at timestamp with time zone default now() not null,
    primary key (alert_name)
);
create table ops.alert_history (
    organization_id bigint not null,
    balance_date date not null,
    alert_kind text not null,
    previous_balance_usd numeric not null,
    balance_usd numeric not null,
    balance_change_ratio numeric,
    status text default 'pending' not null,
    attempts integer default 0 not null,
    detected_at timestamp with time zone default now() not null,
    last_attempt_at timestamp with time zone,
    sent_at timestamp with time zone,
    delivered_via text,
    last_error text,
    constraint alert_history_pkey primary key (organization_id, balance_date),
    constraint alert_history_status_check check (status in ('pending', 'sent', 'failed')),
    constraint alert_history_kind_check check (alert_kind in ('balance_change', 'new_balance'))
);
create index alert_history_undelivered_idx on ops.alert_history (status) where status != 'sent';
insert into ops.alert_watermark (alert_name, last_processed_date)
    values ('organization_balance_change', '2024-03-02');
insert into ops.alert_history (
    organization_id, balance_date, alert_kind, previous_balance_usd, balance_usd, balance_change_ratio,
    status, attempts, delivered_via, last_error
) values
    (1, '2024-03-01', 'balance_change', 100, 300, 2, 'sent', 1, 'stdout', null),
    (2, '2024-03-01', 'balance_change', 100, 300, 2, 'sent', 1, 'slack', null),
    (3, '2024-03-01', 'balance_change', 100, 300, 2, 'failed', 1, null, 'HTTP 500: internal_error'),
    (4, '2024-03-02', 'balance_change', 100, 300, 2, 'pending', 0, null, null);
"""


def test_ops_tables_of_the_older_layout_are_upgraded_in_place(db, slack):  # noqa: F811
    add_moves(db, *[(org, DAY[0], "100", "300") for org in (1, 2, 3)], (4, DAY[1], "100", "300"))
    execute(db, OLD_OPS_DDL, role="alerter")

    upgraded = run_alerts(db, webhook=slack.url)

    assert upgraded.returncode == 0, upgraded.stderr
    # the failed Slack alert and the never-tried one go to Slack; nothing sent is sent again
    assert "0 days processed, 2 alerts sent (1 retried from earlier runs), 0 failed" in upgraded.stdout
    assert organizations_in(slack.delivered) == [3, 4]
    assert history(db, "slack") == {
        (2, DAY[0]): ("sent", 1),
        (3, DAY[0]): ("sent", 2),
        (4, DAY[1]): ("sent", 1),
    }
    # printed before (stdout); never tried, so it may have been meant for the console too
    assert history(db, "console") == {(1, DAY[0]): ("sent", 1), (4, DAY[1]): ("pending", 0)}
    assert (watermark(db, "slack"), watermark(db, "console")) == (DAY[1], DAY[1])

    again = run_alerts(db, webhook=slack.url)  # the upgrade is done once
    assert again.returncode == 0, again.stderr
    assert "0 alerts sent" in again.stdout and len(slack.requests) == 2
    printed = run_alerts(db)
    assert alert_lines(printed.stdout) == [
        "[balance alert] 2024-03-02 organization 4: $100.00 -> $300.00 (+200.00%), warning; "
        "not in dim_organizations"
    ]
    columns = db.query(
        "select column_name from information_schema.columns "
        "where table_schema = 'ops' and table_name = 'alert_history' order by ordinal_position"
    )
    assert ("delivered_via",) not in columns and ("destination",) in columns and ("severity",) in columns
    # the alerts sent after the upgrade keep their words; those sent before it had none kept
    texts = db.query(
        "select organization_id, alert_text is not null from ops.alert_history where destination = 'slack'"
    )
    assert sorted(texts) == [(2, False), (3, True), (4, True)]


def test_an_older_alert_slack_tried_without_an_error_stays_slacks_alone(db, slack):  # noqa: F811
    # attempts alone say Slack tried it (a run that died in flight records no error): it was meant for
    # Slack, and the console must not get a copy of it to print
    add_moves(db, *[(org, DAY[0], "100", "300") for org in (1, 2, 3)], (4, DAY[1], "100", "300"))
    add_moves(db, (5, DAY[1], "100", "300"))
    execute(db, OLD_OPS_DDL, role="alerter")
    execute(
        db,
        "insert into ops.alert_history (organization_id, balance_date, alert_kind, previous_balance_usd, "
        "balance_usd, balance_change_ratio, status, attempts) "
        "values (5, '2024-03-02', 'balance_change', 100, 300, 2, 'pending', 1)",
        role="alerter",
    )

    upgraded = run_alerts(db, webhook=slack.url)

    assert upgraded.returncode == 0, upgraded.stderr
    assert history(db, "slack")[(5, DAY[1])] == ("sent", 2)
    assert (5, DAY[1]) not in history(db, "console")


def test_ops_tables_from_before_superseded_alerts_allow_them(db, slack):  # noqa: F811
    add_moves(db, (1, DAY[0], "100", "300"))
    slack.always(server_error(500))
    assert run_alerts(db, webhook=slack.url, ALERT_HTTP_RETRIES="0").returncode == 1
    # the status check of the release before `superseded`
    execute(
        db,
        "alter table ops.alert_history drop constraint alert_history_status_check;"
        "alter table ops.alert_history add constraint alert_history_status_check "
        "check (status in ('pending', 'sent', 'failed', 'unknown', 'suppressed'))",
        role="alerter",
    )
    execute(
        db, "update marts.fct_organization_daily_financials set balance_usd = 110, balance_change_ratio = 0.1"
    )
    slack.always(OK)

    result = run_alerts(db, webhook=slack.url)

    assert result.returncode == 0, result.stderr
    assert history(db) == {(1, DAY[0]): ("superseded", 1)} and slack.delivered == []


def test_alerts_given_up_before_the_report_column_are_not_reported_again(db, slack):  # noqa: F811
    # their runs' summaries said so; an upgrade must not make the next run exit 3 for them
    add_moves(db, (1, DAY[0], "100", "300"))
    slack.always(OK)
    assert run_alerts(db, webhook=slack.url).returncode == 0
    execute(
        db,
        "update ops.alert_history set status = 'unknown', unanswered_attempts = 2;"
        "alter table ops.alert_history drop column given_up_reported_at",
        role="alerter",
    )

    upgraded = run_alerts(db, webhook=slack.url)

    assert upgraded.returncode == 0, upgraded.stderr
    assert "1 alert never confirmed after 2 unanswered attempts" in upgraded.stdout  # still noted
    assert db.query("select given_up_reported_at is not null from ops.alert_history") == [(True,)]


# --- what the marts may do to the alerter ----------------------------------------------------------

ATTACK = """
create function marts.move_watermark() returns boolean language plpgsql as $$
begin
    update ops.alert_watermark set last_processed_date = '2999-12-31';
    return true;
end $$;
alter table marts.dim_organizations rename to dim_organizations_built;
create view marts.dim_organizations as
    select built.* from marts.dim_organizations_built as built, (select marts.move_watermark()) as attack;
grant select on marts.dim_organizations to alerter;
"""

UNDO_ATTACK = """
drop view marts.dim_organizations;
drop function marts.move_watermark();
alter table marts.dim_organizations_built rename to dim_organizations;
"""


def test_a_marts_view_that_writes_cannot_move_the_watermark(db, slack):  # noqa: F811
    add_organization(db, 1)
    add_organization(db, 2)
    add_moves(db, (1, DAY[0], "100", "300"))
    assert run_alerts(db, webhook=slack.url).returncode == 0
    assert watermark(db) == DAY[0]
    add_moves(db, (2, DAY[1], "100", "300"))
    execute(db, ATTACK, role="transformer")
    try:
        _attack_is_stopped(db, slack)
    finally:
        execute(db, UNDO_ATTACK, role="transformer")


def _attack_is_stopped(db, slack) -> None:  # noqa: F811
    # the attack works on an ordinary read as the alerter, so this test can fail
    with db.connect("alerter") as probe:
        probe.execute("select count(*) from marts.dim_organizations")
        assert probe.execute("select last_processed_date from ops.alert_watermark").fetchone() == (
            date(2999, 12, 31),
        )
        probe.rollback()

    result = run_alerts(db, webhook=slack.url)

    assert result.returncode == 2
    assert "cannot execute UPDATE in a read-only transaction" in result.stderr
    assert "something in marts tried to write while the alerter read it" in result.stderr
    assert watermark(db) == DAY[0]  # neither 2999-12-31 nor moved by the run
    assert history(db) == {(1, DAY[0]): ("sent", 1)}  # nothing recorded from that snapshot
    assert organizations_in(slack.delivered) == [1]


# --- a session that may not write ops ------------------------------------------------------------

READ_ONLY = "default_transaction_read_only"


@pytest.mark.parametrize(
    ("where", "fix"),
    [
        ("role in database", f"ALTER ROLE alerter IN DATABASE {{db}} RESET {READ_ONLY}"),
        ("database", f"ALTER DATABASE {{db}} RESET {READ_ONLY}"),
        ("PGOPTIONS", "Remove it from PGOPTIONS"),
    ],
)
def test_a_read_only_session_says_it_cannot_record_and_blames_nothing_in_marts(db, slack, where, fix):  # noqa: F811
    add_moves(db, (1, DAY[0], "100", "300"))
    extra = {"PGOPTIONS": f"-c {READ_ONLY}=on"} if where == "PGOPTIONS" else {}
    target = {"role in database": f"role alerter in database {db.name}", "database": f"database {db.name}"}
    if where in target:
        execute(db, f"alter {target[where]} set {READ_ONLY} = on")
    try:
        result = run_alerts(db, webhook=slack.url, **extra)
    finally:
        if where in target:  # the database's setting makes this session read-only too
            with db.connect("admin", autocommit=True, options=f"-c {READ_ONLY}=off") as conn:
                conn.execute(f"alter {target[where]} reset {READ_ONLY}")

    assert result.returncode == 2
    assert "session is read-only" in result.stderr
    assert "cannot record alerts" in result.stderr
    assert "Nothing was recorded or sent" in result.stderr
    assert fix.format(db=db.name) in result.stderr
    assert "something in marts" not in result.stderr
    assert "FULL_REFRESH" not in result.stderr
    assert slack.delivered == []
    assert ops_tables(db) == set()
    # writable again, the same run sends the alert
    assert run_alerts(db, webhook=slack.url).returncode == 0
    assert organizations_in(slack.delivered) == [1]


@pytest.mark.server_wide  # ALTER SYSTEM: every session of the server
def test_a_server_that_turns_read_only_during_the_run_is_said_so(db, slack):  # noqa: F811
    """A managed server whose disk fills turns read-only this way: the run's next write to ops failed with
    the error a marts view writing in the reader's transaction raises, and the marts were blamed."""
    add_moves(db, (1, DAY[0], "100", "300"))
    slack.answer(slow(3))  # answered within the client's timeout, once the server went read-only
    process = subprocess.Popen(
        command(),
        cwd=PROJECT_ROOT,
        env=alerter_env(db, slack.url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with db.connect("admin", autocommit=True, options=f"-c {READ_ONLY}=off") as admin:
        try:
            wait_until(lambda: slack.requests or process.poll() is not None, "the alert to go out")
            admin.execute(f"alter system set {READ_ONLY} = on")
            admin.execute("select pg_reload_conf()")
            _, stderr = process.communicate(timeout=60)
        finally:
            process.kill()
            admin.execute(f"alter system reset {READ_ONLY}")
            admin.execute("select pg_reload_conf()")
    assert process.returncode == 2, stderr
    assert "its session turned read-only during the run" in stderr
    assert "something in marts" not in stderr and "FULL_REFRESH" not in stderr
    assert organizations_in(slack.delivered) == [1]


def test_a_standby_is_named_as_the_reason_and_the_primary_as_the_fix():
    # no standby to run against here: the words for one, and for a name the server quoted
    why, fix = ops_tables_module.read_only_reason(True, "default", "alerter", "warehouse")
    assert "standby" in why
    assert fix.startswith("Point PGHOST and PGPORT at the primary")
    why, fix = ops_tables_module.read_only_reason(False, "user", '"Alerter"', "warehouse")
    assert fix == 'Turn it off: ALTER ROLE "Alerter" RESET default_transaction_read_only'


# --- the clock -----------------------------------------------------------------------------------


def test_days_after_today_are_never_processed(db, run_inline, monkeypatch):  # noqa: F811
    monkeypatch.setattr(cli, "today_utc", lambda: DAY[2])
    add_moves(db, (1, DAY[1], "100", "300"), (2, DAY[4], "100", "300"), (3, DAY[5], "100", "300"))

    first = run_inline(db)

    assert first.returncode == 0, first.stderr
    assert [line.split(":")[0] for line in alert_lines(first.stdout)] == [
        "[balance alert] 2024-03-02 organization 1"
    ]
    assert first.stdout.splitlines()[-1] == (
        "Summary: 1 day processed (2024-03-02), 1 alert sent, 0 failed, 0 skipped-from-zero; "
        "watermark 2024-03-02. 2 days after today (2024-03-03) in the fact (up to 2024-03-06) not "
        "processed: check the export's dates."
    )
    assert watermark(db) == DAY[1]

    add_moves(db, (1, DAY[2], "300", "900"))
    second = run_inline(db, "--since", "2024-03-01")
    assert second.returncode == 0, second.stderr
    assert "2 days processed (2024-03-02..2024-03-03), 1 alert sent" in second.stdout
    assert watermark(db) == DAY[2]  # today at most, whatever the fact holds
    assert set(history(db)) == {(1, DAY[1]), (1, DAY[2])}

    future = run_inline(db, "--date", "2024-03-05")
    assert future.returncode == 2
    assert future.stderr == (
        "alert_script.py: error: --date 2024-03-05 is after today (2024-03-03, UTC): future days are "
        "never processed.\n"
    )
    assert (watermark(db), set(history(db))) == (DAY[2], {(1, DAY[1]), (1, DAY[2])})


# --- backfills and rebuilt facts ------------------------------------------------------------------


def test_backfill_is_split_every_20_days(db, slack):  # noqa: F811
    days = [date(2024, 1, 1) + timedelta(days=i) for i in range(45)]
    add_moves(db, *[(1, day, "100", "200") for day in days])

    result = run_alerts(
        db, "--since", "2024-01-01", webhook=slack.url, ALERT_DIGEST_OVER="100"
    )  # not a digest

    assert result.returncode == 0, result.stderr
    assert "45 days processed (2024-01-01..2024-02-14), 45 alerts sent, 0 failed" in result.stdout
    day_lines = [body["blocks"][1]["text"]["text"].splitlines() for body in slack.delivered]
    assert [len(lines) for lines in day_lines] == [20, 20, 5]
    sent_days = [line.split("*")[1] for lines in day_lines for line in lines]
    assert sent_days == [day.isoformat() for day in days]  # in order, each once
    assert organizations_in(slack.delivered) == [1, 1, 1]
    assert set(history(db).values()) == {("sent", 1)}


def test_sent_alerts_are_not_sent_again_after_the_fact_is_rebuilt(db, slack):  # noqa: F811
    add_moves(db, (1, DAY[0], "100", "300"), (2, DAY[0], "100", "110"))
    assert run_alerts(db, webhook=slack.url).returncode == 0
    # a rebuild with other rules: organization 1's move changes size, organization 2 now alerts
    execute(
        db,
        "update marts.fct_organization_daily_financials set balance_usd = balance_usd * 3, "
        "balance_change_ratio = (balance_usd * 3 - previous_balance_usd) / previous_balance_usd",
    )

    again = run_alerts(db, "--date", "2024-03-01", webhook=slack.url)

    assert again.returncode == 0, again.stderr
    assert "1 day processed (2024-03-01), 1 alert sent, 0 failed" in again.stdout
    assert organizations_in(slack.delivered) == [1, 2]  # organization 1 not a second time
    stored = db.query("select organization_id, balance_usd from ops.alert_history order by 1")
    assert stored == [(1, 300), (2, 330)]  # what was sent, as it was sent
    assert ops_tables(db) == {"alert_history", "alert_watermark"}


def alert_texts(database) -> dict[tuple[str, int, date], str | None]:
    rows = database.query(
        "select destination, organization_id, balance_date, alert_text from ops.alert_history"
    )
    return {(destination, org, day): words for destination, org, day, words in rows}


def test_an_alert_keeps_the_words_it_was_sent_with_when_a_rebuild_changes_its_explanation(db, slack):  # noqa: F811
    """After a rules change rebuilt the marts, nothing in the warehouse said why a sent alert had moved:
    the drivers now explained other numbers, or none."""
    add_organization(db, 1)
    add_moves(db, (1, DAY[0], "100", "300"))
    add_drivers(db, 1, DAY[0], ("payments", 1, "200", [(77, "paid", "200")]))
    slack.always(server_error(500))
    assert run_alerts(db, webhook=slack.url, ALERT_HTTP_RETRIES="0").returncode == 1
    tried = (
        "[balance alert] 2024-03-01 organization 1: $100.00 -> $300.00 (+200.00%), critical; 3 active "
        "contracts, first payment 2023-01-02, last payment 2024-02-28; why: 1 payment +$200.00; top "
        "invoices: 77 paid +$200.00"
    )
    assert alert_texts(db) == {("slack", 1, DAY[0]): tried}  # the words of the message that failed

    # a rebuild before the retry: the alert goes with the day's new numbers and drivers, and keeps them
    execute(
        db, "update marts.fct_organization_daily_financials set balance_usd = 400, balance_change_ratio = 3"
    )
    execute(db, "delete from marts.fct_organization_daily_drivers")
    add_drivers(
        db, 1, DAY[0], ("cancellations", 2, "300", [(78, "cancelled", "250"), (79, "cancelled", "50")])
    )
    slack.always(OK)
    assert run_alerts(db, webhook=slack.url).returncode == 0
    sent = (
        "[balance alert] 2024-03-01 organization 1: $100.00 -> $400.00 (+300.00%), critical; 3 active "
        "contracts, first payment 2023-01-02, last payment 2024-02-28; why: 2 cancellations +$300.00; top "
        "invoices: 78 cancelled +$250.00, 79 cancelled +$50.00"
    )
    assert alert_texts(db) == {("slack", 1, DAY[0]): sent}
    assert "78" in json.dumps(slack.delivered[-1])

    # a rules change rebuilds the day again: the sent alert is not sent again, and its words stay
    execute(
        db, "update marts.fct_organization_daily_financials set balance_usd = 150, balance_change_ratio = 0.5"
    )
    execute(db, "delete from marts.fct_organization_daily_drivers")
    assert run_alerts(db, "--date", "2024-03-01", webhook=slack.url).returncode == 0
    assert alert_texts(db) == {("slack", 1, DAY[0]): sent}

    # a console run keeps the very line it printed
    printed = run_alerts(db, "--date", "2024-03-01")
    assert printed.returncode == 0, printed.stderr
    assert alert_texts(db)[("console", 1, DAY[0])] == alert_lines(printed.stdout)[0]


def test_each_alert_of_a_digest_keeps_its_own_words(db, slack):  # noqa: F811
    add_moves(db, *[(org, DAY[0], "100", str(150 + org)) for org in (1, 2, 3)])
    result = run_alerts(db, "--digest-over", "2", webhook=slack.url)
    assert result.returncode == 0, result.stderr
    assert len(slack.delivered) == 1  # the digest
    assert alert_texts(db) == {
        ("slack", org, DAY[0]): f"[balance alert] 2024-03-01 organization {org}: $100.00 -> ${150 + org}.00 "
        f"(+{50 + org}.00%), warning; not in dim_organizations"
        for org in (1, 2, 3)
    }


def test_the_key_arrays_match_exactly_the_keys_asked_for(db):  # noqa: F811
    # each day paired with its own organization, not with every organization asked for; ids beyond int4
    big = 2**40
    add_moves(db, *((organization, day, "100", "300") for organization in (1, 2, big) for day in DAY[:2]))
    engine = create_engine("postgresql+psycopg://", creator=lambda: db.connect("alerter"), poolclass=NullPool)
    fact = detect.fact
    asked = [(1, DAY[0]), (2, DAY[1]), (big, DAY[1]), (1, DAY[0])]
    with engine.connect() as conn:
        by_day = conn.execute(
            select(fact.c.organization_id, fact.c.balance_date).where(
                organization_days_in(fact.c.organization_id, fact.c.balance_date, iter(asked))
            )
        )
        by_organization = conn.execute(
            select(fact.c.organization_id, fact.c.balance_date).where(
                organization_ids_in(fact.c.organization_id, iter([big, 2, big]))
            )
        )
        assert sorted(by_day) == sorted(set(asked))
        assert sorted(by_organization) == [(2, DAY[0]), (2, DAY[1]), (big, DAY[0]), (big, DAY[1])]


def test_a_digest_of_more_alerts_than_a_statement_takes_parameters_is_delivered(db, run_inline):  # noqa: F811
    # two bound values an alert were 66,000 parameters: the server takes at most 65,535
    organizations = range(1, 33_001)
    add_moves(db, *((organization, DAY[0], "10000", "30000") for organization in organizations))

    result = run_inline(db)

    assert result.returncode == 0, result.stderr
    assert history(db, "console") == {(organization, DAY[0]): ("sent", 1) for organization in organizations}
