"""Bad input: refused with file, line, column and value, and nothing loaded. No silent failure."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import psycopg
import pytest
from loader_files import (
    INVOICE_LINES,
    ORG_LINES,
    drop_ledger,
    invoice,
    not_waiting_on_a_pipe,
    settle,
    snapshot,
    write,
    write_dir,
    write_export,
)

from data_platform import file_checksums
from data_platform.csv_files import Line, check_header, lone_cr_line, sha256_of
from data_platform.exports import discover
from data_platform.ledger_tables import ensure_tables
from data_platform.load_errors import MAX_VALUE_CHARS, printable, shape_error
from data_platform.loader import LoadError, load_exports
from data_platform.raw_tables import INVOICES, ORGANIZATIONS


def replace(lines: list[str], line: int, old: str, new: str) -> list[str]:
    """Copy of `lines` with `old` -> `new` on physical line `line` (1-based, header = 1)."""
    changed = list(lines)
    assert old in changed[line - 1]
    changed[line - 1] = changed[line - 1].replace(old, new, 1)
    return changed


@dataclass(frozen=True)
class Bad:
    """A bad file and where its error must point: physical line (header = 1), column, value."""

    lines: list[str]
    line: int
    column: str | None
    value: str | None
    reason: str  # words the message must contain


def _value(column: str, old: str, new: str, line: int = 3, value: str | None = None) -> Bad:
    """`old` -> `new` on `line`: refused as not in the column's format."""
    shown = value if value is not None else new.strip(",")
    return Bad(replace(INVOICE_LINES, line, old, new), line, column, shown, "not in the export's format")


TIMESTAMP_LINE_2 = "2023-07-17T04:00:40.096Z"

BAD_INVOICES = {
    "misspelt header": Bad(
        replace(INVOICE_LINES, 1, "AMOUNT,", "AMOUNTS,"), 1, "AMOUNT", "AMOUNTS", "wrong header"
    ),
    "short header": Bad(replace(INVOICE_LINES, 1, ",CREATED_AT", ""), 1, None, None, "14 columns, found 13"),
    "lowercase header": Bad(
        [INVOICE_LINES[0].lower(), *INVOICE_LINES[1:]], 1, "INVOICE_ID", "invoice_id", "wrong header"
    ),
    "bad number": _value("AMOUNT", "12.34", "12.3x"),
    "id out of int64": Bad(
        replace(INVOICE_LINES, 4, "9223372036854775807,", "9223372036854775808,"),
        4, "INVOICE_ID", "9223372036854775808", "a signed 64-bit integer",
    ),
    "id as a float": _value("TRANSACTION_ID", ",-7,", ",-7.0,"),
    "id with a plus": _value("TRANSACTION_ID", ",-7,", ",+7,"),
    "id in hex": _value("TRANSACTION_ID", ",-7,", ",0x10,"),
    "id with underscores": _value("TRANSACTION_ID", ",-7,", ",1_000,"),
    "id with a space": _value("TRANSACTION_ID", ",-7,", ", 7,"),
    "id in scientific notation": _value("TRANSACTION_ID", ",-7,", ",1e3,"),
    "huge amount": _value("AMOUNT", "12.34", "1e100000"),
    "amount in scientific notation": _value("AMOUNT", "12.34", "1.5e2"),
    "amount past numeric(18,2)": _value("AMOUNT", "12.34", "12345678901234567.00"),
    "amount with 3 places (never rounded)": _value("AMOUNT", "12.34", "12.345"),
    "amount with a plus": _value("AMOUNT", "12.34", "+12.34"),
    "amount with 1 place": _value("AMOUNT", "12.34", "12.3"),
    # the models' `positive` tests would fail on the stored version in every later build
    "zero amount": _value("AMOUNT", "12.34", "0.00"),
    "negative amount": _value("AMOUNT", "12.34", "-12.34"),
    "zero rate": _value("FX_RATE", "1.00010000", "0.00000000"),
    "negative rate": _value("FX_RATE", "1.00010000", "-1.00010000"),
    "NaN amount": _value("AMOUNT", "12.34", "NaN"),
    "Infinity amount": _value("AMOUNT", "12.34", "Infinity"),
    "nan payment amount": _value("PAYMENT_AMOUNT", ",100,", ",nan,", line=2),
    "payment amount with 3 places": _value("PAYMENT_AMOUNT", ",100,", ",100.001,", line=2),
    "rate with 9 places": _value("FX_RATE", "1.00010000", "1.000100001"),
    "rate past numeric(18,8)": _value("FX_RATE", "1.00010000", "12345678901.00000000"),
    "-inf payment rate": _value("FX_RATE_PAYMENT", ",0.91234567,2023", ",-inf,2023", line=4, value="-inf"),
    "lowercase currency": _value("CURRENCY", ",USDC,", ",usdc,"),
    "five-letter currency": _value("CURRENCY", ",USDC,", ",USDCX,"),
    "status with a capital": _value("STATUS", ",open,", ",Open,"),
    "empty required status": Bad(replace(INVOICE_LINES, 3, ",open,", ",,"), 3, "STATUS", "", "required"),
    "impossible timestamp": _value("CREATED_AT", TIMESTAMP_LINE_2, "2023-02-30T04:00:40.096Z", line=2),
    "garbage timestamp": _value("CREATED_AT", TIMESTAMP_LINE_2, "soon", line=2),
    "timestamp keyword now": _value("CREATED_AT", TIMESTAMP_LINE_2, "now", line=2),
    "timestamp keyword epoch": _value("CREATED_AT", TIMESTAMP_LINE_2, "epoch", line=2),
    "infinite timestamp": _value("CREATED_AT", TIMESTAMP_LINE_2, "infinity", line=2),
    "timestamp with an offset": _value("CREATED_AT", TIMESTAMP_LINE_2, "2023-07-17T04:00:40+02:00", line=2),
    "timestamp with +00": _value("CREATED_AT", TIMESTAMP_LINE_2, "2023-07-17T04:00:40+00", line=2),
    "timestamp without zone": _value("CREATED_AT", TIMESTAMP_LINE_2, "2023-07-17T04:00:40", line=2),
    "timestamp with a space": _value("CREATED_AT", TIMESTAMP_LINE_2, "2023-07-17 04:00:40Z", line=2),
    "timestamp with 7 digits": _value("CREATED_AT", TIMESTAMP_LINE_2, "2023-07-17T04:00:40.1234567Z", line=2),
    "date only": _value("CREATED_AT", TIMESTAMP_LINE_2, "2023-07-17", line=2),
    # the cast reads these, but the fraction must be 1 to 6 ASCII digits (December dates: on a July one
    # the cast reads some of them an hour off, which the comparison of the seconds refuses anyway)
    "timestamp with letters in the fraction": _value(
        "CREATED_AT", TIMESTAMP_LINE_2, "2023-12-17T04:00:40.Zx0Z", line=2
    ),
    "timestamp with a space before Z": _value(
        "CREATED_AT", TIMESTAMP_LINE_2, "2023-07-17T04:00:40.5 Z", line=2
    ),
    "timestamp with an exponent": _value(
        "CREATED_AT", TIMESTAMP_LINE_2, "2023-12-17T04:00:40.0e0Z", line=2
    ),
    "timestamp with a space in the fraction": _value(
        "CREATED_AT", TIMESTAMP_LINE_2, "2023-12-17T04:00:40. Z0Z", line=2
    ),
    "timestamp with a point and no digits": _value(
        "CREATED_AT", TIMESTAMP_LINE_2, "2023-07-17T04:00:40.Z", line=2
    ),
    "timestamp with non-ASCII digits": _value(
        "CREATED_AT", TIMESTAMP_LINE_2, "2023-07-17T04:00:40.\u0661Z", line=2
    ),
    "too few columns": Bad(
        replace(INVOICE_LINES, 3, ",USDC,", ","),
        3, None, INVOICE_LINES[2].replace(",USDC,", ","), "expected 14, found 13",
    ),
    "too many columns": Bad(
        replace(INVOICE_LINES, 2, "card,", "card,extra,"), 2, None, None, "expected 14, found 15"
    ),
    "blank line": Bad([*INVOICE_LINES[:3], "", INVOICE_LINES[3]], 4, None, None, "blank line"),
    "end-of-data marker": Bad(
        [*INVOICE_LINES[:3], "\\.", INVOICE_LINES[3]],
        4,
        None,
        "\\.",
        "a line holding only a backslash and a period ends the data for Postgres (its end-of-data marker)",
    ),
    "invalid utf-8": Bad(replace(INVOICE_LINES, 3, "open", "op\udcffen"), 3, None, None, "UTF8"),
    "NUL byte": Bad(replace(INVOICE_LINES, 3, "open", "op\x00en"), 3, None, None, "a NUL byte (0x00)"),
    "quoted empty optional value": Bad(
        replace(INVOICE_LINES, 3, ",USDC,,", ',USDC,"",'), 3, "PAYMENT_CURRENCY", "", "a quoted empty value"
    ),
    "quoted empty free text": Bad(
        replace(INVOICE_LINES, 3, ",USDC,,,", ',USDC,,"",'), 3, "PAYMENT_METHOD", "", "a quoted empty value"
    ),
    "quoted empty required value": Bad(
        replace(INVOICE_LINES, 3, ",USDC,", ',"",'), 3, "CURRENCY", "", "required"
    ),
    "unterminated quote": Bad(replace(INVOICE_LINES, 2, ",card,", ',"card,'), 2, None, None, "never closed"),
    # a file still being written: no final newline and a cut-off last value
    "cut-off date": Bad(
        [*INVOICE_LINES[:3], INVOICE_LINES[3].replace("2023-12-31T23:59:59.999999Z", "2023-12-3")],
        4, "CREATED_AT", "2023-12-3", "not in the export's format",
    ),
    "cut-off time": Bad(
        [*INVOICE_LINES[:3], INVOICE_LINES[3].replace("2023-12-31T23:59:59.999999Z", "2023-12-31T23:5")],
        4, "CREATED_AT", "2023-12-31T23:5", "not in the export's format",
    ),
}  # fmt: skip


