"""The CSV files as bytes: header check, streaming into COPY, and finding a record's line again.

Streaming never holds a file in memory: blocks are read into one reusable buffer, handed to
COPY, hashed (sha256) and their records counted. Counting is what makes a silent early end of
COPY impossible: Postgres ends CSV data at a line holding only `\\.` and reports success, so the
loader compares Postgres's row count with its own. The exports never quote, so a block without
`"` is counted with one bytes.count; with quotes the count follows COPY's rule exactly (every `"`
toggles quoting, a newline inside quotes is data).

The error path (never the fast path) may re-scan a file line by line to turn a record number into
its physical line.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from difflib import SequenceMatcher
from pathlib import Path

import psycopg

from data_platform.load_errors import CR_ALONE, LoadError, changed_while_read, shape_error
from data_platform.raw_tables import INVOICES, ORGANIZATIONS, TableSpec

BLOCK_SIZE = 1024 * 1024
# Longest header we accept; read with a limit so a file without newlines is never slurped.
MAX_HEADER_BYTES = 64 * 1024
# How much of a line the error path keeps.
LINE_HEAD_BYTES = 4096
UTF8_BOM = b"\xef\xbb\xbf"
EXPORT_COLUMN_NAMES = frozenset((*INVOICES.header, *ORGANIZATIONS.header))
# a spreadsheet's other CSV dialects
OTHER_SEPARATORS = {";": "semicolons", "\t": "tabs", "|": "vertical bars"}
# Files in another form than UTF-8 text, by their first bytes, named as such rather than as a header that
# is not UTF-8 (the first match counts: UTF-32's marks start like UTF-16's)
_SAVE_AS_UTF8 = "byte order mark): save it as UTF-8"
OTHER_FORMS = {
    b"\x1f\x8b": "gzip-compressed: decompress it first",
    b"BZh": "bzip2-compressed: decompress it first",
    b"\xfd7zXZ\x00": "xz-compressed: decompress it first",
    b"\x28\xb5\x2f\xfd": "zstd-compressed: decompress it first",
    b"PK\x03\x04": "a zip archive (an Excel workbook is one): unzip it, or save the sheet as CSV (UTF-8)",
    b"\xff\xfe\x00\x00": f"UTF-32 (it starts with a UTF-32 {_SAVE_AS_UTF8}",
    b"\x00\x00\xfe\xff": f"UTF-32 (it starts with a UTF-32 {_SAVE_AS_UTF8}",
    b"\xff\xfe": f"UTF-16 (it starts with a UTF-16 {_SAVE_AS_UTF8}",
    b"\xfe\xff": f"UTF-16 (it starts with a UTF-16 {_SAVE_AS_UTF8}",
}

# Called after every block with (path, bytes done, file size).
Progress = Callable[[Path, int, int], None]


FileIdentity = tuple[int, int, int, int, int]  # device, inode, size, modification and change time


def identity(stat: os.stat_result) -> FileIdentity:
    # the change time too: `cp -p` over the file keeps its inode, and puts its size and mtime back
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def file_identity(path: Path) -> FileIdentity | None:
    """The file's identity now; None when it cannot be stat'ed (its reader names why)."""
    try:
        return identity(path.stat())
    except OSError:
        return None


@dataclass(frozen=True)
class Unchanged:
    """Files as they were before they were read, to refuse one that changed while it was read (appended to,
    replaced): loaded in part, an export would be refused as altered by every later run."""

    before: Mapping[Path, FileIdentity | None]

    @classmethod
    def now(cls, paths: Iterable[Path]) -> Unchanged:
        return cls({path: file_identity(path) for path in paths})

    def check(self) -> None:
        for path, before in self.before.items():
            if file_identity(path) != before:
                raise changed_while_read(path)

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Around a read of the files: a bad value in a file that changed (the cut-off last line of a copy
        still under way) is reported as the change, its cause."""
        try:
            yield
        except LoadError:
            self.check()
            raise
        self.check()


