"""Finding the exports under the CSV directory.

Two layouts, usable together:
- the single-file (base) export: invoices.csv + organizations.csv directly in the directory; its
  export date is --as-of, or else the latest UTC day of CREATED_AT in the file (known only once the
  file is read, so without --as-of the base export is loaded first);
- dated exports: exports/<YYYY-MM-DD>/invoices.csv and, optionally, organizations.csv.
The single-file export is the base: it loads before the dated exports, so its date must be before
theirs (refuse_after_dated).
Any other entry in exports/ or in a dated folder is an error naming it (dotfiles are ignored), and so
is an `exports` that is not a folder (a file, a link to a share that is not mounted); no `exports` at all
is the single-file layout. A link to a missing file (an unmounted share) counts as the file, which the
loader then names as not found: an export is never loaded as if it had no organizations file.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from data_platform.load_errors import LoadError, path_text
from data_platform.raw_tables import INVOICES, ORGANIZATIONS

EXPORTS_FOLDER = "exports"
# the exports' folder: the pipeline's default is the project's own, the command-line tools' the current
# folder's (csv_dir_default)
CSV_DIR_VARIABLE, CSV_DIR_NAME = "CSV_DIR", "csv_data"
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


@dataclass(frozen=True)
class Export:
    source: Path  # the directory holding the export's files, as given
    invoices: Path
    organizations: Path | None
    date: date | None  # None: the base export without --as-of, dated by its content
    # the base export only: the first dated export (its day and folder), which it must be dated before
    first_dated: tuple[date, Path] | None = None

    @property
    def files(self) -> list[Path]:
        """Its files: organizations.csv (when there is one), then invoices.csv."""
        return [path for path in (self.organizations, self.invoices) if path is not None]

    @property
    def logged_source(self) -> str:
        """Its folder as the load log keeps it: absolute, so that the messages quoting it later name the same
        folder whichever folder they run from."""
        return path_text(self.source.absolute())

    @property
    def label(self) -> str:
        return f"export {self.date.isoformat() if self.date else '(dated by its content)'} ({self.source})"


def parse_date(text: str) -> date | None:
    """A strict YYYY-MM-DD date, or None."""
    if not _DATE.fullmatch(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def date_argument(text: str) -> date:
    """argparse's type for a date option: YYYY-MM-DD only, not the other forms fromisoformat reads
    (20240628, 2024-W26-5), which an operator's typo can land on."""
    day = parse_date(text)
    if day is None:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}")
    return day


CSV_DIR_HELP = f"directory holding the exports (default: ${CSV_DIR_VARIABLE} or {CSV_DIR_NAME})"


def csv_dir_default() -> str:
    """--csv-dir's default in the command-line tools: $CSV_DIR, else csv_data in the current folder."""
    return os.environ.get(CSV_DIR_VARIABLE) or CSV_DIR_NAME


def present(path: Path) -> bool:
    """Whether the directory holds an entry of that name: a link to a missing file (an unmounted share) or
    to itself is a file the loader then names as unreadable, never taken for no file."""
    return os.path.lexists(path)


def _base_export(csv_dir: Path, as_of: date | None, first_dated: tuple[date, Path] | None) -> Export | None:
    invoices, organizations = csv_dir / INVOICES.file_name, csv_dir / ORGANIZATIONS.file_name
    if not present(invoices) and not present(organizations):
        return None
    for path in (invoices, organizations):
        if not present(path):
            other = organizations if path == invoices else invoices
            raise LoadError(path, f"file not found: the single-file export needs it beside {other.name}")
    return Export(csv_dir, invoices, organizations, as_of, first_dated)


def refuse_misnamed_base(csv_dir: Path | str) -> None:
    """Before the first export loads: a single-file export whose files are named otherwise (INVOICES.CSV,
    invoices.csv.gz) would be passed over while the dated exports load, and could never load before them
    afterwards, its history lost. (Once an export is loaded, such files are a loaded base archived, or
    too late to load anyway.)"""
    csv_dir = Path(csv_dir)
    if (
        not csv_dir.is_dir()
        or present(csv_dir / INVOICES.file_name)
        or present(csv_dir / ORGANIZATIONS.file_name)
    ):
        return
    names = (INVOICES.file_name, ORGANIZATIONS.file_name, "organisations.csv")
    for entry in sorted(csv_dir.iterdir()):
        folded = entry.name.casefold()
        near = next((name for name in names if folded == name or folded.startswith(f"{name}.")), None)
        if near is not None and not entry.name.startswith("."):
            raise LoadError(
                entry,
                f"looks like the single-file export's {near} named otherwise: the single-file export is "
                f"exactly {INVOICES.file_name} and {ORGANIZATIONS.file_name} (uncompressed); rename it, or "
                "move it out of this folder",
            )


def refuse_after_dated(export: Export, export_date: date) -> None:
    """Refuse the base export dated on or after a dated export. It loads before them, and holds each of its
    invoices as of its own date: dated after them, its rows would undo what they changed (a line appended to
    a loaded single-file export, an --as-of later than a dated folder), and dated on the day of one, it
    would be taken for that export's other file. Applied before anything is loaded wherever the date is
    known then (--as-of), else once the file's newest invoice dates it."""
    if export.first_dated is None or export_date < export.first_dated[0]:
        return
    day, folder = export.first_dated
    if export.date is not None:
        raise LoadError(
            export.source,
            f"--as-of {export_date} dates the single-file export on or after the dated export {day} "
            f"({folder}): the single-file export is the base, loaded before every dated export; date it "
            f"before {day}, or check that folder's date",
        )
    raise LoadError(
        export.invoices,
        f"the single-file export is dated {export_date} by its newest invoice, on or after the dated export "
        f"{day} ({folder}): the single-file export is the base, loaded before every dated export, and loaded "
        "after one, its rows would undo what that export changed unless it held every change since. Check "
        f"that folder's date; a new day, or a full dump of every invoice, goes in {EXPORTS_FOLDER}/"
        "<YYYY-MM-DD>/; a single-file export edited after it was loaded must be put back as it was",
    )