def encode(lines: list[str], final_newline: bool = True) -> bytes:
    return ("\n".join(lines) + ("\n" if final_newline else "")).encode("utf-8", "surrogateescape")


@pytest.mark.parametrize("case", BAD_INVOICES, ids=list(BAD_INVOICES))
def test_bad_invoices_name_file_line_column_value_and_load_nothing(conn, tmp_path, baseline, case):
    bad = BAD_INVOICES[case]
    # a valid organizations file in the same export must not be loaded either
    directory = write_export(tmp_path / "csv", "2024-01-02", [], ORG_LINES[1:2])
    path = directory / "invoices.csv"
    path.write_bytes(encode(bad.lines, final_newline=not case.startswith("cut-off")))

    with pytest.raises(LoadError) as raised:
        load_exports(conn, tmp_path / "csv")

    error = raised.value
    message = str(error)
    assert (error.path, error.line) == (path, bad.line), message
    assert message.startswith(f"{path}, line {bad.line}")
    if bad.column is not None:
        assert error.column == bad.column and f"column {bad.column}" in message
    if bad.value is not None:
        assert error.value == bad.value
    assert bad.reason in error.reason
    # the whole message: a short value is shown as it is, with no length after it
    where = [str(path), f"line {bad.line}"]
    where += [f"column {bad.column}"] if bad.column is not None else []
    where += [f'value "{printable(error.value)}"'] if error.value is not None else []
    assert message == f"{', '.join(where)}: {printable(error.reason)}"
    assert "\n" not in message
    assert snapshot(conn) == baseline


