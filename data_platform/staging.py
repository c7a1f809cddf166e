"""One CSV file into a typed staging table, every value checked, bad input named by line.

1. COPY streams the file into a staging table of text columns (plus `record`, the row's order in
   the file): Postgres parses the CSV, the loader never holds the file.
2. The loader's own record count must equal the rows COPY stored: nothing ends a load early.
3. One SQL pass checks every value against the export's exact format (raw_tables.py) and casts it
   into a typed staging table. The fast path only learns that some value failed; the error path
   then finds the first bad record and column with a check that never raises, and maps the record
   back to its line in the file (re-reading the file only when it holds quotes).

A dated snapshot much like the latest export's file stages only the records that differ from it, each
with its record number (snapshot_diff.py); the records left out are unchanged and were checked when
that export loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from data_platform.csv_files import (
    FileStream,
    Progress,
    check_header,
    diagnose_shape,
    find_record,
    lone_cr_line,
    unterminated_quote_line,
)
from data_platform.file_checksums import KnownFile
from data_platform.load_errors import (
    CR_ALONE,
    MAX_VALUE_CHARS,
    NUL_BYTE,
    REQUIRED_VALUE_EMPTY,
    LoadError,
    not_in_format,
    printable,
    quoted_empty_text,
)
from data_platform.raw_tables import RAW_SCHEMA, TableSpec
from data_platform.snapshot_diff import NotAlike, send_differences

END_OF_DATA_MARKER = b"\\."


# The staging tables are unlogged, not temporary, so that parallel workers can scan them (the
# checks are the costly part of a load). Created and dropped inside the load transaction, no other
# session ever sees them, and a killed load leaves none behind.


def text_table(spec: TableSpec) -> sql.Identifier:
    """The file's rows as text, numbered in file order."""
    return sql.Identifier(RAW_SCHEMA, f"incoming_{spec.name}_text")


def typed_table(spec: TableSpec) -> sql.Identifier:
    """The checked, typed rows of the file: what the diff reads."""
    return sql.Identifier(RAW_SCHEMA, f"incoming_{spec.name}")


@dataclass(frozen=True)
class Staged:
    spec: TableSpec
    path: Path
    header_bytes: int
    rows: int
    quoted: bool
    sha256: str
    # records staged because they differ from the previous export's file (snapshot_diff.py);
    # None: every record is staged
    differing: int | None = None
    note: str | None = None  # how the file was read against the previous export's, for the load's summary

    @property
    def staged_rows(self) -> int:
        return self.rows if self.differing is None else self.differing

    def record(self, number: int):
        return find_record(self.path, self.header_bytes, number, self.quoted)

    def line_of(self, record: int) -> int | None:
        found = self.record(record)
        return found.line if found else None


def stage(
    conn: psycopg.Connection,
    spec: TableSpec,
    path: Path,
    header_bytes: int,
    *,
    block_size: int,
    progress: Progress | None,
    previous: KnownFile | None = None,
) -> Staged:
    """COPY the file into a text table, check the row count, then check and cast every value.

    previous: the latest export's file of the same kind; when the file is a snapshot much like it, only the
    records that differ from it are staged (snapshot_diff.py).
    """
    note = None
    if previous is not None:
        outcome = _stage_differences(conn, spec, path, header_bytes, previous, block_size, progress)
        if isinstance(outcome, Staged):
            return outcome
        note = f"read against {printable(str(previous.path))}, then staged whole: {outcome}"
    _create_text_table(conn, spec)
    stream = FileStream(path, header_bytes, block_size=block_size)
    with conn.cursor() as cursor:
        try:
            with cursor.copy(_copy_statement(spec)) as copy:
                stream.send(copy, progress)
        except psycopg.Error as error:
            load_error = _copy_error(error, spec, stream)
            if load_error is None:
                raise
            raise load_error from error
        rows = cursor.rowcount
    staged = Staged(spec, path, header_bytes, rows, stream.quoted, stream.sha256, note=note)
    if rows != stream.records:
        raise _lost_rows(staged, stream.records)
    _cast(conn, staged)
    return staged


def _copy_statement(spec: TableSpec, *, numbered: bool = False) -> sql.Composable:
    """COPY into the text table; numbered: each record comes with its record number first."""
    columns = sql.SQL("record, {}").format(spec.names()) if numbered else spec.names()
    # freeze: the table is new in this transaction, rows are written already frozen
    return sql.SQL("copy {} ({}) from stdin with (format csv, freeze, encoding 'UTF8')").format(
        text_table(spec), columns
    )


