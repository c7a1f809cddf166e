"""Which exports an engine's raw ledger still needs, from its load log: the loader's rules, engine-free.

An export is loaded once: the same date with the same files again is a no-op, the same date with other
files is refused, and so is an export older than the newest one loaded (its changes would land before
days already booked).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from data_platform.csv_files import sha256_of
from data_platform.exports import Export
from data_platform.load_errors import LoadError


@dataclass(frozen=True)
class Checksums:
    invoices: str
    organizations: str | None

    @classmethod
    def of(cls, export: Export) -> Checksums:
        return cls(
            sha256_of(export.invoices), sha256_of(export.organizations) if export.organizations else None
        )


def needs_load(
    export: Export, export_date: date, checksums: Checksums, logged: dict[date, Checksums]
) -> bool:
    """True when the export is new; False when it was loaded with these files; LoadError otherwise."""
    if export_date in logged:
        if logged[export_date] == checksums:
            return False
        raise LoadError(
            export.source,
            f"export {export_date} was loaded before from other files (checksums differ): "
            "a loaded export never changes; rebuild the raw layer from scratch to replace it",
        )
    newest = max(logged, default=None)
    if newest is not None and export_date < newest:
        raise LoadError(
            export.source,
            f"export {export_date} is older than the newest loaded export {newest}: exports load in "
            "date order; rebuild the raw layer from scratch to insert it",
        )
    return True