BAD_ORGANIZATIONS = {
    "bad date": Bad(
        replace(ORG_LINES, 4, "2022-01-31", "2022-01-32"), 4, "LAST_PAYMENT_DATE", "2022-01-32", "YYYY-MM-DD"
    ),
    "ambiguous date": Bad(  # Feb 3 or Mar 2? never guessed, whatever the server's datestyle
        replace(ORG_LINES, 5, "2022-01-01", "02/03/2022"), 5, "FIRST_PAYMENT_DATE", "02/03/2022", "date"
    ),
    "date keyword": Bad(
        replace(ORG_LINES, 5, "2022-01-01", "today"), 5, "FIRST_PAYMENT_DATE", "today", "date"
    ),
    "bad integer": Bad(
        replace(ORG_LINES, 2, ",3,", ",3.5,"), 2, "COUNT_TOTAL_CONTRACTS_ACTIVE", "3.5", "integer"
    ),
    "bad created date": Bad(
        replace(ORG_LINES, 8, "38.445423Z", "38.445423Q"),
        8, "CREATED_DATE", "2021-03-08T17:35:38.445423Q", "ISO-8601",
    ),
    "created date with junk in the fraction": Bad(
        replace(ORG_LINES, 8, "38.445423Z", "38.4 Z"),
        8, "CREATED_DATE", "2021-03-08T17:35:38.4 Z", "ISO-8601",
    ),
    "created date with letters in the fraction": Bad(
        replace(ORG_LINES, 8, "38.445423Z", "38.Zx0Z"),
        8, "CREATED_DATE", "2021-03-08T17:35:38.Zx0Z", "ISO-8601",
    ),
    "infinite date": Bad(
        replace(ORG_LINES, 4, "2022-01-31", "-infinity"), 4, "LAST_PAYMENT_DATE", "-infinity", "YYYY-MM-DD"
    ),
    "infinite created date": Bad(
        replace(ORG_LINES, 3, "2021-03-08T17:35:39.4Z", "Infinity"), 3, "CREATED_DATE", "Infinity", "ISO-8601"
    ),
    "duplicate organization": Bad([*ORG_LINES, ORG_LINES[3]], 4, "ORGANIZATION_ID", "42", "lines 4, 9"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_ORGANIZATIONS, ids=list(BAD_ORGANIZATIONS))
def test_bad_organizations_name_file_line_column_value_and_load_nothing(conn, tmp_path, baseline, case):
    bad = BAD_ORGANIZATIONS[case]
    directory = write_export(tmp_path / "csv", "2024-01-02", [invoice(1)], bad.lines[1:])
    with pytest.raises(LoadError) as raised:
        load_exports(conn, tmp_path / "csv")
    message = str(raised.value)
    path = directory / "organizations.csv"
    assert message.startswith(f'{path}, line {bad.line}, column {bad.column}, value "{bad.value}"'), message
    assert bad.reason in message
    assert snapshot(conn) == baseline


def test_mixed_line_endings_are_named(conn, tmp_path, baseline):
    path = write_dir(tmp_path / "files") / "invoices.csv"
    # CRLF on the first data line, LF on the second
    path.write_bytes("\r\n".join(INVOICE_LINES[:3]).encode() + b"\n" + INVOICE_LINES[3].encode())
    with pytest.raises(
        LoadError, match=r"line 3: mixed line endings: this line ends with LF but line 2 ends with CRLF"
    ):
        load_exports(conn, path.parent)
    assert snapshot(conn) == baseline


def test_a_last_line_without_a_final_newline_is_not_a_mixed_line_ending():
    # a last line cut short ends with nothing: its error is the value's, not a line ending
    fields = len(INVOICES.columns)
    last = Line(b",".join([b"x"] * fields), "none", fields - 1)
    assert shape_error(INVOICES, Path("invoices.csv"), 3, last, "LF", "bad value") is None
    crlf = Line(b",".join([b"x"] * fields), "CRLF", fields - 1)
    error = shape_error(INVOICES, Path("invoices.csv"), 3, crlf, "LF", "bad value")
    assert "mixed line endings" in str(error)


def test_a_file_cut_off_right_after_a_comma_is_refused_not_loaded_with_an_empty_last_field(conn, tmp_path):
    """A copy cut short just after a comma is a whole record whose last field is empty: CREATED_DATE is
    optional, so the organization's date was overwritten with null and the load ended green."""
    csv_dir = write_dir(tmp_path / "csv")
    load_exports(conn, csv_dir)
    before = snapshot(conn)
    folder = write_export(csv_dir, "2024-01-02", [invoice(1)], ORG_LINES[1:])
    path = folder / "organizations.csv"
    whole = path.read_bytes()
    path.write_bytes(whole[: whole.rstrip(b"\n").rfind(b",") + 1])
    with pytest.raises(LoadError, match=r"organizations\.csv: .*ends right after a comma") as raised:
        load_exports(conn, csv_dir)
    assert "end the file with a line break" in str(raised.value)
    assert snapshot(conn) == before
    path.write_bytes(whole[: whole.rstrip(b"\n").rfind(b",") + 1] + b"\n")  # said to be whole: it loads
    assert [result.export_date for result in load_exports(conn, csv_dir)][-1] == date(2024, 1, 2)


def test_an_invoices_file_cut_off_right_after_a_comma_beside_organizations_is_named_cut_off(conn, tmp_path):
    """Every file of an export is checked, not only the first: an invoices.csv cut off beside a whole
    organizations.csv would be refused for its empty CREATED_AT instead of as a copy cut short."""
    csv_dir = write_dir(tmp_path / "csv")
    load_exports(conn, csv_dir)
    before = snapshot(conn)
    folder = write_export(csv_dir, "2024-01-02", [invoice(1), invoice(2)], ORG_LINES[1:])
    path = folder / "invoices.csv"
    whole = path.read_bytes()
    path.write_bytes(whole[: whole.rstrip(b"\n").rfind(b",") + 1])
    with pytest.raises(LoadError, match=r"invoices\.csv: .*ends right after a comma") as raised:
        load_exports(conn, csv_dir)
    assert raised.value.path == path
    assert snapshot(conn) == before


def test_an_export_loaded_before_the_cut_off_check_existed_does_not_stop_later_loads(
    conn, tmp_path, monkeypatch
):
    """A file that ends with a comma loaded under the previous release stays as it was (an export's files are
    the record of what was loaded); checked again on every run, it stopped every later export."""
    from data_platform import loader

    csv_dir = write_dir(tmp_path / "csv")
    folder = write_export(csv_dir, "2024-01-02", [invoice(1)], ORG_LINES[1:])
    whole = (folder / "organizations.csv").read_bytes()
    (folder / "organizations.csv").write_bytes(whole[: whole.rstrip(b"\n").rfind(b",") + 1])
    with monkeypatch.context() as previous_release:
        previous_release.setattr(loader, "refuse_cut_off", lambda path: None)
        load_exports(conn, csv_dir)
    write_export(csv_dir, "2024-01-03", [invoice(2)])
    assert [result.export_date for result in load_exports(conn, csv_dir)][-1] == date(2024, 1, 3)


def test_error_on_a_very_long_line_is_shortened(conn, tmp_path, baseline):
    path = write_dir(tmp_path / "files") / "invoices.csv"
    path.write_bytes(encode(replace(INVOICE_LINES, 3, "USDC,,,", "USDC," + "x" * 100_000 + ",")))
    with pytest.raises(LoadError, match="expected 14, found 13") as raised:
        load_exports(conn, path.parent)
    assert len(str(raised.value)) < 600
    assert snapshot(conn) == baseline


LONG_VALUES = {  # column: (what line 3 holds, the bad value), each a few MiB
    "CURRENCY": (",USDC,", "X" * 4_000_000),  # a pattern check: the cast that refuses it raises
    "AMOUNT": ("12.34", "1x" * 2_000_000),  # a round trip: the check's own cast raises
    "CREATED_AT": ("2023-07-18T00:00:00Z", "2023-07-18T00:00:00." + "0" * 4_000_000 + "Z"),
}


@pytest.mark.parametrize("column", LONG_VALUES)
def test_a_very_long_bad_value_is_never_fetched_whole(conn, tmp_path, baseline, monkeypatch, column):
    """Only the start of a bad value (and its length) leaves the server, in the failed check's error and in
    the diagnosis: a 200 MiB value held several times over took 1.7 GB to refuse."""
    old, value = LONG_VALUES[column]
    new = f",{value}," if old.startswith(",") else value
    path = write_dir(tmp_path / "files", invoices=replace(INVOICE_LINES, 3, old, new)) / "invoices.csv"
    fetched: list[int] = []  # the length of every value the loader fetched

    def recording(method):
        def fetch(self, *args):
            result = method(self, *args)
            rows = result if isinstance(result, list) else [result] if result is not None else []
            fetched.extend(len(str(field)) for row in rows for field in row)
            return result

        return fetch

    for name in ("fetchone", "fetchmany", "fetchall"):
        monkeypatch.setattr(psycopg.Cursor, name, recording(getattr(psycopg.Cursor, name)))
    with pytest.raises(LoadError) as raised:
        load_exports(conn, path.parent)
    error = raised.value
    assert max(fetched) <= 200
    assert len(str(error.__cause__)) < 1000  # the failed check's error, from the server
    assert len(error.value) <= 200
    expected = INVOICES.column(column.lower()).expected
    assert str(error) == (
        f'{path}, line 3, column {column}, value "{value[:197]}..." ({len(value):,} characters): '
        f"not in the export's format: expected {printable(expected)}"
    )
    assert snapshot(conn) == baseline


def test_empty_file_and_missing_files(conn, tmp_path, baseline):
    directory = write_dir(tmp_path / "files")
    (directory / "invoices.csv").write_bytes(b"")
    with pytest.raises(
        LoadError, match=r"invoices\.csv: file is empty \(0 bytes\): expected at least the header"
    ):
        load_exports(conn, directory)
    (directory / "organizations.csv").unlink()
    (directory / "invoices.csv").write_bytes(encode(INVOICE_LINES))
    with pytest.raises(
        LoadError, match=r"organizations\.csv: file not found: the single-file export needs it"
    ):
        load_exports(conn, directory)
    with pytest.raises(LoadError, match="CSV directory not found"):
        load_exports(conn, tmp_path / "nowhere")
    not_a_folder = r"not a folder \(or a link to a missing one\): set --csv-dir or CSV_DIR to the folder"
    with pytest.raises(LoadError, match=rf"invoices\.csv: {not_a_folder}"):
        load_exports(conn, directory / "invoices.csv")  # the file for its folder
    (tmp_path / "unmounted").symlink_to(tmp_path / "share")
    with pytest.raises(LoadError, match=rf"unmounted: {not_a_folder}"):
        load_exports(conn, tmp_path / "unmounted")
    with pytest.raises(
        LoadError, match=r"no export found: expected invoices\.csv and organizations\.csv here"
    ):
        load_exports(conn, tmp_path)
    assert snapshot(conn) == baseline


@pytest.mark.parametrize("link", ["dangling", "looping"])
def test_a_broken_organizations_link_is_named_not_taken_for_no_file(conn, tmp_path, baseline, link):
    """A link to a file gone (an unmounted share) or to itself is an organizations file the loader cannot
    read, not an export without one: loaded without it, the export could never be corrected."""
    folder = write_export(tmp_path / "csv", "2024-01-02", [invoice(1)])
    path = folder / "organizations.csv"
    path.symlink_to(tmp_path / "gone.csv" if link == "dangling" else path)
    reason = "file not found" if link == "dangling" else "cannot read file: Too many levels of symbolic links"
    with pytest.raises(LoadError) as raised:
        load_exports(conn, tmp_path / "csv")
    assert (raised.value.path, raised.value.reason.startswith(reason)) == (path, True), str(raised.value)
    assert snapshot(conn) == baseline


@pytest.mark.parametrize(
    "secret",
    ["https://hooks.slack.com/services/T0SECRET/B0SECRET/xyzSECRET", "root:x:0:0:root:/root:/bin/bash"],
)
@pytest.mark.parametrize("name", ["invoices.csv", "organizations.csv"])
def test_a_link_to_a_file_that_is_no_export_never_shows_its_first_line(
    conn, tmp_path, baseline, name, secret
):
    """Export files are read wherever their links point (shares are linked in), and a header error shows
    the field that differs: from a link to a secret (a webhook URL, a password file) that would be the
    secret, in the loader's output and in the failure alerts that quote it."""
    folder = write_export(tmp_path / "csv", "2024-01-02", [invoice(1)], ORG_LINES[1:2])
    (tmp_path / "secret").write_text(f"{secret}\n")
    (folder / name).unlink()
    (folder / name).symlink_to(tmp_path / "secret")
    with pytest.raises(LoadError) as raised:
        load_exports(conn, tmp_path / "csv")
    message = str(raised.value)
    assert (raised.value.path, raised.value.value) == (folder / name, None), message
    assert secret[-9:] not in message, message
    assert f"found {len(secret)} characters that name no column of an export" in message
    assert snapshot(conn) == baseline


@pytest.mark.parametrize(("separator", "name"), [(";", "semicolons"), ("\t", "tabs"), ("|", "vertical bars")])
def test_a_header_separated_by_another_character_is_named_so(conn, tmp_path, baseline, separator, name):
    """A spreadsheet's export in another CSV dialect: its header is one field, which names no column."""
    folder = write_export(tmp_path / "csv", "2024-01-02", [invoice(1)], ORG_LINES[1:2])
    (folder / "invoices.csv").write_text(INVOICE_LINES[0].replace(",", separator) + "\n")
    with pytest.raises(LoadError) as raised:
        load_exports(conn, tmp_path / "csv")
    assert f"wrong header: its columns are separated by {name}, not commas;" in str(raised.value)
    assert snapshot(conn) == baseline


@pytest.mark.parametrize(
    ("header", "shown"),
    [("ORGANIZATION_ID,NAME", "ORGANIZATION_ID"), ("INVOCE_ID,X", "INVOCE_ID"), ("invoice1,X", None)],
)
def test_a_header_field_that_names_a_column_or_nearly_is_still_shown(conn, tmp_path, baseline, header, shown):
    """Another export's header (the files swapped) or a typo is shown, as it names what went wrong."""
    folder = write_export(tmp_path / "csv", "2024-01-02", [invoice(1)], ORG_LINES[1:2])
    (folder / "invoices.csv").write_text(f"{header}\n")
    with pytest.raises(LoadError) as raised:
        load_exports(conn, tmp_path / "csv")
    assert (raised.value.column, raised.value.value) == ("INVOICE_ID", shown), str(raised.value)
    assert snapshot(conn) == baseline


@pytest.mark.parametrize(
    "name", ["Organizations.csv", "organisations.csv", "organizations.csv.txt", "organizations (1).csv"]
)
def test_another_file_in_a_dated_export_is_named_not_left_out(conn, tmp_path, baseline, name):
    """A misspelt organizations file left out would load the export without its organizations, and a
    loaded export can never be corrected."""
    folder = write_export(tmp_path / "csv", "2024-01-02", [invoice(1)])
    write(folder / name, ORG_LINES)
    write(folder / ".organizations.csv.partial", ORG_LINES[:1])  # a copy's temporary file: ignored
    with pytest.raises(LoadError) as raised:
        load_exports(conn, tmp_path / "csv")
    assert raised.value.path == folder / name, str(raised.value)
    assert "holds only invoices.csv and, optionally, organizations.csv" in raised.value.reason
    assert snapshot(conn) == baseline


def test_an_invoices_folder_in_a_dated_export_is_named_a_folder_not_missing(conn, tmp_path, baseline):
    path = tmp_path / "csv" / "exports" / "2024-01-02" / "invoices.csv"
    path.mkdir(parents=True)
    with pytest.raises(LoadError) as raised:
        load_exports(conn, tmp_path / "csv")
    assert (raised.value.path, raised.value.reason) == (path, "is a directory, expected a CSV file")
    assert snapshot(conn) == baseline


def test_a_named_pipe_in_a_dated_export_is_refused_not_waited_on(conn, tmp_path, baseline):
    """Opening a pipe waits for a writer: the loader would hang, holding the lock every run waits for."""
    folder = write_export(tmp_path / "csv", "2024-01-02", [invoice(1)])
    os.mkfifo(folder / "organizations.csv")
    with not_waiting_on_a_pipe(), pytest.raises(LoadError) as raised:
        load_exports(conn, tmp_path / "csv")
    assert (raised.value.path, raised.value.reason) == (
        folder / "organizations.csv",
        "not a regular file (a named pipe, a socket, a device), expected CSV",
    )
    assert snapshot(conn) == baseline


def test_a_socket_or_a_missing_file_is_a_load_error_when_hashed_too(tmp_path):
    """The DuckDB and Spark builds hash a file before they check its header."""
    path = tmp_path / "organizations.csv"
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(path))
        for read in (sha256_of, lambda p: check_header(ORGANIZATIONS, p)):
            with pytest.raises(LoadError, match="not a regular file"):
                read(path)
    path.unlink()
    with pytest.raises(LoadError, match="file not found"):
        sha256_of(path)


