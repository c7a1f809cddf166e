"""Dated exports after the base files: each day's new invoices plus status changes of older invoices.

`exports/<YYYY-MM-DD>/invoices.csv` for the days after --end-date, each a partial export: only the
day's new invoices and the new versions of older invoices whose status changed that day, in the base
file's format (the loader keeps invoices absent from an export).

Which older invoices change is a deterministic sample: while streaming the base file once per day,
each invoice with a non-final status gets a keyed hash of its id and the day, and the `changed`
invoices with the smallest hashes change. Memory holds that sample (a heap of `changed` rows) and the
rows of the exports already written in this run (so a later day sees an invoice's latest version), never
the base file. Scenario organizations (SCENARIO) change only as NEXT_DAY_SCENARIO says, on the first day.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from data_platform.generator.files import holds_chunks, staged, write_chunks
from data_platform.generator.invoices import later_day_chunks
from data_platform.generator.organizations import build_organizations
from data_platform.generator.scenario import NEXT_DAY_SCENARIO, ScenarioChange, scenario_organization_ids
from data_platform.generator.values import (
    APPEND_DAY_SHIFT,
    INVOICES_HEADER,
    NS_TRANSACTION,
    SENTINEL,
    IdMaker,
    amount_strings,
    check_dates,
    fx_rates,
    payment_method,
)
from data_platform.raw_tables import INVOICES

# Next status of a changing invoice, by its current status: mostly paid, some cancelled or credited. Only
# the statuses that are not `is_final` in dbt/seeds/invoice_enrichment.csv change (a test checks it).
TRANSITIONS: dict[str, dict[str, float]] = {
    "open": {"paid": 70, "processing": 8, "cancelled": 10, "credited": 5, "failed": 4, "unpayable": 3},
    "pending": {"paid": 70, "processing": 10, "cancelled": 10, "credited": 5, "failed": 5},
    "awaiting_payment": {"paid": 75, "processing": 10, "cancelled": 8, "credited": 4, "failed": 3},
    "skipped": {"paid": 60, "open": 20, "cancelled": 15, "credited": 5},
    "failed": {"paid": 55, "unpayable": 20, "cancelled": 15, "credited": 10},
    "processing": {"paid": 85, "refunded": 10, "failed": 5},
}
_CHANGING = frozenset(status.encode() for status in TRANSITIONS)
WITH_PAYMENT = frozenset({"paid", "processing", "refunded"})  # new versions that carry PAYMENT_AMOUNT
_CHANGE_TRANSACTIONS = 1 << (APPEND_DAY_SHIFT - 1)  # new transactions of a day's changes, after its new rows
_MASK64 = (1 << 64) - 1

# column positions in an invoices.csv line
(_ID, _PARENT, _TRANSACTION, _ORGANIZATION, _TYPE, _STATUS, _CURRENCY, _PAYMENT_CURRENCY, _METHOD, _AMOUNT,
 _PAYMENT_AMOUNT, _FX_RATE, _FX_RATE_PAYMENT, _CREATED_AT) = map(INVOICES.header.index, (
    "INVOICE_ID", "PARENT_INVOICE_ID", "TRANSACTION_ID", "ORGANIZATION_ID", "TYPE", "STATUS", "CURRENCY",
    "PAYMENT_CURRENCY", "PAYMENT_METHOD", "AMOUNT", "PAYMENT_AMOUNT", "FX_RATE", "FX_RATE_PAYMENT",
    "CREATED_AT",
))  # fmt: skip


@dataclass(frozen=True)
class ExportStats:
    day: date
    path: Path
    new: int
    changed: int
    kept: bool = False  # already there, exactly as this run would write it


def _sample_key(seed: int, day: date) -> int:
    return int.from_bytes(random.Random(f"changes:{seed}:{day}").randbytes(8), "little")


def _base_lines(path: Path) -> Iterator[bytes]:
    """The data lines of a base invoices.csv, without line ends; the header is checked."""
    with open(path, "rb", buffering=1 << 20) as base:
        header = base.readline().rstrip(b"\r\n").decode("utf-8", "replace")
        if header != INVOICES_HEADER:
            raise ValueError(
                f"{path} line 1: expected the invoices.csv header {INVOICES_HEADER!r}, got {header!r}"
            )
        for line in base:
            line = line.rstrip(b"\r\n")
            if line:
                yield line


def _last_created_day(path: Path) -> date | None:
    """The CREATED_AT day of the file's last line: the generator writes the base file in day order, and
    --append-day adds its day at the end. None for a file without data lines or with another last field."""
    with open(path, "rb") as base:
        size = base.seek(0, 2)
        base.seek(max(0, size - 4096))
        lines = base.read().rstrip(b"\r\n").splitlines()
    try:
        return date.fromisoformat(lines[-1].rsplit(b",", 1)[1][:10].decode())
    except (IndexError, ValueError, UnicodeDecodeError):
        return None


class _ChangeSampler:
    """The `size` eligible invoices with the smallest keyed hash of their id (a bottom-k sample)."""

    def __init__(self, size: int, key: int) -> None:
        self.size, self.key = size, key
        self.heap: list[tuple[int, int, bytes]] = []  # (-hash, -position, line): the largest on top

    def offer(self, position: int, invoice_id: bytes, line: bytes) -> None:
        if not self.size:
            return
        z = ((int(invoice_id) ^ self.key) * 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 31)) * 0xBF58476D1CE4E5B9) & _MASK64
        entry = (-(z ^ (z >> 29)), -position, line)
        if len(self.heap) < self.size:
            heapq.heappush(self.heap, entry)
        elif entry > self.heap[0]:
            heapq.heapreplace(self.heap, entry)

    def entries(self) -> list[tuple[int, bytes]]:
        """(position, line) of the sample."""
        return [(-position, line) for _, position, line in self.heap]


def _changed_line(
    fields: list[str], new_status: str, with_payment_amount: bool, rates: dict[str, str], rng: random.Random,
    new_transaction: str,
) -> str:  # fmt: skip
    """The new version of an invoice: same id, organization, amount, currency and creation time."""
    fields = list(fields)
    fields[_STATUS] = new_status
    if with_payment_amount:
        units, cents = fields[_AMOUNT].split(".")
        fields[_PAYMENT_AMOUNT] = amount_strings(int(units) * 100 + int(cents))[1]
        if not fields[_PAYMENT_CURRENCY]:
            currency = fields[_CURRENCY] if rng.random() < 0.85 else "USD"
            fields[_PAYMENT_CURRENCY] = currency
            # the payment rate is the invoice's own when the currencies match, else the day's rate
            fields[_FX_RATE_PAYMENT] = fields[_FX_RATE] if currency == fields[_CURRENCY] else rates[currency]
        if not fields[_METHOD]:
            fields[_METHOD] = payment_method(rng, fields[_PAYMENT_CURRENCY])
        if fields[_TRANSACTION] == SENTINEL:
            fields[_TRANSACTION] = new_transaction
    else:
        fields[_PAYMENT_AMOUNT] = ""
    return ",".join(fields)


def _scenario_targets(
    seed: int, end_date: date, days: int
) -> dict[tuple[str, str, str, str], ScenarioChange]:
    """(organization id, created day, status, amount) of each NEXT_DAY_SCENARIO invoice -> its change."""
    ids = scenario_organization_ids(seed)
    return {
        (
            str(ids[change.organization]),
            (end_date - timedelta(days=min(change.invoice.days_before_end, days - 1))).isoformat(),
            change.invoice.status,
            change.invoice.amount,
        ): change
        for change in NEXT_DAY_SCENARIO
    }


def _current_lines(base: Path, later: dict[bytes, bytes]) -> Iterator[bytes]:
    """Every invoice's latest line: the base file's, unless an export written before replaced it."""
    if not later:
        yield from _base_lines(base)
        return
    for line in _base_lines(base):
        if line[: line.index(b",")] not in later:
            yield line
    yield from later.values()


def _export(
    path: Path, changed: list[str], new_chunks: Iterator[str], keep: bool, compare: bool = False
) -> list[str]:
    """Write one day's invoices.csv, or with `compare`, check that the existing file is that export (a
    ValueError if not); returns its new lines if `keep`."""
    new_lines: list[str] = []

    def chunks() -> Iterator[str]:
        yield "".join(line + "\n" for line in changed)
        for chunk in new_chunks:
            if keep:
                new_lines.extend(chunk.splitlines())
            yield chunk

    if not compare:
        write_chunks(path, INVOICES_HEADER, chunks())
    elif not path.is_file() or not holds_chunks(path, INVOICES_HEADER, chunks()):
        raise ValueError(
            f"{path.parent} already exists and its invoices.csv is not the export these options write for "
            "its day: nothing was written. A dated export is written once: give the options of the run "
            "that wrote it, or remove the folder to write it again (if it was loaded, the loader will "
            "refuse the changed file)"
        )
    return new_lines


def write_exports(
    base_dir: Path,
    exports_dir: Path,
    *,
    next_days: int,
    new_invoices: int,
    changed_invoices: int,
    organizations: int,
    seed: int,
    end_date: date,
    days: int,
    scenario: bool = True,
) -> list[ExportStats]:
    """Write exports_dir/<day>/invoices.csv for the `next_days` days after end_date.

    base_dir/invoices.csv is the base export: pass the options it was generated with, so new invoices
    go to the same organizations and continue the FX history. Each export lists the changed older
    invoices first (in the order of the base file), then the day's new invoices.

    A day folder that already exists is kept when its invoices.csv is exactly what this run writes for
    that day (the same options: so a longer run adds the days after it; only the missing days are
    written), and refused otherwise, with nothing written (it may have been loaded: the loader refuses an
    export that changed). The days are written into dot-named folders, which the loader and the export
    sensor ignore, and renamed into place once all are complete: a failed run leaves no day folder behind,
    nor an exports_dir (or parent) that it made.
    """
    if next_days < 1 or new_invoices < 0 or changed_invoices < 0:
        raise ValueError("need --next-days >= 1, --new-invoices >= 0 and --changed-invoices >= 0")
    check_dates(end_date, days, later_days=next_days)
    base = base_dir / "invoices.csv"
    day_folders = [
        exports_dir / (end_date + timedelta(days=offset)).isoformat() for offset in range(1, next_days + 1)
    ]
    _refuse_to_overwrite(day_folders, base, end_date)
    existing = {folder for folder in day_folders if folder.exists()}
    orgs = build_organizations(seed, organizations, days)
    ids = IdMaker(seed)
    scenario_orgs = {str(org_id).encode() for org_id in scenario_organization_ids(seed).values()}
    all_rates = list(fx_rates(seed, days + next_days))
    later: dict[bytes, bytes] = {}  # id -> line, of the rows of the exports written so far
    results = []
    new_folders = [folder for folder in day_folders if folder not in existing]
    with staged(new_folders) as temporary_folders:
        staged_folder = dict(zip(new_folders, temporary_folders, strict=True))
        for offset in range(1, next_days + 1):
            day = end_date + timedelta(days=offset)
            targets = _scenario_targets(seed, end_date, days) if scenario and offset == 1 else {}
            picked = _pick_changes(
                _current_lines(base, later), changed_invoices, seed, day, scenario_orgs, targets
            )
            if targets:
                missing = ", ".join(
                    f"{c.organization} ({c.invoice.status} {c.invoice.amount})" for c in targets.values()
                )
                raise ValueError(
                    f"{base} has no scenario invoice for {missing}: was it generated with --no-scenario or "
                    "with other options? Give the options of the original run, or pass --no-scenario"
                )
            first_transaction = NS_TRANSACTION | offset << APPEND_DAY_SHIFT | _CHANGE_TRANSACTIONS
            transactions = ids.strings(first_transaction, len(picked))
            changed = _changed_lines(picked, transactions, all_rates[days - 1 + offset], seed, day)
            new_chunks = later_day_chunks(seed, orgs, new_invoices, end_date, days, offset)
            final = day_folders[offset - 1]
            more_days = offset < next_days
            if final in existing:
                new_lines = _export(final / "invoices.csv", changed, new_chunks, keep=more_days, compare=True)
            else:
                staged_folder[final].mkdir()
                new_lines = _export(
                    staged_folder[final] / "invoices.csv", changed, new_chunks, keep=more_days
                )
            if more_days:  # the next day must see these versions
                for line in (*changed, *new_lines):
                    later[line[: line.index(",")].encode()] = line.encode()
            results.append(
                ExportStats(day, final / "invoices.csv", new_invoices, len(changed), kept=final in existing)
            )
    return results


def _refuse_to_overwrite(day_folders: list[Path], base: Path, end_date: date) -> None:
    """A ValueError, before anything is written, when a day folder's place holds a link or a file, or the
    base file cannot be followed by the days after end_date."""
    for folder in day_folders:
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise ValueError(
                f"{folder} already exists: nothing was written. A dated export is written once; remove "
                "the folder to write it again (if it was loaded, the loader will refuse the changed file)"
            )
    if not base.is_file():
        raise ValueError(f"{base} not found: --next-days writes the exports that follow a base invoices.csv")
    last_day = _last_created_day(base)
    if last_day is not None and last_day > end_date:
        raise ValueError(
            f"{base} holds invoices created on {last_day}, after --end-date {end_date} (a day appended with "
            "--append-day?): the exports of the days after --end-date would repeat them. Nothing was written"
        )


def _changed_lines(
    picked: list[tuple[list[str], ScenarioChange | None]],
    transactions: list[str],
    rates: dict[str, str],
    seed: int,
    day: date,
) -> list[str]:
    """The day's new versions of the picked invoices: a scenario change as it is given, any other a
    status drawn from TRANSITIONS (the same draws for the same seed and day)."""
    rng = random.Random(f"change-rows:{seed}:{day}")
    changed = []
    for transaction, (fields, change) in zip(transactions, picked, strict=True):
        if change is None:
            options = TRANSITIONS[fields[_STATUS]]
            new_status = rng.choices(list(options), list(options.values()))[0]
            with_payment = new_status in WITH_PAYMENT
        else:
            new_status, with_payment = change.new_status, change.with_payment_amount
        changed.append(_changed_line(fields, new_status, with_payment, rates, rng, transaction))
    return changed


def _pick_changes(
    lines: Iterator[bytes],
    size: int,
    seed: int,
    day: date,
    scenario_orgs: set[bytes],
    targets: dict[tuple[str, str, str, str], ScenarioChange],
) -> list[tuple[list[str], ScenarioChange | None]]:
    """The invoices changing on `day`, in stream order: sampled ones and the scenario's (popped)."""
    sampler = _ChangeSampler(size, _sample_key(seed, day))
    found: list[tuple[int, bytes, ScenarioChange]] = []
    for position, line in enumerate(lines):
        try:
            invoice_id, _, _, organization, _, status, _ = line.split(b",", 6)
        except ValueError:
            raise ValueError(f"invoice row {position + 1} has fewer than 14 fields: {line[:200]!r}") from None
        if organization in scenario_orgs:
            if targets:
                fields = line.decode().split(",")
                key = (fields[_ORGANIZATION], fields[_CREATED_AT][:10], fields[_STATUS], fields[_AMOUNT])
                if key in targets:
                    found.append((position, line, targets.pop(key)))
            continue  # their balances stay exactly as the scenario writes them
        if status in _CHANGING:
            try:
                sampler.offer(position, invoice_id, line)
            except ValueError:
                raise ValueError(
                    f"invoice row {position + 1}: INVOICE_ID is not an integer: {line[:200]!r}"
                ) from None
    picked = [(position, line, None) for position, line in sampler.entries()] + found
    return [
        (line.decode().split(","), change) for _, line, change in sorted(picked, key=lambda item: item[0])
    ]
