"""Writing the generator's output so that a reader never sees a run's files half-written or mixed.

Each file or folder is written under a dot name beside its final path (the loader and the export sensor
ignore dot names) and renamed into place only once all of the run's outputs are complete; a failure,
Ctrl-C included, removes the temporaries and the folders the run made, and leaves what was there before
untouched. A file that grows (--append-day) is copied to its temporary and appended there. A run holds an
exclusive lock on each folder it writes into, so a second run into the same folder is refused instead of
taking the first one's temporaries for a killed run's and removing them.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path


def temporary_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.partial")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _make_folders(folder: Path, made: list[Path]) -> None:
    """`mkdir -p folder`, adding each folder it creates to `made`, outermost first."""
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            if not folder.is_dir():
                raise
            continue  # another process made it: not ours to remove
        made.append(folder)


@contextmanager
def _writing_into(folder: Path) -> Iterator[None]:
    """Hold the folder's lock (flock on the folder itself: no lock file left behind) for the run."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"another generator run is writing to {folder}; wait for it to end") from None
        yield
    finally:
        os.close(descriptor)  # releases the lock


@contextmanager
def staged(finals: Sequence[Path]) -> Iterator[list[Path]]:
    """The temporary paths to write `finals` under; each is renamed onto its final path on success.

    Renames are atomic on one file system, hence the temporaries beside the final paths. Missing parent
    folders are made; on failure the temporaries go, and so do those folders unless something else was put
    in them since. A temporary left by a killed run is removed first; ValueError while another run writes
    into one of the folders.
    """
    temporaries = [temporary_path(final) for final in finals]
    made: list[Path] = []
    with ExitStack() as locks:
        try:
            for folder in dict.fromkeys(final.parent for final in finals):
                _make_folders(folder, made)
                locks.enter_context(_writing_into(folder))
        except BaseException:  # refused: the temporaries there are another run's
            _remove_empty(made)
            raise
        try:
            for temporary in temporaries:
                _remove(temporary)
            yield temporaries
            for temporary, final in zip(temporaries, finals, strict=True):
                os.replace(temporary, final)
        except BaseException:
            for temporary in temporaries:
                _remove(temporary)
            _remove_empty(made)
            raise


def _remove_empty(made: list[Path]) -> None:
    """The folders a run made, innermost first, unless something else was put in them since."""
    for folder in reversed(made):
        with suppress(OSError):
            folder.rmdir()


def write_chunks(path: Path, header: str, chunks: Iterable[str]) -> None:
    """A CSV file: the header line, then the chunks (text ending with a newline)."""
    with open(path, "w", encoding="utf-8", newline="", buffering=1 << 20) as out:
        out.write(header + "\n")
        for chunk in chunks:
            out.write(chunk)