def test_broken_links_for_the_single_file_export_are_named_not_taken_for_no_export(conn, tmp_path, baseline):
    write_export(tmp_path / "csv", "2024-01-02", [invoice(1)])
    for name in ("invoices.csv", "organizations.csv"):
        (tmp_path / "csv" / name).symlink_to(tmp_path / "gone" / name)
    with pytest.raises(LoadError, match=r"organizations\.csv: file not found") as raised:
        load_exports(conn, tmp_path / "csv")
    assert raised.value.path == tmp_path / "csv" / "organizations.csv"
    assert snapshot(conn) == baseline


@pytest.mark.parametrize("entry", ["a file", "a link to a missing folder"])
def test_an_exports_entry_that_is_not_a_folder_is_named(conn, tmp_path, baseline, entry):
    """An unmounted landing share must not look like a day without exports: only the base would load."""
    directory = write_dir(tmp_path / "csv")
    exports = directory / "exports"
    if entry == "a file":
        exports.write_bytes(b"")
    else:
        exports.symlink_to(tmp_path / "unmounted" / "exports")
    with pytest.raises(LoadError, match="not a folder") as raised:
        load_exports(conn, directory)
    assert raised.value.path == exports
    assert snapshot(conn) == baseline


@pytest.mark.parametrize(
    ("entry", "said"),
    [
        ("latest", r"unexpected entry in .*: expected only folders named YYYY-MM-DD"),
        ("2024-01-02.zip", r"unexpected entry in .*: expected only folders named YYYY-MM-DD"),
        ("20240102", r"unexpected entry in .*: expected only folders named YYYY-MM-DD"),
        # in the expected form: what is wrong is the date
        ("2024-13-01", r"2024-13-01 is not a calendar date: name the folder by its export's day"),
        ("2024-02-30", r"2024-02-30 is not a calendar date"),
    ],
)
def test_unexpected_entries_in_exports_are_named(conn, tmp_path, baseline, entry, said):
    write_export(tmp_path / "csv", "2024-01-02", [invoice(1)])
    odd = tmp_path / "csv" / "exports" / entry
    odd.mkdir() if entry != "2024-01-02.zip" else odd.write_bytes(b"")
    (tmp_path / "csv" / "exports" / ".DS_Store").write_bytes(b"")  # dotfiles are ignored
    with pytest.raises(LoadError, match=said) as raised:
        load_exports(conn, tmp_path / "csv")
    assert raised.value.path == odd
    odd.rmdir() if odd.is_dir() else odd.unlink()
    (tmp_path / "csv" / "exports" / "2024-01-03").mkdir()
    with pytest.raises(LoadError, match=r"every dated export folder must hold invoices\.csv"):
        load_exports(conn, tmp_path / "csv")
    assert snapshot(conn) == baseline


