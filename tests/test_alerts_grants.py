"""The alerter reads the marts the alerts need, whoever built them, and no other: dbt grants select on
those to ALERTER_USER, and on fct_invoices (payment details) to no one.

Pipeline runs (slow: about a minute each). The first is built the way a user with their own Postgres
would run init.sh: as a superuser, so no default privilege of the transformer role applies.
"""

from __future__ import annotations

import psycopg
import pytest
from conftest import run_pipeline
from test_pipeline import assert_succeeded, write_fixture

from data_platform.alerts import detect

pytestmark = pytest.mark.slow

# the marts the alert code reads: the only ones the alerter may
READ_BY_THE_ALERTS = sorted(table.name for table in detect.marts.tables.values())
ALERTER_TABLES = (
    "select distinct table_name::text from information_schema.role_table_grants "
    "where table_schema = 'marts' and grantee = 'alerter' and privilege_type = 'SELECT' order by 1"
)
# who the default privileges let read a table created in the marts later
DEFAULT_MARTS_READERS = (
    "select defaclrole::regrole::text, granted.grantee::regrole::text "
    "from pg_default_acl cross join lateral aclexplode(defaclacl) as granted "
    "where defaclnamespace = 'marts'::regnamespace and granted.privilege_type = 'SELECT'"
)
# what init.sql granted before the alerter read only the marts the alerts need
OLDER_INIT_SQL_GRANTS = (
    "grant select on all tables in schema marts to alerter",
    "alter default privileges for role transformer in schema marts grant select on tables to alerter",
)


def assert_alerter_refused_the_invoices(database) -> None:
    with database.connect("alerter") as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("select * from marts.fct_invoices")


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
    assert READ_BY_THE_ALERTS == [
        "dim_alert_routes",
        "dim_organizations",
        "fct_organization_daily_drivers",
        "fct_organization_daily_financials",
    ]
    assert [name for (name,) in database.query(ALERTER_TABLES)] == READ_BY_THE_ALERTS
    assert_alerter_refused_the_invoices(database)


@pytest.mark.parametrize(
    ("rebuild", "build_said"),
    [({}, "(exports after 2023-01-06)"), ({"FULL_REFRESH": "true"}, "FULL_REFRESH")],
)
def test_an_upgraded_warehouse_stops_letting_the_alerter_read_the_invoices(
    make_database, tmp_path, rebuild, build_said
):
    """A warehouse that an older init.sql set up lets the alerter read every mart, and every table the
    transformer creates there later: its next build, incremental or full (where fct_invoices is a new table,
    which gets the default privileges, not the old table's grants), takes both away."""
    database = make_database()
    csv = write_fixture(tmp_path / "csv")
    assert_succeeded(run_pipeline(database, csv, RUN_ALERTS="false"))
    with database.connect("admin", autocommit=True) as admin:
        for statement in OLDER_INIT_SQL_GRANTS:
            admin.execute(statement)
    assert "fct_invoices" in [name for (name,) in database.query(ALERTER_TABLES)]

    result = run_pipeline(database, csv, ALERT_MIN_CHANGE_USD="0", **rebuild)

    assert_succeeded(result)
    assert build_said in result.stdout
    assert database.query(DEFAULT_MARTS_READERS) == []
    assert [name for (name,) in database.query(ALERTER_TABLES)] == READ_BY_THE_ALERTS
    assert_alerter_refused_the_invoices(database)
    # the alert step, as the alerter, still reads what it needs
    assert "Summary: 1 day processed (2023-01-06), 1 alert sent, 0 failed" in result.stdout
