"""The DuckDB raw ledger (data_platform/engines/duckdb_raw.py) equals the Postgres loader's, table for table.

Both load the ledger fixture of test_ledger.py: a base export, then two dated exports with new invoices,
payments, a cancellation, an invoice moving organization and an invoice repeated unchanged.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT
from loader_files import not_waiting_on_a_pipe
from test_ledger import BASE_ROWS, DAY_2, DAY_2_ROWS, DAY_3, DAY_3_ROWS, SENTINEL, write_export
from test_pipeline import ORGANIZATIONS_CSV, write_fixture

from data_platform.load_errors import (
    NUL_BYTE,
    REQUIRED_VALUE_EMPTY,
    LoadError,
    not_in_format,
    quoted_empty_text,
)
from data_platform.loader import load_exports
from data_platform.raw_tables import AMOUNT, CURRENCY, FX_RATE, INVOICES, ORGANIZATIONS, TEXT
from data_platform.steps import default_sigint

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


@contextmanager
def database_connection(make_database) -> Iterator:
    with make_database().connect("transformer", autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def postgres_tables(make_database, exports):
    with database_connection(make_database) as conn:
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


def test_an_export_whose_organizations_file_changed_since_its_load_is_refused(exports, tmp_path):
    """The same invoices file beside another organizations file is another export, not the one loaded:
    skipped, the change would never reach the ledger."""
    database = tmp_path / "warehouse.duckdb"
    altered = tmp_path / "altered"
    shutil.copytree(exports, altered)
    build_raw(database, altered)
    before = duckdb_tables(database)
    organizations = altered / "organizations.csv"
    organizations.write_text(organizations.read_text().replace(",12345,", ",54321,"))
    with pytest.raises(LoadError, match="export 2023-01-06 was loaded before from other files"):
        build_raw(database, altered)
    assert duckdb_tables(database) == before


def test_a_file_that_changes_while_it_is_read_is_refused_and_nothing_of_it_kept(monkeypatch, tmp_path):
    """A copy finishing while DuckDB reads the file: loaded in part, it would be skipped ever after."""
    from data_platform.engines import duckdb_raw

    csv_dir = write_fixture(tmp_path / "exports", BASE_ROWS)
    invoices = csv_dir / "invoices.csv"
    whole = invoices.read_text()
    invoices.write_text("".join(whole.splitlines(keepends=True)[:-1]))  # the copy is not done yet
    read = duckdb_raw._read

    def read_then_the_copy_finishes(conn, spec, path, table):
        rows = read(conn, spec, path, table)
        if path == invoices:
            invoices.write_text(whole)
        return rows

    monkeypatch.setattr(duckdb_raw, "_read", read_then_the_copy_finishes)
    database = tmp_path / "warehouse.duckdb"
    with pytest.raises(LoadError, match="changed while it was read") as refused:
        build_raw(database, csv_dir)
    assert refused.value.path == invoices
    assert all(rows == [] for rows in duckdb_tables(database).values())
    monkeypatch.undo()
    assert build_raw(database, csv_dir) == [date(2023, 1, 6)]
    assert len(duckdb_tables(database)["invoices"]) == len(BASE_ROWS)


def test_files_loaded_as_an_earlier_export_are_refused_unless_it_is_the_latest(exports, tmp_path):
    database = tmp_path / "warehouse.duckdb"
    build_raw(database, exports)
    before = duckdb_tables(database)
    copied = tmp_path / "copied"
    shutil.copytree(exports, copied)
    again = copied / "exports" / "2023-01-09"
    again.mkdir()
    for name in ("invoices.csv", "organizations.csv"):
        shutil.copy(copied / name, again / name)  # the base export, copied to a new date
    with pytest.raises(LoadError, match="already loaded as export 2023-01-06"):
        build_raw(database, copied)
    assert duckdb_tables(database) == before
    # the latest export's file again changes nothing: loaded under its new date
    (again / "organizations.csv").unlink()
    shutil.copy(copied / "exports" / DAY_3 / "invoices.csv", again / "invoices.csv")
    assert build_raw(database, copied) == [date(2023, 1, 9)]


def test_files_loaded_under_several_dates_are_told_by_the_latest(exports, tmp_path):
    # the latest export that loaded them is the one whose changes since would be undone
    database = tmp_path / "warehouse.duckdb"
    copied = tmp_path / "copied"
    shutil.copytree(exports, copied)
    day_3_invoices = copied / "exports" / DAY_3 / "invoices.csv"
    for day in ("2023-01-09", "2023-01-11"):
        (copied / "exports" / day).mkdir()
        shutil.copy(day_3_invoices, copied / "exports" / day / "invoices.csv")
    paid_402 = DAY_3_ROWS[0]
    write_export(copied, "2023-01-10", [paid_402.replace(",paid,", ",refunded,")])
    with pytest.raises(
        LoadError, match=r"already loaded as export 2023-01-09 .*: loaded again as export 2023-01-11"
    ):
        build_raw(database, copied)
    assert [row[0] for row in duckdb_tables(database)["load_log"]][-1] == date(2023, 1, 10)


def with_a_next_export(exports: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the exports and, in it, an export for the day after the last holding DAY_3's invoices:
    (the copy, the new export's folder)."""
    copied = tmp_path / "copied"
    shutil.copytree(exports, copied)
    folder = copied / "exports" / "2023-01-09"
    folder.mkdir()
    shutil.copy(copied / "exports" / DAY_3 / "invoices.csv", folder / "invoices.csv")
    return copied, folder


