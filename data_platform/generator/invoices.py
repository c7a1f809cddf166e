"""The base invoices.csv: random invoices built in batches from string pools, plus the scenario's.

Speed: rows are built in batches from precomputed string pools indexed by random bytes, so no
per-row number formatting is needed except the invoice id. Memory stays flat: at most BATCH_ROWS
rows exist at a time.
"""

from __future__ import annotations

import filecmp
import math
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from itertools import chain, cycle, islice
from pathlib import Path

from data_platform.exports import EXPORTS_FOLDER
from data_platform.generator.files import staged, write_chunks
from data_platform.generator.organizations import (
    Organization,
    OrganizationPicker,
    build_organizations,
    organization_rows,
)
from data_platform.generator.scenario import (
    SCENARIO,
    SCENARIO_ROWS,
    ScenarioInvoice,
    scenario_by_day,
    scenario_organization_rows,
)
from data_platform.generator.values import (
    APPEND_DAY_SHIFT,
    CURRENCIES,
    DEFAULT_DAYS,
    DEFAULT_END_DATE,
    INVOICE_TYPES,
    INVOICES_HEADER,
    NS_INVOICE,
    NS_SCENARIO_TRANSACTION,
    NS_TRANSACTION,
    ORGANIZATIONS_HEADER,
    PAYMENT_ATTEMPTED,
    SENTINEL,
    STATUS_MIX,
    Currency,
    IdMaker,
    amount_strings,
    check_dates,
    fx_rates,
    name_hash,
    payment_method,
)

BATCH_ROWS = 50_000  # upper bound on rows held in memory at once
ORPHAN_SHARE = 0.10  # share of random invoice rows whose organization is not in organizations.csv

# Pools hold 2**bits entries, so the top bits of a 16-bit random draw index them. They stay small
# (<= 4096 strings) so the hot loop's working set fits the CPU cache: with 65536-string pools the same
# loop runs at half the speed.
_PROFILE_BITS = 11  # distinct (type, status, currency, payment columns) combinations per run
_POOL_BITS = 12  # parent slots per batch, clock pools
_AMOUNT_BITS = 10  # price points per currency
_PROFILES, _POOL, _AMOUNTS = 1 << _PROFILE_BITS, 1 << _POOL_BITS, 1 << _AMOUNT_BITS


def _amount_pools(rng: random.Random, currency: Currency) -> tuple[list[str], list[str]]:
    """'AMOUNT,PAYMENT_AMOUNT' pairs for one currency: with a payment amount and without one."""
    with_payment, without = [], []
    for _ in range(_AMOUNTS):
        usd = min(250_000.0, max(1.0, rng.lognormvariate(math.log(180), 1.3)))
        value = usd * currency.rate
        if currency.decimals == 0 or rng.random() < 0.25:
            value = round(value)  # whole-unit prices are common
        amount, payment = amount_strings(max(1, round(value * 100)))
        with_payment.append(f"{amount},{payment}")
        without.append(f"{amount},")
    return with_payment, without


@dataclass(frozen=True)
class _Profile:
    """The categorical columns of an invoice and which optional columns it fills."""

    middle: str  # TYPE,STATUS,CURRENCY,PAYMENT_CURRENCY,PAYMENT_METHOD
    currency: str
    payment_currency: str  # "" = null
    has_payment_amount: bool
    has_transaction: bool
    often_has_parent: bool


def _profile(rng: random.Random, status: str) -> _Profile:
    currency = rng.choices([c.code for c in CURRENCIES], [c.weight for c in CURRENCIES])[0]
    invoice_type = rng.choices(list(INVOICE_TYPES), list(INVOICE_TYPES.values()))[0]
    if status == "credited" and rng.random() < 0.5:
        invoice_type = "adjustment"
    payment_currency = method = ""
    has_payment_amount = has_transaction = False
    if status in PAYMENT_ATTEMPTED:
        payment_currency = currency if rng.random() < 0.85 else "USD"
        method = payment_method(rng, payment_currency)
        has_transaction = True
        chance = {"paid": 0.85, "processing": 0.6, "refunded": 0.9, "failed": 0.0}[status]
        has_payment_amount = rng.random() < chance
    elif status in ("open", "pending", "awaiting_payment"):
        if rng.random() < 0.3:
            payment_currency = currency
        if rng.random() < 0.5:
            method = payment_method(rng, currency)  # a payment method on file
    middle = f"{name_hash(invoice_type)},{status},{currency},{payment_currency},{method}"
    return _Profile(
        middle,
        currency,
        payment_currency,
        has_payment_amount,
        has_transaction,
        status in ("credited", "refunded"),
    )


