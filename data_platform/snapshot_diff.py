"""A full-snapshot export read against the previous export's file: only the records that differ are staged.

A daily full snapshot repeats almost every record of the day before, byte for byte (12.7M records,
of which some 30,000 are new or changed). Checking, casting and diffing every one of them costs
three times a COPY of the file. The latest loaded export's file, when it is still on disk (found by
its remembered checksum, file_checksums), tells which records cannot have changed: both files are
streamed side by side and only the records that differ from it are sent to COPY, each with its
record number, so that errors still name the line in the file. The previous file is read to its end
and hashed on the way: unless it is still the file that was loaded, nothing is taken from it.

Why a record equal to one of the previous file is unchanged: that file was the latest export, so
after its load the current state of each of its invoices is exactly its record, and the record
passed the checks then. Each previous record stands for at most one new record (its INVOICE_ID was
unique in that file). A record that differs may still repeat an INVOICE_ID that an equal record
also holds (a duplicate the export must be refused for): that cannot happen when the previous
record of that invoice was left unmatched, which staging.py checks for every differing record of a
known invoice (`replaced_ids`). When it cannot tell, or the files are not alike (a quote, which may
hide a line break in a field; other line endings; a line over MAX_LINE_BYTES; differing records adding
up to a tenth of the file; more than MAX_UNMATCHED previous records out of step; records too far out of
step to find), or COPY refuses a differing record, or the previous file does not hash to its checksum,
the file is staged whole, as any other export (the time spent reading is then lost).

This trusts that the raw tables are written by the loader only: a record deleted from raw.invoices by
hand would not come back from a snapshot that holds it unchanged, as it would when staged whole.

The two files are compared a chunk at a time while they agree. Where they differ, a record changed in
place (same INVOICE_ID) is sent; otherwise the new record is searched for in the previous file and the
previous record in the new one, SEARCH_BYTES ahead (C-speed byte searches, widening): found in the
previous file, the records before it there are gone from here; found in the new one, the records before
it there are new here; neither, the new record replaces the previous one. Memory stays bounded: two
read buffers (up to the widest search) and the unmatched previous records, as digests and keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from data_platform.csv_files import BLOCK_SIZE, Progress
from data_platform.file_checksums import KnownFile

# Below this size the whole file stages in seconds: reading the previous one would not pay.
MIN_SNAPSHOT_BYTES = 64 * 1024 * 1024
# Compared in chunks of this size while the files agree.
CHUNK_BYTES = 64 * 1024
# Where the files differ, a record is looked for this many bytes ahead in the other file, then further.
SEARCH_BYTES = (4 * 1024, 64 * 1024, 1024 * 1024, 8 * 1024 * 1024)
# Give up once the searches have gone over this many times the new file's bytes.
MAX_SEARCHED_SHARE = 4
# Previous records left unmatched (changed, gone or further on) kept at most: 16-byte digests and
# keys, about 100 bytes each.
MAX_UNMATCHED = 250_000
# Give up once the records that differ add up to this share of the new file's bytes.
MAX_DIFFERING_SHARE = 0.1
# A line longer than this is not an export's record: the whole file's load names it.
MAX_LINE_BYTES = 1024 * 1024
# Records sent to COPY in batches of about this many bytes.
SEND_BYTES = 256 * 1024


class NotAlike(Exception):
    """The files are not alike enough to stage only the differences: stage the whole file."""


@dataclass(frozen=True)
class Differences:
    records: int  # records in the new file
    differing: int  # records sent to COPY
    sha256: str  # of the whole new file
    # INVOICE_IDs of the previous file's records that no record of the new file repeats byte for byte
    replaced_ids: list[int]


def worth_reading(new: Path, previous: KnownFile) -> bool:
    """Whether the new file is a snapshot big enough, and near enough the previous one's size."""
    new_size, previous_size = new.stat().st_size, previous.size_bytes
    return min(new_size, previous_size) >= MIN_SNAPSHOT_BYTES and 2 * min(new_size, previous_size) >= max(
        new_size, previous_size
    )