def _create_text_table(conn: psycopg.Connection, spec: TableSpec) -> None:
    columns = [sql.SQL("{} text").format(sql.Identifier(column.name)) for column in spec.columns]
    conn.execute(
        sql.SQL("create unlogged table {} (record bigint generated by default as identity, {})").format(
            text_table(spec), sql.SQL(", ").join(columns)
        )
    )


def _stage_differences(
    conn: psycopg.Connection,
    spec: TableSpec,
    path: Path,
    header_bytes: int,
    previous: KnownFile,
    block_size: int,
    progress: Progress | None,
) -> Staged | str:
    """Stage only the records that differ from the previous file; else, with nothing staged, why not:
    the files are not alike, the previous file's header is gone, COPY refused a differing record, or a
    differing record may repeat an unchanged one's key. A value refused by the checks is a LoadError at
    its line, as when the whole file is staged."""
    try:
        previous_header_bytes = check_header(spec, previous.path)
    except LoadError as error:  # gone or changed since it was found: its checksum no longer vouches for it
        return str(error)
    try:
        with conn.transaction():  # a savepoint: what is not alike is staged whole instead
            _create_text_table(conn, spec)
            with conn.cursor() as cursor:
                with cursor.copy(_copy_statement(spec, numbered=True)) as copy:
                    found = send_differences(
                        copy.write,
                        path,
                        header_bytes,
                        previous,
                        previous_header_bytes,
                        block_size=block_size,
                        progress=progress,
                    )
                if cursor.rowcount != found.differing:
                    raise NotAlike("COPY stored another number of records than were sent")
            note = f"read against {printable(str(previous.path))}: {found.differing:,} records differ"
            staged = Staged(
                spec, path, header_bytes, found.records, False, found.sha256, found.differing, note
            )
            _cast(conn, staged)
            if _may_repeat_unchanged(conn, spec, found.replaced_ids):
                raise NotAlike("a differing record's INVOICE_ID may also be in an unchanged one")
            return staged
    except NotAlike as reason:
        return str(reason)
    except psycopg.errors.DataError:  # named at its line by the whole file's load
        return "COPY refused a differing record"


def _may_repeat_unchanged(conn: psycopg.Connection, spec: TableSpec, replaced: list[int]) -> bool:
    """Whether a staged record's key is in the ledger but not among the previous file's unmatched records:
    then an unchanged record of the new file may hold that key too (a key twice in the export), or the
    invoice was absent from the previous file. Either way the whole file is staged, and checked."""
    key = sql.Identifier(spec.key.name)
    (found,) = conn.execute(
        sql.SQL(
            """
            select exists (
                select from {current} where {key} = any(array(
                    select {key} from {typed} except select unnest(%s::bigint[])
                ))
            )
            """
        ).format(current=sql.Identifier(RAW_SCHEMA, spec.name), key=key, typed=typed_table(spec)),
        [replaced],
    ).fetchone()
    return found


def discard(conn: psycopg.Connection, spec: TableSpec) -> None:
    """Drop the staging tables at the end of the load transaction."""
    conn.execute(sql.SQL("drop table {}, {}").format(text_table(spec), typed_table(spec)))


def _lost_rows(staged: Staged, records: int) -> LoadError:
    """COPY stored fewer rows than the file holds: say where and why it stopped."""
    path, rows = staged.path, staged.rows
    stopped = staged.record(rows + 1) if rows < records else None
    if stopped is not None and stopped.text == END_OF_DATA_MARKER:
        return LoadError(
            path,
            # no backslash in the words: a message shows each one doubled, as in its value
            "a line holding only a backslash and a period ends the data for Postgres (its end-of-data "
            f"marker): {rows:,} of {records:,} rows would have loaded; remove the line",
            line=stopped.line,
            value="\\.",
        )
    cr_line = lone_cr_line(path, staged.header_bytes) if rows > records else None
    if cr_line is not None:  # Postgres ended records where the loader saw none end
        return LoadError(path, CR_ALONE, line=cr_line)
    return LoadError(
        path,
        f"Postgres read {rows:,} rows but the file holds {records:,} CSV records; nothing was loaded",
        line=stopped.line if stopped else None,
    )


_COPY_CONTEXT = re.compile(r"COPY \S+, line (\d+)(?:, column (\w+))?")