def _profiles(rng: random.Random) -> list[_Profile]:
    """_PROFILES profiles whose status counts follow STATUS_MIX exactly (every status at least once)."""
    counts = {status: max(1, int(share * _PROFILES)) for status, share in STATUS_MIX.items()}
    counts["paid"] += _PROFILES - sum(counts.values())
    return [_profile(rng, status) for status, count in counts.items() for _ in range(count)]


def _clock_pools(rng: random.Random) -> tuple[list[str], list[str]]:
    """'HH:MM:' (busier in European and American working hours, UTC) and 'SS.mmmZ' pools."""
    hour_weights = [2, 1, 1, 1, 1, 2, 4, 7, 9, 10, 10, 10, 10, 11, 12, 12, 11, 9, 7, 6, 5, 4, 3, 2]
    minutes = [[f"{hour:02d}:{minute:02d}:" for minute in range(60)] for hour in range(24)]
    hours = rng.choices(range(24), hour_weights, k=_POOL)
    return (
        [minutes[hour][rng.randrange(60)] for hour in hours],
        [f"{rng.randrange(60):02d}.{rng.randrange(1000):03d}Z" for _ in range(_POOL)],
    )


class InvoiceRows:
    """Builds invoice lines in batches from pools fixed by the seed."""

    def __init__(self, seed: int, organizations: list[Organization]) -> None:
        pool_rng = random.Random(f"pools:{seed}")
        self.ids = IdMaker(seed)
        profiles = _profiles(pool_rng)
        amounts = {c.code: _amount_pools(pool_rng, c) for c in CURRENCIES}
        # columns of the profiles, so per-batch tuples are zipped in C
        self.middles = [p.middle for p in profiles]
        self.amounts = [amounts[p.currency][0 if p.has_payment_amount else 1] for p in profiles]
        self.has_transaction = [int(p.has_transaction) for p in profiles]
        self.often_has_parent = [int(p.often_has_parent) for p in profiles]
        # FX columns depend on the (currency, payment currency) pair only: few distinct ones
        self.fx_pairs = sorted({(p.currency, p.payment_currency) for p in profiles})
        self.fx_pair_of = [self.fx_pairs.index((p.currency, p.payment_currency)) for p in profiles]
        self.minutes, self.seconds = _clock_pools(pool_rng)
        self.in_file = OrganizationPicker([o for o in organizations if o.in_file])
        self.orphans = OrganizationPicker([o for o in organizations if not o.in_file])
        self.orphan_threshold = round(ORPHAN_SHARE * 65536)
        # parents are invoices of the previous batch: 4% of rows, 70% for credited and refunded ones;
        # the lists live across batches, only their heads are refilled
        self.parents = ([SENTINEL] * _POOL, [SENTINEL] * _POOL)
        self.parent_slots = (_POOL // 25, _POOL * 7 // 10)

    def day_fx(self, rates: dict[str, str]) -> list[str]:
        """'FX_RATE,FX_RATE_PAYMENT' of each profile on one day."""
        pairs = [f"{rates[currency]},{rates.get(payment, '')}" for currency, payment in self.fx_pairs]
        return list(map(pairs.__getitem__, self.fx_pair_of))

    def batch(
        self, rng: random.Random, counter: int, count: int, day: int, day_prefix: str, fx: list[str]
    ) -> list[str]:
        """`count` random invoice lines of one day, ids from `counter` on."""
        ids = self.ids.strings(NS_INVOICE | counter, count)
        # this batch's transactions: about three invoices share one
        tx_count = max(1, count // 3)
        transactions = ([SENTINEL] * tx_count, self.ids.strings(NS_TRANSACTION | counter, tx_count))
        parents = self.parents
        day_profiles = list(
            zip(
                self.middles,
                self.amounts,
                fx,
                map(transactions.__getitem__, self.has_transaction),
                map(parents.__getitem__, self.often_has_parent),
                strict=True,
            )
        )
        # 20 random bytes per row: seven 16-bit numbers, then a 32-bit one for the organization
        random_bytes = rng.randbytes(20 * count)
        draws = memoryview(random_bytes).cast("H")
        organizations = self._organizations(
            draws[6::10].tolist(), memoryview(random_bytes).cast("I")[4::5], day
        )
        minutes, seconds = self.minutes, self.seconds
        # a pool of 2**bits entries is indexed by the top bits of a 16-bit draw
        profile_shift, pool_shift, amount_shift = 16 - _PROFILE_BITS, 16 - _POOL_BITS, 16 - _AMOUNT_BITS
        lines = [
            f"{i},{parent_pool[r >> pool_shift]},{tx_pool[(t * tx_count) >> 16]},{org},{middle},"
            f"{amount_pool[a >> amount_shift]},{fx_pair},"
            f"{day_prefix}{minutes[m >> pool_shift]}{seconds[s >> pool_shift]}"
            for i, (middle, amount_pool, fx_pair, tx_pool, parent_pool), a, t, r, m, s, org in zip(
                ids,
                [day_profiles[x >> profile_shift] for x in draws[0::10].tolist()],
                draws[1::10].tolist(),
                draws[2::10].tolist(),
                draws[3::10].tolist(),
                draws[4::10].tolist(),
                draws[5::10].tolist(),
                organizations,
                strict=True,
            )
        ]
        for pool, slots in zip(parents, self.parent_slots, strict=True):
            pool[:slots] = islice(cycle(ids), slots)  # parents for the next batch
        return lines

    def _organizations(self, coins: list[int], positions: memoryview, day: int) -> list[str]:
        """Organization id of each row: an orphan with ORPHAN_SHARE, else a weighted active one."""
        in_file, orphans = self.in_file.table, self.orphans.table
        in_file_len, orphans_len = self.in_file.active(day), self.orphans.active(day)
        threshold = self.orphan_threshold
        return [
            orphans[(x * orphans_len) >> 32] if coin < threshold else in_file[(x * in_file_len) >> 32]
            for coin, x in zip(coins, positions.tolist(), strict=True)
        ]

    def scenario_line(
        self,
        rng: random.Random,
        counter: int,
        org_id: int,
        invoice: ScenarioInvoice,
        day_prefix: str,
        rates: dict[str, str],
    ) -> str:
        """One hand-written scenario invoice, formatted like the random ones."""
        fx = rates[invoice.currency]
        units, cents = invoice.amount.split(".")
        amount, payment = amount_strings(int(units) * 100 + int(cents))
        if not invoice.with_payment_amount:
            payment = ""
        if invoice.status in PAYMENT_ATTEMPTED:
            transaction = str(self.ids.one(NS_SCENARIO_TRANSACTION | counter))
            pay_currency, method, pay_fx = invoice.currency, "card", fx
        else:
            transaction, pay_currency, method, pay_fx = SENTINEL, "", "", ""
        return (
            f"{self.ids.one(counter)},{SENTINEL},{transaction},{org_id},{name_hash('one_off')},{invoice.status},"
            f"{invoice.currency},{pay_currency},{method},{amount},{payment},"
            f"{fx},{pay_fx},{day_prefix}{rng.choice(self.minutes)}{rng.choice(self.seconds)}"
        )


def _daily_counts(total: int, first_day: date, days: int) -> list[int]:
    """Split `total` rows over the days: growth, quiet weekends, month-start billing spikes."""
    weights = []
    for index in range(days):
        day = first_day + timedelta(days=index)
        weight = 0.35 + 0.65 * index / max(1, days - 1)
        weight *= (1.0, 1.0, 1.0, 1.0, 1.0, 0.45, 0.35)[day.weekday()]
        weights.append(weight * (2.5 if day.day == 1 else 1.0))
    scale = total / sum(weights)
    counts = [int(w * scale) for w in weights]
    # largest remainders get the rows left over, ties to the earlier day
    by_remainder = sorted(range(days), key=lambda i: (counts[i] - weights[i] * scale, i))
    for index in by_remainder[: total - sum(counts)]:
        counts[index] += 1
    return counts


@dataclass(frozen=True)
class GenerationStats:
    invoices: int
    organizations: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.invoices / self.seconds if self.seconds else float("inf")


def invoice_chunks(
    *,
    invoices: int,
    organizations: int,
    seed: int,
    end_date: date = DEFAULT_END_DATE,
    days: int = DEFAULT_DAYS,
    scenario: bool = True,
) -> Iterator[str]:
    """The invoices.csv body as text chunks of at most BATCH_ROWS lines, each ending with a newline."""
    check_sizes(invoices, organizations, days, scenario)
    check_dates(end_date, days)
    orgs = build_organizations(seed, organizations, days)
    return _invoice_chunks(seed, orgs, invoices=invoices, end_date=end_date, days=days, scenario=scenario)


def _invoice_chunks(
    seed: int, organizations: list[Organization], *, invoices: int, end_date: date, days: int, scenario: bool
) -> Iterator[str]:
    first_day = end_date - timedelta(days=days - 1)
    rows = InvoiceRows(seed, organizations)
    rng = random.Random(f"rows:{seed}")
    scenario_days = scenario_by_day(seed, days) if scenario else {}
    counts = _daily_counts(invoices - (SCENARIO_ROWS if scenario else 0), first_day, days)
    counter = 0
    for day, (count, rates) in enumerate(zip(counts, fx_rates(seed, days), strict=True)):
        day_prefix = f"{(first_day + timedelta(days=day)).isoformat()}T"
        fx = rows.day_fx(rates)
        for start in range(0, count, BATCH_ROWS):
            size = min(BATCH_ROWS, count - start)
            lines = rows.batch(rng, counter, size, day, day_prefix, fx)
            counter += size
            if start + size == count:  # the day's last batch carries its scenario invoices
                for org_id, invoice in scenario_days.pop(day, []):
                    lines.append(rows.scenario_line(rng, counter, org_id, invoice, day_prefix, rates))
                    counter += 1
            yield "\n".join(lines) + "\n"
        for org_id, invoice in scenario_days.pop(day, []):  # a day without random rows
            yield rows.scenario_line(rng, counter, org_id, invoice, day_prefix, rates) + "\n"
            counter += 1


def check_sizes(invoices: int, organizations: int, days: int, scenario: bool) -> None:
    if invoices < 0 or organizations < 1 or days < 1:
        raise ValueError("need --invoices >= 0, --organizations >= 1 and --days >= 1")
    if scenario and (invoices < SCENARIO_ROWS or days < 2):
        raise ValueError(
            f"the latest-day scenario needs --invoices >= {SCENARIO_ROWS} and --days >= 2; "
            "pass --no-scenario for smaller files"
        )


def generate(
    out_dir: Path,
    *,
    invoices: int,
    organizations: int,
    seed: int,
    end_date: date = DEFAULT_END_DATE,
    days: int = DEFAULT_DAYS,
    scenario: bool = True,
    exports_dir: Path | None = None,
) -> GenerationStats:
    """Write out_dir/organizations.csv and out_dir/invoices.csv.

    Both are written under temporary names and renamed into place once both are complete, so a failed or
    interrupted run leaves the previous pair as it was (and no out_dir it made). If exports_dir (default
    out_dir/exports) holds dated exports, the run is refused unless it rewrites the same bytes (the same
    options): those exports follow the old base.
    """
    check_sizes(invoices, organizations, days, scenario)
    check_dates(end_date, days)
    started = time.perf_counter()
    first_day = end_date - timedelta(days=days - 1)
    orgs = build_organizations(seed, organizations, days)
    finals = [out_dir / "organizations.csv", out_dir / "invoices.csv"]
    with staged(finals) as (organizations_path, invoices_path):
        organization_lines = organization_rows(seed, orgs, first_day, end_date)
        if scenario:
            organization_lines = chain(organization_lines, scenario_organization_rows(seed, first_day, days))
        write_chunks(organizations_path, ORGANIZATIONS_HEADER, (line + "\n" for line in organization_lines))
        write_chunks(
            invoices_path,
            INVOICES_HEADER,
            _invoice_chunks(seed, orgs, invoices=invoices, end_date=end_date, days=days, scenario=scenario),
        )
        exports = exports_dir if exports_dir is not None else out_dir / EXPORTS_FOLDER
        _check_exports_still_match(exports, out_dir, finals, [organizations_path, invoices_path])
    org_count = organizations + (sum(o.in_file for o in SCENARIO) if scenario else 0)
    return GenerationStats(invoices, org_count, time.perf_counter() - started)


def _holds_dated_exports(exports: Path) -> bool:
    """Whether `exports` is a folder with an entry other than dot names (temporaries, .DS_Store)."""
    return exports.is_dir() and any(not entry.name.startswith(".") for entry in exports.iterdir())


def _check_exports_still_match(exports: Path, out_dir: Path, finals: list[Path], written: list[Path]) -> None:
    """Refuse new base files while `exports` holds dated exports written after other ones (another --seed)."""
    if not _holds_dated_exports(exports):
        return
    for final, new in zip(finals, written, strict=True):
        if not final.is_file() or not filecmp.cmp(final, new, shallow=False):
            raise ValueError(
                f"{exports} holds dated exports that follow the base files already in {out_dir}; these "
                f"options write other base files, which those exports would no longer match. Nothing was "
                f"written: remove {exports} (or write to another --out) first"
            )


def later_day_chunks(
    seed: int, organizations: list[Organization], invoices: int, end_date: date, days: int, day_offset: int
) -> Iterator[str]:
    """`invoices` random invoice lines dated end_date + day_offset, as chunks of at most BATCH_ROWS lines.

    Ids are numbered from day_offset << 40, so they never collide with the base file's (numbered
    0 .. N-1) nor with another later day's. The same day always gets the same rows, whether appended
    (--append-day) or written as a dated export (--next-days).
    """
    if not 1 <= day_offset < 1 << 20:
        raise ValueError("day_offset must be between 1 and 2**20 - 1")
    day = days - 1 + day_offset
    rates = next(r for index, r in enumerate(fx_rates(seed, day + 1)) if index == day)
    rows = InvoiceRows(seed, organizations)
    rng = random.Random(f"append:{seed}:{day_offset}")
    day_prefix = f"{(end_date + timedelta(days=day_offset)).isoformat()}T"
    fx = rows.day_fx(rates)
    counter = day_offset << APPEND_DAY_SHIFT
    for start in range(0, invoices, BATCH_ROWS):
        size = min(BATCH_ROWS, invoices - start)
        yield "\n".join(rows.batch(rng, counter + start, size, day, day_prefix, fx)) + "\n"


def append_day(
    out_dir: Path,
    *,
    invoices: int,
    organizations: int,
    seed: int,
    end_date: date = DEFAULT_END_DATE,
    days: int = DEFAULT_DAYS,
    day_offset: int = 1,
) -> GenerationStats:
    """Append `invoices` random rows dated end_date + day_offset to out_dir/invoices.csv.

    Pass the arguments the file was generated with, so the rows reference the same organizations
    and continue the FX history (see later_day_chunks for the ids); appending the same day_offset
    twice repeats its rows, ids included. organizations.csv is untouched.

    The rows go to a copy of the file (.invoices.csv.partial, beside it), renamed over it once complete:
    a failed or interrupted run leaves the file byte for byte as it was. The copy needs as much free disk
    as the file; other hard links to the old file keep the old contents.

    Refused while out_dir/exports holds dated exports (entries other than dot names): they follow the file
    as it is, and the loader dates the file by its latest day, which the appended day would make one of
    theirs or a later one.
    """
    if not 1 <= day_offset < 1 << 20:
        raise ValueError("day_offset must be between 1 and 2**20 - 1")
    check_sizes(invoices, organizations, days, scenario=False)
    check_dates(end_date, days, later_days=day_offset)
    path = out_dir / "invoices.csv"
    exports = out_dir / EXPORTS_FOLDER
    if _holds_dated_exports(exports):
        raise ValueError(
            f"{exports} holds dated exports that follow {path}; a day appended to it would date it (by its "
            f"latest day, as the loader does) to one of theirs or after them, and the set would no longer "
            f"load. Nothing was written: write later days as dated exports (--next-days), or remove "
            f"{exports} (or append in another --out) first"
        )
    with open(path, "rb") as existing:
        if existing.readline().rstrip(b"\r\n").decode() != INVOICES_HEADER:
            raise ValueError(f"{path} does not start with the invoices.csv header")
        existing.seek(-1, 2)
        needs_newline = existing.read(1) != b"\n"  # real files may end without one
    started = time.perf_counter()
    chunks = later_day_chunks(
        seed, build_organizations(seed, organizations, days), invoices, end_date, days, day_offset
    )
    with staged([path]) as (temporary,):
        shutil.copyfile(path, temporary)  # streamed by the kernel: real files are gigabytes
        with open(temporary, "a", encoding="utf-8", newline="", buffering=1 << 20) as out:
            if needs_newline:
                out.write("\n")
            for chunk in chunks:
                out.write(chunk)
        shutil.copymode(path, temporary)
    return GenerationStats(invoices, 0, time.perf_counter() - started)
