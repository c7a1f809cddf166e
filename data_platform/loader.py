"""Load the raw CSV files into Postgres: streamed COPY into a new table, swapped in atomically.

    python -m data_platform.loader [--csv-dir DIR] [--only invoices|organizations] [--allow-empty]

For each file the loader checks the header itself, then streams the rest of the file in binary
blocks into `copy raw.<table>__loading from stdin (format csv)`: the file is never held in memory
and Postgres does all the parsing. When every file has loaded, the same transaction drops the old
raw tables (cascade: dependent staging views go too; `dbt build` recreates them) and renames the
new ones into place. Any failure, including Ctrl-C or a killed process, rolls the whole transaction
back (the __loading tables included), so the previous raw tables stay exactly as they were and no
half-loaded table is ever visible. A file with a header but no data rows is refused unless
--allow-empty is given: an empty export must not silently empty the warehouse.

Bad input becomes a `LoadError` naming the file, the 1-based line (the header is line 1), the
column and the value. Exit codes: 0 loaded, 1 bad input or load failure, 2 database unreachable,
130 interrupted.

What Postgres still accepts. The types reject anything that is not a value of the type, and CHECK
constraints (raw_tables.py) reject the special values NaN, Infinity, -Infinity (numeric) and
infinity, -infinity (date, timestamptz). Postgres also reads some other spellings:
- numbers: scientific notation (`1.5e2`), a leading `+`, surrounding spaces, and since Postgres 16
  underscores (`1_000`) and `0x` / `0o` / `0b` integer prefixes;
- dates and timestamps: other formats (`Jul 17 2023`, `20230717`, an explicit offset such as `+02`,
  converted to UTC) and the keywords `epoch`, `now`, `today`, `tomorrow`, `yesterday`.
That is acceptable: every one of them becomes an exact, finite value (numeric parses scientific
notation exactly, never through a float), so sums, divisions and comparisons downstream stay
correct, unlike NaN, which compares greater than every number and passes an `amount > 0` test. The
keywords give a plausible but invented date; an export never writes them, and rejecting them would
mean copying into text columns and casting with a pattern check per value, a large cost on 12.7M
rows for input that does not occur.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from data_platform.db import DatabaseUnavailable, connect
from data_platform.raw_tables import RAW_SCHEMA, TABLES, TableSpec

BLOCK_SIZE = 1024 * 1024
PROGRESS_INTERVAL_SECONDS = 5.0
# Longest header we accept; read with a limit so a file without newlines is never slurped.
MAX_HEADER_BYTES = 64 * 1024
# How much of a line the error path keeps.
LINE_HEAD_BYTES = 4096
# How much of an offending line an error message shows.
MAX_VALUE_CHARS = 200
UTF8_BOM = b"\xef\xbb\xbf"
# Serialises concurrent loader runs (two runs would fight over the __loading tables).
ADVISORY_LOCK_KEY = "data_platform.loader"

# Called after every block with (path, bytes done, file size).
Progress = Callable[[Path, int, int], None]


class LoadError(Exception):
    """Bad input or a failed load, with where it happened in the CSV file."""

    def __init__(
        self,
        path: Path | str | None,
        reason: str,
        *,
        line: int | None = None,
        column: str | None = None,
        value: str | None = None,
    ):
        self.path = Path(path) if path is not None else None
        self.reason = reason
        self.line = line
        self.column = column
        self.value = value
        super().__init__(str(self))

    def __str__(self) -> str:
        where = [str(self.path)] if self.path is not None else []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.column is not None:
            where.append(f"column {self.column}")
        if self.value is not None:
            where.append(f'value "{_shorten(self.value)}"')
        return f"{', '.join(where)}: {self.reason}" if where else self.reason


@dataclass(frozen=True)
class LoadResult:
    table: str
    path: Path
    rows: int
    seconds: float
    # what `drop ... cascade` of the old table also dropped, as Postgres names it: "view staging.x"
    dropped_dependents: tuple[str, ...] = ()

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (
            f"{self.table}: {self.rows:,} rows from {self.path} in {self.seconds:.1f} s "
            f"({self.rows_per_second:,.0f} rows/s)"
        )


def _shorten(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- the header ------------------------------------------------------------------------------


def check_header(spec: TableSpec, path: Path) -> int:
    """Validate the file's first line against the spec; return the header's length in bytes.

    Tolerates a UTF-8 byte order mark and CRLF. Raises LoadError for a missing, unreadable or
    empty file and for any header other than the exact expected one.
    """
    try:
        with path.open("rb") as file:
            raw = file.readline(MAX_HEADER_BYTES)
    except FileNotFoundError:
        raise LoadError(path, f"file not found (expected the {spec.name} CSV file here)") from None
    except IsADirectoryError:
        raise LoadError(path, "is a directory, expected a CSV file") from None
    except OSError as error:
        raise LoadError(path, f"cannot read file: {error.strerror}") from None

    expected = spec.csv_header
    if not raw:
        raise LoadError(path, f"file is empty (0 bytes): expected at least the header line {expected}")
    text = raw.removeprefix(UTF8_BOM).removesuffix(b"\n").removesuffix(b"\r")
    try:
        found = text.decode("utf-8")
    except UnicodeDecodeError:
        raise LoadError(path, "header is not valid UTF-8", line=1) from None
    if found != expected:
        raise _header_error(path, spec.header, found)
    return len(raw)


def _header_error(path: Path, expected: tuple[str, ...], found: str) -> LoadError:
    """Point at the first header column that differs, and show the whole expected header."""
    names = found.split(",")
    must_be = f"the header must be exactly {','.join(expected)} ({len(expected)} columns, found {len(names)})"
    for want, got in zip(expected, names, strict=False):
        if want != got:
            return LoadError(
                path, f"wrong header: expected {want} here; {must_be}", line=1, column=want, value=got
            )
    return LoadError(path, f"wrong header: {must_be}", line=1, value=found)


# --- streaming one file -----------------------------------------------------------------------


def _stream_file(
    copy: psycopg.Copy,
    path: Path,
    header_bytes: int,
    block_size: int,
    progress: Progress | None,
) -> bool:
    """Send everything after the header to COPY in binary blocks; True if a backslash was seen.

    The loop does nothing per byte in Python: a block is read, handed to libpq and scanned once
    with memchr for a backslash (only needed for the `\\.` check, and real files have none).
    """
    total = path.stat().st_size
    done = header_bytes
    saw_backslash = False
    buffer = bytearray(block_size)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as file:
        file.seek(header_bytes)
        while count := file.readinto(buffer):
            # LibpqWriter hands the bytes to libpq before returning, so the buffer is reusable.
            copy.write(view[:count])
            saw_backslash = saw_backslash or buffer.find(b"\\", 0, count) >= 0
            done += count
            if progress:
                progress(path, done, total)
    return saw_backslash


def _copy_error(error: psycopg.Error, spec: TableSpec, path: Path) -> LoadError | None:
    """Turn a COPY data error into a LoadError at the file's own line numbers, else None."""
    if not isinstance(error, (psycopg.errors.DataError, psycopg.errors.IntegrityError)):
        return None  # e.g. a cancelled COPY (Ctrl-C) is not bad input
    diag = error.diag
    match = re.search(r"COPY \S+, line (\d+)(?:, column (\w+))?(?:: (.*))?", diag.context or "")
    if not match:
        return None
    # Postgres counts the lines of the data it received, which starts after the header line.
    line = int(match.group(1)) + 1
    if isinstance(error, psycopg.errors.CheckViolation):
        return _check_error(spec, path, line, diag.constraint_name)
    column_name = match.group(2) or diag.column_name
    column = spec.column(column_name) if column_name else None
    shown = match.group(3) or ""
    value = shown[1:-1] if shown.startswith('"') and shown.endswith('"') else None
    message = diag.message_primary or str(error).strip()

    # A line with a column too few shifts every later value: say so, not "bad number in X".
    shape_error = _shape_error(spec, path, line, message)
    if shape_error:
        return shape_error
    if isinstance(error, psycopg.errors.NotNullViolation) and column:
        return LoadError(
            path, "empty value, but this column is required", line=line, column=column.header, value=""
        )
    if isinstance(error, psycopg.errors.CharacterNotInRepertoire):
        return LoadError(path, f"{message} (the file must be UTF-8)", line=line)
    reason = message
    if value is not None:  # the value is already in the message's prefix: say it once
        reason = reason.removesuffix(f': "{value}"').replace(f'value "{value}" ', "")
    if column:
        reason = f"{reason} (expected {column.expected})"
    return LoadError(path, reason, line=line, column=column.header if column else None, value=value)