def test_a_dated_export_that_is_a_link_to_a_missing_folder_is_named_as_one(conn, tmp_path, baseline):
    """An export folder linked from a share that is not mounted was "an unexpected entry ... expected only
    folders named YYYY-MM-DD" (in the sensor's skip reason and the freshness alert too): removed as that
    invites, its day could never load once a later one had."""
    write_export(tmp_path / "csv", "2024-01-02", [invoice(1)])
    linked = tmp_path / "csv" / "exports" / "2024-01-03"
    linked.symlink_to(tmp_path / "unmounted-share" / "2024-01-03")
    with pytest.raises(LoadError) as raised:
        load_exports(conn, tmp_path / "csv")
    assert (raised.value.path, raised.value.reason) == (
        linked,
        "a link to a missing folder: is the share it points to mounted? Do not remove it: once a later "
        "export loads, this one can no longer load",
    )
    assert snapshot(conn) == baseline


def test_as_of_naming_the_day_of_a_dated_export_is_refused(conn, tmp_path, baseline):
    """Two exports for one day: one of them would be loaded as the other's correction."""
    directory = write_dir(tmp_path / "csv")
    folder = write_export(directory, "2024-01-02", [invoice(1)])
    with pytest.raises(LoadError) as raised:
        load_exports(conn, directory, as_of=date(2024, 1, 2))
    assert str(raised.value) == (
        f"{directory}: --as-of 2024-01-02 dates the single-file export on or after the dated export "
        f"2024-01-02 ({folder}): the single-file export is the base, loaded before every dated export; date "
        "it before 2024-01-02, or check that folder's date"
    )
    assert snapshot(conn) == baseline
    # another day is fine: the base export first
    loaded = load_exports(conn, directory, as_of=date(2024, 1, 1))
    assert [r.export_date for r in loaded] == [date(2024, 1, 1), date(2024, 1, 2)]


