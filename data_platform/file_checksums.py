"""Export files' checksums, remembered by path, size, modification time and change time.

Whether an export was loaded before is decided by the checksums of its files. The base export is
one file of the whole history (2.4 GB at 12.7M invoices): hashing it again on every daily run would
cost more than loading the day's export. So a file with the same path, size, modification time and
change time (ctime, to the nanosecond) as when it was hashed is taken to be the same file. Unlike make
and rsync, not the size and modification time alone: `cp -p`, `rsync -a` and `touch -r` set those back,
and a different file landed so with the old size would be taken for the one loaded. Nothing sets the
change time back. A chmod or chown, a hard link made or removed (`cp -al`, some backup tools) or a restore
moves it too: the file is then read once more, and the loader says why.

A checksum is remembered only when the file did not change while it was read, and was last modified
at least SETTLED_SECONDS before: on a file system with a coarse clock, a file written again within
the same tick could keep its size and time. `touch` (or any write) makes the next run hash it again.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from data_platform.csv_files import sha256_of
from data_platform.load_errors import path_text, printable, text_path
from data_platform.raw_tables import RAW_SCHEMA
from data_platform.steps import say

SETTLED_SECONDS = 2
TABLE = sql.Identifier(RAW_SCHEMA, "file_checksums")


def _key(path: Path) -> str:
    return path_text(path.resolve())


def _identity(path: Path, stat: os.stat_result) -> tuple[str, int, int, int]:
    return _key(path), *_times(stat)


def _times(stat: os.stat_result) -> tuple[int, int, int]:
    """What tells a file from its replacement: size, modification time, change time."""
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def checksum(conn: psycopg.Connection, path: Path) -> str:
    """The file's sha256: remembered if this very file was hashed before, else read and remembered."""
    before = path.stat()
    row = conn.execute(
        sql.SQL("select size_bytes, modified_ns, changed_ns, sha256 from {} where path = %s").format(TABLE),
        [_key(path)],
    ).fetchone()
    if row and tuple(row[:3]) == _times(before):
        return row[3]
    if row and tuple(row[:2]) == _times(before)[:2]:
        # a large file read again every day would go unexplained: say why
        say(
            f"{printable(str(path))}: read again for its checksum: its change time moved since it was read "
            "(a chmod or chown, a hard link made or removed, or a copy that kept its size and times)",
            sys.stderr,
        )
    digest = sha256_of(path)
    remember(conn, path, before, digest)
    return digest


@dataclass(frozen=True)
class KnownFile:
    """A file whose checksum was remembered, with the size and times it had then."""

    path: Path
    size_bytes: int
    modified_ns: int
    changed_ns: int
    sha256: str

    def unchanged(self) -> bool:
        """Whether it still is the file that was hashed."""
        try:
            stat = self.path.stat()
        except OSError:
            return False
        return _times(stat) == (self.size_bytes, self.modified_ns, self.changed_ns)


def file_with(conn: psycopg.Connection, digest: str) -> KnownFile | None:
    """A file remembered with this checksum that is still that file."""
    for path, size, modified, changed in conn.execute(
        sql.SQL(
            "select path, size_bytes, modified_ns, changed_ns from {} where sha256 = %s order by path"
        ).format(TABLE),
        [digest],
    ).fetchall():
        known = KnownFile(text_path(path), size, modified, changed, digest)
        if known.unchanged():
            return known
    return None


def remember(conn: psycopg.Connection, path: Path, before: os.stat_result, digest: str) -> None:
    """Remember the checksum of a file read since `before` (its stat then), if it was settled."""
    after = path.stat()
    unchanged = _times(after) == _times(before)
    settled = time.time_ns() - after.st_mtime_ns >= SETTLED_SECONDS * 1_000_000_000
    if not (unchanged and settled):
        return
    conn.execute(
        sql.SQL(
            "insert into {} (path, size_bytes, modified_ns, changed_ns, sha256) values (%s, %s, %s, %s, %s)"
            " on conflict (path) do update set size_bytes = excluded.size_bytes,"
            " modified_ns = excluded.modified_ns, changed_ns = excluded.changed_ns, sha256 = excluded.sha256"
        ).format(TABLE),
        [*_identity(path, before), digest],
    )
