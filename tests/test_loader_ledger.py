"""The raw ledger across exports: versions, skips, refusals, readers, and flat memory."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import astuple
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from conftest import PROJECT_ROOT
from loader_files import (
    BASE_DATE,
    BIG,
    INVOICE_LINES,
    ORG_LINES,
    RAW_TABLES,
    drop_ledger,
    generate,
    invoice,
    ledger_indexes,
    reset_raw,
    settle,
    snapshot,
    write,
    write_dir,
    write_export,
)

from data_platform import file_checksums, ledger, ledger_tables
from data_platform.csv_files import Unchanged
from data_platform.load_errors import changed_while_read
from data_platform.loader import LoadError, load_exports
from data_platform.raw_tables import (
    AMOUNT,
    CURRENCY,
    DATE,
    FX_RATE,
    INT32,
    INT64,
    INVOICES,
    ORGANIZATIONS,
    PAYMENT_AMOUNT,
    RATE,
    STATUS,
    TEXT,
    TIMESTAMP,
    Column,
    TableSpec,
)


@pytest.fixture
def csv_dir(conn, tmp_path) -> Path:
    """The base export, loaded."""
    directory = write_dir(tmp_path / "csv")
    load_exports(conn, directory)
    return directory


PAID = INVOICE_LINES[2].replace(
    ",open,USDC,,,12.34,,1.00010000,,", ",paid,USDC,USDC,card,12.34,12.34,1.00010000,1.00010000,"
)


def versions(conn) -> list[tuple]:
    return conn.execute(
        "select invoice_id, version, status, seen_on::text from raw.invoice_versions"
        " order by invoice_id, version"
    ).fetchall()


def test_the_same_export_twice_is_a_no_op(conn, csv_dir):
    write_export(csv_dir, "2024-01-02", [PAID, invoice(1)], ORG_LINES[1:3])
    first = load_exports(conn, csv_dir)
    after_first = snapshot(conn)
    second = load_exports(conn, csv_dir)
    assert [r.skipped for r in first] == [True, False]
    assert [(r.export_date, r.skipped) for r in second] == [
        (date.fromisoformat(BASE_DATE), True),
        (date(2024, 1, 2), True),
    ]
    assert snapshot(conn) == after_first


def test_a_changed_invoice_gets_version_2_seen_on_the_later_export(conn, csv_dir):
    write_export(csv_dir, "2024-01-02", [PAID, INVOICE_LINES[1], invoice(1)])  # changed, unchanged, new
    (_, result) = load_exports(conn, csv_dir)
    assert (result.invoices.new, result.invoices.changed, result.invoices.unchanged) == (1, 1, 1)
    assert versions(conn) == [
        (-(2**63), 1, "open", BASE_DATE),
        (-(2**63), 2, "paid", "2024-01-02"),
        (1, 1, "open", "2024-01-02"),
        (BIG, 1, "paid", BASE_DATE),
        (2**63 - 1, 1, "paid", BASE_DATE),
    ]
    current = conn.execute(
        "select status, payment_amount, version, first_seen_on::text, seen_on::text from raw.invoices"
        " where invoice_id = %s",
        [-(2**63)],
    ).fetchone()
    assert current == ("paid", Decimal("12.34"), 2, BASE_DATE, "2024-01-02")
    logged = conn.execute(
        "select invoice_rows, invoices_new, invoices_changed, invoices_unchanged from raw.load_log"
        " where export_date = '2024-01-02'"
    ).fetchone()
    assert logged == (3, 1, 1, 1)


def test_a_partial_export_keeps_absent_invoices_and_organizations(conn, csv_dir):
    before = {row[0]: row for row in conn.execute("select * from raw.invoices").fetchall()}
    changed_org = ORG_LINES[3].replace(",12,", ",13,")  # organization 42
    write_export(csv_dir, "2024-01-02", [invoice(1)], [changed_org, "99,,,7,1,2024-01-01T00:00:00Z"])
    (_, result) = load_exports(conn, csv_dir)
    assert (result.organizations_new, result.organizations_changed) == (1, 1)
    after = {row[0]: row for row in conn.execute("select * from raw.invoices").fetchall()}
    assert set(after) == {*before, 1}
    assert all(after[key] == row for key, row in before.items())
    organizations = {
        row[0]: row[1:]
        for row in conn.execute(
            "select organization_id, count_total_contracts_active, seen_on::text from raw.organizations"
        )
    }
    assert len(organizations) == 8
    assert organizations[42] == (13, "2024-01-02")
    assert organizations[43] == (1, BASE_DATE)  # absent from the export: kept, not re-dated


def test_changes_over_several_exports_build_the_version_history(conn, csv_dir):
    write_export(csv_dir, "2024-01-02", [PAID])
    write_export(csv_dir, "2024-01-03", [PAID])  # unchanged: no version
    write_export(csv_dir, "2024-01-05", [PAID.replace(",paid,", ",refunded,")])
    results = load_exports(conn, csv_dir)
    assert [r.invoices.changed for r in results] == [0, 1, 0, 1]
    assert [v for v in versions(conn) if v[0] == -(2**63)] == [
        (-(2**63), 1, "open", BASE_DATE),
        (-(2**63), 2, "paid", "2024-01-02"),
        (-(2**63), 3, "refunded", "2024-01-05"),
    ]


# A valid value of each format, unlike any of the lines changed below: a column of a new format needs one.
OTHER_VALUE = {
    INT64: "-5",
    INT32: "13",
    AMOUNT: "0.02",
    PAYMENT_AMOUNT: "0.2",
    FX_RATE: "0.91234568",
    RATE: "0.91234568",
    DATE: "2022-01-15",
    TIMESTAMP: "2023-12-31T23:59:59.999998Z",
    CURRENCY: "GBP",
    STATUS: "refunded",
    TEXT: "card",
}


def with_other_value(spec: TableSpec, line: str, column: Column) -> list[str]:
    """The fields of `line` with only `column`'s value replaced by another of its format."""
    fields = line.split(",")
    at = spec.columns.index(column)
    assert fields[at] != OTHER_VALUE[column.format]
    fields[at] = OTHER_VALUE[column.format]
    return fields


@pytest.mark.parametrize("column", INVOICES.columns[1:], ids=lambda column: column.name)
def test_a_change_in_any_one_invoice_column_alone_is_a_new_version(conn, csv_dir, column):
    """A column left out of the comparison would count a change of only that column as unchanged: the
    ledger would keep the old value, with no new version and a green load."""
    fields = with_other_value(INVOICES, INVOICE_LINES[3], column)
    write_export(csv_dir, "2024-01-02", [",".join(fields)])
    (_, result) = load_exports(conn, csv_dir)
    assert astuple(result.invoices) == (0, 1, 0)
    stored = conn.execute(
        f"select version, {column.name} = %s::{column.sql_type} from raw.invoices where invoice_id = %s",
        [OTHER_VALUE[column.format], 2**63 - 1],
    ).fetchone()
    assert stored == (2, True)