def _check_error(spec: TableSpec, path: Path, line: int, constraint: str | None) -> LoadError | None:
    """A value the type accepts but the column's CHECK rejects: NaN, Infinity, infinity."""
    column = spec.checked_column(constraint or "")
    if column is None:
        return None
    # the error only shows the whole row as Postgres parsed it: take the value from the file
    this = _read_line(path, line)
    values = this.values if this else None
    index = spec.columns.index(column)
    value = values[index] if values and index < len(values) else None
    special = "NaN, Infinity and -Infinity" if column.sql_type == "numeric" else "infinity and -infinity"
    return LoadError(
        path,
        f"{special} are not accepted (expected {column.expected})",
        line=line,
        column=column.header,
        value=value,
    )


def _shape_error(spec: TableSpec, path: Path, line: int, message: str) -> LoadError | None:
    """A LoadError if the line itself is malformed: line endings, blank, column count."""
    this = _read_line(path, line)
    if this is None:
        return None
    first = _read_line(path, 2)
    first_ending = first.ending if first else "none"
    if b"\r" in this.head or this.ending == "CR":
        return LoadError(
            path, f"stray carriage return (CR) in the line ({message})", line=line, value=this.text
        )
    if first_ending != "none" and this.ending not in ("none", first_ending):
        return LoadError(
            path,
            f"mixed line endings: this line ends with {this.ending} but line 2 ends with {first_ending}; "
            "use LF or CRLF throughout",
            line=line,
        )
    if not this.text.strip():
        return LoadError(path, f"blank line (expected {len(spec.columns)} columns)", line=line)
    if this.fields != len(spec.columns):
        return LoadError(
            path,
            f"wrong number of columns: expected {len(spec.columns)}, found {this.fields}",
            line=line,
            value=this.text,
        )
    return None