def test_as_of_without_a_single_file_export_is_refused(conn, tmp_path, baseline):
    # ignored, --as-of would leave the user believing some export was dated by it
    write_export(tmp_path / "csv", "2024-01-02", [invoice(1)])
    with pytest.raises(LoadError) as raised:
        load_exports(conn, tmp_path / "csv", as_of=date(2024, 1, 3))
    assert str(raised.value) == (
        f"{tmp_path / 'csv'}: --as-of dates the single-file export, but there is no invoices.csv here"
    )
    assert snapshot(conn) == baseline


# --- silent failures: each of these once ended in exit 0 with wrong data -----------------------


def _numbered(count: int) -> list[str]:
    return [invoice(1000 + i, f"2024-01-02T10:00:{i % 60:02d}Z") for i in range(count)]


def test_quoted_newline_then_end_of_data_marker_is_refused_at_its_line(conn, tmp_path, baseline):
    """COPY ends CSV data at a line holding only `\\.`; after a quoted newline the line is not rows + 2."""
    rows = _numbered(300)
    rows[48] = rows[48].replace(",USD,,,", ',USD,,"card\nx",')  # file lines 50 and 51
    rows.insert(149, "\\.")  # file line 152 (one line more after the quoted newline)
    directory = write_export(tmp_path / "csv", "2024-01-02", rows)
    with pytest.raises(LoadError) as raised:
        load_exports(conn, tmp_path / "csv")
    assert (raised.value.line, raised.value.value) == (152, "\\.")
    assert "149 of 301 rows would have loaded" in str(raised.value)
    assert snapshot(conn) == baseline
    # without the marker every record loads, the quoted newline kept as data
    rows.pop(149)
    write(directory / "invoices.csv", [INVOICE_LINES[0], *rows])
    (result,) = [r for r in load_exports(conn, tmp_path / "csv") if not r.skipped]
    assert result.invoice_rows == 300
    assert conn.execute("select payment_method from raw.invoices where invoice_id = 1048").fetchone() == (
        "card\nx",
    )


def test_an_error_after_a_quoted_newline_names_the_physical_line(conn, tmp_path, baseline):
    rows = _numbered(10)
    rows[2] = rows[2].replace(",USD,,,", ',USD,,"two\nlines",')  # lines 4-5
    rows[5] = rows[5].replace(",10.00,", ",10.0x,")  # line 8 (record 6)
    write_export(tmp_path / "csv", "2024-01-02", rows)
    with pytest.raises(LoadError) as raised:
        load_exports(conn, tmp_path / "csv")
    assert (raised.value.line, raised.value.column, raised.value.value) == (8, "AMOUNT", "10.0x")


def test_unterminated_quote_names_the_line_where_it_opened(conn, tmp_path, baseline):
    rows = _numbered(20)
    rows[4] = rows[4].replace(",USD,,,", ',USD,,"card,')  # line 6: the quote never closes
    write_export(tmp_path / "csv", "2024-01-02", rows)
    with pytest.raises(LoadError, match="a quote opens here and is never closed") as raised:
        load_exports(conn, tmp_path / "csv")
    assert raised.value.line == 6
    assert snapshot(conn) == baseline


def test_control_characters_from_the_file_are_escaped_in_messages(conn, tmp_path, baseline):
    rows = _numbered(3)
    rows[1] = rows[1].replace(",open,", ",\x1b[2J\x1b[31mpaid\u202e\x07,")
    write_export(tmp_path / "csv", "2024-01-02", rows)
    with pytest.raises(LoadError) as raised:
        load_exports(conn, tmp_path / "csv")
    message = str(raised.value)
    assert raised.value.column == "STATUS" and raised.value.line == 3
    assert 'value "\\x1b[2J\\x1b[31mpaid\\u202e\\x07"' in message
    assert not any(ch in message for ch in "\x1b\x07\u202e")


def test_escaping_is_unambiguous():
    assert printable("plain text, ok") == "plain text, ok"
    assert printable("a\\x1b") == "a\\\\x1b"  # a literal backslash is not mistaken for an escape
    assert printable("tab\there\nnewline\r") == "tab\\there\\nnewline\\r"
    assert printable("\x9b31m") == "\\x9b31m"  # the one-byte CSI


def test_a_value_of_exactly_the_limit_is_shown_whole():
    value = "v" * MAX_VALUE_CHARS
    assert str(LoadError("f.csv", "bad", value=value)) == f'f.csv, value "{value}": bad'
    longer = LoadError("f.csv", "bad", value=value + "w")
    assert str(longer) == f'f.csv, value "{"v" * (MAX_VALUE_CHARS - 3)}...": bad'


def test_the_whole_length_is_shown_only_for_a_shortened_value():
    assert str(LoadError("f.csv", "bad", value="abc", value_length=3)) == 'f.csv, value "abc": bad'
    start = "s" * MAX_VALUE_CHARS  # what the server sends back of a 5,000-character value
    assert str(LoadError("f.csv", "bad", value=start, value_length=5000)) == (
        f'f.csv, value "{"s" * (MAX_VALUE_CHARS - 3)}..." (5,000 characters): bad'
    )


def test_the_path_column_and_reason_are_escaped_too():
    # a file or folder name is data too, and a reason may quote one
    error = LoadError(Path("ex\x1b[2Jports/x.csv"), "entry \u202eodd\n", column="C\x07")
    text = str(error)
    assert not any(ch in text for ch in "\x1b\x07\u202e\n")
    assert text == "ex\\x1b[2Jports/x.csv, column C\\x07: entry \\u202eodd\\n"


def test_invoices_after_the_export_date_are_refused_counted_and_the_first_named(conn, tmp_path, baseline):
    rows = _numbered(5)
    rows[1] = invoice(2001, "2099-01-01T00:00:00Z")
    rows[3] = invoice(2002, "2024-01-03T00:00:00.000Z")  # one day after the export's date
    write_export(tmp_path / "csv", "2024-01-02", rows)
    with pytest.raises(LoadError) as raised:
        load_exports(conn, tmp_path / "csv")
    assert (raised.value.line, raised.value.column, raised.value.value) == (
        3,
        "CREATED_AT",
        "2099-01-01T00:00:00Z",
    )
    assert "2 invoice(s) created after the export date 2024-01-02" in str(raised.value)
    assert snapshot(conn) == baseline


def test_as_of_before_the_latest_invoice_is_refused(conn, tmp_path):
    with pytest.raises(LoadError, match=r"1 invoice\(s\) created after the export date 2023-12-30") as raised:
        load_exports(conn, write_dir(tmp_path / "files"), as_of=date(2023, 12, 30))
    assert raised.value.line == 4
    assert conn.execute("select count(*) from raw.load_log").fetchone() == (0,)