@pytest.mark.parametrize("column", ORGANIZATIONS.columns[1:], ids=lambda column: column.name)
def test_a_change_in_any_one_organization_column_alone_is_stored(conn, csv_dir, column):
    """A column missing from the upsert would count the organization changed and date it seen on the export
    while keeping the old value: a green load with stale data."""
    fields = with_other_value(ORGANIZATIONS, ORG_LINES[3], column)  # organization 42
    write_export(csv_dir, "2024-01-02", [invoice(1)], [",".join(fields)])
    (_, result) = load_exports(conn, csv_dir)
    assert (result.organizations_new, result.organizations_changed) == (0, 1)
    names = ", ".join(c.name for c in ORGANIZATIONS.columns)
    typed = ", ".join(f"%s::{c.sql_type}" for c in ORGANIZATIONS.columns)
    stored = conn.execute(f"select {names}, seen_on from raw.organizations where organization_id = 42")
    expected = conn.execute(f"select {typed}, '2024-01-02'::date", fields)
    assert stored.fetchone() == expected.fetchone()


def test_a_small_export_looked_up_by_key_writes_what_a_large_one_hashed_writes(conn, csv_dir, monkeypatch):
    """Small exports fetch their invoices' current rows by key, large ones hash the whole current state:
    either way the same versions, current state and counts."""
    write_export(csv_dir, "2024-01-02", [PAID, INVOICE_LINES[1], invoice(1)])  # changed, unchanged, new
    write_export(csv_dir, "2024-01-03", [PAID.replace(",paid,", ",refunded,"), invoice(1), invoice(2)])
    outcomes = {}
    for small in (True, False):
        monkeypatch.setattr(ledger, "_is_small", lambda _conn, _rows, small=small: small)
        reset_raw(conn)
        counts = [astuple(result.invoices) for result in load_exports(conn, csv_dir)]
        outcomes[small] = (
            counts,
            conn.execute("select * from raw.invoices order by invoice_id").fetchall(),
            conn.execute("select * from raw.invoice_versions order by invoice_id, version").fetchall(),
        )
    assert outcomes[True] == outcomes[False]
    base = len(INVOICE_LINES) - 1
    assert outcomes[True][0] == [(base, 0, 0), (1, 1, 1), (1, 1, 1)]


def test_an_older_export_is_refused(conn, csv_dir):
    write_export(csv_dir, "2024-01-02", [invoice(4)])
    write_export(csv_dir, "2024-01-05", [invoice(1), invoice(4, status="paid")])
    load_exports(conn, csv_dir)
    before = snapshot(conn)
    late_rows = [invoice(2), invoice(4)]  # 4 as it stood on the late day, before 01-05 paid it
    late = write_export(csv_dir, "2024-01-03", late_rows)
    with pytest.raises(
        LoadError,
        match="export 2024-01-03 is older than the latest loaded export 2024-01-05: exports load in date",
    ) as refused:
        load_exports(conn, csv_dir)
    assert snapshot(conn) == before
    # as it says (removed, or renamed to a later day, the day was lost or took that day's place): the rows
    # of invoices no export since changed go into the next export, and are booked on that day
    assert (
        "add to the next export, before that one loads, those whose invoice or organization no export "
        "since 2024-01-03 changed (seen_on in raw.invoices"
    ) in str(refused.value)
    changed_since = {
        invoice_id
        for (invoice_id,) in conn.execute("select invoice_id from raw.invoices where seen_on >= '2024-01-03'")
    }
    kept = [row for row in late_rows if int(row.split(",")[0]) not in changed_since]
    write_export(csv_dir, "2024-01-06", [*kept, invoice(3)])
    shutil.rmtree(late)
    load_exports(conn, csv_dir)
    seen = (
        "select invoice_id, status, seen_on::text from raw.invoices where invoice_id in (2, 3, 4) order by 1"
    )
    assert conn.execute(seen).fetchall() == [
        (2, "open", "2024-01-06"),
        (3, "open", "2024-01-06"),
        (4, "paid", "2024-01-05"),
    ]


def test_an_altered_export_is_refused(conn, csv_dir):
    folder = write_export(csv_dir, "2024-01-02", [invoice(1)])
    load_exports(conn, csv_dir)
    logged = conn.execute(
        "select invoices_sha256 from raw.load_log where export_date = '2024-01-02'"
    ).fetchone()[0]
    before = snapshot(conn)
    write(folder / "invoices.csv", [INVOICE_LINES[0], invoice(1, status="paid")])
    with pytest.raises(LoadError) as raised:
        load_exports(conn, csv_dir)
    assert str(raised.value) == (
        f"{folder}: export 2024-01-02 was already loaded from a different file (invoices checksum {logged}, "
        f"from {folder}); exports are immutable: put its files back as they were loaded (or, if those are "
        "lost, move them out of the landing folder: the ledger keeps what they loaded), and corrections in a "
        "new dated export"
    )
    assert snapshot(conn) == before
    # as it says: either way, the next load goes on
    write(folder / "invoices.csv", [INVOICE_LINES[0], invoice(1)])
    assert [r.skipped for r in load_exports(conn, csv_dir)] == [True, True]
    write(folder / "invoices.csv", [INVOICE_LINES[0], invoice(1, status="paid")])
    (folder / "invoices.csv").rename(csv_dir / "kept-aside.csv")
    folder.rmdir()
    write_export(csv_dir, "2024-01-03", [invoice(1, status="paid")])
    assert [r.skipped for r in load_exports(conn, csv_dir)] == [True, False]


def test_a_later_days_dump_over_the_single_file_export_is_refused_and_the_advice_loads_it(conn, tmp_path):
    """A daily full dump that replaces the single-file export, on a day with no new invoice, is dated like
    the one loaded: the advice to put the loaded files back would leave the new day nowhere."""
    csv = write_dir(tmp_path / "csv", [INVOICE_LINES[0], invoice(1), invoice(2)])
    load_exports(conn, csv)
    loaded = (csv / "invoices.csv").read_bytes()
    write(csv / "invoices.csv", [INVOICE_LINES[0], invoice(1), invoice(2, status="paid")])
    with pytest.raises(LoadError) as refused:
        load_exports(conn, csv)
    assert str(refused.value).endswith(
        "exports are immutable: put the files it loaded back here, and a later day's full dump with no newer "
        "invoice in exports/YYYY-MM-DD/, named for the day it was exported"
    )
    day = csv / "exports" / "2024-01-03"
    day.mkdir(parents=True)
    (csv / "invoices.csv").rename(day / "invoices.csv")
    (csv / "invoices.csv").write_bytes(loaded)
    assert [r.skipped for r in load_exports(conn, csv)] == [True, False]
    paid = "select status, seen_on::text from raw.invoices where invoice_id = 2"
    assert conn.execute(paid).fetchall() == [("paid", "2024-01-03")]