def test_an_earlier_exports_organizations_load_where_its_invoices_file_is_refused(exports, tmp_path):
    """The Postgres loader's rule (export_log.refuse_reloaded): an organizations file equal to an earlier
    export's is a state that came back, not a copy; that export's invoices file again is refused."""
    database = tmp_path / "warehouse.duckdb"
    copied, folder = with_a_next_export(exports, tmp_path)
    latest_invoices = copied / "exports" / DAY_3 / "invoices.csv"
    header, _first, second = (copied / "organizations.csv").read_text().splitlines(keepends=True)
    moved = header + second.replace(",12345,", ",54321,")  # organization 2 moves country
    (folder / "organizations.csv").write_text(moved)
    assert build_raw(database, copied)[-1] == date(2023, 1, 9)
    again = copied / "exports" / "2023-01-10"
    again.mkdir()
    shutil.copy(latest_invoices, again / "invoices.csv")
    shutil.copy(copied / "organizations.csv", again / "organizations.csv")  # organization 2 back
    assert build_raw(database, copied) == [date(2023, 1, 10)]
    organizations = duckdb_tables(database)["organizations"]
    assert [(row[3], row[-1]) for row in organizations if row[3] in (12345, 54321)] == [
        (12345, date(2023, 1, 10))
    ]
    # the base export's invoices again would undo the exports since: refused, beside any organizations
    before = duckdb_tables(database)
    again = copied / "exports" / "2023-01-11"
    again.mkdir()
    shutil.copy(copied / "invoices.csv", again / "invoices.csv")
    (again / "organizations.csv").write_text(moved)
    with pytest.raises(LoadError, match="already loaded as export 2023-01-06") as refused:
        build_raw(database, copied)
    assert refused.value.path == again / "invoices.csv"
    assert duckdb_tables(database) == before


def test_a_named_pipe_in_a_files_place_is_refused_not_waited_on(exports, tmp_path):
    """Its checksum is read before its header is checked: opening a pipe there waited for a writer."""
    copied, folder = with_a_next_export(exports, tmp_path)
    os.mkfifo(folder / "organizations.csv")
    with not_waiting_on_a_pipe(), pytest.raises(LoadError, match="not a regular file") as refused:
        build_raw(tmp_path / "warehouse.duckdb", copied)
    assert refused.value.path == folder / "organizations.csv"