def check_header(spec: TableSpec, path: Path) -> int:
    """Validate the file's first line against the spec; return the header's length in bytes.

    Tolerates a UTF-8 byte order mark and CRLF. Raises LoadError for a missing, unreadable or
    empty file and for any header other than the exact expected one.
    """
    try:
        descriptor = open_regular(path)
    except FileNotFoundError:
        raise LoadError(path, f"file not found (expected the {spec.name} CSV file here)") from None
    except OSError as error:
        raise LoadError(path, f"cannot read file: {error.strerror}") from None
    try:
        with os.fdopen(descriptor, "rb") as file:
            raw = file.readline(MAX_HEADER_BYTES)
    except OSError as error:
        raise LoadError(path, f"cannot read file: {error.strerror}") from None

    expected = spec.csv_header
    if not raw:
        raise LoadError(path, f"file is empty (0 bytes): expected at least the header line {expected}")
    for start, form in OTHER_FORMS.items():
        if raw.startswith(start):
            raise LoadError(path, f"the file is {form}; the loader reads UTF-8 CSV text", line=1)
    if b"\x00" in raw:  # no CSV header holds one: text in two or four bytes a character, or not text
        raise LoadError(
            path,
            "the header holds NUL bytes: UTF-16 or UTF-32 without a byte order mark, or not text at all; "
            "the loader reads UTF-8 CSV text",
            line=1,
        )
    text = raw.removeprefix(UTF8_BOM).removesuffix(b"\n").removesuffix(b"\r")
    if b"\r" in text:  # the first LF is far away, or absent: the whole start of the file looks like a header
        raise LoadError(path, CR_ALONE, line=1)
    try:
        found = text.decode("utf-8")
    except UnicodeDecodeError:
        raise LoadError(path, "header is not valid UTF-8", line=1) from None
    # an export written with every field quoted quotes its header too
    if found != expected and next(csv.reader([found]), None) != list(spec.header):
        raise _header_error(path, spec.header, found)
    return len(raw)


def refuse_cut_off(path: Path) -> None:
    """Refuse a file whose last byte is a comma: what a copy cut short looks like, a record whose last
    field is empty. An optional last column would load it as null, over the value a whole file holds; a
    record that is whole says so with a line break. Only for a file to load: one an earlier release
    loaded stays as it was, as every loaded export's files do."""
    try:
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            last_byte = os.pread(file.fileno(), 1, size - 1) if size else b""
    except OSError as error:
        raise LoadError(path, f"cannot read file: {error.strerror}") from None
    if last_byte == b",":
        raise LoadError(
            path,
            "the file ends right after a comma, with no line break: it looks cut off, and its last record "
            "would load with an empty last field; if that record is whole, end the file with a line break",
        )


def _header_error(path: Path, expected: tuple[str, ...], found: str) -> LoadError:
    """Point at the first header column that differs, and show the whole expected header."""
    names = found.split(",")
    must_be = f"the header must be exactly {','.join(expected)} ({len(expected)} columns, found {len(names)})"
    for separator, name in OTHER_SEPARATORS.items():
        if separator in found and all(_is_column_name(field) for field in found.split(separator)):
            return LoadError(
                path, f"wrong header: its columns are separated by {name}, not commas; {must_be}", line=1
            )
    for want, got in zip(expected, names, strict=False):
        if want != got:
            if not _reads_as_column_name(got, want):
                return LoadError(
                    path,
                    f"wrong header: expected {want} here, found {len(got)} characters that name no "
                    f"column of an export (not shown: the file may be no export at all); {must_be}",
                    line=1,
                    column=want,
                )
            return LoadError(
                path, f"wrong header: expected {want} here; {must_be}", line=1, column=want, value=got
            )
    return LoadError(path, f"wrong header: {must_be}", line=1, value=found)


def _reads_as_column_name(found: str, expected: str) -> bool:
    """Whether a header field that differs is shown: a column name of any export, in any case, or one
    close to the expected name (a typo). The first line of any other file is not: the files are opened
    wherever their links point, and a link to a secret would print it (in the failure alerts too)."""
    return _is_column_name(found) or SequenceMatcher(None, found.strip().upper(), expected).ratio() >= 0.8