def test_an_export_with_only_its_organizations_file_altered_is_refused(conn, csv_dir):
    folder = write_export(csv_dir, "2024-01-02", [invoice(1)], [ORG_LINES[3]])
    load_exports(conn, csv_dir)
    before = snapshot(conn)
    write(folder / "organizations.csv", [ORG_LINES[0], ORG_LINES[3].replace(",12,", ",13,")])
    with pytest.raises(LoadError, match=r"already loaded from a different file \(organizations checksum"):
        load_exports(conn, csv_dir)
    assert snapshot(conn) == before


def test_an_organizations_file_added_to_a_loaded_export_is_refused_saying_it_had_none(conn, csv_dir):
    folder = write_export(csv_dir, "2024-01-02", [invoice(1)])
    load_exports(conn, csv_dir)
    before = snapshot(conn)
    write(folder / "organizations.csv", [ORG_LINES[0], ORG_LINES[3]])
    with pytest.raises(
        LoadError, match=r"already loaded from a different file \(it had no organizations file, from "
    ):
        load_exports(conn, csv_dir)
    assert snapshot(conn) == before


def test_an_export_whose_organizations_file_is_gone_is_refused_saying_so(conn, csv_dir):
    """A loaded export's organizations.csv removed (a clean-up of old days) is named as missing, not as a
    different file: the folder's files are the record of what was loaded."""
    folder = write_export(csv_dir, "2024-01-02", [invoice(1)], [ORG_LINES[3]])
    load_exports(conn, csv_dir)
    logged = conn.execute(
        "select organizations_sha256 from raw.load_log where export_date = '2024-01-02'"
    ).fetchone()[0]
    (folder / "organizations.csv").unlink()
    write_export(csv_dir, "2024-01-03", [invoice(2, "2024-01-03T10:00:00Z")])
    before = snapshot(conn)
    with pytest.raises(LoadError) as raised:
        load_exports(conn, csv_dir)
    assert str(raised.value) == (
        f"{folder / 'organizations.csv'}: file not found, but export 2024-01-02 was loaded with it "
        f"(organizations checksum {logged}, from {folder}): put it back as it was; an export's files are "
        "the record of what was loaded, so a loaded export's files stay in place, unchanged"
    )
    assert snapshot(conn) == before


def test_an_organization_repeated_unchanged_is_neither_counted_changed_nor_seen_again(conn, csv_dir):
    seen = conn.execute("select seen_on from raw.organizations where organization_id = 42").fetchone()
    write_export(csv_dir, "2024-01-02", [invoice(1)], [ORG_LINES[3]])  # organization 42 as the base has it
    (_, result) = load_exports(conn, csv_dir)
    assert (result.organizations_new, result.organizations_changed) == (0, 0)
    assert conn.execute("select seen_on from raw.organizations where organization_id = 42").fetchone() == seen


def test_an_altered_base_export_is_refused(conn, csv_dir):
    before = snapshot(conn)
    write(csv_dir / "invoices.csv", [*INVOICE_LINES, invoice(5, "2023-12-31T08:00:00Z")])
    with pytest.raises(LoadError, match=f"export {BASE_DATE} was already loaded from a different file"):
        load_exports(conn, csv_dir)
    assert snapshot(conn) == before


def test_the_base_export_is_not_loaded_again_under_a_later_date(conn, csv_dir):
    """--as-of dates the base export: its files, loaded before as another export, would undo the changes
    of the exports since (invoice -2**63 back to open)."""
    write_export(csv_dir, "2024-01-02", [PAID])
    load_exports(conn, csv_dir)
    before = snapshot(conn)
    with pytest.raises(LoadError) as raised:
        load_exports(conn, csv_dir, as_of=date(2024, 1, 5))
    assert str(raised.value) == (
        f"{csv_dir}: --as-of 2024-01-05 dates the single-file export on or after the dated export 2024-01-02 "
        f"({csv_dir / 'exports' / '2024-01-02'}): the single-file export is the base, loaded before every "
        "dated export; date it before 2024-01-02, or check that folder's date"
    )
    assert snapshot(conn) == before
    # without dated exports, the file loaded again is refused for what it would undo
    (csv_dir / "exports" / "2024-01-02" / "invoices.csv").rename(csv_dir / "moved.csv")
    (csv_dir / "exports" / "2024-01-02").rmdir()
    with pytest.raises(LoadError) as raised:
        load_exports(conn, csv_dir, as_of=date(2024, 1, 5))
    assert str(raised.value) == (
        f"{csv_dir / 'invoices.csv'}: this file was already loaded as export {BASE_DATE} (from {csv_dir}): "
        "loaded again as export 2024-01-05 it would undo what the exports since changed; an export loads "
        "once (put corrections in a new dated export; a genuine revert of those changes loads once its file "
        "differs from that one, with its rows in another order or one more row of an invoice as it stands)"
    )
    assert snapshot(conn) == before
    (csv_dir / "exports" / "2024-01-02").mkdir()
    (csv_dir / "moved.csv").rename(csv_dir / "exports" / "2024-01-02" / "invoices.csv")
    # nor a copy of them in a dated folder
    copy = csv_dir / "exports" / "2024-01-05"
    copy.mkdir()
    for name in ("invoices.csv", "organizations.csv"):
        (copy / name).write_bytes((csv_dir / name).read_bytes())
    with pytest.raises(LoadError, match=f"already loaded as export {BASE_DATE} "):
        load_exports(conn, csv_dir)
    assert snapshot(conn) == before


def test_a_single_file_export_edited_to_come_after_a_dated_export_is_refused(conn, csv_dir):
    """The single-file export holds each invoice as of its own date: a line of a later day appended to it
    after a dated export paid one of its invoices made it a new export that put the invoice back to open."""
    write_export(csv_dir, "2024-01-02", [PAID])
    load_exports(conn, csv_dir)
    before = snapshot(conn)
    write(csv_dir / "invoices.csv", [*INVOICE_LINES, invoice(9, "2024-01-03T08:00:00Z")])

    with pytest.raises(LoadError) as raised:
        load_exports(conn, csv_dir)

    assert str(raised.value) == (
        f"{csv_dir / 'invoices.csv'}: the single-file export is dated 2024-01-03 by its newest invoice, on "
        f"or after the dated export 2024-01-02 ({csv_dir / 'exports' / '2024-01-02'}): the single-file "
        "export is the base, loaded before every dated export, and loaded after one, its rows would undo "
        "what that export changed unless it held every change since. Check that folder's date; a new day, "
        "or a full dump of every invoice, goes in exports/<YYYY-MM-DD>/; a single-file export edited after "
        "it was loaded must be put back as it was"
    )
    assert snapshot(conn) == before