def day_folders(folder: Path, skip_unexpected: bool = False) -> list[tuple[date, Path]]:
    """The dated export folders in `folder` (csv_dir/exports), oldest first, as the loader takes them; none
    when it does not exist. Dot names (a copy renamed into place when complete) are skipped. LoadError
    for a `folder` that is not one and for any other entry: never silently "no exports" (with
    `skip_unexpected`, other entries are left out instead, for a check that has reported them already)."""
    if not folder.is_dir():
        if present(folder) and not skip_unexpected:  # a file, or a link to a share that is not mounted
            raise LoadError(
                folder,
                f"not a folder (or a link to a missing one): the dated exports go in "
                f"{EXPORTS_FOLDER}/<YYYY-MM-DD>/; is the landing folder mounted?",
            )
        return []
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        day = parse_date(entry.name)
        if not entry.is_dir() or day is None:
            if skip_unexpected:
                continue
            if entry.is_dir() and _DATE.fullmatch(entry.name):
                raise LoadError(
                    entry, f"{entry.name} is not a calendar date: name the folder by its export's day"
                )
            if day is not None and entry.is_symlink() and not entry.exists():  # removed, the day is lost
                raise LoadError(
                    entry,
                    "a link to a missing folder: is the share it points to mounted? Do not remove it: once a "
                    "later export loads, this one can no longer load",
                )
            raise LoadError(
                entry,
                f"unexpected entry in {folder}: expected only folders named YYYY-MM-DD holding invoices.csv",
            )
        found.append((day, entry))
    return found


def _dated_exports(folders: list[tuple[date, Path]], through: date | None) -> list[Export]:
    found = []
    for day, entry in folders:
        if through is not None and day > through:
            continue  # left for a later run, which may find it complete
        _refuse_other_files(entry)  # first: it also names a folder this process may not read
        invoices = entry / INVOICES.file_name
        if not present(invoices):
            raise LoadError(invoices, "file not found: every dated export folder must hold invoices.csv")
        organizations = entry / ORGANIZATIONS.file_name
        found.append(Export(entry, invoices, organizations if present(organizations) else None, day))
    return found


def _refuse_other_files(folder: Path) -> None:
    """A misspelt organizations file (organisations.csv, Organizations.csv) left out would load the export
    without its organizations for good: a loaded export is never corrected. Dot names (a copy's
    temporary files) are skipped."""
    expected = (INVOICES.file_name, ORGANIZATIONS.file_name)
    for entry in sorted(folder.iterdir()):
        if not entry.name.startswith(".") and entry.name not in expected:
            raise LoadError(
                entry,
                f"unexpected entry in {folder}: a dated export folder holds only {INVOICES.file_name} and, "
                f"optionally, {ORGANIZATIONS.file_name}; remove it (a misspelt {ORGANIZATIONS.file_name} may "
                "be renamed while its export is not loaded yet; a loaded export's files stay as they were)",
            )


def discover(csv_dir: Path | str, as_of: date | None = None, through: date | None = None) -> list[Export]:
    """Every export under csv_dir in load order: by export date, the undated base one first; with
    `through`, the dated folders after that day are left out (not even looked into)."""
    csv_dir = Path(csv_dir)
    try:
        return _discover(csv_dir, as_of, through)
    except OSError as error:  # a folder or file this process may not read
        where = Path(error.filename) if error.filename else csv_dir
        raise LoadError(where, f"cannot look into it: {error.strerror}") from None


def _discover(csv_dir: Path, as_of: date | None, through: date | None) -> list[Export]:
    if not csv_dir.is_dir():
        # a link to a missing folder: a share that is not mounted, said as for exports/ (day_folders)
        what = "not a folder (or a link to a missing one)" if present(csv_dir) else "CSV directory not found"
        raise LoadError(csv_dir, f"{what}: set --csv-dir or CSV_DIR to the folder holding the exports")
    # every dated folder, those after `through` too: the base export must come before all of them
    folders = day_folders(csv_dir / EXPORTS_FOLDER)
    base = _base_export(csv_dir, as_of, folders[0] if folders else None)
    if as_of is not None and base is None:
        raise LoadError(csv_dir, "--as-of dates the single-file export, but there is no invoices.csv here")
    dated = _dated_exports(folders, through)
    if base is None and not dated:
        raise LoadError(
            csv_dir,
            f"no export found: expected {INVOICES.file_name} and {ORGANIZATIONS.file_name} here, "
            f"or {EXPORTS_FOLDER}/<YYYY-MM-DD>/{INVOICES.file_name}",
        )
    if base is not None and base.date is not None:
        refuse_after_dated(base, base.date)  # before any export loads
    exports = [base] if base else []
    exports += dated
    return sorted(exports, key=lambda export: (export.date is not None, export.date or date.min))
