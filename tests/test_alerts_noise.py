"""Why it moved, and the noise controls, end to end (same harness as test_alerts.py): the drivers in
the console line and the Slack message, the USD floor, severity, suppression and the digest."""

from __future__ import annotations

import json

from slack_stub import OK, SlackStub, server_error
from test_alerts import (  # noqa: F401  (db, slack, warehouse and run_inline are fixtures)
    DAY,
    add_moves,
    add_organization,
    alert_lines,
    db,
    execute,
    history,
    run_alerts,
    run_inline,
    slack,
    warehouse,
)

from data_platform.alerts import noise
from data_platform.alerts.records import BALANCE_CHANGE, CRITICAL, WARNING, Alert

NO_FLOOR = {"ALERT_MIN_CHANGE_USD": "0"}


def add_drivers(db, organization_id, day, *drivers) -> None:  # noqa: F811
    """Driver rows as dbt builds them: (kind, count, USD, [(invoice_id, status, USD), ...])."""
    with db.connect("transformer") as conn:
        for kind, count, amount, top in drivers:
            invoices = [{"invoice_id": i, "status": s, "balance_change_usd": float(u)} for i, s, u in top]
            conn.execute(
                "insert into marts.fct_organization_daily_drivers (organization_id, balance_date, "
                "driver_kind, invoice_count, balance_change_usd, top_invoices) "
                "values (%s, %s, %s, %s, %s, %s::jsonb)",
                (organization_id, day, kind, count, amount, json.dumps(invoices)),
            )


# --- why it moved ----------------------------------------------------------------------------------


def a_day_with_new_invoices_a_payment_and_a_credit(db) -> None:  # noqa: F811
    # 10,000 -> 11,300: two new invoices +3,000, a payment of an older invoice -1,500, a credit -200
    add_organization(db, 1, contracts=4)
    add_moves(db, (1, DAY[1], "2000", "3300"))
    add_drivers(
        db,
        1,
        DAY[1],
        ("new_invoices", 2, "3000", [(501, "open", "2500"), (502, "open", "500")]),
        ("payments", 1, "-1500", [(-77, "paid", "-1500")]),
        ("credits", 1, "-200", [(503, "credited", "-200")]),
    )


def test_drivers_in_the_console_line(db, run_inline):  # noqa: F811
    a_day_with_new_invoices_a_payment_and_a_credit(db)

    result = run_inline(db)

    assert result.returncode == 0, result.stderr
    assert alert_lines(result.stdout) == [
        "[balance alert] 2024-03-02 organization 1: $2,000.00 -> $3,300.00 (+65.00%), warning; "
        "4 active contracts, first payment 2023-01-02, last payment 2024-02-28; "
        "why: 2 new invoices +$3,000.00, 1 payment -$1,500.00, 1 credit -$200.00; "
        "top invoices: 501 open +$2,500.00, -77 paid -$1,500.00, 502 open +$500.00"
    ]


def test_drivers_in_the_slack_message(db, slack):  # noqa: F811
    a_day_with_new_invoices_a_payment_and_a_credit(db)

    result = run_alerts(db, webhook=slack.url, **NO_FLOOR)

    assert result.returncode == 0, result.stderr
    (body,) = slack.delivered
    assert [block["type"] for block in body["blocks"]] == ["header", "section", "section", "context"]
    why = body["blocks"][2]
    assert why["text"]["text"] == "*Why it moved on 2024-03-02*"
    assert [field["text"] for field in why["fields"]] == [
        "*New invoices*\n2 new invoices +$3,000.00",
        "*Payments*\n1 payment -$1,500.00",
        "*Credits*\n1 credit -$200.00",
        "*Top invoices*\n`501` open +$2,500.00\n`-77` paid -$1,500.00\n`502` open +$500.00",
    ]
    assert "why: 2 new invoices +$3,000.00, 1 payment -$1,500.00, 1 credit -$200.00" in body["text"]