def test_a_dated_folder_named_before_the_single_file_export_is_refused_naming_it(conn, tmp_path):
    # a typo, 2014 for 2024: before, the base loaded and the folder was refused for good as older
    directory = write_dir(tmp_path / "csv")
    folder = write_export(directory, "2014-01-02", [PAID])
    reset_raw(conn)
    before = snapshot(conn)
    with pytest.raises(
        LoadError, match=f"on or after the dated export 2014-01-02 \\({folder}\\).*Check that"
    ):
        load_exports(conn, directory)
    assert snapshot(conn) == before
    folder.rename(folder.with_name("2024-01-02"))
    loaded = load_exports(conn, directory)
    assert [result.export_date.isoformat() for result in loaded] == [BASE_DATE, "2024-01-02"]


@pytest.mark.parametrize(
    ("newest", "as_of"),
    [
        ("2024-01-03T08:00:00Z", None),  # dated by its content after the folder
        ("2024-01-02T08:00:00Z", None),  # on the folder's day
        (None, date(2024, 1, 5)),  # dated by --as-of after the folder
        (None, date(2042, 1, 5)),  # a typo for 2024: the folder must not load first, then the base never
    ],
)
def test_a_single_file_export_not_before_the_dated_ones_loads_nothing(conn, tmp_path, newest, as_of):
    """Loaded first, its date after a dated export's made that export "older than the latest" for good;
    loaded after it, it undid its changes. Refused before any export commits."""
    lines = [*INVOICE_LINES, invoice(9, newest)] if newest else INVOICE_LINES
    directory = write_dir(tmp_path / "csv", lines)
    write_export(directory, "2024-01-02", [PAID])
    reset_raw(conn)
    before = snapshot(conn)

    with pytest.raises(LoadError, match="before every dated export"):
        load_exports(conn, directory, as_of=as_of)

    assert snapshot(conn) == before
    if as_of:  # nothing was loaded: the right date loads both
        loaded = load_exports(conn, directory, as_of=date(2024, 1, 1))
        assert [result.export_date for result in loaded] == [date(2024, 1, 1), date(2024, 1, 2)]


def test_an_earlier_exports_invoices_file_that_would_undo_a_change_is_refused(conn, csv_dir):
    """An invoices file byte for byte an earlier export's is that export landed again (a real day's file
    holds that day's invoices): re-applied, it would undo what the exports since changed."""
    moved = ORG_LINES[3].replace(",7,12,", ",8,12,")  # organization 42 moves country
    write_export(csv_dir, "2024-01-02", [PAID], [moved])
    write_export(csv_dir, "2024-01-03", [invoice(7)], ORG_LINES[4:5])  # organization 43, unchanged
    load_exports(conn, csv_dir)
    before = snapshot(conn)
    old_invoices = write_export(csv_dir, "2024-01-04", INVOICE_LINES[1:]) / "invoices.csv"
    with pytest.raises(LoadError, match=f"this file was already loaded as export {BASE_DATE} ") as raised:
        load_exports(conn, csv_dir)  # it would book invoice -2**63 open again
    assert raised.value.path == old_invoices
    assert snapshot(conn) == before
    # beside new organizations too
    write(old_invoices.parent / "organizations.csv", [ORG_LINES[0], ORG_LINES[5]])
    with pytest.raises(LoadError, match=f"this file was already loaded as export {BASE_DATE} ") as raised:
        load_exports(conn, csv_dir)
    assert raised.value.path == old_invoices
    assert snapshot(conn) == before


def test_a_genuine_revert_refused_as_an_earlier_file_loads_as_the_refusal_says(conn, csv_dir):
    """An invoice open, then paid, then open again: the third day's file is byte for byte the first's."""
    first = write_export(csv_dir, "2024-01-02", [invoice(801)]) / "invoices.csv"
    write_export(csv_dir, "2024-01-03", [invoice(801, status="paid")])
    load_exports(conn, csv_dir)
    revert = write_export(csv_dir, "2024-01-04", [invoice(801)]) / "invoices.csv"
    with pytest.raises(LoadError, match="with its rows in another order or one more row of an invoice as it"):
        load_exports(conn, csv_dir)
    assert revert.read_bytes() == first.read_bytes()
    write(revert, [INVOICE_LINES[0], invoice(801), INVOICE_LINES[1]])  # the base's first invoice, unchanged
    assert [r.invoices.changed for r in load_exports(conn, csv_dir) if not r.skipped] == [1]
    assert conn.execute("select status from raw.invoices where invoice_id = 801").fetchone() == ("open",)


def test_organizations_that_return_to_an_earlier_state_load(conn, csv_dir):
    """An organizations file equal to an earlier export's is not taken for that export landed again: it is a
    small snapshot whose state can come back (an organization's contracts 12 -> 13 -> 12), and the new
    invoices beside it say the export is new. It loads, and so do the exports after it."""
    thirteen = [line.replace(",7,12,", ",7,13,") for line in ORG_LINES[1:]]
    write_export(csv_dir, "2024-01-02", [invoice(1)], ORG_LINES[1:])  # as the base export has them
    write_export(csv_dir, "2024-01-03", [invoice(2, "2024-01-03T10:00:00Z")], thirteen)
    write_export(csv_dir, "2024-01-04", [invoice(3, "2024-01-04T10:00:00Z")], ORG_LINES[1:])  # back to 12
    write_export(csv_dir, "2024-01-05", [invoice(4, "2024-01-05T10:00:00Z")], ORG_LINES[1:])
    loaded = [r for r in load_exports(conn, csv_dir) if not r.skipped]
    assert [(r.export_date, r.organizations_changed) for r in loaded] == [
        (date(2024, 1, 2), 0),
        (date(2024, 1, 3), 1),
        (date(2024, 1, 4), 1),
        (date(2024, 1, 5), 0),
    ]
    assert conn.execute(
        "select count_total_contracts_active, seen_on::text from raw.organizations where organization_id = 42"
    ).fetchone() == (12, "2024-01-04")