@dataclass(frozen=True)
class _Line:
    """One physical line of a file, as much of it as an error message needs."""

    head: bytes  # the start of the line (at most LINE_HEAD_BYTES), without its ending
    ending: str  # LF, CRLF, CR or none (a last line without final newline)
    commas: int  # in the whole line
    complete: bool  # head is the whole line

    @property
    def text(self) -> str:
        return self.head.decode("utf-8", "replace")

    @property
    def values(self) -> list[str] | None:
        """The line's CSV fields, when we have the whole line."""
        return next(csv.reader([self.text]), []) if self.complete else None

    @property
    def fields(self) -> int:
        values = self.values  # honour CSV quoting when we have the whole line
        return len(values) if values is not None else self.commas + 1


def _line_ending(chunk: bytes) -> str:
    if chunk.endswith(b"\r\n"):
        return "CRLF"
    if chunk.endswith(b"\n"):
        return "LF"
    return "CR" if chunk.endswith(b"\r") else "none"


def _read_line(path: Path, number: int) -> _Line | None:
    """Physical line `number` (1-based) of the file; streams it, for the error path only."""
    with path.open("rb") as file:
        # find where the line starts by counting newlines block by block (fast on GBs)
        to_skip, offset = number - 1, 0
        while to_skip:
            block = file.read(1024 * 1024)
            if not block:
                return None
            newlines = block.count(b"\n")
            if newlines < to_skip:
                to_skip -= newlines
                offset += len(block)
                continue
            position = -1
            for _ in range(to_skip):
                position = block.index(b"\n", position + 1)
            offset += position + 1
            to_skip = 0
        file.seek(offset)
        head = last = file.readline(LINE_HEAD_BYTES)
        if not head:
            return None
        commas = head.count(b",")
        while not last.endswith(b"\n"):  # a very long line: read on to its end, keeping little
            chunk = file.readline(1024 * 1024)
            if not chunk:
                break
            commas += chunk.count(b",")
            last = chunk
    return _Line(head.rstrip(b"\r\n"), _line_ending(last), commas, complete=last is head)