@pytest.mark.parametrize("name", ["organizations.csv", "invoices.csv"])
def test_a_file_cut_off_right_after_a_comma_is_refused(exports, tmp_path, name):
    """As by the loader: the cut record's empty last field would load as a null CREATED_DATE (or be
    refused as an empty CREATED_AT, which hides that the copy was cut short)."""
    copied, folder = with_a_next_export(exports, tmp_path)
    whole = (copied / "exports" / DAY_3 / name if name == "invoices.csv" else copied / name).read_bytes()
    whole = whole.rstrip(b"\n")
    (folder / name).write_bytes(whole[: whole.rfind(b",") + 1])
    with pytest.raises(LoadError, match="ends right after a comma") as refused:
        build_raw(tmp_path / "warehouse.duckdb", copied)
    assert refused.value.path == folder / name


def test_an_invoice_created_after_its_exports_date_is_refused(exports, tmp_path):
    database = tmp_path / "warehouse.duckdb"
    future = tmp_path / "future"
    shutil.copytree(exports, future)
    write_export(
        future, "2023-01-09", ["601,{s},{s},4,-7,open,USD,,,5.00,,1.00000000,,2023-01-10T00:00:00.000Z"]
    )
    with pytest.raises(LoadError, match="1 invoice\\(s\\) created after the export date 2023-01-09"):
        build_raw(database, future)
    assert [row[0] for row in duckdb_tables(database)["load_log"]] == [
        date(2023, 1, 6),
        date(2023, 1, 7),
        date(2023, 1, 8),
    ]


def test_header_only_files_are_refused_unless_allowed(exports, tmp_path):
    from test_pipeline import HEADER

    empty_base = write_fixture(tmp_path / "empty_base", [])
    with pytest.raises(LoadError, match="no data rows, only the header") as refused:
        build_raw(tmp_path / "base.duckdb", empty_base)
    assert refused.value.path == empty_base / "invoices.csv"
    with pytest.raises(LoadError, match="cannot date an export without invoices") as undated:
        build_raw(tmp_path / "base.duckdb", empty_base, allow_empty=True)
    # the builders have no --as-of: the way to date one is its folder's name
    assert "--as-of" not in str(undated.value) and "exports/YYYY-MM-DD/" in str(undated.value)

    database = tmp_path / "warehouse.duckdb"
    empty_day = tmp_path / "empty_day"
    shutil.copytree(exports, empty_day)
    write_export(empty_day, "2023-01-09", [])
    assert (empty_day / "exports" / "2023-01-09" / "invoices.csv").read_text() == HEADER + "\n"
    with pytest.raises(LoadError, match="no data rows, only the header"):
        build_raw(database, empty_day)
    assert build_raw(database, empty_day, allow_empty=True) == [date(2023, 1, 9)]
    assert build_raw(database, empty_day) == []  # loaded: skipped without --allow-empty
    # header-only invoices files are alike whatever their day: one equal to an earlier export's (not the
    # latest) is a new empty export, not those files loaded again
    write_export(
        empty_day, "2023-01-10", ["601,{s},{s},4,-7,open,USD,,,5.00,,1.00000000,,2023-01-10T00:00:00.000Z"]
    )
    write_export(empty_day, "2023-01-11", [])
    assert build_raw(database, empty_day, allow_empty=True) == [date(2023, 1, 10), date(2023, 1, 11)]


# the Postgres loader's message (test_loader_bad_input.py)
FROM_THE_FUTURE = r"export date {} is after today \({}, UTC\): an export cannot come from the future"