def test_a_copy_of_the_latest_export_or_a_header_only_export_loads_under_a_later_date(conn, csv_dir):
    """Loaded again after the latest export, its files change nothing; header-only exports are all alike."""
    latest = write_export(csv_dir, "2024-01-02", [PAID], ORG_LINES[1:3])
    load_exports(conn, csv_dir)
    for day in ("2024-01-03", "2024-01-04"):  # the second copy's earlier load is then the latest one
        copy = csv_dir / "exports" / day
        copy.mkdir()
        for name in ("invoices.csv", "organizations.csv"):
            (copy / name).write_bytes((latest / name).read_bytes())
    loaded = [r for r in load_exports(conn, csv_dir) if not r.skipped]
    assert [(r.export_date, astuple(r.invoices)) for r in loaded] == [
        (date(2024, 1, 3), (0, 0, 1)),
        (date(2024, 1, 4), (0, 0, 1)),
    ]
    write_export(csv_dir, "2024-01-05", [])
    write_export(csv_dir, "2024-01-06", [invoice(1, "2024-01-06T10:00:00Z")])
    write_export(csv_dir, "2024-01-07", [])
    loaded = [r.export_date for r in load_exports(conn, csv_dir, allow_empty=True) if not r.skipped]
    assert loaded == [date(2024, 1, 5), date(2024, 1, 6), date(2024, 1, 7)]


# --- a loaded file is not read again to learn that it was loaded ----------------------------------


@pytest.fixture
def hashed(monkeypatch) -> list[str]:
    """The names of the files whose checksum is computed by reading them, in order."""
    names: list[str] = []
    read = file_checksums.sha256_of

    def recording(path: Path, *args, **kwargs) -> str:
        names.append(f"{path.parent.name}/{path.name}")
        return read(path, *args, **kwargs)

    monkeypatch.setattr(file_checksums, "sha256_of", recording)
    return names


def test_a_loaded_export_is_skipped_without_reading_its_files(conn, tmp_path, hashed):
    directory = write_dir(tmp_path / "csv")
    folder = write_export(directory, "2024-01-02", [invoice(1)], ORG_LINES[1:2])
    settle(*directory.glob("*.csv"), *folder.glob("*.csv"))
    load_exports(conn, directory)
    assert hashed == []  # an empty ledger: each file is read once, as it is loaded
    before = snapshot(conn)
    assert [r.skipped for r in load_exports(conn, directory)] == [True, True]
    assert hashed == []
    (folder / "invoices.csv").touch()  # same content, modified now: read once more, then known again
    assert [r.skipped for r in load_exports(conn, directory)] == [True, True]
    assert hashed == ["2024-01-02/invoices.csv"]
    settle(folder / "invoices.csv")
    assert [r.skipped for r in load_exports(conn, directory)] == [True, True]
    assert hashed == ["2024-01-02/invoices.csv", "2024-01-02/invoices.csv"]
    assert load_exports(conn, directory)[1].skipped and len(hashed) == 2
    assert snapshot(conn) == before


def test_a_loaded_file_whose_change_time_alone_moved_is_read_again_and_says_why(
    conn, tmp_path, monkeypatch, capsys
):
    directory = write_dir(tmp_path / "csv")
    settle(*directory.glob("*.csv"))
    load_exports(conn, directory)
    hashed = []
    monkeypatch.setattr(
        file_checksums,
        "sha256_of",
        lambda path: hashed.append(path.name) or hashlib.sha256(path.read_bytes()).hexdigest(),
    )
    capsys.readouterr()
    (directory / "invoices.csv").chmod(0o600)  # size and modification time as they were
    assert load_exports(conn, directory)[0].skipped
    assert hashed == ["invoices.csv"]
    assert (
        f"{directory / 'invoices.csv'}: read again for its checksum: its change time moved since it was read"
        in capsys.readouterr().err
    )
    assert load_exports(conn, directory)[0].skipped and hashed == ["invoices.csv"]  # remembered again
    assert "read again" not in capsys.readouterr().err


def test_a_loaded_file_rewritten_with_the_same_size_is_read_and_refused(conn, tmp_path):
    directory = write_dir(tmp_path / "csv")
    folder = write_export(directory, "2024-01-02", [invoice(1)])
    settle(*directory.glob("*.csv"), folder / "invoices.csv")
    load_exports(conn, directory)
    path = folder / "invoices.csv"
    size = path.stat().st_size
    write(path, [INVOICE_LINES[0], invoice(2)])
    assert path.stat().st_size == size
    with pytest.raises(LoadError, match="export 2024-01-02 was already loaded from a different file"):
        load_exports(conn, directory)


