"""Writing the generator's output so that a reader never sees a run's files half-written or mixed.

Each file or folder is written under a dot name beside its final path (the loader and the export sensor
ignore dot names) and renamed into place only once all of the run's outputs are complete; a failure,
Ctrl-C included, removes the temporaries and the folders the run made, and leaves what was there before
untouched. A failure among the renames (of the two base files, the second) puts back the files already
replaced, from hard links to them kept aside as .NAME.previous. A file that grows (--append-day) is copied to
its temporary and appended there. A run holds an exclusive lock on each folder it writes into, so a second
run into the same folder is refused instead of taking the first one's temporaries for a killed run's and
removing them.

What remains: two renames are not one atomic step. A run killed outright (`kill`, SIGKILL, a power cut)
between them, a window of one rename call, leaves the new first file beside the old second one; the old
first file is then still there as .NAME.previous, until the next run into the folder removes it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from itertools import chain
from pathlib import Path


def temporary_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.partial")


def _previous_path(final: Path) -> Path:
    """Where a final file is kept aside while the run's outputs are renamed into place."""
    return final.with_name(f".{final.name}.previous")


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
    in them since. A temporary or kept-aside file left by a killed run is removed first; ValueError while
    another run writes into one of the folders, or when a final path is a directory (see _replace_all).
    """
    temporaries = [temporary_path(final) for final in finals]
    previous = [_previous_path(final) for final in finals]
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
            for leftover in (*temporaries, *previous):  # a killed run's
                _remove(leftover)
            yield temporaries
            _replace_all(temporaries, finals, previous)
        except BaseException:
            for temporary in temporaries:
                _remove(temporary)
            _remove_empty(made)
            raise


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()  # a link to nothing is there too


def _check_replaceable(temporary: Path, final: Path) -> None:
    """ValueError where os.replace(temporary, final) would fail: a directory is never replaced, and a
    temporary folder only ever takes a free name."""
    if not _exists(temporary):
        raise FileNotFoundError(f"{temporary} was not written")
    if temporary.is_dir() and _exists(final):
        raise ValueError(f"{final} already exists: nothing was written")
    if final.is_dir() and not final.is_symlink():
        raise ValueError(
            f"{final} is a directory, which the new file cannot replace: nothing was written; "
            "move it away first"
        )


def _keep_aside(final: Path, aside: Path) -> bool:
    """A hard link `aside` to `final` (a copy where the file system has no hard links), so that `final`
    can be put back once replaced; False when there is no `final` to keep."""
    if not _exists(final):
        return False
    try:
        os.link(final, aside, follow_symlinks=False)
    except OSError:
        shutil.copy2(final, aside, follow_symlinks=False)
    return True


def _replace_all(temporaries: Sequence[Path], finals: Sequence[Path], previous: Sequence[Path]) -> None:
    """Rename each temporary onto its final path; if one rename fails, put back the finals already replaced
    (kept aside under the `previous` names) and remove those that were new.

    Everything that can fail is done first (the checks, keeping the previous finals aside), so the renames
    follow each other with nothing in between: the window a kill can split is as short as it can be. Only
    the finals before the last need keeping: once the last rename is done, all are.
    """
    for temporary, final in zip(temporaries, finals, strict=True):
        _check_replaceable(temporary, final)
    kept: list[bool] = []  # whether each final but the last was there, and so kept aside
    restored = True
    try:
        for final, aside in zip(finals[:-1], previous, strict=False):
            kept.append(_keep_aside(final, aside))
        try:
            for temporary, final in zip(temporaries, finals, strict=True):
                os.replace(temporary, final)
        except BaseException:
            # a rename done is one whose temporary is gone (the checks saw each of them); the renames go in
            # order, so while one is not done the last is not either, and all done stays so
            if any(map(_exists, temporaries)):
                restored = False
                pairs = zip(temporaries, finals, previous, kept, strict=False)  # kept: one short
                for temporary, final, aside, was_there in pairs:
                    if _exists(temporary):
                        break
                    if was_there:
                        os.replace(aside, final)
                    else:
                        _remove(final)  # made by this run
                restored = True
            raise
    finally:
        if restored:  # else the previous files the error names are still there to be put back by hand
            for aside in previous:
                _remove(aside)


def _remove_empty(made: list[Path]) -> None:
    """The folders a run made, innermost first, unless something else was put in them since."""
    for folder in reversed(made):
        with suppress(OSError):
            folder.rmdir()


def holds_chunks(path: Path, header: str, chunks: Iterable[str]) -> bool:
    """Whether the file at `path` is byte for byte what write_chunks(path, header, chunks) would write:
    compared as the chunks come, so nothing is written and nothing needs cleaning up after a kill."""
    with open(path, "rb", buffering=1 << 20) as existing:
        for text in chain([header + "\n"], chunks):
            data = text.encode()
            if existing.read(len(data)) != data:
                return False
        return existing.read(1) == b""


def write_chunks(path: Path, header: str, chunks: Iterable[str]) -> None:
    """A CSV file: the header line, then the chunks (text ending with a newline)."""
    with open(path, "w", encoding="utf-8", newline="", buffering=1 << 20) as out:
        out.write(header + "\n")
        for chunk in chunks:
            out.write(chunk)