def test_an_export_dated_after_today_is_refused(exports, tmp_path):
    database = tmp_path / "warehouse.duckdb"
    with pytest.raises(LoadError, match=FROM_THE_FUTURE.format(DAY_3, DAY_2)) as refused:
        build_raw(database, exports, today=date(2023, 1, 7))
    assert refused.value.path == exports / "exports" / DAY_3
    # each export commits on its own, as in the loader: the ones up to today stay loaded
    assert [row[0] for row in duckdb_tables(database)["load_log"]] == [date(2023, 1, 6), date(2023, 1, 7)]
    assert build_raw(database, exports, today=date(2023, 1, 8)) == [date(2023, 1, 8)]
    # by default today is the UTC date
    ahead = tmp_path / "ahead"
    shutil.copytree(exports, ahead)
    write_export(
        ahead, "2999-01-01", ["601,{s},{s},4,-7,open,USD,,,5.00,,1.00000000,,2023-01-10T00:00:00.000Z"]
    )
    with pytest.raises(LoadError, match=FROM_THE_FUTURE.format("2999-01-01", ".*")):
        build_raw(database, ahead)


def test_a_base_export_dated_by_invoices_after_today_is_refused(tmp_path):
    csv_dir = write_fixture(tmp_path / "exports", BASE_ROWS)
    with pytest.raises(LoadError, match=FROM_THE_FUTURE.format("2023-01-06", "2023-01-05")):
        build_raw(tmp_path / "warehouse.duckdb", csv_dir, today=date(2023, 1, 5))
    assert all(rows == [] for rows in duckdb_tables(tmp_path / "warehouse.duckdb").values())


def test_a_single_file_export_edited_to_come_after_a_dated_export_is_refused(tmp_path):
    # as by the loader: loaded after the dated export, its rows would undo what that export changed
    csv_dir = write_fixture(tmp_path / "exports", BASE_ROWS)
    write_export(csv_dir, DAY_2, DAY_2_ROWS)
    database = tmp_path / "warehouse.duckdb"
    build_raw(database, csv_dir)
    before = duckdb_tables(database)
    with (csv_dir / "invoices.csv").open("a") as invoices:
        invoices.write(LATE_INVOICE.format(s=SENTINEL) + "\n")  # created 2023-01-08, after the dated export
    with pytest.raises(LoadError, match=f"on or after the dated export {DAY_2} .*before every dated export"):
        build_raw(database, csv_dir)
    assert duckdb_tables(database) == before


LATE_INVOICE = "601,{s},{s},4,-7,open,USD,,,5.00,,1.00000000,,2023-01-08T00:00:00.000Z"


@pytest.mark.parametrize(
    ("row", "column", "reason"),
    [
        (LATE_INVOICE.replace("601", "", 1), "INVOICE_ID", REQUIRED_VALUE_EMPTY),
        (LATE_INVOICE.replace("open", ""), "STATUS", REQUIRED_VALUE_EMPTY),
        (LATE_INVOICE.replace("open", '""'), "STATUS", REQUIRED_VALUE_EMPTY),
        (LATE_INVOICE.replace("2023-01-08T00:00:00.000Z", ""), "CREATED_AT", REQUIRED_VALUE_EMPTY),
        (LATE_INVOICE.replace("USD,,,", 'USD,,"",'), "PAYMENT_METHOD", quoted_empty_text(TEXT.expected)),
        (LATE_INVOICE.replace("USD,,,", "USD,,ca\0rd,"), "PAYMENT_METHOD", NUL_BYTE),
        # stored, 0 or less would fail the models' positive tests in every later build
        (LATE_INVOICE.replace(",5.00,", ",0.00,"), "AMOUNT", not_in_format(AMOUNT.expected)),
        (LATE_INVOICE.replace(",1.00000000,", ",-1.00000000,"), "FX_RATE", not_in_format(FX_RATE.expected)),
        # stored, a code of the wrong length would fail the models' length_between tests in every later build
        (LATE_INVOICE.replace("USD,,,", "EURO1,,,"), "CURRENCY", not_in_format(CURRENCY.expected)),
        (LATE_INVOICE.replace("USD,,,", "USD,US,,"), "PAYMENT_CURRENCY", not_in_format(CURRENCY.expected)),
    ],
    ids=[
        "no id",
        "no status",
        "quoted empty status",
        "no created_at",
        "quoted empty text",
        "nul byte",
        "zero amount",
        "negative rate",
        "currency too long",
        "payment currency too short",
    ],
)
def test_values_the_loader_refuses_are_refused_though_duckdb_reads_them(
    make_database, exports, tmp_path, row, column, reason
):
    """DuckDB read them as null or as an empty text: a null INVOICE_ID, never matched to a current row,
    came back as one more row with every export, and the dbt build failed far from the file."""
    bad = tmp_path / "bad"
    shutil.copytree(exports, bad)
    write_export(bad, "2023-01-09", [row])
    with database_connection(make_database) as conn, pytest.raises(LoadError) as by_loader:
        load_exports(conn, bad)
    assert by_loader.value.reason == reason
    database = tmp_path / "warehouse.duckdb"
    with pytest.raises(LoadError) as refused:
        build_raw(database, bad)
    assert refused.value.path == bad / "exports" / "2023-01-09" / "invoices.csv" == by_loader.value.path
    assert refused.value.column == column
    assert refused.value.reason.startswith(f"{reason} (1 row(s)")
    assert [row[0] for row in duckdb_tables(database)["load_log"]][-1] == date(2023, 1, 8)


