"""The DuckDB raw ledger (data_platform/engines/duckdb_raw.py) equals the Postgres loader's, table for table.

Both load the ledger fixture of test_ledger.py: a base export, then two dated exports with new invoices,
payments, a cancellation, an invoice moving organization and an invoice repeated unchanged.
"""

from __future__ import annotations

from datetime import date

import pytest
from test_ledger import BASE_ROWS, DAY_2, DAY_2_ROWS, DAY_3, DAY_3_ROWS, write_export
from test_pipeline import write_fixture

from data_platform.load_errors import LoadError
from data_platform.loader import load_exports
from data_platform.raw_tables import INVOICES, ORGANIZATIONS

duckdb = pytest.importorskip("duckdb")
from data_platform.engines.duckdb_raw import build_raw  # noqa: E402

INVOICE_COLUMNS = ", ".join(column.name for column in INVOICES.columns)
QUERIES = {
    "invoices": f"select {INVOICE_COLUMNS}, version, first_seen_on, seen_on from raw.invoices order by 1",
    "invoice_versions": f"select {INVOICE_COLUMNS}, version, seen_on, previous_seen_on "
    "from raw.invoice_versions order by 1, 15",
    "organizations": f"select {', '.join(c.name for c in ORGANIZATIONS.columns)}, seen_on "
    "from raw.organizations order by 1",
    "load_log": "select export_date, invoices_sha256, organizations_sha256, invoice_rows, invoices_new, "
    "invoices_changed, invoices_unchanged, organization_rows, organizations_new, organizations_changed "
    "from raw.load_log order by 1",
}


def duckdb_tables(path) -> dict[str, list[tuple]]:
    with duckdb.connect(str(path), read_only=True) as conn:
        return {table: conn.execute(query).fetchall() for table, query in QUERIES.items()}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    csv_dir = write_fixture(tmp_path_factory.mktemp("exports"), BASE_ROWS)
    write_export(csv_dir, DAY_2, DAY_2_ROWS)
    return write_export(csv_dir, DAY_3, DAY_3_ROWS)


@pytest.fixture(scope="module")
def postgres_tables(make_database, exports):
    database = make_database()
    with database.connect("transformer", autocommit=True) as conn:
        load_exports(conn, exports)
        return {table: conn.execute(query).fetchall() for table, query in QUERIES.items()}


def test_the_duckdb_ledger_equals_the_postgres_loaders(postgres_tables, exports, tmp_path):
    loaded = build_raw(tmp_path / "warehouse.duckdb", exports)
    assert loaded == [date(2023, 1, 6), date(2023, 1, 7), date(2023, 1, 8)]
    tables = duckdb_tables(tmp_path / "warehouse.duckdb")
    for table, rows in postgres_tables.items():
        assert tables[table] == rows, table
    # the ledger did something: invoice 206 moved organization in its second version; 202 repeated as is
    versions = {(row[0], row[14]): row[3] for row in tables["invoice_versions"]}
    assert versions[(206, 1)] == 2 and versions[(206, 2)] == 3
    assert (202, 2) not in versions
    days = {(row[0], row[14]): (row[15], row[16]) for row in tables["invoice_versions"]}
    assert days[(206, 1)][1] is None and days[(206, 2)][1] == days[(206, 1)][0]


def test_a_history_from_an_earlier_release_gets_previous_seen_on_on_the_next_build(
    postgres_tables, exports, tmp_path
):
    database = tmp_path / "warehouse.duckdb"
    build_raw(database, exports)
    with duckdb.connect(str(database)) as conn:
        conn.execute("alter table raw.invoice_versions drop column previous_seen_on")
    assert build_raw(database, exports) == []
    assert duckdb_tables(database)["invoice_versions"] == postgres_tables["invoice_versions"]


def test_loading_the_same_exports_again_changes_nothing(exports, tmp_path):
    database = tmp_path / "warehouse.duckdb"
    build_raw(database, exports)
    before = duckdb_tables(database)
    assert build_raw(database, exports) == []
    assert duckdb_tables(database) == before


def test_an_altered_or_older_export_is_refused(exports, tmp_path):
    database = tmp_path / "warehouse.duckdb"
    build_raw(database, exports)
    altered = tmp_path / "altered"
    write_export(write_fixture(altered, BASE_ROWS), DAY_2, DAY_2_ROWS[:-1])
    with pytest.raises(LoadError, match="loaded before from other files"):
        build_raw(database, altered)
    older = tmp_path / "older"
    write_export(write_fixture(older, BASE_ROWS), "2023-01-05", DAY_3_ROWS)
    with pytest.raises(LoadError, match="older than the newest loaded export"):
        build_raw(database, older)