def test_an_export_from_the_future_is_refused(conn, tmp_path, baseline):
    write_export(tmp_path / "csv", "2999-01-01", [invoice(1)])
    with pytest.raises(
        LoadError, match=r"export date 2999-01-01 is after today \(.*UTC\): an export cannot come"
    ):
        load_exports(conn, tmp_path / "csv")
    assert snapshot(conn) == baseline


def test_a_single_file_export_with_an_invoice_from_the_future_names_it(conn, tmp_path, baseline):
    # dated by its newest invoice, it said only "export date 2027-03-01 is after today", naming no line
    directory = write_dir(tmp_path / "csv", [*INVOICE_LINES, invoice(9, "2027-03-01T08:00:00Z")])
    with pytest.raises(LoadError) as raised:
        load_exports(conn, directory, today=date(2026, 12, 6))
    assert str(raised.value) == (
        f"{directory / 'invoices.csv'}, line {len(INVOICE_LINES) + 1}, column CREATED_AT, value "
        '"2027-03-01T08:00:00Z": 1 invoice(s) created after today (2026-12-06, UTC) (the first is shown): '
        "the single-file export is dated by its newest invoice, and an export cannot come from the future; "
        "fix the export"
    )
    assert snapshot(conn) == baseline


def test_an_export_dated_tomorrow_is_refused_and_one_dated_today_loads(conn, tmp_path, baseline):
    write_export(tmp_path / "csv", "2024-01-03", [invoice(1)])
    with pytest.raises(LoadError, match=r"export date 2024-01-03 is after today \(2024-01-02, UTC\)"):
        load_exports(conn, tmp_path / "csv", today=date(2024, 1, 2))
    assert snapshot(conn) == baseline
    loaded = load_exports(conn, tmp_path / "csv", today=date(2024, 1, 3))
    assert [r.export_date for r in loaded if not r.skipped] == [date(2024, 1, 3)]


@pytest.mark.parametrize("second", ["changed", "identical"])
@pytest.mark.parametrize("ledger", ["new", "empty", "holding the base export"])
def test_the_same_invoice_twice_is_refused_naming_id_and_lines(conn, tmp_path, request, ledger, second):
    """Into an empty ledger the loader inserts without its separate duplicate check (the versions' key
    refuses the second row, or building it does when the load creates the tables); into a loaded one it
    checks first. The message is the same."""
    if ledger == "new":
        drop_ledger(conn)
    elif ledger == "empty":
        ensure_tables(conn)
    else:
        request.getfixturevalue("baseline")
    before = snapshot(conn)
    assert (before.get("invoices", []) == []) == (ledger != "holding the base export")
    assert ("invoices" in before["tables"]) == (ledger != "new")
    rows = _numbered(6)
    rows[4] = invoice(1001, status="paid") if second == "changed" else rows[1]  # 1001 is also on line 3
    write_export(tmp_path / "csv", "2024-01-02", rows)
    with pytest.raises(
        LoadError, match="INVOICE_ID 1001 appears 2 times in this export, on lines 3, 6"
    ) as raised:
        load_exports(conn, tmp_path / "csv")
    assert raised.value.line == 3
    assert snapshot(conn) == before


@pytest.mark.parametrize(
    ("times", "listed"), [(5, "3, 4, 5, 6, 7: "), (8, "3, 4, 5, 6, 7 and 3 more: ")], ids=["5", "8"]
)
@pytest.mark.parametrize("ledger", ["new", "holding the base export"])
def test_an_invoice_many_times_is_refused_naming_its_first_five_lines(
    conn, tmp_path, request, ledger, times, listed
):
    if ledger == "new":
        drop_ledger(conn)
    else:
        request.getfixturevalue("baseline")
    before = snapshot(conn)
    rows = _numbered(9)
    for position in range(2, times + 1):
        rows[position] = invoice(1001, status="paid")  # 1001 is on lines 3 on
    write_export(tmp_path / "csv", "2024-01-02", rows)
    with pytest.raises(
        LoadError, match=f"INVOICE_ID 1001 appears {times} times in this export, on lines {listed}"
    ):
        load_exports(conn, tmp_path / "csv")
    assert snapshot(conn) == before


def test_cr_only_line_endings_are_named_not_taken_for_a_wrong_header(conn, tmp_path, baseline):
    path = write_dir(tmp_path / "files") / "invoices.csv"
    path.write_bytes("\r".join(INVOICE_LINES).encode() + b"\r")
    with pytest.raises(LoadError, match=r"line 1: lines end with CR alone \(old Mac style\)"):
        load_exports(conn, path.parent)
    assert snapshot(conn) == baseline
    # under a header that ends with LF (a file put together from two sources)
    path.write_bytes(INVOICE_LINES[0].encode() + b"\n" + "\r".join(INVOICE_LINES[1:]).encode() + b"\r")
    with pytest.raises(LoadError, match=r"line 2: lines end with CR alone \(old Mac style\)"):
        load_exports(conn, path.parent)
    assert snapshot(conn) == baseline


ENCODED = {
    "gzip": (lambda text: gzip.compress(text.encode()), "gzip-compressed: decompress it"),
    "utf-16": (lambda text: text.encode("utf-16"), "UTF-16 (it starts with a UTF-16 byte order mark)"),
    "utf-16-be": (lambda text: b"\xfe\xff" + text.encode("utf-16-be"), "UTF-16"),
    "utf-32": (lambda text: text.encode("utf-32"), "UTF-32 (it starts with a UTF-32 byte order mark)"),
    "utf-16 without a mark": (lambda text: text.encode("utf-16-le"), "UTF-16 or UTF-32 without a byte order"),
    "zip": (lambda text: b"PK\x03\x04" + text.encode(), "a zip archive (an Excel workbook is one)"),
    "bzip2": (lambda text: bz2.compress(text.encode()), "bzip2-compressed: decompress it"),
    "xz": (lambda text: lzma.compress(text.encode()), "xz-compressed: decompress it"),
}


@pytest.mark.parametrize("kind", ENCODED)
def test_a_file_in_another_form_than_utf8_text_is_named_as_such(conn, tmp_path, baseline, kind):
    """Not "header is not valid UTF-8": the file is fine, only in another form, which the message names."""
    encoded, reason = ENCODED[kind]
    path = write_dir(tmp_path / "files") / "invoices.csv"
    path.write_bytes(encoded("\n".join(INVOICE_LINES) + "\n"))
    with pytest.raises(LoadError) as raised:
        load_exports(conn, path.parent)
    assert (raised.value.path, raised.value.line) == (path, 1)
    assert reason in raised.value.reason and "UTF-8" in raised.value.reason, str(raised.value)
    assert snapshot(conn) == baseline