@pytest.mark.parametrize("how", ["rewritten in place", "replaced by a copy"])
def test_a_loaded_file_replaced_with_its_size_and_mtime_kept_is_read_and_refused(conn, tmp_path, how):
    # cp -p, rsync -a, touch -r: the size and modification time say nothing; the change time does
    directory = write_dir(tmp_path / "csv")
    folder = write_export(directory, "2024-01-02", [invoice(1)])
    path = folder / "invoices.csv"
    settle(*directory.glob("*.csv"), path)
    load_exports(conn, directory)
    loaded = path.stat()
    if how == "rewritten in place":
        write(path, [INVOICE_LINES[0], invoice(2)])
    else:
        os.replace(write(tmp_path / "copy.csv", [INVOICE_LINES[0], invoice(2)]), path)
    os.utime(path, ns=(loaded.st_atime_ns, loaded.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (loaded.st_size, loaded.st_mtime_ns)
    with pytest.raises(LoadError, match="export 2024-01-02 was already loaded from a different file"):
        load_exports(conn, directory)


def test_a_file_modified_just_before_its_load_is_not_remembered(conn, csv_dir):
    # a file system with a coarse clock: rewritten in the same tick, same size and time
    path = write_export(csv_dir, "2024-01-02", [invoice(1)]) / "invoices.csv"
    written = path.stat()
    load_exports(conn, csv_dir)
    write(path, [INVOICE_LINES[0], invoice(2)])
    os.utime(path, ns=(written.st_atime_ns, written.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (written.st_size, written.st_mtime_ns)
    with pytest.raises(LoadError, match="export 2024-01-02 was already loaded from a different file"):
        load_exports(conn, csv_dir)


@pytest.mark.parametrize("change", ["appended to", "replaced", "cut off, then replaced"])
def test_a_file_that_changes_while_it_is_read_is_refused_and_loads_whole_next_time(conn, csv_dir, change):
    """An export still being copied into place: what was read is not the file the next run finds, and
    that run would refuse it as already loaded from a different file. Read cut off, it is named as
    changed, not by the cut-off value."""
    rows = [invoice(i) for i in range(1, 31)]
    path = write_export(csv_dir, "2024-01-02", rows[:20]) / "invoices.csv"
    if change.startswith("cut off"):
        write(path, [INVOICE_LINES[0], *rows[:20], rows[20][:-12]], final_newline=False)
    before = snapshot(conn)

    def copying(file: Path, done: int, total: int) -> None:
        if file != path or done > 512:
            return  # once, after the first block
        if change == "appended to":
            with path.open("a") as rest:
                rest.write("\n".join(rows[20:]) + "\n")
        else:
            os.replace(write(csv_dir.parent / "whole.csv", [INVOICE_LINES[0], *rows]), path)

    with pytest.raises(LoadError) as raised:
        load_exports(conn, csv_dir, block_size=256, progress=copying)
    assert raised.value.path == path
    assert "changed while it was read: land an export in one step" in str(raised.value)
    assert snapshot(conn) == before
    (_, result) = load_exports(conn, csv_dir)
    assert (result.skipped, result.invoice_rows) == (False, 30)


def test_a_file_rewritten_in_place_to_the_same_size_counts_as_changed(tmp_path):
    path = write(tmp_path / "invoices.csv", [INVOICE_LINES[0], invoice(1)])
    before = path.stat().st_mtime_ns
    unchanged = Unchanged.now([path])
    with path.open("r+") as file:  # same inode, same size: only the time tells
        file.write(INVOICE_LINES[0] + "\n" + invoice(2))
    os.utime(path, ns=(before + 10**9, before + 10**9))
    with pytest.raises(LoadError) as raised:
        unchanged.check()
    assert str(raised.value) == str(changed_while_read(path))


def test_a_file_appended_to_with_its_mtime_kept_counts_as_changed(tmp_path):
    # cp -p and rsync -t put the time back: only the size tells
    path = write(tmp_path / "invoices.csv", [INVOICE_LINES[0], invoice(1)])
    stat = path.stat()
    unchanged = Unchanged.now([path])
    with path.open("a") as file:
        file.write(invoice(2) + "\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(LoadError) as raised:
        unchanged.check()
    assert str(raised.value) == str(changed_while_read(path))
    Unchanged.now([path]).check()  # nothing changed since: no error


def test_a_file_rewritten_in_place_with_its_size_and_mtime_kept_counts_as_changed(tmp_path):
    # cp -p over the file: same inode, size and modification time; only the change time tells
    path = write(tmp_path / "invoices.csv", [INVOICE_LINES[0], invoice(1)])
    stat = path.stat()
    unchanged = Unchanged.now([path])
    time.sleep(0.05)  # before Linux 6.13 the change time moves once per clock tick (up to 10 ms)
    with path.open("r+") as file:
        file.write(INVOICE_LINES[0] + "\n" + invoice(2))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (path.stat().st_ino, path.stat().st_size, path.stat().st_mtime_ns) == (
        stat.st_ino,
        stat.st_size,
        stat.st_mtime_ns,
    )
    with pytest.raises(LoadError) as raised:
        unchanged.check()
    assert str(raised.value) == str(changed_while_read(path))


def test_a_file_replaced_by_one_of_its_size_and_mtime_counts_as_changed(tmp_path):
    # a copy landed by rename with cp -p or rsync -t: only the inode tells
    path = write(tmp_path / "invoices.csv", [INVOICE_LINES[0], invoice(1)])
    stat = path.stat()
    unchanged = Unchanged.now([path])
    other = write(tmp_path / "other.csv", [INVOICE_LINES[0], invoice(2)])
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (other.stat().st_size, other.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    os.replace(other, path)
    with pytest.raises(LoadError) as raised:
        unchanged.check()
    assert str(raised.value) == str(changed_while_read(path))


def test_a_view_on_the_raw_tables_survives_a_load(database, conn, csv_dir):
    with database.connect("admin", autocommit=True) as admin:
        admin.execute("create view public.invoice_count as select count(*) as n from raw.invoices")
        admin.execute("grant select on public.invoice_count to transformer")
    write_export(csv_dir, "2024-01-02", [invoice(1)])
    load_exports(conn, csv_dir)
    assert database.query("select n from public.invoice_count") == [(4,)]


def index_oids(conn) -> list[tuple]:
    return conn.execute(
        "select indexrelid::regclass::text, indexrelid from pg_index"
        " where indrelid in ('raw.invoices'::regclass, 'raw.invoice_versions'::regclass) order by 1"
    ).fetchall()


def test_a_first_load_into_new_tables_builds_their_indexes_and_keys_after_the_rows(conn, tmp_path):
    with conn.transaction(force_rollback=True):
        drop_ledger(conn)
        ledger_tables.ensure_tables(conn)
        created = ledger_indexes(conn)
    assert [
        (table, name) for table, name, _ in created if table in ("raw.invoices", "raw.invoice_versions")
    ] == [
        ("raw.invoice_versions", "invoice_versions_pkey"),  # the key
        ("raw.invoice_versions", "invoice_versions_pkey"),  # and its index
        ("raw.invoices", "invoices_pkey"),
        ("raw.invoices", "invoices_pkey"),
    ]
    drop_ledger(conn)
    load_exports(conn, write_dir(tmp_path / "csv"))
    assert ledger_indexes(conn) == created
    # built after the rows: every index is newer (a higher OID) than every table the load created
    newest_table, oldest_index = conn.execute(
        "select (select max(oid) from pg_class where oid = any(%s::regclass[])),"
        " (select min(indexrelid) from pg_index where indrelid = any(%s::regclass[]))",
        [[f"raw.{table}" for table in RAW_TABLES], ["raw.invoices", "raw.invoice_versions"]],
    ).fetchone()
    assert oldest_index > newest_table
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("insert into raw.invoices select * from raw.invoices limit 1")


def test_a_first_load_into_existing_empty_tables_keeps_their_indexes_and_waits_for_no_reader(
    database, conn, tmp_path
):
    ledger_tables.ensure_tables(conn)
    before, oids = ledger_indexes(conn), index_oids(conn)
    conn.execute("set statement_timeout to '20s'")  # waiting for the reader would fail the load
    with database.connect("transformer") as reader:
        reader.execute("begin isolation level repeatable read")
        assert reader.execute("select count(*) from raw.invoices").fetchone() == (0,)
        load_exports(conn, write_dir(tmp_path / "csv"))
        reader.rollback()
    assert conn.execute("select count(*) from raw.invoices").fetchone() == (3,)
    assert (ledger_indexes(conn), index_oids(conn)) == (before, oids)


def test_a_status_change_rewrites_the_current_row_in_place_without_writing_an_index(conn, csv_dir):
    """No index of raw.invoices covers a column a new version changes, so the update is HOT."""
    write_export(csv_dir, "2024-01-02", [PAID])
    with conn.transaction(force_rollback=True):  # this transaction's own counts
        (_, result) = load_exports(conn, csv_dir)
        updated = conn.execute(
            "select n_tup_upd, n_tup_hot_upd from pg_stat_xact_user_tables"
            " where relid = 'raw.invoices'::regclass"
        ).fetchone()
    assert result.invoices.changed == 1
    assert updated == (1, 1)


def test_a_warehouse_from_an_earlier_release_loses_the_retired_index_on_its_next_load(conn, csv_dir):
    conn.execute("create index if not exists invoices_seen_on on raw.invoices (seen_on)")
    write_export(csv_dir, "2024-01-02", [PAID])
    load_exports(conn, csv_dir)
    assert conn.execute("select to_regclass('raw.invoices_seen_on')").fetchone() == (None,)
    assert versions(conn)[:2] == [(-(2**63), 1, "open", BASE_DATE), (-(2**63), 2, "paid", "2024-01-02")]


def previous_days(conn) -> list[tuple]:
    return conn.execute(
        "select invoice_id, version, seen_on::text, previous_seen_on::text from raw.invoice_versions"
        " where invoice_id = %s order by version",
        [-(2**63)],
    ).fetchall()


def test_a_new_version_names_the_export_day_of_the_version_it_replaced(conn, csv_dir):
    write_export(csv_dir, "2024-01-02", [PAID])
    write_export(csv_dir, "2024-01-04", [PAID.replace(",paid,", ",refunded,")])
    load_exports(conn, csv_dir)
    assert previous_days(conn) == [
        (-(2**63), 1, BASE_DATE, None),
        (-(2**63), 2, "2024-01-02", BASE_DATE),
        (-(2**63), 3, "2024-01-04", "2024-01-02"),
    ]


def versions_layout(conn) -> tuple[bool, list[tuple]]:
    """Whether raw.invoice_versions has previous_seen_on, and its indexes."""
    (column,) = conn.execute(
        "select count(*) = 1 from pg_attribute where attrelid = 'raw.invoice_versions'::regclass"
        " and attname = 'previous_seen_on' and not attisdropped"
    ).fetchone()
    indexes = conn.execute(
        "select indexrelid::regclass::text, pg_get_indexdef(indexrelid) from pg_index"
        " where indrelid = 'raw.invoice_versions'::regclass order by 1"
    ).fetchall()
    return column, indexes


def test_a_history_from_an_earlier_release_is_keyed_by_day_on_its_next_load(conn, csv_dir):
    """Earlier releases keyed the history by (invoice_id, version), indexed seen_on apart and had no
    previous_seen_on: the next load fills it in for every version and replaces the key and the index. A
    load that fails leaves the old layout."""
    write_export(csv_dir, "2024-01-02", [PAID])
    write_export(csv_dir, "2024-01-04", [PAID.replace(",paid,", ",refunded,")])
    load_exports(conn, csv_dir)
    conn.execute(
        "alter table raw.invoice_versions drop constraint invoice_versions_pkey,"
        " drop column previous_seen_on, add primary key (invoice_id, version)"
    )
    conn.execute("create index invoice_versions_seen_on on raw.invoice_versions (seen_on)")
    earlier_release = versions_layout(conn)
    assert earlier_release[0] is False and len(earlier_release[1]) == 2
    base = (csv_dir / "invoices.csv").read_bytes()
    write(csv_dir / "invoices.csv", [*INVOICE_LINES, invoice(5, "2023-12-31T08:00:00Z")])
    with pytest.raises(LoadError, match="already loaded from a different file"):  # the first export
        load_exports(conn, csv_dir)
    assert versions_layout(conn) == earlier_release
    (csv_dir / "invoices.csv").write_bytes(base)
    write_export(csv_dir, "2024-01-06", [PAID.replace(",paid,", ",credited,")])
    load_exports(conn, csv_dir)
    assert previous_days(conn) == [
        (-(2**63), 1, BASE_DATE, None),
        (-(2**63), 2, "2024-01-02", BASE_DATE),
        (-(2**63), 3, "2024-01-04", "2024-01-02"),
        (-(2**63), 4, "2024-01-06", "2024-01-04"),
    ]
    assert conn.execute(
        "select count(*) from raw.invoice_versions where version = 1 and previous_seen_on is not null"
    ).fetchone() == (0,)
    assert versions_layout(conn) == (
        True,
        [
            (
                "raw.invoice_versions_pkey",
                "CREATE UNIQUE INDEX invoice_versions_pkey ON raw.invoice_versions"
                " USING btree (seen_on, invoice_id)",
            )
        ],
    )


def test_checksums_from_an_earlier_release_are_forgotten_and_the_files_read_again(conn, csv_dir):
    """Earlier releases remembered a file by its size and modification time only: such a row cannot tell
    a file landed again with `cp -p`, so the next load drops them all and reads its files once more."""
    folder = write_export(csv_dir, "2024-01-02", [invoice(1)])
    settle(*csv_dir.glob("*.csv"), folder / "invoices.csv")
    load_exports(conn, csv_dir)
    conn.execute("alter table raw.file_checksums drop column changed_ns")
    conn.execute("update raw.file_checksums set sha256 = 'from an earlier release'")
    assert [r.skipped for r in load_exports(conn, csv_dir)] == [True, True]  # read again, hashed right
    assert conn.execute(
        "select count(*), count(*) filter (where sha256 = 'from an earlier release')"
        " from raw.file_checksums where changed_ns is not null"
    ).fetchone() == (3, 0)


def test_a_reader_holding_a_snapshot_is_not_blocked_and_sees_the_old_state(database, conn, csv_dir):
    with database.connect("transformer") as reader:
        reader.execute("begin isolation level repeatable read")
        assert reader.execute("select count(*) from raw.invoices").fetchone() == (3,)
        write_export(csv_dir, "2024-01-02", [invoice(1)])
        load_exports(conn, csv_dir)  # a drop or swap would wait for the reader's lock here
        assert reader.execute("select count(*) from raw.invoices").fetchone() == (3,)
        reader.rollback()
    assert conn.execute("select count(*) from raw.invoices").fetchone() == (4,)


def test_a_later_failure_keeps_the_exports_before_it(conn, csv_dir):
    write_export(csv_dir, "2024-01-02", [invoice(1)])
    write_export(csv_dir, "2024-01-03", [invoice(2, amount="2.5")])
    with pytest.raises(LoadError, match="line 2, column AMOUNT"):
        load_exports(conn, csv_dir)
    logged = conn.execute("select export_date::text from raw.load_log order by 1").fetchall()
    assert logged == [(BASE_DATE,), ("2024-01-02",)]


# --- memory: never the whole file -----------------------------------------------------------------

MEASURE_RSS = """
import resource, sys
from data_platform.loader import main
status = main(sys.argv[1:])
print("peak_rss_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(status)
"""


def _peak_rss_mb(database, csv_dir: Path) -> float:
    result = subprocess.run(
        [sys.executable, "-c", MEASURE_RSS, "--csv-dir", str(csv_dir)],
        cwd=PROJECT_ROOT,
        env=database.env("transformer"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("peak_rss_kb")]
    return int(line.split()[1]) / 1024


def test_memory_does_not_grow_with_the_file(database, conn, tmp_path):
    small = generate(tmp_path / "small", 30_000)
    large = generate(tmp_path / "large", 300_000)
    assert (large / "invoices.csv").stat().st_size > 9 * (small / "invoices.csv").stat().st_size
    small_mb = _peak_rss_mb(database, small)
    reset_raw(conn)
    large_mb = _peak_rss_mb(database, large)
    assert conn.execute("select count(*) from raw.invoices").fetchone() == (300_000,)
    assert large_mb - small_mb < 30, (small_mb, large_mb)


def test_generated_export_dates_by_its_latest_invoice(conn, tmp_path):
    directory = generate(tmp_path / "gen", 2_000, end_date="2024-03-31")
    (result,) = load_exports(conn, directory)
    assert result.export_date == date(2024, 3, 31)
    latest = conn.execute("select max(created_at) from raw.invoices").fetchone()[0]
    assert datetime(2024, 3, 31, tzinfo=UTC) <= latest < datetime(2024, 4, 1, tzinfo=UTC)


def test_a_load_leaves_fresh_planner_statistics(conn, csv_dir):
    # the next incremental build is planned from them: stale ones made a next day scan the whole ledger
    for table in ("raw.invoices", "raw.invoice_versions", "raw.organizations"):
        rows = conn.execute(f"select count(*) from {table}").fetchone()[0]
        estimated = conn.execute(
            "select reltuples from pg_class where oid = %s::regclass", [table]
        ).fetchone()[0]
        assert rows > 0 and estimated == rows, table


def test_a_daily_export_leaves_statistics_that_know_its_day(conn, tmp_path):
    # a small export (under a tenth of the ledger) refreshes only the export-day statistics; the build's
    # incremental queries select the day's versions by them, and an estimate of one row made them scan
    # the whole ledger once per version
    csv_dir = generate(tmp_path / "csv", 200)
    load_exports(conn, csv_dir)
    write_export(csv_dir, "2024-06-29", [invoice(i, "2024-06-29T10:00:00Z") for i in range(1, 6)])
    load_exports(conn, csv_dir)
    # the history only: the builds find a day's invoices through their versions, never by the current
    # state's export day
    [[plan]] = conn.execute(
        "explain (format json) select * from raw.invoice_versions where seen_on >= '2024-06-29'"
    ).fetchone()
    assert plan["Plan"]["Plan Rows"] == 5
    estimated = conn.execute(
        "select reltuples from pg_class where oid = 'raw.invoice_versions'::regclass"
    ).fetchone()
    assert estimated == (205,)


def status_values_most_common(conn) -> list[str]:
    (values,) = conn.execute(
        "select most_common_vals::text::text[] from pg_stats"
        " where schemaname = 'raw' and tablename = 'invoices' and attname = 'status'"
    ).fetchone()
    return values


def test_an_export_changing_a_large_share_of_the_ledger_leaves_statistics_that_know_its_statuses(
    conn, tmp_path
):
    """An export that changes a tenth of the ledger or more, even with no new invoice, changes the ledger's
    distributions: statistics that still see a status as rare would plan the build's queries for a few
    rows where there are many."""
    csv_dir = generate(tmp_path / "csv", 200)
    load_exports(conn, csv_dir)
    assert "credited" not in status_values_most_common(conn)  # once in the generated export
    records = (csv_dir / "invoices.csv").read_text().splitlines()[1:]
    credited = [record.replace(",open,", ",credited,") for record in records if ",open," in record]
    credited += [record.replace(",paid,", ",credited,") for record in records if ",paid," in record]
    write_export(csv_dir, "2024-06-29", credited[:25])
    (_, result) = load_exports(conn, csv_dir)
    assert astuple(result.invoices) == (0, 25, 0)
    assert "credited" in status_values_most_common(conn)


def test_through_loads_the_folders_up_to_that_day_and_leaves_later_ones_for_a_later_run(conn, csv_dir):
    # the export sensor's run loads what it judged complete; a later folder may still be being copied
    write_export(csv_dir, "2024-01-02", [PAID])
    being_copied = csv_dir / "exports" / "2024-01-03"
    being_copied.mkdir()  # no invoices.csv yet: an error for a run that looks into it
    loaded = load_exports(conn, csv_dir, through=date(2024, 1, 2))
    assert [(r.export_date, r.skipped) for r in loaded] == [
        (date.fromisoformat(BASE_DATE), True),
        (date(2024, 1, 2), False),
    ]
    with pytest.raises(LoadError, match=r"must hold invoices\.csv"):
        load_exports(conn, csv_dir)
    write(being_copied / "invoices.csv", [INVOICE_LINES[0], invoice(1)])
    assert [r.export_date for r in load_exports(conn, csv_dir) if not r.skipped] == [date(2024, 1, 3)]


def test_the_load_log_keeps_an_exports_folder_absolute(conn, tmp_path, monkeypatch):
    # a later run's messages quote it ("already loaded as export ... (from <source>)") from elsewhere
    write_dir(tmp_path / "csv")
    write_export(tmp_path / "csv", "2024-01-02", [PAID])
    reset_raw(conn)
    monkeypatch.chdir(tmp_path)
    load_exports(conn, "csv")
    sources = conn.execute("select source from raw.load_log order by export_date").fetchall()
    assert sources == [(str(tmp_path / "csv"),), (str(tmp_path / "csv" / "exports" / "2024-01-02"),)]


def test_the_base_export_loaded_again_unchanged_under_a_later_date_is_then_skipped_as_that_date(
    conn, csv_dir
):
    # nothing since to undo: it loads, as a day without changes; a run without --as-of then finds the
    # file by its checksums and names the latest date it was loaded as
    later = load_exports(conn, csv_dir, as_of=date(2024, 1, 5))
    assert [(result.export_date, result.skipped) for result in later] == [(date(2024, 1, 5), False)]
    again = load_exports(conn, csv_dir)
    assert [(result.export_date, result.skipped) for result in again] == [(date(2024, 1, 5), True)]
