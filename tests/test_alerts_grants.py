"""The alerter may read the marts whoever built them: dbt grants select to ALERTER_USER.

One pipeline run (slow: about a minute), built the way a user with their own Postgres would run
init.sh: as a superuser, so no default privilege of the transformer role applies.
"""

from __future__ import annotations

import pytest
from conftest import run_pipeline
from test_pipeline import assert_succeeded, write_fixture

pytestmark = pytest.mark.slow


def test_marts_built_by_a_superuser_are_readable_by_the_alerter(make_database, tmp_path):
    database = make_database()
    admin = database.env("admin")

    result = run_pipeline(
        database,
        write_fixture(tmp_path / "csv"),
        PGUSER=admin["PGUSER"],
        PGPASSWORD=admin["PGPASSWORD"],
        ALERT_MIN_CHANGE_USD="0",  # the fixture's move is $30
        # blank is unset, as compose's ${NAME:-default} makes it: the alerter, and alerts on
        ALERTER_USER=" ",
        RUN_ALERTS="",
    )

    assert_succeeded(result)
    owners = database.query("select distinct tableowner from pg_tables where schemaname = 'marts'")
    assert owners == [(admin["PGUSER"],)]  # not the transformer: its default privileges do not apply
    # the alert step ran as the alerter and read the marts
    assert "[balance alert] 2023-01-06 organization 2: -$60.00 -> -$30.00 (+50.00%)" in result.stdout
    assert "Summary: 1 day processed (2023-01-06), 1 alert sent, 0 failed" in result.stdout
    grants = database.query(
        "select distinct table_name from information_schema.role_table_grants "
        "where table_schema = 'marts' and grantee = 'alerter' and privilege_type = 'SELECT' order by 1"
    )
    assert grants == [
        ("dim_alert_routes",),
        ("dim_organizations",),
        ("fct_invoices",),
        ("fct_organization_daily_drivers",),
        ("fct_organization_daily_financials",),
    ]