def test_an_alert_retried_by_a_later_run_still_says_why_it_moved(db, slack):  # noqa: F811
    # the drivers are read for every alert sent, not only for the run's new ones: a retry carries them too
    a_day_with_new_invoices_a_payment_and_a_credit(db)
    slack.always(server_error(500))
    assert run_alerts(db, webhook=slack.url, ALERT_HTTP_RETRIES="0", **NO_FLOOR).returncode == 1
    slack.always(OK)

    retry = run_alerts(db, webhook=slack.url, **NO_FLOOR)

    assert retry.returncode == 0, retry.stderr
    assert "0 days processed, 1 alert sent (1 retried from earlier runs)" in retry.stdout
    (body,) = slack.delivered
    assert "why: 2 new invoices +$3,000.00, 1 payment -$1,500.00, 1 credit -$200.00" in body["text"]
    assert body["blocks"][2]["text"]["text"] == "*Why it moved on 2024-03-02*"
    # and its organization's context, read for it as for a new alert
    assert body["text"].endswith("4 active contracts, first payment 2023-01-02, last payment 2024-02-28.")


# --- noise controls, each on its own --------------------------------------------------------------


def test_usd_floor_holds_back_small_moves_and_counts_them(db, run_inline):  # noqa: F811
    # all three move by 60% or more; only the one moving by $1,000 or more passes the default floor
    add_moves(db, (1, DAY[0], "1000", "1600"), (2, DAY[0], "2000", "3200"), (3, DAY[0], "-1000", "-2000"))

    result = run_inline(db, ALERT_MIN_CHANGE_USD="")  # unset: the default, 1,000

    assert result.returncode == 0, result.stderr
    assert [line.split(":")[0] for line in alert_lines(result.stdout)] == [
        "[balance alert] 2024-03-01 organization 2",
        "[balance alert] 2024-03-01 organization 3",
    ]
    assert "1 below --min-change-usd;" in result.stdout
    assert set(history(db)) == {(2, DAY[0]), (3, DAY[0])}  # held back: not recorded

    lower = run_inline(db, "--date", DAY[0].isoformat(), "--min-change-usd", "500")
    assert [line.split(":")[0] for line in alert_lines(lower.stdout)] == [
        "[balance alert] 2024-03-01 organization 1"
    ]


def test_moves_from_zero_under_the_floor_count_as_below_it_with_or_without_the_flag(db, run_inline):  # noqa: F811
    # from zero by $250 (under the default $1,000 floor), by -$1,500 and by exactly the floor; a +60% move
    # by $600
    add_moves(
        db,
        (1, DAY[0], "0", "250"),
        (2, DAY[0], "0", "-1500"),
        (3, DAY[0], "1000", "1600"),
        (4, DAY[0], "0", "1000"),
    )

    without = run_inline(db, "--dry-run", ALERT_MIN_CHANGE_USD="")
    flagged = run_inline(db, "--dry-run", "--include-from-zero", ALERT_MIN_CHANGE_USD="")

    # skipped-from-zero counts only what --include-from-zero would alert
    assert "2 skipped-from-zero (--include-from-zero alerts them), 2 below --min-change-usd" in without.stdout
    assert "0 skipped-from-zero, 2 below --min-change-usd;" in flagged.stdout
    assert "2 alerts would be sent" in flagged.stdout
    assert "[new balance] 2024-03-01 organization 2: $0.00 -> -$1,500.00" in flagged.stdout


def test_severity_warning_critical_by_ratio_and_by_usd(db, run_inline):  # noqa: F811
    add_moves(
        db,
        (1, DAY[0], "20000", "30000"),  # +50%, $10,000: warning
        (2, DAY[0], "2000", "4000"),  # +100%: critical (--critical-threshold 1)
        (3, DAY[0], "200000", "320000"),  # +60%, $120,000: critical (above --critical-usd 100,000)
        (4, DAY[0], "-2000", "-1000"),  # +50%: warning
        (5, DAY[0], "200000", "300000"),  # +50%, exactly $100,000: warning (not above --critical-usd)
        # falls count as rises do
        (6, DAY[0], "2000", "0"),  # -100%: critical
        (7, DAY[0], "300000", "140000"),  # -53%, -$160,000: critical
    )

    result = run_inline(db)

    severities = [line.split("), ")[1].split(";")[0] for line in alert_lines(result.stdout)]
    assert severities == [WARNING, CRITICAL, CRITICAL, WARNING, WARNING, CRITICAL, CRITICAL]

    again = run_inline(
        db, "--date", DAY[0].isoformat(), "--critical-threshold", "3", ALERT_CRITICAL_USD="1000000"
    )
    assert alert_lines(again.stdout) == []  # already sent to the console: the rows keep their severity
    rows = db.query("select organization_id, severity from ops.alert_history order by 1")
    assert rows == [
        (1, WARNING),
        (2, CRITICAL),
        (3, CRITICAL),
        (4, WARNING),
        (5, WARNING),
        (6, CRITICAL),
        (7, CRITICAL),
    ]


