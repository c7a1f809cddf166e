"""The ledger, end to end through init.sh: exports that arrive over time, changes to older invoices booked
on the day their export saw them, incremental builds that equal a full rebuild, and rebuild decisions that
survive an interrupted run.

The base export is test_pipeline's hand-computed fixture plus two early invoices (single-file layout, export
date 2023-01-06); the next exports are dated folders holding only new and changed rows. Every expected
number below is computed by hand in the comments.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from datetime import date
from decimal import Decimal
from pathlib import Path

import psutil
import pytest
from conftest import (
    PROJECT_ROOT,
    dbt_by_hand,
    lines_until,
    loader_by_hand,
    pipeline_env,
    run_pipeline,
    start_pipeline,
)
from test_alerts import run_alerts
from test_pipeline import (
    HEADER,
    INVOICE_ROWS,
    SENTINEL,
    assert_succeeded,
    fact_rows,
    project_with_zero_rule,
    write_fixture,
)

pytestmark = pytest.mark.slow

D = Decimal
EARLY_ROWS = [
    f"11,{SENTINEL},{SENTINEL},1,-7,open,USD,,,40.00,,1.00000000,,2022-11-01T10:00:00.000Z",
    f"21,{SENTINEL},{SENTINEL},2,-7,open,USD,,,60.00,,1.00000000,,2022-11-02T10:00:00.000Z",
]
BASE_ROWS = [*EARLY_ROWS, *INVOICE_ROWS]
# Export 2023-01-07 (only new and changed rows):
#   org 1: 105 pending 165 -> paid in full (-165); 101 open 100 -> cancelled (-100); 401 new credit (-75);
#          404 created 01-03 but first seen now, after 01-03 was exported: booked on 01-07 (+12.50)
#          balance 315 -> -12.50, change -327.50, ratio -327.5 / 315, 2 changed invoices (-265)
#   org 2: 402 new, 90 EUR at 0.9 per USD (+100): 30 -> 130, ratio +3.333...
#   org 3: 403 new (+5), from zero
#   org 5: 601 created 01-06 23:00, on the day the base export covers, but first seen now: booked on 01-07
#          (+20), from zero; 01-06 was reported already
DAY_2 = "2023-01-07"
DAY_2_ROWS = [
    "105,{s},{s},1,-7,paid,USD,USD,card,165.00,165,1.00000000,1.00000000,2023-01-05T00:00:00.000Z",
    "101,{s},{s},1,-7,cancelled,USD,,,100.00,,1.00000000,,2023-01-01T08:00:00.000Z",
    "401,{s},{s},1,-7,credited,USD,,,75.00,,1.00000000,,2023-01-07T09:00:00.000Z",
    "404,{s},{s},1,-7,open,USD,,,12.50,,1.00000000,,2023-01-03T15:00:00.000Z",
    "402,{s},{s},2,-7,open,EUR,,,90.00,,0.90000000,,2023-01-07T10:00:00.000Z",
    "403,{s},{s},3,-7,pending,USD,,,5.00,,1.00000000,,2023-01-07T11:00:00.000Z",
    "601,{s},{s},5,-7,open,USD,,,20.00,,1.00000000,,2023-01-06T23:00:00.000Z",
]
# Export 2023-01-08:
#   org 2: 402 paid (-100); 206 (open 30) moves to organization 3 (-30): 130 -> 0, 2 changed invoices
#   org 3: 206 arrives (+30): 5 -> 35; 202 repeated unchanged (no version, no entry)
#   org 4: two invoices of 50 EUR at 0.92 per USD (54.35 each, to the cent) and a credit note for the
#          whole 100 EUR (-108.70): exactly 0, not the remainder of dividing each amount exactly
DAY_3 = "2023-01-08"
DAY_3_ROWS = [
    "402,{s},{s},2,-7,paid,EUR,EUR,card,90.00,90,0.90000000,0.90000000,2023-01-07T10:00:00.000Z",
    "206,{s},{s},3,-7,open,USD,,,30.00,,1.00000000,,2023-01-06T02:00:00.000Z",
    "202,{s},{s},2,-7,refunded,USD,,,10.00,,1.00000000,,2023-01-04T12:00:00.000Z",
    "501,{s},{s},4,-7,open,EUR,,,50.00,,0.92000000,,2023-01-08T01:00:00.000Z",
    "502,{s},{s},4,-7,open,EUR,,,50.00,,0.92000000,,2023-01-08T02:00:00.000Z",
    "503,{s},{s},4,-7,credited,EUR,,,100.00,,0.92000000,,2023-01-08T03:00:00.000Z",
]
# table -> (columns compared, order); summed_through_date says when a row was last added to, which
# differs between incremental runs and one full build by design
TABLES = {
    "marts.fct_organization_daily_financials": ("*", "organization_id, balance_date"),
    "marts.fct_invoices": ("*", "invoice_id"),
    "marts.dim_organizations": ("*", "organization_id"),
    "marts.fct_organization_daily_drivers": ("*", "organization_id, balance_date, driver_kind"),
    "intermediate.int_organization_daily_status_totals": ("*", "organization_id, balance_date, status"),
    "intermediate.int_organization_status_totals": (
        "organization_id, status, invoice_count, invoiced_amount_usd, paid_amount_usd, balance_usd, "
        "first_invoice_date, last_invoice_date",
        "organization_id, status",
    ),
}


def write_export(csv_dir: Path, day: str, rows: list[str]) -> Path:
    """A dated export folder with only an invoices.csv (organizations.csv is optional in exports)."""
    folder = csv_dir / "exports" / day
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "invoices.csv").write_text("\n".join([HEADER, *(r.format(s=SENTINEL) for r in rows)]) + "\n")
    return csv_dir


def snapshot(database) -> dict[str, list[tuple]]:
    return {
        table: database.query(f"select {columns} from {table} order by {key}")
        for table, (columns, key) in TABLES.items()
    }


def fact_row(database, organization_id: int, day: str) -> tuple:
    [row] = database.query(
        """
        select invoice_count, changed_invoice_count, balance_change_usd, status_change_usd,
               previous_balance_usd, balance_usd, round(balance_change_ratio, 9)
        from marts.fct_organization_daily_financials where organization_id = %s and balance_date = %s
        """,
        (organization_id, day),
    )
    return row


@pytest.fixture(scope="module")
def ledger(make_database, tmp_path_factory):
    """Three exports built one run at a time, then the same exports rebuilt from scratch."""
    csv_dir = write_fixture(tmp_path_factory.mktemp("exports"), BASE_ROWS)
    database = make_database()
    runs = {"base": run_pipeline(database, csv_dir)}
    before = fact_rows(database)
    xmin_before = database.query("select xmin::text from marts.fct_organization_daily_financials order by 1")

    runs["day2"] = run_pipeline(database, write_export(csv_dir, DAY_2, DAY_2_ROWS), ALERT_MIN_CHANGE_USD="0")
    after_day2 = fact_rows(database)
    xmin_after = database.query(
        "select xmin::text from marts.fct_organization_daily_financials where balance_date <= '2023-01-06' "
        "order by 1"
    )
    runs["day3"] = run_pipeline(database, write_export(csv_dir, DAY_3, DAY_3_ROWS), RUN_ALERTS="false")
    incremental = snapshot(database)
    runs["again"] = run_pipeline(database, csv_dir, RUN_ALERTS="false")
    again = snapshot(database)
    runs["full"] = run_pipeline(database, csv_dir, FULL_REFRESH="true", RUN_ALERTS="false")
    for result in runs.values():
        assert_succeeded(result)
    return {
        "database": database,
        "runs": runs,
        "before": before,
        "after_day2": after_day2,
        "xmin": (xmin_before, xmin_after),
        "incremental": incremental,
        "again": again,
        "full": snapshot(database),
        "full_build_mark": database.query("select full_build_started_at from raw.build_state"),
    }


def test_a_payment_of_an_old_invoice_moves_the_balance_on_the_export_day(ledger):
    database = ledger["database"]
    # invoice_count (new), changed, change, status_change, previous, balance, ratio
    assert fact_row(database, 1, DAY_2) == (
        2,
        2,
        D("-327.50"),
        D("-265.00"),
        D(315),
        D("-12.50"),
        D("-1.039682540"),
    )
    assert fact_row(database, 2, DAY_2) == (1, 0, D(100), D(0), D(30), D(130), D("3.333333333"))
    assert fact_row(database, 3, DAY_2) == (1, 0, D(5), D(0), D(0), D(5), None)


def test_an_invoice_first_seen_after_the_export_of_its_created_day_is_booked_on_the_day_seen(ledger):
    database = ledger["database"]
    assert fact_row(database, 5, DAY_2) == (1, 0, D(20), D(0), D(0), D(20), None)
    assert database.query(
        "select balance_date from marts.fct_organization_daily_financials where organization_id = 5"
    ) == [(date.fromisoformat(DAY_2),)]


def test_days_before_the_export_are_untouched(ledger):
    before = [row for row in ledger["before"] if str(row[1]) <= "2023-01-06"]
    after = [row for row in ledger["after_day2"] if str(row[1]) <= "2023-01-06"]
    assert after == before
    xmin_before, xmin_after = ledger["xmin"]
    assert xmin_after == xmin_before, "the incremental build rewrote days it had already reported"


def test_an_invoice_moving_organization_leaves_one_and_joins_the_other(ledger):
    database = ledger["database"]
    # the invoice that left counts as changed where it left, as in the day's drivers
    assert fact_row(database, 2, DAY_3)[1:6] == (2, D(-130), D(-130), D(130), D(0))
    assert fact_row(database, 3, DAY_3)[1:6] == (1, D(30), D(30), D(5), D(35))
    current = database.query(
        "select organization_id, version, status from marts.fct_invoices where invoice_id = 206"
    )
    assert current == [(3, 2, "open")]


def test_a_day_s_invoiced_and_paid_amounts_are_net_changes(ledger):
    database = ledger["database"]
    # org 2 on DAY_3: 402 paid (invoiced 100 - 100, paid +100) and 206 moved away (invoiced -30)
    assert database.query(
        "select invoiced_amount_usd, paid_amount_usd from marts.fct_organization_daily_financials "
        "where organization_id = 2 and balance_date = %s",
        (DAY_3,),
    ) == [(D(-30), D(100))]


def test_amounts_that_cancel_out_in_their_currency_leave_a_zero_balance(ledger):
    database = ledger["database"]
    amounts = database.query(
        "select amount_usd from marts.fct_invoices where invoice_id in (501, 502, 503) order by invoice_id"
    )
    assert amounts == [(D("54.35"),), (D("54.35"),), (D("108.70"),)]
    # a remainder like -1e-16 would make the next day's move a 10^19 % alert, not one from zero
    assert fact_row(database, 4, DAY_3) == (3, 0, D(0), D(0), D(0), D(0), None)


def test_the_alert_run_alerts_the_day_old_invoices_were_paid(ledger):
    alerts = [
        line for line in ledger["runs"]["day2"].stdout.splitlines() if line.startswith("[balance alert]")
    ]
    assert [line.split(":")[0] for line in alerts] == [
        "[balance alert] 2023-01-07 organization 1",
        "[balance alert] 2023-01-07 organization 2",
    ]
    # why it moved: the ledger's entries for the day, each hand-computed above
    assert alerts[0].endswith(
        "$315.00 -> -$12.50 (-103.97%), critical; 3 active contracts, first payment 2023-01-02, "
        "last payment 2023-01-05; why: 1 payment -$165.00, 1 cancellation -$100.00, 1 credit -$75.00, "
        "1 new invoice +$12.50; top invoices: 105 paid (was pending) -$165.00, 101 cancelled (was open) "
        "-$100.00, 401 credited -$75.00"
    )


def test_incremental_builds_equal_a_full_rebuild(ledger):
    for table in TABLES:
        assert ledger["incremental"][table] == ledger["full"][table], f"{table} differs from a full rebuild"


def test_the_same_exports_again_change_nothing(ledger):
    assert ledger["again"] == ledger["incremental"]
    assert "already loaded" in ledger["runs"]["again"].stdout


def test_each_build_says_what_it_rebuilds(ledger):
    runs = ledger["runs"]
    assert "rebuilt from scratch (no successful build is recorded yet)" in runs["base"].stdout
    assert f"days from {DAY_2} (exports after 2023-01-06)" in runs["day2"].stdout
    # the run whose results test_incremental_builds_equal_a_full_rebuild compares was incremental too
    assert f"days from {DAY_3} (exports after {DAY_2})" in runs["day3"].stdout
    assert "rebuilt from scratch (FULL_REFRESH is on)" in runs["full"].stdout
    # and its success cleared the mark it set: dbt's on-run-start hook, which marks a build by hand, leaves
    # the pipeline's own builds alone (a mark left would make every next build full and hold back the alerts)
    assert ledger["full_build_mark"] == [(None,)]


def dbt_test(database, select: str, **env: str) -> subprocess.CompletedProcess:
    """`dbt test --select` on the built warehouse, as the pipeline's build would run it."""
    return subprocess.run(
        ["dbt", "test", "--select", select, "--project-dir", "dbt", "--profiles-dir", ".dbt"],
        cwd=PROJECT_ROOT,
        env=pipeline_env(database, PROJECT_ROOT / "csv_data", **env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_caught_in_its_window_only(database, select: str, failure: str) -> None:
    """The checks of `select` fail, their output holding `failure`, on an incremental build whose window
    holds the fault (DAY_3) and on a full build; an incremental build whose window starts after it does
    not read that day again, and passes."""
    for window in ({"LEDGER_WINDOW_START": DAY_3}, {}):
        result = dbt_test(database, select, **window)
        assert result.returncode == 1, result.stdout
        assert failure in result.stdout, result.stdout
    late = dbt_test(database, select, LEDGER_WINDOW_START="2023-01-09")
    assert late.returncode == 0, late.stdout


@pytest.fixture
def corrupted(ledger):
    """Change one stored value for a test, then put it back."""
    database = ledger["database"]
    restores = []

    def corrupt(table: str, column: str, where: str) -> None:
        changed = database.query(f"update {table} set {column} = {column} + 1 where {where} returning 1")
        assert len(changed) == 1, f"{len(changed)} rows of {table} match {where}"
        restores.append(f"update {table} set {column} = {column} - 1 where {where} returning 1")

    yield corrupt
    for statement in restores:
        database.query(statement)


def test_the_ledger_check_fails_when_a_window_day_was_booked_wrong(ledger, corrupted):
    database = ledger["database"]
    corrupted(
        "intermediate.int_organization_daily_status_totals",
        "balance_change_usd",
        f"organization_id = 3 and balance_date = '{DAY_3}' and status = 'open'",
    )
    check = "assert_ledger_matches_current_invoices"
    assert_caught_in_its_window_only(database, check, f"Failure in test {check}")


def test_the_version_chain_check_fails_when_a_version_does_not_follow_its_predecessor(ledger, corrupted):
    database = ledger["database"]
    versions = "intermediate.int_invoice_versions_enriched"
    changed_on_day_3 = database.query(
        f"select min(invoice_id) from {versions} where seen_on = '{DAY_3}' and version > 1"
    )[0][0]
    assert changed_on_day_3 is not None
    # the predecessor found is not the previous version
    corrupted(versions, "previous_version", f"seen_on = '{DAY_3}' and invoice_id = {changed_on_day_3}")
    assert_caught_in_its_window_only(
        database, "assert_invoice_versions_follow_their_predecessor", "Got 1 result"
    )


def test_the_balance_check_fails_when_an_organization_disagrees_with_its_days(ledger, corrupted):
    database = ledger["database"]
    corrupted("marts.dim_organizations", "balance_usd", "organization_id = 3")
    assert_caught_in_its_window_only(database, "assert_balance_changes_sum_to_final_balance", "Got 1 result")


def test_the_drivers_check_fails_when_a_day_s_drivers_do_not_sum_to_its_change(ledger, corrupted):
    database = ledger["database"]
    corrupted(
        "marts.fct_organization_daily_drivers",
        "balance_change_usd",
        f"organization_id = 2 and balance_date = '{DAY_3}' and driver_kind = 'payments'",
    )
    assert_caught_in_its_window_only(database, "assert_drivers_sum_to_daily_balance_change", "Got 1 result")


@pytest.mark.parametrize(
    ("model", "schema", "where"),
    [
        ("int_organization_status_totals", "intermediate", "organization_id = 3 and status = 'open'"),
        ("fct_organization_daily_financials", "marts", f"organization_id = 4 and balance_date = '{DAY_3}'"),
    ],
)
def test_a_null_balance_fails_its_not_null_check(ledger, model, schema, where):
    """A status without a rule fails the build at staging, before these models; their not-null checks guard
    the sums themselves (dim_organizations' sum over the status totals would skip a null silently). The
    row was written by the build of DAY_3."""
    database = ledger["database"]
    table = f"{schema}.{model}"
    [(kept,)] = database.query(f"select balance_usd from {table} where {where}")
    database.query(f"update {table} set balance_usd = null where {where} returning 1")
    try:
        assert_caught_in_its_window_only(
            database, f"{model},test_type:generic", f"FAIL 1 not_null_{model}_balance_usd"
        )
    finally:
        database.query(f"update {table} set balance_usd = %s where {where} returning 1", (kept,))


def test_the_balance_check_fails_when_an_incremental_run_resumes_from_a_wrong_stored_balance(ledger):
    """The fact's own arithmetic (balance = previous balance + change) holds over a window whatever
    balance it resumed from; dim_organizations, summed through the other incremental path, does not."""
    database = ledger["database"]
    fact = "marts.fct_organization_daily_financials"
    stored = f"organization_id = 2 and balance_date = '{DAY_2}'"
    window = {"LEDGER_WINDOW_START": DAY_3, "BUILD_RECORDED_BY_PIPELINE": "true"}

    def rebuild_the_window() -> None:
        run = subprocess.run(
            [
                "dbt",
                "run",
                "--select",
                "fct_organization_daily_financials",
                "--project-dir",
                "dbt",
                "--profiles-dir",
                ".dbt",
            ],
            cwd=PROJECT_ROOT,
            env=pipeline_env(database, PROJECT_ROOT / "csv_data", **window),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stdout

    database.query(f"update {fact} set balance_usd = balance_usd + 1 where {stored} returning 1")
    try:
        rebuild_the_window()
        assert fact_row(database, 2, DAY_3)[4:6] == (D(131), D(1))
        result = dbt_test(database, "assert_balance_changes_sum_to_final_balance", **window)
        assert result.returncode == 1, result.stdout
        assert "Got 1 result" in result.stdout, result.stdout
    finally:
        database.query(f"update {fact} set balance_usd = balance_usd - 1 where {stored} returning 1")
        rebuild_the_window()
    assert fact_row(database, 2, DAY_3)[4:6] == (D(130), D(0))


def test_a_hand_build_from_an_earlier_window_start_changes_nothing(ledger):
    """A window starting before the newest export (the last days rebuilt by hand, or a build retried after
    one that wrote its days and failed) replaces its days, the first one too, and holds entries seen in it
    but booked before it (the base export's invoices, booked on their created days): the days before the
    window are kept as stored, not added to again (a duplicate key), nor left out."""
    database = ledger["database"]
    before = snapshot(database)
    window = {"LEDGER_WINDOW_START": "2023-01-05", "BUILD_RECORDED_BY_PIPELINE": "true"}
    incremental = "config.materialized:incremental"
    said = dbt_by_hand(
        database, PROJECT_ROOT / "csv_data", PROJECT_ROOT, "run", "--select", incremental, **window
    )
    assert sorted(re.findall(r"OK created sql incremental model (\S+)", said)) == [
        "intermediate.int_invoice_versions_enriched",
        "intermediate.int_organization_daily_status_totals",
        "intermediate.int_organization_status_totals",
        "marts.fct_invoices",
        "marts.fct_organization_daily_drivers",
        "marts.fct_organization_daily_financials",
    ]
    assert snapshot(database) == before


def test_a_warehouse_whose_first_export_was_empty_sums_the_days_after_it(make_database, tmp_path):
    """A header-only first export (loaded by hand with --allow-empty) builds a warehouse with no totals
    at all: the next day's totals must still be summed from the start, not from a date nothing recorded."""
    database, csv_dir = make_database(), write_export(tmp_path / "csv", "2023-01-06", [])
    loader_by_hand(database, csv_dir, "--allow-empty")
    assert_succeeded(run_pipeline(database, csv_dir, RUN_ALERTS="false"))
    day = ["701,{s},{s},1,-7,open,USD,,,40.00,,1.00000000,,2023-01-07T10:00:00.000Z"]
    next_day = run_pipeline(database, write_export(csv_dir, "2023-01-07", day), RUN_ALERTS="false")
    assert_succeeded(next_day)
    assert "days from 2023-01-07" in next_day.stdout, next_day.stdout
    organization = "select balance_usd from marts.dim_organizations where organization_id = 1"
    assert database.query(organization) == [(Decimal("40.00"),)]


def test_an_invoice_that_moved_away_is_not_shown_as_a_booking_of_its_old_status(ledger):
    """In the organization it left, a moved invoice has only the reversal of its previous version: no
    status was booked there that day."""
    database = ledger["database"]
    drivers = database.query(
        "select driver_kind, invoice_count, balance_change_usd, top_invoices::text "
        "from marts.fct_organization_daily_drivers where organization_id = 2 and balance_date = %s "
        "order by driver_kind",
        (DAY_3,),
    )
    assert [(kind, count, change, json.loads(top)) for kind, count, change, top in drivers] == [
        (
            "other_changes",
            1,
            D(-30),
            [
                {
                    "invoice_id": 206,
                    "status": "moved_away",
                    "previous_status": "open",
                    "balance_change_usd": -30,
                }
            ],
        ),
        (
            "payments",
            1,
            D(-100),
            [{"invoice_id": 402, "status": "paid", "previous_status": "open", "balance_change_usd": -100}],
        ),
    ]
    # in the organization it moved into, it replaced no status of that organization's
    moved_in = database.query(
        "select top_invoices from marts.fct_organization_daily_drivers where organization_id = 3 "
        "and balance_date = %s and top_invoices @> '[{\"invoice_id\": 206}]'",
        (DAY_3,),
    )
    assert moved_in == [
        ([{"invoice_id": 206, "status": "open", "previous_status": None, "balance_change_usd": 30}],)
    ]
    alert = run_alerts(database, "--date", DAY_3, "--dry-run")
    assert alert.returncode == 0, alert.stdout + alert.stderr
    [line] = [
        line for line in alert.stdout.splitlines() if f"[balance alert] {DAY_3} organization 2:" in line
    ]
    assert line.endswith(
        "why: 1 payment -$100.00, 1 other change -$30.00; "
        "top invoices: 402 paid (was open) -$100.00, 206 moved_away (was open) -$30.00"
    )


def stop_the_pipeline(database, csv_dir: Path, project: Path, when: str) -> str:
    """Run the project's init.sh and stop it with SIGTERM after the first output line holding `when`;
    its output. Checks that it stopped, and that no step outlived it."""
    env = pipeline_env(database, csv_dir, project, RUN_ALERTS="false")
    process = start_pipeline(env, project, stderr=subprocess.STDOUT)
    output = lines_until(process, when)
    time.sleep(1)  # dbt is parsing the project or building: its children exist now
    steps = psutil.Process(process.pid).children(recursive=True)
    assert steps, "no running step to forward the signal to"
    process.send_signal(signal.SIGTERM)
    output.append(process.stdout.read())
    assert process.wait(timeout=120) == 128 + signal.SIGTERM, "".join(output)
    assert "stopped by SIGTERM" in "".join(output)
    time.sleep(0.5)
    assert not [step for step in steps if step.is_running() and step.status() != psutil.STATUS_ZOMBIE], (
        "a step outlived the pipeline"
    )
    return "".join(output)


def hold_the_build_after(project: Path, model: str) -> None:
    """Add a model to the project that waits 10 minutes after `model` is built, so that a stop after
    `model` always lands before the build can succeed."""
    held = project / "dbt" / "models" / "marts" / "held_build.sql"
    held.write_text(
        "{{ config(materialized='table') }}\n"
        f"select 1 as held from {{{{ ref('{model}') }}}} cross join pg_sleep(600) limit 1\n"
    )


def assert_held_until_rebuilt_in_full(database, csv_dir: Path, built: dict, alert_says: str) -> None:
    """After a build with the `open` rule at 0,0 that the pipeline did not record, and with the rules put back
    as its last successful build had them: fct_invoices holds the edited rules' numbers (the 40.00 open
    invoice counts 0), an alert run by hand reads nothing of marts that mix both rules' numbers (its error
    says `alert_says`), and the next run rebuilds in full, back to `built`."""
    assert database.query(
        "select balance_contribution_usd from marts.fct_invoices where invoice_id = 11"
    ) == [(D(0),)]
    hand_run = run_alerts(database)
    assert hand_run.returncode == 2, hand_run.stdout
    assert alert_says in hand_run.stderr
    result = run_pipeline(database, csv_dir, RUN_ALERTS="false")
    assert_succeeded(result)
    assert "rebuilt from scratch (the last full rebuild did not finish, a build by hand" in result.stdout
    assert snapshot(database) == built


def test_an_interrupted_rules_change_is_rebuilt_in_full_next_time(make_database, tmp_path):
    csv_dir = write_fixture(tmp_path / "csv", BASE_ROWS)
    database = make_database()
    assert_succeeded(run_pipeline(database, csv_dir, RUN_ALERTS="false"))

    # the rules change, and the run that would apply them is stopped during dbt build
    project = project_with_zero_rule(tmp_path / "project", "open")
    stop_the_pipeline(database, csv_dir, project, when="==> dbt build")

    # the next run notices the rules differ from the last successful build's and rebuilds everything
    result = run_pipeline(database, csv_dir, project_root=project, RUN_ALERTS="false")
    assert_succeeded(result)
    assert "rebuilt from scratch (the balance rules changed since the last successful build)" in result.stdout
    rebuilt = fact_rows(database)
    assert_succeeded(
        run_pipeline(database, csv_dir, project_root=project, FULL_REFRESH="true", RUN_ALERTS="false")
    )
    assert rebuilt == fact_rows(database)
    # the 2022-11-01 open invoice (40) no longer counts, although nothing else changed that day
    assert database.query(
        "select balance_usd from marts.fct_organization_daily_financials "
        "where organization_id = 1 and balance_date = '2022-11-01'"
    ) == [(D(0),)]


def test_a_stopped_rules_change_then_undone_is_rebuilt_in_full_next_time(make_database, tmp_path):
    """The stopped build had replaced some tables with the edited rules' numbers: putting the rules back
    as the last successful build had them must not make the next build incremental."""
    csv_dir = write_fixture(tmp_path / "csv", BASE_ROWS)
    database = make_database()
    assert_succeeded(run_pipeline(database, csv_dir, RUN_ALERTS="false"))
    built = snapshot(database)

    project = project_with_zero_rule(tmp_path / "project", "open")
    hold_the_build_after(project, "fct_invoices")
    output = stop_the_pipeline(
        database, csv_dir, project, when="OK created sql incremental model marts.fct_invoices"
    )
    # the held model's query outlives its client until its sleep ends; it would hold fct_invoices
    database.query(
        "select pg_terminate_backend(pid) from pg_stat_activity "
        "where query like '%pg_sleep(600)%' and datname = current_database() and pid <> pg_backend_pid()"
    )
    assert "rebuilt from scratch (the balance rules changed" in output
    # the edit is undone: the files are as the last successful build recorded them
    assert_held_until_rebuilt_in_full(database, csv_dir, built, "a full rebuild of the marts started at")
    # and the build after it is incremental again
    again = run_pipeline(database, csv_dir, RUN_ALERTS="false")
    assert_succeeded(again)
    assert "days from 2023-01-07" in again.stdout


def marked(database) -> bool:
    """Whether the build record is marked as a full rebuild that has not succeeded (then unmarks it)."""
    (mark,) = database.query(
        "update raw.build_state set full_build_started_at = null "
        "returning (select full_build_started_at is not null from raw.build_state)"
    )
    return mark[0]


def test_a_hand_build_marks_the_record_whenever_it_builds_a_model_that_keeps_days(make_database, tmp_path):
    csv_dir = write_fixture(tmp_path / "csv", BASE_ROWS)
    database = make_database()
    assert_succeeded(run_pipeline(database, csv_dir, RUN_ALERTS="false"))
    window = {"LEDGER_WINDOW_START": "2023-01-07"}  # the pipeline's: the day after the last export built
    hand = ["--exclude-resource-type", "unit_test"]
    unmarked = {
        "tests": (["test", *hand], {}),
        "the routes: a seed, a table and views, rebuilt by every pipeline build": (
            ["build", "-s", "alert_routing+"],
            {},
        ),
    }
    for what, (command, env) in unmarked.items():
        dbt_by_hand(database, csv_dir, PROJECT_ROOT, *command, **env)
        assert not marked(database), what
    recomputing = {
        "every day (no window)": (["run", "-s", "fct_organization_daily_financials"], {}),
        "an earlier window": (["run", "-s", "fct_invoices"], {"LEDGER_WINDOW_START": "2023-01-06"}),
        "a full refresh": (["run", "--full-refresh", "-s", "fct_invoices"], window),
        # the status totals keep every day they summed: the pipeline's next build would not sum it again
        "the pipeline's own window": (["build", *hand], window),
    }
    for what, (command, env) in recomputing.items():
        dbt_by_hand(database, csv_dir, PROJECT_ROOT, *command, **env)
        assert marked(database), what
    # a record from before the mark existed: the hook drops it, so that the next build is full too
    with database.connect("admin", autocommit=True) as conn:
        conn.execute("alter table raw.build_state drop column full_build_started_at")
    dbt_by_hand(database, csv_dir, PROJECT_ROOT, "run", "-s", "fct_invoices")
    assert database.query("select count(*) from raw.build_state") == [(0,)]


def test_a_hand_build_with_other_rules_then_undone_is_rebuilt_in_full_next_time(make_database, tmp_path):
    """A `dbt build` by hand recomputes every day with the rules in its files and records nothing: once those
    files are put back as the last successful build had them, the pipeline must not keep its days."""
    csv_dir = write_fixture(tmp_path / "csv", BASE_ROWS)
    database = make_database()
    assert_succeeded(run_pipeline(database, csv_dir, RUN_ALERTS="false"))
    built = snapshot(database)
    project = project_with_zero_rule(tmp_path / "project", "open")
    dbt_by_hand(database, csv_dir, project, "build", "--exclude-resource-type", "unit_test")
    # the rules as the last successful build recorded them: the files alone would say "incremental"
    assert_held_until_rebuilt_in_full(database, csv_dir, built, "or it was a build by hand")


def test_a_hand_build_of_the_next_days_with_other_rules_then_undone_is_rebuilt_in_full_next_time(
    make_database, tmp_path
):
    """A hand build in the pipeline's own window (the days after the last export built) sums those days into
    int_organization_status_totals, which keeps every day it summed: after one with other rules, put back
    as the last successful build had them, the next run rebuilds in full, instead of building the same
    window on every run and failing the balance check each time."""
    csv_dir = write_fixture(tmp_path / "csv", BASE_ROWS)
    database = make_database()
    assert_succeeded(run_pipeline(database, csv_dir, RUN_ALERTS="false"))
    write_export(csv_dir, DAY_2, DAY_2_ROWS)
    loader_by_hand(database, csv_dir)
    project = project_with_zero_rule(tmp_path / "project", "open")
    hand = ["build", "--exclude-resource-type", "unit_test"]
    dbt_by_hand(database, csv_dir, project, *hand, LEDGER_WINDOW_START=DAY_2)

    result = run_pipeline(database, csv_dir, RUN_ALERTS="false")
    assert_succeeded(result)
    assert "rebuilt from scratch (the last full rebuild did not finish, a build by hand" in result.stdout
    rebuilt = snapshot(database)
    assert_succeeded(run_pipeline(database, csv_dir, FULL_REFRESH="true", RUN_ALERTS="false"))
    assert snapshot(database) == rebuilt