# --- the load transaction ---------------------------------------------------------------------


def _table(name: str) -> sql.Identifier:
    return sql.Identifier(RAW_SCHEMA, name)


def _prepare(conn: psycopg.Connection) -> None:
    """Inside the load transaction: one loader at a time, UTC, and a raw schema to load into."""
    locked = conn.execute("select pg_try_advisory_xact_lock(hashtext(%s))", [ADVISORY_LOCK_KEY]).fetchone()
    if not (locked and locked[0]):
        raise LoadError(None, "another loader run is in progress on this database; retry when it ends")
    # Timestamps without an offset (none expected) are read as UTC, whatever the server's zone;
    # YMD makes day/month-ambiguous dates such as 02/03/2022 an error instead of a guess.
    conn.execute("set local timezone to 'UTC'")
    conn.execute("set local datestyle to 'ISO, YMD'")
    # _swap learns what `drop ... cascade` dropped from its NOTICEs: make sure they are sent
    conn.execute("set local client_min_messages to notice")
    schema = conn.execute("select 1 from pg_namespace where nspname = %s", [RAW_SCHEMA]).fetchone()
    if schema:
        return
    try:
        with conn.transaction():
            conn.execute(sql.SQL("create schema {}").format(sql.Identifier(RAW_SCHEMA)))
    except psycopg.errors.InsufficientPrivilege:
        raise LoadError(
            None,
            f"schema {RAW_SCHEMA} does not exist and {conn.info.user} may not create it: "
            "apply init.sql to this database first (psql -f init.sql)",
        ) from None


def _stage(
    conn: psycopg.Connection,
    spec: TableSpec,
    path: Path,
    header_bytes: int,
    *,
    block_size: int,
    progress: Progress | None,
) -> tuple[int, float]:
    """Create raw.<table>__loading and COPY the file into it; return (rows, seconds)."""
    started = time.perf_counter()
    loading = _table(spec.loading_name)
    # No leftover __loading table can exist: it is created, filled and renamed in one transaction.
    conn.execute(spec.create_statement(spec.loading_name))
    columns = sql.SQL(", ").join(sql.Identifier(column.name) for column in spec.columns)
    # freeze: the table is new in this transaction, so rows can be written already frozen
    # (no hint-bit rewrite on first read); encoding: the files are UTF-8 whatever the client says.
    statement = sql.SQL("copy {} ({}) from stdin with (format csv, freeze, encoding 'UTF8')").format(
        loading, columns
    )
    with conn.cursor() as cursor:
        try:
            with cursor.copy(statement) as copy:
                saw_backslash = _stream_file(copy, path, header_bytes, block_size, progress)
        except psycopg.Error as error:
            load_error = _copy_error(error, spec, path)
            if load_error is None:
                raise
            raise load_error from error
        rows = cursor.rowcount
    # Postgres ends COPY data at a line `\.` and reports success: never lose rows silently.
    # It stopped right after `rows` data lines (real files have no quoted newlines).
    marker = _read_line(path, rows + 2) if saw_backslash else None
    if marker is not None and marker.head == b"\\.":
        raise LoadError(
            path,
            "a line holding only \\. would silently end the data here: remove it",
            line=rows + 2,
            value="\\.",
        )
    conn.execute(sql.SQL("analyze {}").format(loading))
    return rows, time.perf_counter() - started


