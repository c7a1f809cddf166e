"""LoadError: bad input or a refused export, with where it happened, safe to print.

Everything in a message that can come from a file (values, lines, even file names) is data, not
terminal output: control characters, ANSI escapes, bidirectional overrides and backslashes are
escaped the way Python's repr escapes them, so a file cannot rewrite a log or a terminal.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Protocol

from data_platform.raw_tables import TableSpec

# How much of an offending value or line an error message shows.
MAX_VALUE_CHARS = 200


def printable(text: str) -> str:
    """`text` with every non-printable character and backslash escaped (\\x1b, \\n, \\u202e, \\\\)."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(ch if ch.isprintable() and ch != "\\" else repr(ch)[1:-1] for ch in text)


def path_text(path: Path) -> str:
    """A path as text the database takes: the bytes of a name that is not UTF-8 (which Python keeps as
    surrogates, and Postgres refuses) escaped as \\xe9, and a backslash doubled, so that two paths never
    give the same text and text_path gives the path back."""
    return os.fsencode(path).replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


def text_path(text: str) -> Path:
    """The path path_text gave `text` for."""

    def byte(escape: re.Match[bytes]) -> bytes:
        return b"\\" if escape[1] == b"\\" else bytes([int(escape[1][1:], 16)])

    return Path(os.fsdecode(re.sub(rb"\\(\\|x[0-9a-f]{2})", byte, text.encode())))


# the loader's exit code when another loader run holds its lock past --wait (the pipeline tells it apart)
EXIT_BUSY = 3
# and when it could not connect: nothing was tried
EXIT_DATABASE_UNAVAILABLE = 2
# and when the database failed during the load (a lost connection, a read-only or full disk, a timeout): the
# export it was loading rolled back, through no fault of its own, so it is not to be removed but loaded again
# (4 and 5 are the pipeline's own exit codes, which passes this one on)
EXIT_DATABASE_FAILED = 6
# how the loader's command line starts the line saying why it stopped: a failed load's pipeline error
# quotes its output from there on
ERROR_PREFIX = "error: "


class LoaderBusy(Exception):
    """Another loader run held the lock for longer than this one would wait: nothing was loaded."""


class LoadError(Exception):
    """Bad input, a refused export or a failed load, with where it happened in the CSV file."""

    def __init__(
        self,
        path: Path | str | None,
        reason: str,
        *,
        line: int | None = None,
        column: str | None = None,
        value: str | None = None,
        value_length: int | None = None,
    ):
        """value: the offending value or its start; value_length: the whole value's length in characters
        when value is only its start (it is then shown in the message)."""
        self.path = Path(path) if path is not None else None
        self.reason = reason
        self.line = line
        self.column = column
        # only what a message shows: an error may be kept (a traceback, a log) long after it is raised
        self.value = value[:MAX_VALUE_CHARS] if value is not None else None
        self.shortened = value is not None and max(len(value), value_length or 0) > MAX_VALUE_CHARS
        self.value_length = value_length
        super().__init__(str(self))

    def __str__(self) -> str:
        where = [printable(str(self.path))] if self.path is not None else []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.column is not None:
            where.append(f"column {printable(self.column)}")
        if self.value is not None:
            shown = self.value[: MAX_VALUE_CHARS - 3] + "..." if self.shortened else self.value
            length = f" ({self.value_length:,} characters)" if self.shortened and self.value_length else ""
            where.append(f'value "{printable(shown)}"{length}')
        reason = printable(self.reason)
        return f"{', '.join(where)}: {reason}" if where else reason


class LineLike(Protocol):
    head: bytes
    ending: str
    commas: int

    @property
    def text(self) -> str: ...


def _fields(line: LineLike) -> int:
    # exports never quote: a line's fields are its commas + 1
    return line.commas + 1


# The refusals of a whole export that the Postgres loader and the other engines' raw builders share.


# why a value is refused, in the Postgres loader's and the other engines' words
REQUIRED_VALUE_EMPTY = "empty value, but this column is required"
CR_ALONE = "lines end with CR alone (old Mac style): the file must use LF or CRLF"
NUL_BYTE = "a NUL byte (0x00): no CSV value may hold one (is the file binary, or UTF-16?)"


def not_in_format(expected: str) -> str:
    return f"not in the export's format: expected {expected}"


