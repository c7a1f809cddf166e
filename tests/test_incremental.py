"""Incremental builds: a daily run recomputes only the trailing window, and gives exactly the rows
a full refresh gives on the same data."""

from __future__ import annotations

from decimal import Decimal

import pytest
from conftest import run_pipeline
from test_pipeline import (
    INVOICE_ROWS,
    SENTINEL,
    assert_succeeded,
    balance_on,
    project_with_zero_rule,
    write_fixture,
)

# History well before the lookback window (7 days before the latest day), so an incremental run
# has rows it must leave alone.
EARLY_ROWS = [
    f"11,{SENTINEL},{SENTINEL},1,-7,open,USD,,,40.00,,1.00000000,,2022-11-01T10:00:00.000Z",
    f"21,{SENTINEL},{SENTINEL},2,-7,open,USD,,,60.00,,1.00000000,,2022-11-02T10:00:00.000Z",
]
NEXT_DAY_ROWS = [
    # a new day: a credit for org 1, more for org 2, and a brand-new organization
    f"401,{SENTINEL},{SENTINEL},1,-7,credited,USD,,,75.00,,1.00000000,,2023-01-07T09:00:00.000Z",
    f"402,{SENTINEL},{SENTINEL},2,-7,open,EUR,,,90.00,,0.90000000,,2023-01-07T10:00:00.000Z",
    f"403,{SENTINEL},{SENTINEL},3,-7,pending,USD,,,5.00,,1.00000000,,2023-01-07T11:00:00.000Z",
    # late-arriving: created on 01-03 but delivered only now (inside the lookback window)
    f"404,{SENTINEL},{SENTINEL},1,-7,open,USD,,,12.50,,1.00000000,,2023-01-03T15:00:00.000Z",
]
SNAPSHOTS = {
    "marts.fct_organization_daily_financials": "organization_id, balance_date",
    "marts.dim_invoices": "invoice_id",
    "marts.dim_organizations": "organization_id",
    "intermediate.int_organization_daily_status_totals": "organization_id, created_date, status",
}


def snapshot(database) -> dict[str, list[tuple]]:
    return {
        table: database.query(f"select * from {table} order by {key}") for table, key in SNAPSHOTS.items()
    }


def updated_rows(rows: list[str]) -> list[str]:
    # invoice 105 (01-05, pending) gets paid in full: a status change inside the window
    return [
        row.replace(
            ",pending,USD,,,165.00,,1.00000000,,", ",paid,USD,USD,card,165.00,165,1.00000000,1.00000000,"
        )
        if row.startswith("105,")
        else row
        for row in rows
    ]


@pytest.fixture(scope="module")
def runs(make_database, tmp_path_factory):
    """Build the history, then the next day incrementally, then the same data with a full refresh."""
    database = make_database()
    history = [*EARLY_ROWS, *INVOICE_ROWS]
    assert_succeeded(run_pipeline(database, write_fixture(tmp_path_factory.mktemp("day1"), history)))
    before = snapshot(database)
    untouched_xmin = database.query(
        "select xmin::text from marts.fct_organization_daily_financials where balance_date = '2022-11-01'"
    )

    next_day = write_fixture(tmp_path_factory.mktemp("day2"), updated_rows([*history, *NEXT_DAY_ROWS]))
    assert_succeeded(run_pipeline(database, next_day, RUN_ALERTS="false"))
    incremental = snapshot(database)
    still_xmin = database.query(
        "select xmin::text from marts.fct_organization_daily_financials where balance_date = '2022-11-01'"
    )

    assert_succeeded(run_pipeline(database, next_day, FULL_REFRESH="true", RUN_ALERTS="false"))
    full = snapshot(database)
    return before, incremental, full, untouched_xmin, still_xmin


def test_incremental_run_equals_full_refresh(runs):
    _, incremental, full, _, _ = runs
    for table in SNAPSHOTS:
        assert incremental[table] == full[table], f"{table} differs between incremental and full refresh"


def test_incremental_run_leaves_rows_before_the_window_alone(runs):
    _, _, _, untouched_xmin, still_xmin = runs
    assert untouched_xmin and untouched_xmin == still_xmin


def test_incremental_run_picks_up_new_late_and_changed_invoices(runs):
    before, incremental, _, _, _ = runs
    fact = {(row[0], str(row[1])): row for row in incremental["marts.fct_organization_daily_financials"]}
    old_fact = {(row[0], str(row[1])): row for row in before["marts.fct_organization_daily_financials"]}
    # balance_usd is column 6: org 1 history 40 + 100 (01-01) + 10 + 12.50 late (01-03) + 0 (105 paid)
    late = Decimal("12.50")
    assert fact[(1, "2023-01-03")][6] == old_fact[(1, "2023-01-03")][6] + late
    assert fact[(1, "2023-01-05")][6] == 40 + 100 + 10 + late
    assert fact[(1, "2023-01-07")][6] == 40 + 100 + 10 + late - 75
    assert (3, "2023-01-07") in fact and (3, "2023-01-07") not in old_fact
    assert len(incremental["marts.dim_invoices"]) == len(before["marts.dim_invoices"]) + len(NEXT_DAY_ROWS)


def test_changed_rules_rebuild_history_outside_the_window(make_database, tmp_path):
    database = make_database()
    csv_dir = write_fixture(tmp_path / "csv", [*EARLY_ROWS, *INVOICE_ROWS])
    assert_succeeded(run_pipeline(database, csv_dir, RUN_ALERTS="false"))

    project = project_with_zero_rule(tmp_path / "project", "open")
    result = run_pipeline(database, csv_dir, project_root=project, RUN_ALERTS="false")
    assert_succeeded(result)
    assert "balance rules changed" in result.stdout

    # the 2022-11-01 open invoice (40) no longer counts, although that day is far outside the window
    assert balance_on(database, 1, "2022-11-01") == [(Decimal(0),)]


def test_changes_before_the_window_trigger_a_full_rebuild(make_database, tmp_path):
    database = make_database()
    history = [*EARLY_ROWS, *INVOICE_ROWS]
    assert_succeeded(run_pipeline(database, write_fixture(tmp_path / "day1", history), RUN_ALERTS="false"))

    # an invoice for 2022-11-01 arrives two months late, far outside the 7-day window
    very_late = f"405,{SENTINEL},{SENTINEL},1,-7,open,USD,,,8.00,,1.00000000,,2022-11-01T12:00:00.000Z"
    result = run_pipeline(
        database, write_fixture(tmp_path / "day2", [*history, very_late]), RUN_ALERTS="false"
    )
    assert_succeeded(result)
    assert "the invoices changed before the incremental window (1 day/status groups differ" in result.stdout
    assert "--full-refresh" in result.stdout
    assert balance_on(database, 1, "2022-11-01") == [(Decimal(48),)]


def test_an_unchanged_history_keeps_the_build_incremental(make_database, tmp_path):
    database = make_database()
    csv_dir = write_fixture(tmp_path, [*EARLY_ROWS, *INVOICE_ROWS])
    assert_succeeded(run_pipeline(database, csv_dir, RUN_ALERTS="false"))
    result = run_pipeline(database, csv_dir, RUN_ALERTS="false")
    assert_succeeded(result)
    assert "rebuilding from scratch" not in result.stdout
    assert "--full-refresh" not in result.stdout