def _is_column_name(field: str) -> bool:
    """A column name of either export file, in any case and with spaces around it."""
    return field.strip().upper() in EXPORT_COLUMN_NAMES


def open_regular(path: Path) -> int:
    """A read-only file descriptor of the file; LoadError for a directory or anything else that is not a
    regular file, OSError as os.open raises it (a missing or unreadable file). Opened non-blocking: a named
    pipe would wait for a writer, holding the load's lock."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as error:
        if error.errno == errno.ENXIO:  # a socket cannot be opened at all
            raise _not_regular(path) from None
        raise
    try:
        mode = os.fstat(descriptor).st_mode
        if stat.S_ISDIR(mode):
            raise LoadError(path, "is a directory, expected a CSV file")
        if not stat.S_ISREG(mode):
            raise _not_regular(path)
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def _not_regular(path: Path) -> LoadError:
    return LoadError(path, "not a regular file (a named pipe, a socket, a device), expected CSV")


def sha256_of(path: Path, block_size: int = BLOCK_SIZE) -> str:
    """The file's sha256, read in blocks; LoadError for a file that cannot be read."""
    digest = hashlib.sha256()
    try:
        with os.fdopen(open_regular(path), "rb", buffering=0) as file:
            buffer = bytearray(block_size)
            view = memoryview(buffer)
            while count := file.readinto(buffer):
                digest.update(view[:count])
    except FileNotFoundError:
        raise LoadError(path, "file not found") from None
    except OSError as error:
        raise LoadError(path, f"cannot read file: {error.strerror}") from None
    return digest.hexdigest()


class _RecordCounter:
    """Counts CSV records as COPY does: every `"` toggles quoting; a newline in quotes is data."""

    def __init__(self) -> None:
        self.records = 0
        self.in_quotes = False
        self.quoted = False
        self.last_byte = b"\n"

    def feed(self, buffer: bytearray, count: int) -> None:
        self.last_byte = bytes(buffer[count - 1 : count])
        if not self.in_quotes and buffer.find(b'"', 0, count) < 0:
            self.records += buffer.count(b"\n", 0, count)
            return
        self.quoted = True
        parts = bytes(buffer[:count]).split(b'"')
        for index, part in enumerate(parts):
            if self.in_quotes == (index % 2 == 0):
                continue  # inside quotes
            self.records += part.count(b"\n")
        self.in_quotes ^= len(parts) % 2 == 0

    def total(self, data_bytes: int) -> int:
        # a last line without a final newline is a record too
        return self.records + (1 if data_bytes and self.last_byte != b"\n" else 0)


class FileStream:
    """One file streamed into COPY: hashed (sha256) and its records counted on the way.

    After a failed COPY, `quoted` still tells whether any block sent so far held a quote.
    """

    def __init__(self, path: Path, header_bytes: int, *, block_size: int = BLOCK_SIZE):
        self.path = path
        self.header_bytes = header_bytes
        self.block_size = block_size
        self.digest = hashlib.sha256()
        self.counter = _RecordCounter()
        self.data_bytes = 0

    @property
    def quoted(self) -> bool:
        return self.counter.quoted

    @property
    def records(self) -> int:
        """CSV records after the header, counted as COPY counts them."""
        return self.counter.total(self.data_bytes)

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()

    def send(self, copy: psycopg.Copy, progress: Progress | None = None) -> None:
        """Send everything after the header to COPY in binary blocks."""
        total = self.path.stat().st_size
        buffer = bytearray(self.block_size)
        view = memoryview(buffer)
        with self.path.open("rb", buffering=0) as file:
            self.digest.update(file.read(self.header_bytes))
            while count := file.readinto(buffer):
                # LibpqWriter hands the bytes to libpq before returning, so the buffer is reusable.
                copy.write(view[:count])
                self.digest.update(view[:count])
                self.counter.feed(buffer, count)
                self.data_bytes += count
                if progress:
                    progress(self.path, self.header_bytes + self.data_bytes, total)


# --- the error path: records back to lines ------------------------------------------------------