def quoted_empty_text(expected: str) -> str:
    # CSV reads "" as an empty text, an empty field as no value
    return (
        'a quoted empty value ("") is an empty text, not a missing one: leave the field empty, without '
        f"quotes, for no value (a value is {expected})"
    )


def changed_while_read(path: Path) -> LoadError:
    return LoadError(
        path, "changed while it was read: land an export in one step (copy into a dot-named folder, then mv)"
    )


# the help of --allow-empty, an option of the loader, the raw builders and engines.build
ALLOW_EMPTY_HELP = "load an export whose files have a header but no data rows (else an error)"


def header_only(path: Path, table_name: str, export_date: date | None = None) -> LoadError:
    """`export_date`: the dated export's day, which bounds the run that allows it (--allow-empty allows
    every export the run loads: a later day's truncated file would load as empty too, for good)."""
    allow = f"--allow-empty --through {export_date}" if export_date else "--allow-empty"
    return LoadError(
        path,
        f"no data rows, only the header (pass {allow} if an export without {table_name} is intended: "
        "the README's loader section says how for the pipeline)",
    )


def undatable(invoices: Path, remedy: str = "pass --as-of YYYY-MM-DD") -> LoadError:
    """`remedy`: how the caller's user gives the date (the raw builders have no --as-of)."""
    return LoadError(invoices, f"cannot date an export without invoices: {remedy}")


def utc_today() -> date:
    """The day no export's date may be after: exports are dated in UTC days."""
    return datetime.now(UTC).date()


def future_export(source: Path, export_date: date, today: date) -> LoadError:
    return LoadError(
        source,
        f"export date {export_date} is after today ({today}, UTC): an export cannot come from the future",
    )


def reloaded(path: Path, earlier: date, earlier_source: str | None, export_date: date) -> LoadError:
    """A file an earlier export loaded that changes rows loaded again: they are rows the exports since
    changed, and it would undo that."""
    where = f" (from {earlier_source})" if earlier_source else ""
    return LoadError(
        path,
        f"this file was already loaded as export {earlier}{where}: loaded again as export {export_date} it "
        "would undo what the exports since changed; an export loads once (put corrections in a new dated "
        "export; a genuine revert of those changes loads once its file differs from that one, with its rows "
        "in another order or one more row of an invoice as it stands)",
    )


def future_invoices(
    invoices: Path,
    count: int,
    export_date: date,
    *,
    value: str | None,
    line: int | None = None,
    invoice_id: int | None = None,
    dated_by_content: bool = False,
) -> LoadError:
    """Invoices created after their export's date would move every watermark into the future; `value`
    (and `line` or `invoice_id`): the first one's CREATED_AT. dated_by_content: the single-file export
    without --as-of, which its newest invoice dates: `export_date` is then today, the latest date it may
    have."""
    shown = "the first is shown" + (f", INVOICE_ID {invoice_id}" if invoice_id is not None else "")
    if dated_by_content:
        message = (
            f"{count:,} invoice(s) created after today ({export_date}, UTC) ({shown}): the single-file "
            "export is dated by its newest invoice, and an export cannot come from the future; fix the "
            "export"
        )
    else:
        message = (
            f"{count:,} invoice(s) created after the export date {export_date} ({shown}): an export cannot "
            "hold invoices from its future; fix the export or its date"
        )
    return LoadError(
        invoices,
        message,
        line=line,
        column="CREATED_AT",
        value=value,
    )


def shape_error(
    spec: TableSpec, path: Path, number: int, line: LineLike, first_ending: str, message: str
) -> LoadError | None:
    """A LoadError if the line itself is malformed: line endings, blank, column count."""
    if b"\r" in line.head or line.ending == "CR":
        return LoadError(
            path, f"stray carriage return (CR) in the line ({message})", line=number, value=line.text
        )
    if first_ending != "none" and line.ending not in ("none", first_ending):
        return LoadError(
            path,
            f"mixed line endings: this line ends with {line.ending} but line 2 ends with {first_ending}; "
            "use LF or CRLF throughout",
            line=number,
        )
    if not line.text.strip():
        return LoadError(path, f"blank line (expected {len(spec.columns)} columns)", line=number)
    if b'"' not in line.head and _fields(line) != len(spec.columns):
        return LoadError(
            path,
            f"wrong number of columns: expected {len(spec.columns)}, found {_fields(line)}",
            line=number,
            value=line.text,
        )
    return None