def test_suppression_holds_back_repeats_and_lets_a_higher_severity_through(db, run_inline):  # noqa: F811
    add_moves(
        db,
        (1, DAY[0], "2000", "3000"),  # warning: alerted
        (1, DAY[1], "3000", "4500"),  # warning within 2 days: suppressed
        (1, DAY[2], "4500", "9000"),  # critical: severity rose, alerted
        (1, DAY[3], "9000", "18000"),  # critical within 2 days of a critical: suppressed
        (1, DAY[5], "18000", "27000"),  # warning, 3 days after the last alert: alerted
        (2, DAY[1], "2000", "3000"),  # another organization is not affected
    )

    result = run_inline(db, "--since", DAY[0].isoformat(), "--suppress-days", "2")

    assert result.returncode == 0, result.stderr
    assert [line.split(":")[0] for line in alert_lines(result.stdout)] == [
        "[balance alert] 2024-03-01 organization 1",
        "[balance alert] 2024-03-03 organization 1",
        "[balance alert] 2024-03-06 organization 1",
        "[balance alert] 2024-03-02 organization 2",
    ]
    assert history(db) == {
        (1, DAY[0]): ("sent", 1),
        (1, DAY[1]): ("suppressed", 0),
        (1, DAY[2]): ("sent", 1),
        (1, DAY[3]): ("suppressed", 0),
        (1, DAY[5]): ("sent", 1),
        (2, DAY[1]): ("sent", 1),
    }
    assert "2 suppressed (--suppress-days" in result.stdout


def test_suppression_across_runs_uses_the_history(db, run_inline):  # noqa: F811
    add_moves(db, (1, DAY[0], "2000", "3000"))
    assert run_inline(db, ALERT_SUPPRESS_DAYS="3").returncode == 0
    add_moves(db, (1, DAY[3], "3000", "4500"))  # exactly ALERT_SUPPRESS_DAYS later: still held back

    second = run_inline(db, ALERT_SUPPRESS_DAYS="3")

    assert alert_lines(second.stdout) == []
    assert history(db)[(1, DAY[3])] == ("suppressed", 0)


def test_an_alert_suppressed_by_an_earlier_run_does_not_hold_back_a_later_one(db, run_inline):  # noqa: F811
    # suppression counts the alerts that went out (or wait to): a suppressed one, sent to nobody, must
    # not extend the quiet period, across runs as within one
    add_moves(db, (1, DAY[0], "2000", "3000"), (1, DAY[1], "3000", "4500"))
    assert run_inline(db, "--since", DAY[0].isoformat(), ALERT_SUPPRESS_DAYS="2").returncode == 0
    assert history(db) == {(1, DAY[0]): ("sent", 1), (1, DAY[1]): ("suppressed", 0)}
    add_moves(db, (1, DAY[3], "4500", "6750"))  # 3 days after the last alert sent, 2 after the suppressed

    later = run_inline(db, ALERT_SUPPRESS_DAYS="2")

    assert [line.split(":")[0] for line in alert_lines(later.stdout)] == [
        "[balance alert] 2024-03-04 organization 1"
    ]
    assert history(db)[(1, DAY[3])] == ("sent", 1)


def test_an_alert_to_another_destination_suppresses_nothing(db, slack, run_inline):  # noqa: F811
    # suppression is per destination: a line printed to the console does not stand for a Slack alert
    add_moves(db, (1, DAY[0], "2000", "3000"))
    assert run_inline(db, ALERT_SUPPRESS_DAYS="3").returncode == 0  # printed: the console's row
    add_moves(db, (1, DAY[1], "3000", "4500"))

    first_to_slack = run_inline(db, webhook=slack.url, ALERT_SUPPRESS_DAYS="3")

    assert first_to_slack.returncode == 0, first_to_slack.stderr
    assert len(slack.delivered) == 1 and "2024-03-02" in slack.delivered[0]["text"]
    assert history(db, "slack") == {(1, DAY[1]): ("sent", 1)}