def _copy_error(error: psycopg.Error, spec: TableSpec, stream: FileStream) -> LoadError | None:
    """Turn a COPY data error into a LoadError at the file's own line, else None."""
    if not isinstance(error, psycopg.errors.DataError):
        return None  # e.g. a cancelled COPY (Ctrl-C) is not bad input
    path = stream.path
    message = error.diag.message_primary or str(error).strip()
    if "unterminated CSV quoted field" in message:
        opened = unterminated_quote_line(path, stream.header_bytes)
        return LoadError(
            path, "a quote opens here and is never closed (unterminated quoted field)", line=opened
        )
    match = _COPY_CONTEXT.search(error.diag.context or "")
    if not match:
        return None
    # text columns: what remains is the shape of a record (column count, line ends, encoding)
    record = find_record(path, stream.header_bytes, int(match.group(1)), stream.quoted)
    line = record.line if record else None
    if line is not None:
        shape_error = diagnose_shape(spec, path, line, message)
        if shape_error:
            return shape_error
    if isinstance(error, psycopg.errors.CharacterNotInRepertoire):
        if message.endswith(": 0x00"):  # valid UTF-8, but no text value may hold it
            return LoadError(path, NUL_BYTE, line=line)
        return LoadError(path, f"{message} (the file must be UTF-8)", line=line)
    column = spec.column(match.group(2)) if match.group(2) else None
    return LoadError(path, message, line=line, column=column.header if column else None)


def _cast(conn: psycopg.Connection, staged: Staged) -> None:
    """Create the typed table from the text one; any value not in its exact format is refused."""
    spec = staged.spec
    casts = []
    for column in spec.columns:
        value = sql.Identifier(column.name)
        # a refused value raises through a cast that always fails: built in, so parallel safe. The error
        # names only the value's start (the diagnosis finds it), however long the value
        refuse = sql.SQL("(('refused ' || left(coalesce({}, ''), {}))::bigint)::text::{}").format(
            value, sql.Literal(MAX_VALUE_CHARS), sql.SQL(column.sql_type)
        )
        casts.append(
            sql.SQL(
                "case when {v} is null then {if_null} when {check} then {v}::{t} else {refuse} end as {v}"
            ).format(
                v=value,
                if_null=refuse if column.not_null else sql.NULL,
                t=sql.SQL(column.sql_type),
                check=column.format.check_sql(value),
                refuse=refuse,
            )
        )
    statement = sql.SQL("create unlogged table {} as select record, {} from {}").format(
        typed_table(spec), sql.SQL(", ").join(casts), text_table(spec)
    )
    try:
        with conn.transaction():  # a savepoint: the diagnosis below still runs in the load transaction
            conn.execute(statement)
    except psycopg.errors.DataError as error:
        raise _invalid_value(conn, staged) or error from error


def _invalid_value(conn: psycopg.Connection, staged: Staged) -> LoadError | None:
    """The first record holding a value the cast refused, as a LoadError at its line."""
    spec = staged.spec
    oks = []
    for index, column in enumerate(spec.columns):
        value = sql.Identifier("t", column.name)
        oks.append(
            sql.SQL("({}, case when {} is null then {} else {} end)").format(
                sql.Literal(index),
                value,
                sql.Literal(not column.not_null),
                column.format.safe_check_sql(value),
            )
        )
    found = conn.execute(
        sql.SQL(
            """
            select t.record, bad.n
            from {} as t
            cross join lateral (
                select n from (values {}) as checks (n, ok) where not ok order by n limit 1
            ) as bad
            order by t.record
            limit 1
            """
        ).format(text_table(spec), sql.SQL(", ").join(oks))
    ).fetchone()
    if found is None:
        return None
    record, index = found
    column = spec.columns[index]
    # its start and length only: what the message shows of a value of any length
    value, length = conn.execute(
        sql.SQL("select left({0}, {1}), char_length({0}) from {2} where record = %s").format(
            sql.Identifier(column.name), sql.Literal(MAX_VALUE_CHARS), text_table(spec)
        ),
        [record],
    ).fetchone()
    line = staged.line_of(record)
    if value is None or (value == "" and column.not_null):
        return LoadError(staged.path, REQUIRED_VALUE_EMPTY, line=line, column=column.header, value="")
    if value == "":
        return LoadError(
            staged.path, quoted_empty_text(column.expected), line=line, column=column.header, value=""
        )
    return LoadError(
        staged.path,
        not_in_format(column.expected),
        line=line,
        column=column.header,
        value=value,
        value_length=length,
    )