def test_a_refused_value_is_told_by_the_lowest_key_of_its_rows(exports, tmp_path):
    # the key the message names is the first row to look at, whatever the file's order
    bad = tmp_path / "bad"
    shutil.copytree(exports, bad)
    zero = LATE_INVOICE.replace(",5.00,", ",0.00,")
    write_export(bad, "2023-01-09", [zero.replace("601", "603", 1), zero, zero.replace("601", "602", 1)])
    with pytest.raises(LoadError) as refused:
        build_raw(tmp_path / "warehouse.duckdb", bad)
    assert refused.value.reason == f"{not_in_format(AMOUNT.expected)} (3 row(s), the lowest INVOICE_ID 601)"


def test_an_invoice_twice_in_one_export_is_refused(exports, tmp_path):
    """Both rows would become versions of one day, and the current state would hold the invoice twice."""
    bad = tmp_path / "bad"
    shutil.copytree(exports, bad)
    write_export(bad, "2023-01-09", [LATE_INVOICE, LATE_INVOICE.replace("open", "paid")])
    database = tmp_path / "warehouse.duckdb"
    with pytest.raises(LoadError, match="INVOICE_ID 601 appears 2 times: an export holds each one once"):
        build_raw(database, bad)
    assert [row[0] for row in duckdb_tables(database)["load_log"]][-1] == date(2023, 1, 8)


def test_the_widest_values_the_loader_takes_load_as_the_loader_stores_them(make_database, exports, tmp_path):
    """Amounts of 16 integer digits and rates of 10 integer digits with all 8 places: a narrower type
    refuses the first and rounds the second."""
    wide = tmp_path / "wide"
    shutil.copytree(exports, wide)
    row = LATE_INVOICE.replace(",USD,,,5.00,,1.00000000,", ",EUR,,,9999999999999999.99,,9999999999.12345678,")
    write_export(wide, "2023-01-09", [row])
    with database_connection(make_database) as conn:
        load_exports(conn, wide)
        expected = conn.execute(QUERIES["invoices"]).fetchall()
    build_raw(tmp_path / "warehouse.duckdb", wide)
    assert duckdb_tables(tmp_path / "warehouse.duckdb")["invoices"] == expected
    assert [row[9:12:2] for row in expected if row[0] == 601] == [
        (Decimal("9999999999999999.99"), Decimal("9999999999.12345678"))
    ]