@dataclass(frozen=True)
class Record:
    number: int  # 1-based, after the header
    line: int  # physical line where it starts (the header is line 1)
    text: bytes  # its first line, at most LINE_HEAD_BYTES, without line ending


def _lines(path: Path, header_bytes: int) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, head of the line, whole line had an odd number of quotes) after the header."""
    with path.open("rb") as file:
        file.seek(header_bytes)
        number = 1
        while head := file.readline(LINE_HEAD_BYTES):
            quotes = head.count(b'"')
            last = head
            while not last.endswith(b"\n"):  # a very long line: read on, keeping little
                last = file.readline(BLOCK_SIZE)
                if not last:
                    break
                quotes += last.count(b'"')
            number += 1
            yield number, head.rstrip(b"\r\n"), quotes % 2 == 1


def find_record(path: Path, header_bytes: int, number: int, quoted: bool) -> Record | None:
    """Record `number` and the line it starts on; None past the end of the file."""
    if not quoted:  # one record per line
        line = read_line(path, number + 1)
        return Record(number, number + 1, line.head) if line else None
    record, in_quotes = 0, False
    for line, head, odd in _lines(path, header_bytes):
        if not in_quotes:
            record += 1
            if record == number:
                return Record(number, line, head)
        in_quotes ^= odd
    return None


def unterminated_quote_line(path: Path, header_bytes: int) -> int | None:
    """The line where a quote opened and never closed, or None."""
    opened, in_quotes = None, False
    for line, _head, odd in _lines(path, header_bytes):
        if odd and not in_quotes:
            opened = line
        in_quotes ^= odd
    return opened if in_quotes else None


def lone_cr_line(path: Path, header_bytes: int, block_size: int = BLOCK_SIZE) -> int | None:
    """The first line (lines counted by LF) holding a CR that no LF follows, or None: COPY ends a record
    there, the loader's count does not."""
    line, ends_in_cr = 2, False  # ends_in_cr: the block read ended with a CR, the next block decides
    with path.open("rb") as file:
        file.seek(header_bytes)
        while block := file.read(block_size):
            if ends_in_cr and not block.startswith(b"\n"):
                return line
            at = block.find(b"\r")
            while 0 <= at < len(block) - 1:
                if block[at + 1] != ord("\n"):
                    return line + block.count(b"\n", 0, at)
                at = block.find(b"\r", at + 1)
            ends_in_cr = block.endswith(b"\r")
            line += block.count(b"\n")
    return line if ends_in_cr else None


@dataclass(frozen=True)
class Line:
    """One physical line of a file, as much of it as an error message needs."""

    head: bytes  # the start of the line (at most LINE_HEAD_BYTES), without its ending
    ending: str  # LF, CRLF, CR or none (a last line without final newline)
    commas: int  # in the whole line

    @property
    def text(self) -> str:
        return self.head.decode("utf-8", "backslashreplace")


def _line_ending(chunk: bytes) -> str:
    if chunk.endswith(b"\r\n"):
        return "CRLF"
    if chunk.endswith(b"\n"):
        return "LF"
    return "CR" if chunk.endswith(b"\r") else "none"


def read_line(path: Path, number: int) -> Line | None:
    """Physical line `number` (1-based) of the file; streams it, for the error path only."""
    with path.open("rb") as file:
        # find where the line starts by counting newlines block by block (fast on GBs)
        to_skip, offset = number - 1, 0
        while to_skip:
            block = file.read(BLOCK_SIZE)
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
        while not last.endswith(b"\n"):
            chunk = file.readline(BLOCK_SIZE)
            if not chunk:
                break
            commas += chunk.count(b",")
            last = chunk
    return Line(head.rstrip(b"\r\n"), _line_ending(last), commas)


def diagnose_shape(spec: TableSpec, path: Path, line_number: int, message: str) -> LoadError | None:
    """A LoadError if physical line `line_number` is malformed: line endings, blank, column count."""
    this = read_line(path, line_number)
    if this is None:
        return None
    first = read_line(path, 2)
    return shape_error(spec, path, line_number, this, first.ending if first else "none", message)
