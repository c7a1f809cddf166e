"""The alerts on the demo data through the whole pipeline (init.sh: slow): the 2024-06-29 export's
payments and cancellations of older invoices are the drivers of its four alerts, and the drivers
mart built incrementally equals a full rebuild."""

from __future__ import annotations

import re
import shutil

import pytest
from conftest import PROJECT_ROOT, run_pipeline
from test_pipeline import assert_succeeded

pytestmark = pytest.mark.slow

DRIVERS = (
    "select organization_id, balance_date, driver_kind, invoice_count, round(balance_change_usd, 6), "
    "top_invoices::text from marts.fct_organization_daily_drivers order by 1, 2, 3"
)


def test_demo_next_day_alerts_show_their_drivers_and_the_mart_is_incremental(make_database, tmp_path):
    database = make_database()
    csv = tmp_path / "csv"
    csv.mkdir()
    for name in ("invoices.csv", "organizations.csv"):
        shutil.copy2(PROJECT_ROOT / "csv_data" / name, csv / name)
    base = run_pipeline(database, csv)
    assert_succeeded(base)
    shutil.copytree(PROJECT_ROOT / "csv_data" / "exports", csv / "exports")

    next_day = run_pipeline(database, csv)

    assert_succeeded(next_day)
    assert "days from 2024-06-29 (exports after 2024-06-28)" in next_day.stdout, next_day.stdout
    alerts = [line for line in next_day.stdout.splitlines() if line.startswith("[balance alert] 2024-06-29 ")]
    by_organization = {re.search(r"organization (-?\d+)", line).group(1): line for line in alerts}
    assert sorted(by_organization) == sorted(
        ["7712602226129735873", "-9212363505880321737", "1119745032997059256", "3559126079453424785"]
    )
    settled = by_organization["7712602226129735873"]
    assert "$2,000.00 -> $0.00 (-100.00%), critical;" in settled
    # the invoice's status before the day's change beside the one booked
    assert settled.endswith(
        "; why: 1 payment -$2,000.00; top invoices: 993340845701069171 paid (was open) -$2,000.00"
    )
    cancelled = by_organization["-9212363505880321737"]
    assert (
        "why: 1 cancellation -$2,000.00; top invoices: 4298782310373827783 cancelled (was pending) -$2,000.00"
        in cancelled
    )
    assert "why: 1 payment -$18,733.33;" in by_organization["3559126079453424785"]
    assert "4 alerts sent, 0 failed" in next_day.stdout
    # the README shows the demo's alerts as they come out
    readme = (PROJECT_ROOT / "README.md").read_text().splitlines()
    assert [line for line in readme if line.startswith("[balance alert] 2024-06-29 ")] == alerts

    incremental = database.query(DRIVERS)
    rebuilt = run_pipeline(database, csv, FULL_REFRESH="true", RUN_ALERTS="false")
    assert_succeeded(rebuilt)
    assert database.query(DRIVERS) == incremental
    # every fact row is explained: its drivers sum to its change
    unexplained = database.query(
        """
        select count(*) from marts.fct_organization_daily_financials as fact
        left join (
            select organization_id, balance_date, sum(balance_change_usd) as change
            from marts.fct_organization_daily_drivers group by 1, 2
        ) as drivers using (organization_id, balance_date)
        where drivers.change is distinct from fact.balance_change_usd
        """
    )
    assert unexplained == [(0,)]