def test_a_rerun_counts_only_the_alerts_it_suppressed(db, run_inline):  # noqa: F811
    add_moves(db, (1, DAY[0], "2000", "3000"), (1, DAY[1], "3000", "4500"))
    assert run_inline(db, "--since", DAY[0].isoformat()).returncode == 0

    # the rule would hold DAY[1] back now, but that alert was sent already: nothing is suppressed
    rerun = run_inline(db, "--date", DAY[1].isoformat(), "--suppress-days", "2")

    assert rerun.returncode == 0, rerun.stderr
    assert history(db)[(1, DAY[1])] == ("sent", 1)
    assert "suppressed" not in rerun.stdout


def test_suppression_off_by_default(db, run_inline):  # noqa: F811
    add_moves(db, (1, DAY[0], "2000", "3000"), (1, DAY[1], "3000", "4500"))
    result = run_inline(db, "--since", DAY[0].isoformat())
    assert len(alert_lines(result.stdout)) == 2


def test_suppressed_pure_rule():
    def alert(day, severity):
        return Alert(1, DAY[day], BALANCE_CHANGE, 0, 0, None, severity=severity)

    alerts = [alert(1, WARNING), alert(2, CRITICAL), alert(4, WARNING)]
    assert noise.suppressed(alerts, {1: [(DAY[0], WARNING)]}, 1) == {(1, DAY[1])}
    assert noise.suppressed(alerts, {}, 0) == set()
    # the earlier alerts of the batch hold back the later ones, in whatever order they come
    assert noise.suppressed([alert(2, WARNING), alert(1, WARNING)], {}, 1) == {(1, DAY[2])}
    # a critical is held back by a critical in the window, even when a warning is there too
    rising = [alert(0, WARNING), alert(1, CRITICAL), alert(2, CRITICAL)]
    assert noise.suppressed(rising, {}, 2) == {(1, DAY[2])}


# --- digest --------------------------------------------------------------------------------------


def test_digest_replaces_25_messages_with_one(db):  # noqa: F811
    moves = [(i, DAY[0], "10000", "20000" if i <= 3 else "16000") for i in range(1, 26)]  # 3 critical
    add_moves(db, *moves)

    with SlackStub() as stub:
        result = run_alerts(db, webhook=stub.url, **NO_FLOOR)

    assert result.returncode == 0, result.stderr
    (body,) = stub.delivered
    assert body["text"] == "Balance alerts digest: 25 alerts (3 critical, 22 warning), 2024-03-01."
    top = body["blocks"][2]["text"]["text"].splitlines()
    assert top[0] == "*The 10 largest by USD change*"
    assert [line.split("`")[1] for line in top[1:]] == ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"]
    assert "from ops.alert_history where destination = 'slack'" in body["blocks"][3]["elements"][0]["text"]
    assert "25 alerts sent (in 1 digest)" in result.stdout
    assert set(history(db).values()) == {("sent", 1)} and len(history(db)) == 25


def test_a_digest_that_failed_is_not_counted_as_sent_in_one(db):  # noqa: F811
    add_moves(db, (1, DAY[0], "10000", "20000"), (2, DAY[0], "10000", "20000"))

    with SlackStub() as stub:
        stub.always(server_error(500))
        result = run_alerts(db, webhook=stub.url, ALERT_DIGEST_OVER="1", ALERT_HTTP_RETRIES="0", **NO_FLOOR)

    assert result.returncode == 1
    assert "0 alerts sent, 2 failed" in result.stdout
    assert "failed for the digest of 2 alerts: HTTP 500" in result.stderr


def test_a_digests_query_lists_exactly_its_alerts(db, run_inline):  # noqa: F811
    # organization 1's alert of DAY[0] went out on its own first; a later run sends three others of the
    # same day in a digest: its query must not list organization 1 (nor any other destination's rows)
    add_moves(db, (1, DAY[0], "10000", "16000"))
    assert run_inline(db).returncode == 0
    add_moves(db, *[(i, DAY[0], "10000", "16000") for i in (2, 3, 4)])
    execute(db, "alter table ops.alert_history drop column digest_id", role="alerter")  # an older alerter's

    result = run_inline(db, "--date", DAY[0].isoformat(), "--digest-over", "2")

    assert result.returncode == 0, result.stderr
    query = result.stdout.splitlines()[4].removeprefix("[balance digest] all 3: ")
    assert query.startswith("select ")
    listed = db.query(query, role="alerter")
    assert sorted(row[0] for row in listed) == [2, 3, 4]