# How Postgres names each object a cascade drops, one per line of the notice (English messages;
# with a translated server the note is just missing, the load is the same).
CASCADE_PREFIX = "drop cascades to "


def _swap(conn: psycopg.Connection, spec: TableSpec) -> tuple[str, ...]:
    """Replace raw.<table> by raw.<table>__loading; return the dependents dropped with the old one.

    Postgres reports them in a NOTICE: "drop cascades to view staging.x", or for several
    "drop cascades to 2 other objects" with one such line each in the detail. Other notices
    ("table ... does not exist, skipping" on a first load) are ignored.
    """
    dropped: list[str] = []

    def collect(notice: psycopg.errors.Diagnostic) -> None:
        # the Diagnostic is only valid during the callback: keep strings
        for line in (notice.message_detail or notice.message_primary or "").splitlines():
            if line.startswith(CASCADE_PREFIX):
                dropped.append(line.removeprefix(CASCADE_PREFIX))

    conn.add_notice_handler(collect)
    try:
        conn.execute(sql.SQL("drop table if exists {} cascade").format(_table(spec.name)))
    finally:
        conn.remove_notice_handler(collect)
    conn.execute(
        sql.SQL("alter table {} rename to {}").format(_table(spec.loading_name), sql.Identifier(spec.name))
    )
    return tuple(dropped)


def load_table(
    conn: psycopg.Connection,
    spec: TableSpec,
    path: Path,
    *,
    block_size: int = BLOCK_SIZE,
    progress: Progress | None = None,
    allow_empty: bool = False,
) -> LoadResult:
    """Load one CSV file into raw.<spec.name>, replacing the table in a single transaction."""
    return load_files(
        conn, [(spec, Path(path))], block_size=block_size, progress=progress, allow_empty=allow_empty
    )[0]


def _check_file(spec: TableSpec, path: Path, allow_empty: bool) -> int:
    """check_header, and refuse a header-only file unless allow_empty; return the header's bytes."""
    header_bytes = check_header(spec, path)
    if not allow_empty and path.stat().st_size == header_bytes:
        raise LoadError(
            path,
            f"no data rows, only the header: refusing to replace {RAW_SCHEMA}.{spec.name} with an empty "
            "table (pass --allow-empty if that is intended)",
        )
    return header_bytes


def load_files(
    conn: psycopg.Connection,
    files: Iterable[tuple[TableSpec, Path]],
    *,
    block_size: int = BLOCK_SIZE,
    progress: Progress | None = None,
    allow_empty: bool = False,
) -> list[LoadResult]:
    """Load several files in ONE transaction: all tables are replaced, or none is.

    The swaps happen after every COPY, so the old tables stay readable during the long part.
    Commits when `conn` has no transaction open (autocommit or idle); inside the caller's
    transaction it is a savepoint, and the caller commits. A file with no data rows is a
    LoadError unless allow_empty.
    """
    # every file is checked before any COPY starts: a bad invoices header fails in milliseconds
    checked = [(spec, Path(path), _check_file(spec, Path(path), allow_empty)) for spec, path in files]
    staged: list[tuple[TableSpec, Path, int, float]] = []
    with conn.transaction():
        _prepare(conn)
        for spec, path, header_bytes in checked:
            rows, seconds = _stage(conn, spec, path, header_bytes, block_size=block_size, progress=progress)
            staged.append((spec, path, rows, seconds))
        results = [
            LoadResult(f"{RAW_SCHEMA}.{spec.name}", path, rows, seconds, _swap(conn, spec))
            for spec, path, rows, seconds in staged
        ]
    return results