class _Side:
    """A file after its header, read block by block into a buffer that slides along it."""

    def __init__(self, file, block_size: int, on_block: Callable[[bytes], None], *, previous: bool = False):
        self.file = file
        self.block_size = block_size
        self.on_block = on_block
        self.previous = previous
        self.buffer = b""
        self.position = 0
        self.ended = False
        self.newlines = 0  # before `position`

    def available(self) -> int:
        return len(self.buffer) - self.position

    def fill(self, wanted: int) -> None:
        """At least `wanted` bytes after the position, unless the file ends first."""
        while self.available() < wanted and not self.ended:
            try:
                block = self.file.read(self.block_size)
            except OSError as error:
                if not self.previous:
                    raise
                raise NotAlike(f"the previous file cannot be read: {error.strerror}") from None
            if not block:
                self.ended = True
                return
            if b'"' in block:
                raise NotAlike("a quote: a field may hold a line break")
            self.on_block(block)
            self.buffer = self.buffer[self.position :] + block
            self.position = 0

    def peek(self, size: int) -> bytes:
        self.fill(size)
        return self.buffer[self.position : self.position + size]

    def line(self) -> bytes | None:
        """The next line, its line ending included (the last one may have none); not consumed."""
        while True:
            end = self.buffer.find(b"\n", self.position)
            if end >= 0:
                return self.buffer[self.position : end + 1]
            if self.ended:
                return self.buffer[self.position :] or None
            if self.available() > MAX_LINE_BYTES:
                raise NotAlike(f"a line longer than {MAX_LINE_BYTES:,} bytes")
            self.fill(self.available() + self.block_size)

    def find(self, line: bytes, within: int) -> int | None:
        """How many bytes ahead the next whole line equal to `line` starts, if it starts within `within`
        bytes after the line at the position (which is not looked at); not consumed."""
        if not line.endswith(b"\n"):
            return None  # a last line: found only where it stands
        self.fill(within + len(line))
        at = self.buffer.find(b"\n" + line, self.position, self.position + within + len(line))
        return None if at < 0 else at + 1 - self.position

    def advance(self, size: int) -> None:
        self.newlines += self.buffer.count(b"\n", self.position, self.position + size)
        self.position += size

    def lines_within(self, size: int) -> Iterator[bytes]:
        """The lines of the next `size` bytes, each consumed once the caller has taken it."""
        while size > 0 and (line := self.line()) is not None:
            yield line
            self.advance(len(line))
            size -= len(line)


def _common_prefix(a: bytes, b: bytes) -> int:
    """Length of the longest common prefix of a and b."""
    low, high = 0, min(len(a), len(b))
    if a[:high] == b[:high]:
        return high
    while high - low > 32:  # a[:low] == b[:low] and a[:high] != b[:high]
        middle = (low + high) // 2
        if a[low:middle] == b[low:middle]:
            low = middle
        else:
            high = middle
    while a[low] == b[low]:
        low += 1
    return low


def _skip_equal(new: _Side, previous: _Side) -> bool:
    """Advance both sides over whole lines that are the same in both, chunk by chunk; whether any were."""
    skipped = False
    while True:
        a, b = new.peek(CHUNK_BYTES), previous.peek(CHUNK_BYTES)
        common = _common_prefix(a, b)
        cut = a.rfind(b"\n", 0, common) + 1  # where the last common whole line ends
        if cut:
            new.advance(cut)
            previous.advance(cut)
            skipped = True
        if not cut or common < CHUNK_BYTES:
            return skipped


def _key(line: bytes) -> bytes:
    return line.split(b",", 1)[0]


def _ending(line: bytes) -> bytes:
    if line.endswith(b"\r\n"):
        return b"\r\n"
    return b"\n" if line.endswith(b"\n") else b""


def _digest(line: bytes) -> bytes:
    return hashlib.blake2b(line, digest_size=16).digest()


class _Unmatched:
    """The previous file's records passed without a match, by digest: a later record may still match one."""

    def __init__(self) -> None:
        self.keys: dict[bytes, bytes] = {}

    def add(self, line: bytes) -> None:
        self.keys[_digest(line)] = _key(line)
        if len(self.keys) > MAX_UNMATCHED:
            raise NotAlike(f"more than {MAX_UNMATCHED:,} records of the previous file are out of step")

    def match(self, line: bytes) -> bool:
        return self.keys.pop(_digest(line), None) is not None

    def ids(self) -> list[int]:
        try:
            return sorted(int(key) for key in self.keys.values())
        except ValueError:
            raise NotAlike("a record of the previous file without an INVOICE_ID") from None