def test_later_versions_are_kept_as_the_postgres_loader_keeps_them(make_database, exports, tmp_path):
    """402 gets a third version (its previous_seen_on is the second's day, not the first's); 403 only gains
    a payment method where it had none (null to a value is a change)."""
    later = tmp_path / "later"
    shutil.copytree(exports, later)
    write_export(
        later,
        "2023-01-09",
        [
            "402,{s},{s},2,-7,refunded,EUR,EUR,card,90.00,90,0.90000000,0.90000000,2023-01-07T10:00:00.000Z",
            "403,{s},{s},3,-7,pending,USD,,card,5.00,,1.00000000,,2023-01-07T11:00:00.000Z",
        ],
    )
    with database_connection(make_database) as conn:
        load_exports(conn, later)
        expected = {table: conn.execute(query).fetchall() for table, query in QUERIES.items()}
    build_raw(tmp_path / "warehouse.duckdb", later)
    tables = duckdb_tables(tmp_path / "warehouse.duckdb")
    for table, rows in expected.items():
        assert tables[table] == rows, table
    days = {(row[0], row[14]): (row[15], row[16]) for row in tables["invoice_versions"]}
    assert days[(402, 3)] == (date(2023, 1, 9), date(2023, 1, 8))
    assert days[(403, 2)] == (date(2023, 1, 9), date(2023, 1, 7))


def test_a_header_only_organizations_file_in_an_export_is_refused_unless_allowed(exports, tmp_path):
    copied, folder = with_a_next_export(exports, tmp_path)
    (folder / "organizations.csv").write_text(ORGANIZATIONS_CSV.splitlines(keepends=True)[0])
    database = tmp_path / "warehouse.duckdb"
    with pytest.raises(LoadError, match="no data rows, only the header") as refused:
        build_raw(database, copied)
    assert refused.value.path == folder / "organizations.csv"
    assert build_raw(database, copied, allow_empty=True)[-1] == date(2023, 1, 9)


def test_an_organization_without_an_id_is_refused(make_database, exports, tmp_path):
    """A null ORGANIZATION_ID never matches its current row: it would be added again by every export."""
    bad, folder = with_a_next_export(exports, tmp_path)
    (folder / "organizations.csv").write_text(ORGANIZATIONS_CSV.replace("\n2,", "\n,"))
    with database_connection(make_database) as conn, pytest.raises(LoadError) as by_loader:
        load_exports(conn, bad)
    assert (by_loader.value.column, by_loader.value.reason) == ("ORGANIZATION_ID", REQUIRED_VALUE_EMPTY)
    database = tmp_path / "warehouse.duckdb"
    with pytest.raises(LoadError) as refused:
        build_raw(database, bad)
    assert refused.value.path == folder / "organizations.csv" == by_loader.value.path
    assert refused.value.column == "ORGANIZATION_ID"
    assert refused.value.reason.startswith(f"{REQUIRED_VALUE_EMPTY} (1 row(s)")
    assert [row[0] for row in duckdb_tables(database)["load_log"]][-1] == date(2023, 1, 8)