def test_an_export_folder_the_loader_may_not_read_is_named(conn, tmp_path, baseline):
    """A permission error while looking for the exports is a load error naming the folder, not a
    traceback. Root reads everything, so the lookup runs in a child that has dropped to `nobody`."""
    csv_dir = Path(tempfile.mkdtemp()) / "csv"  # pytest's folders are root's only
    csv_dir.parent.chmod(0o755)
    write_export(csv_dir, "2024-01-02", [invoice(1)])
    folder = csv_dir / "exports" / "2024-01-02"
    folder.chmod(0)
    read, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child reports through the pipe)
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            try:
                discover(csv_dir)
                outcome = "no error"
            except LoadError as error:
                outcome = f"LoadError: {error}"
            except BaseException as error:
                outcome = f"{type(error).__name__}: {error}"
            os.write(write_end, outcome.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read) as pipe:
        outcome = pipe.read()
    os.waitpid(child, 0)
    folder.chmod(0o755)
    shutil.rmtree(csv_dir.parent)
    assert outcome.startswith(f"LoadError: {folder}"), outcome
    assert "cannot look into it: Permission denied" in outcome


def test_a_server_older_than_the_loader_needs_is_refused_by_name(conn, tmp_path, baseline, monkeypatch):
    """The checks that name a bad value's line and column need pg_input_is_valid (PostgreSQL 16): on an
    older server good data would load and bad data fail with an SQL error naming neither."""
    from data_platform import loader

    monkeypatch.setattr(loader, "MINIMUM_SERVER_VERSION", conn.info.server_version + 1)
    with pytest.raises(LoadError, match=r"the loader needs PostgreSQL \d+ or later; this server runs \d"):
        load_exports(conn, write_dir(tmp_path / "files"))
    assert snapshot(conn) == baseline


@pytest.mark.parametrize("block_size", [1, 2, 3, 5, 64])
def test_a_cr_that_no_lf_follows_is_found_on_its_line_whatever_the_blocks(tmp_path, block_size):
    path = tmp_path / "invoices.csv"
    cases = {
        b"h\na\r\nb\r\n": None,  # CRLF throughout, a block may end between its CR and LF
        b"h\na\nb\rc\n": 3,
        b"h\na\r\nb\r\nc\r": 4,  # a last line ending in CR alone
        b"h\n\rx\n": 2,
    }
    for data, line in cases.items():
        path.write_bytes(data)
        assert lone_cr_line(path, 2, block_size) == line, data


@pytest.mark.parametrize(
    "names",
    [
        ("INVOICES.CSV", "Organizations.csv"),
        ("invoices.csv.gz", "organizations.csv.gz"),
        ("x", "organisations.csv"),
    ],
)
def test_a_single_file_export_named_otherwise_beside_dated_exports_is_refused_before_any_load(
    conn, tmp_path, names
):
    """It was passed over while the dated exports loaded, and could never load before them afterwards:
    the history it holds was lost without a word."""
    csv_dir, before = tmp_path / "csv", snapshot(conn)
    write_export(csv_dir, "2024-01-02", [invoice(1)])
    for written, name in zip(write_dir(tmp_path / "named").iterdir(), sorted(names), strict=True):
        shutil.copy(written, csv_dir / name)
    near = sorted(name for name in names if name != "x")[0]
    with pytest.raises(LoadError, match=r"looks like the single-file export's \S+ named otherwise") as raised:
        load_exports(conn, csv_dir)
    assert raised.value.path == csv_dir / near
    assert snapshot(conn) == before


@pytest.mark.parametrize("archived", ["invoices.csv.gz", "invoices.csv.bak"])
def test_a_loaded_single_file_export_archived_under_another_name_leaves_the_next_loads_alone(
    conn, tmp_path, archived
):
    """Compressed or renamed once loaded, it is no base waiting to load: refusing it stopped every load."""
    csv_dir = write_dir(tmp_path / "csv")
    load_exports(conn, csv_dir)
    (csv_dir / "invoices.csv").rename(csv_dir / archived)
    (csv_dir / "organizations.csv").rename(csv_dir / f"organizations{archived.removeprefix('invoices')}")
    write_export(csv_dir, "2024-01-02", [invoice(1)])
    assert [result.skipped for result in load_exports(conn, csv_dir)] == [False]


def test_an_export_with_every_value_quoted_header_included_loads_as_the_unquoted_one(conn, tmp_path):
    """A CSV writer told to quote every value (Spark's quoteAll, for one) quotes the header too; a missing
    value stays empty and unquoted ("" is an empty text, refused above)."""
    import csv

    def quoted(line: str) -> str:
        return ",".join(f'"{field}"' if field else "" for field in next(csv.reader([line])))

    written = tmp_path / "quoted"
    write_dir(written, [quoted(line) for line in INVOICE_LINES], [quoted(line) for line in ORG_LINES])
    assert (written / "invoices.csv").read_text().startswith('"INVOICE_ID","PARENT_INVOICE_ID",')
    rows = "select * from raw.invoices order by invoice_id"
    load_exports(conn, written)
    loaded = conn.execute(rows).fetchall()
    drop_ledger(conn)
    load_exports(conn, write_dir(tmp_path / "plain"))
    assert loaded == conn.execute(rows).fetchall() and loaded


def test_an_export_folder_named_in_another_encoding_than_utf8_loads_once(conn, tmp_path):
    """Its name went into the load log and the checksums' cache as text Postgres refuses: a traceback, and
    the export could never load."""
    folder = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9"))  # latin-1 \xe9, not UTF-8
    settle(*write_dir(folder).iterdir())  # old enough for their checksums to be kept, by path
    assert [result.skipped for result in load_exports(conn, folder)] == [False]
    assert [result.skipped for result in load_exports(conn, folder)] == [True]
    assert conn.execute("select source from raw.load_log").fetchone()[0].endswith("/caf\\xe9")
    # the file is found again by its checksum (the next snapshot's fast path), by the name it has
    known = file_checksums.file_with(conn, sha256_of(folder / "invoices.csv"))
    assert known is not None and known.path == folder / "invoices.csv"


def test_a_folder_named_with_a_backslash_is_not_taken_for_one_in_another_encoding(conn, tmp_path):
    """Its name is the text the other's was escaped to: the two shared a load log source and a row of the
    checksums' cache."""
    latin1 = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9"))
    backslash = tmp_path / "caf\\xe9"
    settle(*write_dir(latin1).iterdir())
    shutil.copytree(latin1, backslash)
    load_exports(conn, latin1)
    load_exports(conn, backslash)  # the same export again: skipped, once its files' checksums are known
    paths = conn.execute("select path from raw.file_checksums order by path").fetchall()
    assert len(paths) == 4, paths