def select_files(csv_dir: Path | str, only: str | None = None) -> list[tuple[TableSpec, Path]]:
    """The (spec, path) pairs to load from csv_dir: both tables, or just `only`."""
    csv_dir = Path(csv_dir)
    if not csv_dir.is_dir():
        raise LoadError(csv_dir, "CSV directory not found (set --csv-dir or CSV_DIR)")
    if only is not None and only not in TABLES:
        raise LoadError(csv_dir, f"unknown table {only!r}: choose from {', '.join(TABLES)}")
    specs = [TABLES[only]] if only else list(TABLES.values())
    return [(spec, csv_dir / spec.file_name) for spec in specs]


def load_all(
    conn: psycopg.Connection,
    csv_dir: Path | str,
    *,
    only: str | None = None,
    block_size: int = BLOCK_SIZE,
    progress: Progress | None = None,
    allow_empty: bool = False,
) -> list[LoadResult]:
    """Load organizations.csv and invoices.csv (or just `only`) from csv_dir, atomically."""
    return load_files(
        conn, select_files(csv_dir, only), block_size=block_size, progress=progress, allow_empty=allow_empty
    )


# --- command line -----------------------------------------------------------------------------


class ProgressReporter:
    """Prints MiB done / total to stderr every few seconds; silent for files quicker than that."""

    def __init__(self, interval: float = PROGRESS_INTERVAL_SECONDS):
        self.interval = interval
        self.path: Path | None = None
        self.started = self.next_report = 0.0

    def __call__(self, path: Path, done: int, total: int) -> None:
        now = time.monotonic()
        if path != self.path:
            self.path, self.started, self.next_report = path, now, now + self.interval
        if now < self.next_report:
            return
        self.next_report = now + self.interval
        mib, elapsed = 1024 * 1024, max(now - self.started, 1e-6)
        print(
            f"  {path.name}: {done / mib:,.0f} / {total / mib:,.0f} MiB ({100 * done / max(total, 1):.0f}%), "
            f"{done / mib / elapsed:,.0f} MiB/s",
            file=sys.stderr,
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="data-platform-load",
        description="Load organizations.csv and invoices.csv into the raw schema (atomic swap).",
    )
    parser.add_argument(
        "--csv-dir",
        type=Path,
        default=Path(os.environ.get("CSV_DIR") or "csv_data"),
        help="directory holding the CSV files (default: $CSV_DIR or csv_data)",
    )
    parser.add_argument("--only", choices=list(TABLES), help="load just this table")
    parser.add_argument(
        "--allow-empty",
        action="store_true",
        help="load a file that has a header but no data rows (else an error: it would empty the table)",
    )
    args = parser.parse_args(argv)

    try:
        files = select_files(args.csv_dir, args.only)
        with connect() as conn:
            results = load_files(conn, files, progress=ProgressReporter(), allow_empty=args.allow_empty)
    except DatabaseUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except LoadError as error:
        print(f"error: {error}", file=sys.stderr)
        print("nothing was loaded: the raw tables are unchanged", file=sys.stderr)
        return 1
    except psycopg.Error as error:
        print(f"error: the load failed in the database: {str(error).strip()}", file=sys.stderr)
        print("nothing was loaded: the raw tables are unchanged", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: nothing was loaded, the raw tables are unchanged", file=sys.stderr)
        return 130

    for result in results:
        print(result.summary())
        if result.rows == 0:  # only with --allow-empty
            print(
                f"warning: {result.path} has a header but no rows: {result.table} is empty", file=sys.stderr
            )
        if result.dropped_dependents:
            print(
                f"note: replacing {result.table} dropped what depended on it: "
                f"{', '.join(result.dropped_dependents)} (dbt build recreates the dbt views)",
                file=sys.stderr,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