def test_exports_are_dated_by_utc_days_whatever_the_machines_time_zone(exports, tmp_path):
    """In New York the base export's last invoice (2023-01-06 03:00 UTC) falls on 2023-01-05: dated so,
    the export would be refused for holding invoices after its date. DuckDB takes its session's time
    zone from the machine's, once per process: hence a process of its own."""
    database = tmp_path / "warehouse.duckdb"
    script = (
        "import sys\nfrom data_platform.engines.duckdb_raw import build_raw\nprint(build_raw(*sys.argv[1:]))"
    )
    built = subprocess.run(
        [sys.executable, "-c", script, str(database), str(exports)],
        env={**os.environ, "TZ": "America/New_York", "PYTHONPATH": str(PROJECT_ROOT)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    assert [row[0] for row in duckdb_tables(database)["load_log"]] == [
        date(2023, 1, 6),
        date(2023, 1, 7),
        date(2023, 1, 8),
    ]


def test_a_record_duckdb_cannot_read_is_named_in_a_short_message(exports, tmp_path):
    """DuckDB's error quoted the whole record (a 3 MB value: a 10 kB message) and its reader's options."""
    long_method = LATE_INVOICE.replace("USD,,,", f"USD,,{'x' * 3_000_000},")
    bad = tmp_path / "bad"
    shutil.copytree(exports, bad)
    write_export(bad, "2023-01-09", [long_method])
    with pytest.raises(LoadError, match="DuckDB cannot read it") as refused:
        build_raw(tmp_path / "warehouse.duckdb", bad)
    message = str(refused.value)
    assert "Maximum line size" in message and "Line: 2" in message
    assert len(message) < 1000 and "delimiter" not in message and "max_line_size" not in message
    # a value the cast refuses: DuckDB's advice to change the reader's options (skip the row, read the
    # column as text), and its claim that the type was auto-detected, are left out
    write_export(bad, "2023-01-09", [LATE_INVOICE.replace("5.00", "five")])
    with pytest.raises(LoadError, match="DuckDB cannot read it") as refused:
        build_raw(tmp_path / "warehouse.duckdb", bad)
    message = str(refused.value)
    assert 'Could not convert string "five"' in message
    assert not {"Possible", "ignore_errors", "auto-detected", "types="} & set(message.split())


def test_an_export_loaded_before_the_value_checks_existed_is_not_checked_again(
    monkeypatch, exports, tmp_path
):
    """The checks ran on every export read, loaded ones too: an export an earlier release took with a
    quoted empty text (as no value) stopped every later load, and an export once loaded never changes."""
    from data_platform.engines import duckdb_raw

    old = tmp_path / "old"
    shutil.copytree(exports, old)
    write_export(old, "2023-01-09", [LATE_INVOICE.replace("USD,,,", 'USD,,"",')])
    database = tmp_path / "warehouse.duckdb"
    with monkeypatch.context() as earlier_release:
        earlier_release.setattr(duckdb_raw, "_refuse_values", lambda *args: None)
        build_raw(database, old)
    write_export(old, "2023-01-10", [LATE_INVOICE.replace("601", "602", 1)])
    assert build_raw(database, old) == [date(2023, 1, 10)]


# duckdb_raw.main in a process of its own, a real SIGINT arriving during a query; DuckDB's reaction, which
# this stands for: it takes the KeyboardInterrupt and raises RuntimeError("Query interrupted") instead
INTERRUPTED_SCRIPT = """
import signal
import sys
from data_platform.engines import duckdb_raw

def query_interrupted(*args, **kwargs):
    try:
        signal.raise_signal(signal.SIGINT)
    except KeyboardInterrupt:
        raise RuntimeError("Query interrupted") from None

duckdb_raw.build_raw = query_interrupted
sys.exit(duckdb_raw.main(["--csv-dir", "anywhere"]))
"""


def test_ctrl_c_during_a_query_says_what_was_kept():
    """DuckDB turns Ctrl-C during a query into a RuntimeError: a traceback and exit 1."""
    interrupted = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_SCRIPT],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=default_sigint,  # as a terminal's job gets it (a test runner may ignore it)
    )
    assert interrupted.returncode == 130, interrupted.stderr
    assert interrupted.stderr.startswith("interrupted: the export being loaded was rolled back")


def test_an_interrupted_build_says_what_it_kept(monkeypatch, capsys):
    """Ctrl-C (or engines.build passing its stop on) printed a traceback."""
    from data_platform.engines import duckdb_raw

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(duckdb_raw, "build_raw", interrupted)
    assert duckdb_raw.main(["--csv-dir", "anywhere"]) == 130
    assert capsys.readouterr().err.startswith("interrupted: the export being loaded was rolled back")


def test_a_misnamed_single_file_export_is_refused_before_the_first_load(exports, tmp_path):
    """As by the Postgres loader: passed over while the dated exports load, it could never load before
    them."""
    csv_dir = tmp_path / "csv"
    shutil.copytree(exports, csv_dir)
    (csv_dir / "invoices.csv").rename(csv_dir / "INVOICES.CSV")
    (csv_dir / "organizations.csv").rename(csv_dir / "ORGANIZATIONS.CSV")
    database = tmp_path / "warehouse.duckdb"
    with pytest.raises(LoadError, match=r"looks like the single-file export's invoices\.csv named otherwise"):
        build_raw(database, csv_dir)
    build_raw(database, exports)  # once the base is loaded, such files are an archive of it
    assert build_raw(database, csv_dir) == []