def send_differences(
    write: Callable[[bytes], None],
    new_path: Path,
    new_header_bytes: int,
    previous: KnownFile,
    previous_header_bytes: int,
    *,
    block_size: int = BLOCK_SIZE,
    progress: Progress | None = None,
) -> Differences:
    """Send each record of the new file that is not in the previous one to `write`, as CSV prefixed
    with its record number (1-based, after the header); NotAlike when the files are not alike.

    The previous file is read to its end and hashed: unless it hashes to its remembered checksum, the
    records sent are not enough (NotAlike)."""
    digest, previous_digest = hashlib.sha256(), hashlib.sha256()
    total, done = new_path.stat().st_size, new_header_bytes

    def read_new(block: bytes) -> None:
        nonlocal done
        digest.update(block)
        done += len(block)
        if progress:
            progress(new_path, done, total)

    unmatched = _Unmatched()
    with ExitStack() as files:
        try:
            previous_file = files.enter_context(previous.path.open("rb", buffering=0))
        except OSError as error:
            raise NotAlike(f"the previous file cannot be read: {error.strerror}") from None
        new_file = files.enter_context(new_path.open("rb", buffering=0))
        digest.update(new_file.read(new_header_bytes))
        previous_digest.update(previous_file.read(previous_header_bytes))
        new = _Side(new_file, block_size, read_new)
        earlier = _Side(previous_file, block_size, previous_digest.update, previous=True)
        # COPY takes the line ending of the first line it reads; the whole file's is its first record's
        ending = _ending(new.line() or b"\n") or b"\n"
        if _ending(earlier.line() or ending) not in (ending, b""):
            raise NotAlike("the files end their lines differently")
        sent = _Batches(write, new, ending, total)
        _compare(new, earlier, unmatched, sent, _Search(new, earlier, total))
        sent.flush()
        ends_open = new.buffer[-1:] not in (b"", b"\n")
        records = new.newlines + (1 if ends_open else 0)
        while (old := earlier.line()) is not None:  # the previous file's records after the last match
            unmatched.add(old)
            earlier.advance(len(old))
    if previous_digest.hexdigest() != previous.sha256:
        raise NotAlike("the previous file is no longer the file that was loaded")
    return Differences(records, sent.records, digest.hexdigest(), unmatched.ids())


class _Batches:
    """The new file's differing records, each prefixed with its record number, written in batches."""

    def __init__(self, write: Callable[[bytes], None], new: _Side, ending: bytes, total: int):
        self.write = write
        self.new = new
        self.ending = ending
        self.total = total  # the new file's bytes
        self.batch = bytearray()
        self.records = 0
        self.bytes = 0

    def send(self, line: bytes) -> None:
        """Send `line`, the new file's record at its position."""
        if _ending(line) not in (self.ending, b"") or line.endswith(b"\r"):
            raise NotAlike("mixed line endings")  # which the whole file's load names
        self.records += 1
        self.bytes += len(line)
        self.batch.extend(b"%d," % (self.new.newlines + 1))
        self.batch.extend(line if _ending(line) else line + self.ending)
        if len(self.batch) >= SEND_BYTES:
            self.flush()
        if self.bytes > MAX_DIFFERING_SHARE * self.total:
            raise NotAlike(f"{self.records:,} records of the first {self.new.newlines + 1:,} differ")

    def flush(self) -> None:
        if self.batch:
            self.write(bytes(self.batch))
            self.batch.clear()


class _Search:
    """Where the files fell out of step, the nearest place each side's record stands in the other, over
    ever wider reaches (SEARCH_BYTES), and in all no further than MAX_SEARCHED_SHARE of the new file."""

    def __init__(self, new: _Side, earlier: _Side, total: int):
        self.new = new
        self.earlier = earlier
        self.limit = MAX_SEARCHED_SHARE * total
        self.searched = 0

    def __call__(self, line: bytes, old: bytes) -> tuple[int | None, int | None]:
        """(bytes of previous records gone before `line`, bytes of new records before `old`): whichever
        is found first, nearest first."""
        for within in SEARCH_BYTES:
            if self.searched > self.limit:
                raise NotAlike("the records are too far out of step")
            gone = self.earlier.find(line, within)
            self.searched += within if gone is None else gone
            if gone is not None:
                return gone, None
            added = self.new.find(old, within)
            self.searched += within if added is None else added
            if added is not None:
                return None, added
        return None, None


def _compare(new: _Side, earlier: _Side, unmatched: _Unmatched, sent: _Batches, search: _Search) -> None:
    """Walk both files to the new one's end: send its records that differ, keep the previous one's that
    were passed without a match in `unmatched` (a later record may still match one)."""
    while (line := new.line()) is not None:
        if unmatched.match(line):  # a record further back in the previous file
            new.advance(len(line))
            continue
        if _skip_equal(new, earlier):
            continue  # the next line is looked at afresh
        old = earlier.line()
        if old == line:  # equal but not skipped: longer than a chunk, or the last one
            new.advance(len(line))
            earlier.advance(len(old))
            continue
        if old is None:  # the previous file has ended: new records
            sent.send(line)
            new.advance(len(line))
            continue
        if _key(old) == _key(line):  # changed where it stood
            unmatched.add(old)
            earlier.advance(len(old))
            sent.send(line)
            new.advance(len(line))
            continue
        gone, added = search(line, old)
        if gone is not None:  # previous records gone from here (or further on)
            for passed in earlier.lines_within(gone):
                unmatched.add(passed)
            continue  # the record now stands in step
        if added is not None:  # new records here (or moved from further on)
            for inserted in new.lines_within(added):
                if not unmatched.match(inserted):
                    sent.send(inserted)
            continue
        # neither is near: this record replaces that one
        unmatched.add(old)
        earlier.advance(len(old))
        sent.send(line)
        new.advance(len(line))