def test_a_not_a_number_in_a_digest_comes_first_as_in_its_query(db, run_inline):  # noqa: F811
    # ranking by abs(change) compared NaN with numbers: InvalidOperation, exit 2 on every run
    add_moves(db, *[(i, DAY[0], "10000", "16000") for i in (1, 2, 3)])
    execute(
        db,
        "insert into marts.fct_organization_daily_financials "
        "values (4, %s, 1, 0, 0, 'NaN', 'NaN', 100, 'NaN')",
        (DAY[0],),
        role="transformer",
    )

    result = run_inline(db, "--digest-over", "2")

    assert result.returncode == 0, result.stderr
    shown = [line.split("organization ")[1].split(":")[0] for line in alert_lines(result.stdout)]
    assert shown == ["4", "1", "2", "3"]
    query = result.stdout.splitlines()[5].removeprefix("[balance digest] all 4: ")
    assert [row[0] for row in db.query(query, role="alerter")] == [4, 1, 2, 3]  # Postgres: NaN above all


def test_digest_threshold_is_a_flag(db, run_inline):  # noqa: F811
    add_moves(db, *[(i, DAY[0], "10000", "16000") for i in range(1, 4)])
    result = run_inline(db, "--digest-over", "2")
    assert result.stdout.splitlines()[0] == (
        "[balance digest] 3 alerts (0 critical, 3 warning), 2024-03-01; the 3 largest by USD change:"
    )
    assert len(alert_lines(result.stdout)) == 3


def test_exactly_digest_over_alerts_are_sent_one_by_one(db, run_inline):  # noqa: F811
    # a digest is for more than --digest-over alerts: as many as it are still each their own message
    add_moves(db, *[(i, DAY[0], "10000", "16000") for i in range(1, 3)])
    result = run_inline(db, "--digest-over", "2")
    assert result.returncode == 0, result.stderr
    assert "[balance digest]" not in result.stdout
    assert len(alert_lines(result.stdout)) == 2
    assert "2 alerts sent," in result.stdout


def test_a_dry_run_names_no_rows_it_did_not_record(db, run_inline):  # noqa: F811
    # organization 1's second day is suppressed; the other four alerts make one digest (over 2)
    moves = [(i, DAY[1], "10000", "16000") for i in (2, 3, 4)]
    add_moves(db, (1, DAY[0], "2000", "3000"), (1, DAY[1], "3000", "4500"), *moves)

    result = run_inline(
        db, "--dry-run", "--since", DAY[0].isoformat(), "--suppress-days", "2", "--digest-over", "2"
    )

    assert result.returncode == 0, result.stderr
    assert "4 alerts would be sent (in 1 digest)" in result.stdout
    assert "1 would be suppressed (--suppress-days)" in result.stdout
    assert "[balance digest] all 4: not listed (a dry run records nothing" in result.stdout
    assert "ops.alert_history" not in result.stdout  # it has no rows of this run


def test_digest_json_payload_and_console_lines():
    from datetime import date
    from decimal import Decimal

    from data_platform.alerts import messages, payload
    from data_platform.alerts.records import Digest

    alerts = tuple(
        Alert(
            i,
            date(2024, 3, 1 + i % 3),  # a backfill's digest spans days
            BALANCE_CHANGE,
            Decimal(1000),
            Decimal(1000 + 100 * i),
            Decimal(i) / 10,
            severity=CRITICAL if i >= 10 else WARNING,
        )
        for i in range(1, 13)
    )
    digest = Digest("OPS_WEBHOOK", alerts, {}, mention="<!here>")
    document = payload.json_payload(digest)
    assert (document["type"], document["alert_count"], document["counts"]) == (
        "digest",
        12,
        {"warning": 9, "critical": 3},
    )
    assert [item["organization_id"] for item in document["top"]] == [str(i) for i in range(12, 2, -1)]
    assert document["top"][0]["organization"]["context"] == "not in dim_organizations"
    assert "where destination = 'OPS_WEBHOOK'" in document["list_the_rest"]
    assert (document["first_day"], document["last_day"]) == ("2024-03-01", "2024-03-03")
    lines = messages.digest_lines(digest)
    assert lines[0].startswith("[balance digest] 12 alerts (3 critical, 9 warning), 2024-03-01..2024-03-03;")
    assert len(lines) == 12 and lines[-1].startswith("[balance digest] all 12: select ")
