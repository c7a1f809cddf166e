"""Deterministic, streaming generator of demo invoices.csv and organizations.csv.

The files match the production format exactly (issue 2, section 1): no quoting, LF line ends, a header,
empty unquoted fields for nulls, signed 64-bit hash ids, the empty-value hash as sentinel in
PARENT_INVOICE_ID / TRANSACTION_ID, FX rates as currency units per 1 USD with 8 places.

Shape of the data (all driven by one seed, same arguments -> same bytes):
- organizations get Zipf weights (a few very large, a long tail) and a first active day, so the
  population grows over the history; about 10% of invoice rows go to orphan organization ids that are
  deliberately left out of organizations.csv;
- daily volume grows over the history, dips at weekends and spikes on the first of the month;
- statuses are dominated by `paid`, all 11 appear; some paid rows have no PAYMENT_AMOUNT;
- 26 currencies (USDC among them) whose FX rates follow a small mean-reverting daily random walk.

The scenario step (on by default, `--no-scenario` to drop it) adds a handful of dedicated organizations
with hand-written invoices (`SCENARIO`), so the latest day always has organizations whose balance moves
by >= 50%, some that move less, and some whose previous balance is zero. They take part of the
--invoices budget and never get random invoices, so their balances are exactly as written.

Speed: rows are built in batches from precomputed string pools indexed by random bytes, so no
per-row number formatting is needed except the invoice id. Memory stays flat: at most BATCH_ROWS
rows exist at a time.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import math
import random
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from itertools import cycle, islice
from pathlib import Path

from data_platform.raw_tables import INVOICES, ORGANIZATIONS

# The headers the loader checks, from the one place that defines the raw columns.
INVOICES_HEADER = INVOICES.csv_header
ORGANIZATIONS_HEADER = ORGANIZATIONS.csv_header
SENTINEL = "8817975702393619368"  # hash of the empty value: null parent / transaction

DEFAULT_END_DATE = date(2024, 6, 28)
DEFAULT_DAYS = 1096  # three years
BATCH_ROWS = 50_000  # upper bound on rows held in memory at once
ORPHAN_SHARE = 0.10  # share of random invoice rows whose organization is not in organizations.csv

# Share of each status among random invoices (sums to 1).
STATUS_MIX: dict[str, float] = {
    "paid": 0.70,
    "open": 0.06,
    "pending": 0.03,
    "awaiting_payment": 0.03,
    "processing": 0.02,
    "skipped": 0.02,
    "failed": 0.04,
    "unpayable": 0.01,
    "cancelled": 0.04,
    "refunded": 0.02,
    "credited": 0.03,
}
STATUSES = tuple(STATUS_MIX)


@dataclass(frozen=True)
class Currency:
    code: str
    rate: float  # units per 1 USD around the history
    weight: float  # share of invoices
    volatility: float  # daily sigma of the log rate (0 = pegged)
    decimals: int = 2  # 0 for currencies priced in whole units (amounts still written with 2 places)


CURRENCIES = (
    Currency("USD", 1.0, 40, 0.0),
    Currency("EUR", 0.92, 16, 0.004),
    Currency("GBP", 0.79, 7, 0.004),
    Currency("CAD", 1.36, 3, 0.003),
    Currency("AUD", 1.52, 3, 0.005),
    Currency("CHF", 0.88, 2, 0.004),
    Currency("JPY", 149.5, 2, 0.005, decimals=0),
    Currency("INR", 83.2, 3, 0.002),
    Currency("BRL", 4.97, 2, 0.008),
    Currency("MXN", 17.1, 2, 0.007),
    Currency("PLN", 4.02, 2, 0.005),
    Currency("SEK", 10.6, 1.5, 0.005),
    Currency("NOK", 10.7, 1, 0.006),
    Currency("DKK", 6.87, 1, 0.004),
    Currency("SGD", 1.35, 2, 0.002),
    Currency("HKD", 7.82, 1, 0.0003),
    Currency("AED", 3.6725, 1, 0.0),
    Currency("ZAR", 18.6, 1, 0.009),
    Currency("NGN", 790.0, 1, 0.012),
    Currency("KES", 150.0, 0.5, 0.006),
    Currency("TRY", 29.0, 0.5, 0.010),
    Currency("ILS", 3.7, 0.5, 0.005),
    Currency("PHP", 56.0, 0.5, 0.004),
    Currency("CZK", 22.8, 0.5, 0.005),
    Currency("KRW", 1320.0, 1, 0.005, decimals=0),
    Currency("USDC", 1.0, 2, 0.0002),
)
FX_REVERSION = 0.02  # pull of the log rate back to its base each day

INVOICE_TYPES = {"subscription": 0.55, "usage": 0.25, "one_off": 0.10, "setup_fee": 0.05, "adjustment": 0.05}
COUNTRIES = {
    "US": 30, "GB": 10, "DE": 8, "FR": 6, "NL": 4, "ES": 3, "IT": 3, "CA": 4, "AU": 3, "IN": 5, "BR": 4,
    "MX": 3, "JP": 2, "SG": 2, "CH": 2, "SE": 2, "PL": 2, "ZA": 2, "NG": 2, "KE": 1, "AE": 1, "IL": 1,
}  # fmt: skip

# Ids are a keyed 64-bit bijection of a counter, so they look like hashes and never collide.
# The counter's top bits name what is being numbered.
_MASK64 = (1 << 64) - 1
_MUL1 = 0x9E3779B97F4A7C15
_MUL2 = 0xBF58476D1CE4E5B9
NS_INVOICE, NS_ORGANIZATION, NS_TRANSACTION, NS_SCENARIO, NS_SCENARIO_TRANSACTION = (
    ns << 60 for ns in range(5)
)
APPEND_DAY_SHIFT = 40  # appended day k numbers its invoices from k << 40 (main file: 0 .. N-1)

# Pools hold 2**bits entries, so the top bits of a 16-bit random draw index them. They stay small
# (<= 4096 strings) so the hot loop's working set fits the CPU cache: with 65536-string pools the same
# loop runs at half the speed.
_PROFILE_BITS = 11  # distinct (type, status, currency, payment columns) combinations per run
_POOL_BITS = 12  # parent slots per batch, clock pools
_AMOUNT_BITS = 10  # price points per currency
_PROFILES, _POOL, _AMOUNTS = 1 << _PROFILE_BITS, 1 << _POOL_BITS, 1 << _AMOUNT_BITS


def name_hash(name: str) -> int:
    """A stable signed int64 hash for categorical values (TYPE, LEGAL_ENTITY_COUNTRY_CODE)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little", signed=True)


class IdMaker:
    """Signed int64 ids as a keyed bijection of counters: unique by construction, hash-looking."""

    def __init__(self, seed: int) -> None:
        self.key = int.from_bytes(hashlib.blake2b(f"ids:{seed}".encode(), digest_size=8).digest(), "little")

    def one(self, counter: int) -> int:
        z = ((counter ^ self.key) * _MUL1) & _MASK64
        z = ((z ^ (z >> 32)) * _MUL2) & _MASK64
        z ^= z >> 29
        return z - (1 << 64) if z >> 63 else z

    def strings(self, start: int, count: int) -> list[str]:
        """Ids of counters start .. start+count-1, formatted; vectorised for the hot path."""
        key = self.key
        zs = [((c ^ key) * _MUL1) & _MASK64 for c in range(start, start + count)]
        zs = [((z ^ (z >> 32)) * _MUL2) & _MASK64 for z in zs]
        # pack unsigned, unpack signed: the two's complement conversion happens in C
        packed = struct.pack(f"<{count}Q", *[z ^ (z >> 29) for z in zs])
        return list(map(str, struct.unpack(f"<{count}q", packed)))


# --- organizations -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Organization:
    id: int
    start_day: int  # first day (index into the history) it may get random invoices
    weight: float
    in_file: bool  # False: an orphan id, absent from organizations.csv


def _zipf_weights(rng: random.Random, count: int, exponent: float = 1.05) -> list[float]:
    ranks = list(range(1, count + 1))
    rng.shuffle(ranks)
    return [rank**-exponent for rank in ranks]


def build_organizations(seed: int, organizations: int, days: int) -> list[Organization]:
    """The random organizations (in the file) followed by the orphans; deterministic per seed."""
    rng = random.Random(f"organizations:{seed}")
    ids = IdMaker(seed)
    orphans = max(1, round(organizations * 0.15))
    result: list[Organization] = []
    for in_file, count in ((True, organizations), (False, orphans)):
        for position, weight in enumerate(_zipf_weights(rng, count)):
            # a third is active from the start, the rest join over the history; one always from day 0
            start = 0 if position == 0 or rng.random() < 0.35 else rng.randrange(days)
            result.append(Organization(ids.one(NS_ORGANIZATION | len(result)), start, weight, in_file))
    return result


class _OrganizationPicker:
    """Weighted organization ids, active ones as a prefix of a table sorted by start day."""

    def __init__(self, organizations: list[Organization]) -> None:
        ordered = sorted(organizations, key=lambda o: o.start_day)
        total = sum(o.weight for o in ordered)
        size = max(65536, 8 * len(ordered))
        self.table: list[str] = []
        self.starts: list[int] = []
        self.ends: list[int] = []
        for org in ordered:
            self.table.extend([str(org.id)] * max(1, round(org.weight / total * size)))
            self.starts.append(org.start_day)
            self.ends.append(len(self.table))

    def active(self, day: int) -> int:
        """Length of the table prefix holding the organizations active on `day`."""
        return self.ends[bisect.bisect_right(self.starts, day) - 1]


def _timestamp_with_fraction(rng: random.Random, day: date) -> str:
    """CREATED_DATE style: UTC, 0 to 6 fractional digits."""
    clock = f"{day.isoformat()}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}"
    digits = rng.choice((0, 0, 1, 2, 3, 3, 6, 6, 6))
    return f"{clock}.{rng.randrange(10**digits):0{digits}d}Z" if digits else f"{clock}Z"


def organization_rows(
    seed: int, organizations: list[Organization], first_day: date, end_date: date
) -> Iterator[str]:
    """organizations.csv lines (without newline) of the organizations that are in the file."""
    rng = random.Random(f"organization-rows:{seed}")
    countries = [str(name_hash(code)) for code in COUNTRIES]
    country_weights = list(COUNTRIES.values())
    for org in organizations:
        if not org.in_file:
            continue
        start = first_day + timedelta(days=org.start_day)
        created = start - timedelta(days=rng.randrange(400))
        if rng.random() < 0.08:
            first = last = ""  # never paid
        else:
            first_date = min(end_date, start + timedelta(days=rng.randrange(15)))
            last_gap = min((end_date - first_date).days, int(rng.expovariate(1 / 20)))
            first, last = first_date.isoformat(), (end_date - timedelta(days=last_gap)).isoformat()
        contracts = min(5000, int(rng.paretovariate(1.2)))
        country = rng.choices(countries, country_weights)[0]
        yield f"{org.id},{first},{last},{country},{contracts},{_timestamp_with_fraction(rng, created)}"


# --- invoices: pools -----------------------------------------------------------------------------


def _amount_strings(cents: int) -> tuple[str, str]:
    """AMOUNT with 2 places and the same value as PAYMENT_AMOUNT with 0-2 places (100, 100.5, 100.25)."""
    units, rest = divmod(cents, 100)
    amount = f"{units}.{rest:02d}"
    if rest == 0:
        return amount, str(units)
    if rest % 10 == 0:
        return amount, f"{units}.{rest // 10}"
    return amount, amount


def _amount_pools(rng: random.Random, currency: Currency) -> tuple[list[str], list[str]]:
    """'AMOUNT,PAYMENT_AMOUNT' pairs for one currency: with a payment amount and without one."""
    with_payment, without = [], []
    for _ in range(_AMOUNTS):
        usd = min(250_000.0, max(1.0, rng.lognormvariate(math.log(180), 1.3)))
        value = usd * currency.rate
        if currency.decimals == 0 or rng.random() < 0.25:
            value = round(value)  # whole-unit prices are common
        amount, payment = _amount_strings(max(1, round(value * 100)))
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


def _payment_method(rng: random.Random, currency: str) -> str:
    if currency == "USDC":
        return "crypto"
    methods = {"card": 55, "bank_transfer": 25, "paypal": 6, "wire": 4}
    if currency == "EUR":
        methods["sepa_debit"] = 20
    if currency == "USD":
        methods["ach"] = 15
    return rng.choices(list(methods), list(methods.values()))[0]


def _profile(rng: random.Random, status: str) -> _Profile:
    currency = rng.choices([c.code for c in CURRENCIES], [c.weight for c in CURRENCIES])[0]
    invoice_type = rng.choices(list(INVOICE_TYPES), list(INVOICE_TYPES.values()))[0]
    if status == "credited" and rng.random() < 0.5:
        invoice_type = "adjustment"
    payment_currency = method = ""
    has_payment_amount = has_transaction = False
    if status in ("paid", "processing", "refunded", "failed"):
        payment_currency = currency if rng.random() < 0.85 else "USD"
        method = _payment_method(rng, payment_currency)
        has_transaction = True
        chance = {"paid": 0.85, "processing": 0.6, "refunded": 0.9, "failed": 0.0}[status]
        has_payment_amount = rng.random() < chance
    elif status in ("open", "pending", "awaiting_payment"):
        if rng.random() < 0.3:
            payment_currency = currency
        if rng.random() < 0.5:
            method = _payment_method(rng, currency)  # a payment method on file
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


def fx_rates(seed: int, days: int) -> Iterator[dict[str, str]]:
    """Per day, currency -> FX_RATE string (units per USD, 8 places); USD is exactly 1."""
    rng = random.Random(f"fx:{seed}")
    logs = {c.code: 0.0 for c in CURRENCIES}
    for _ in range(days):
        rates = {}
        for currency in CURRENCIES:
            if currency.volatility:
                logs[currency.code] = logs[currency.code] * (1 - FX_REVERSION) + rng.gauss(
                    0, currency.volatility
                )
            rates[currency.code] = f"{currency.rate * math.exp(logs[currency.code]):.8f}"
        yield rates


# --- invoices: the scenario of the latest day ----------------------------------------------------


@dataclass(frozen=True)
class ScenarioInvoice:
    days_before_end: int  # 0 = the latest day
    status: str
    currency: str
    amount: str  # exact, 2 places
    with_payment_amount: bool = False


@dataclass(frozen=True)
class ScenarioOrganization:
    name: str
    in_file: bool
    invoices: tuple[ScenarioInvoice, ...]
    expectation: str  # what the latest day shows (default balance rules)


def _inv(days: int, status: str, amount: str, currency: str = "USD", paid: bool = False) -> ScenarioInvoice:
    return ScenarioInvoice(days, status, currency, amount, paid)


SCENARIO: tuple[ScenarioOrganization, ...] = (
    ScenarioOrganization(
        "surge",
        True,
        (_inv(40, "open", "1000.00"), _inv(40, "paid", "250.00", paid=True), _inv(0, "open", "800.00")),
        "1000 -> 1800: +80%, alert",
    ),
    ScenarioOrganization(
        "exactly_half",
        True,
        (_inv(15, "pending", "2000.00"), _inv(0, "awaiting_payment", "1000.00")),
        "2000 -> 3000: exactly +50%, alert (the rule is >=)",
    ),
    ScenarioOrganization(
        "just_below_half",
        True,
        (_inv(9, "open", "1000.00"), _inv(0, "open", "499.99")),
        "1000 -> 1499.99: +49.999%, no alert",
    ),
    ScenarioOrganization(
        "credit_drop",
        True,
        (_inv(20, "open", "3000.00"), _inv(0, "credited", "2400.00")),
        "3000 -> 600: -80%, alert",
    ),
    ScenarioOrganization(
        "eur_surge",
        True,
        (
            _inv(5, "open", "400.00", "EUR"),
            _inv(1, "failed", "100.00", "EUR"),
            _inv(0, "unpayable", "300.00", "EUR"),
        ),
        "EUR 500 -> 800 at daily FX rates: about +60%, alert",
    ),
    ScenarioOrganization(
        "orphan_surge",
        False,
        (_inv(100, "open", "500.00"), _inv(0, "open", "1500.00")),
        "500 -> 2000: +300% for an organization missing from organizations.csv, alert",
    ),
    ScenarioOrganization(
        "negative_previous",
        True,
        (_inv(30, "credited", "1000.00"), _inv(0, "open", "600.00")),
        "-1000 -> -400: +60% of |previous|, alert",
    ),
    ScenarioOrganization(
        "paid_without_payment_amount",
        True,
        (_inv(7, "open", "100.00"), _inv(0, "paid", "80.00")),
        "100 -> 180: +80%, a paid invoice with empty PAYMENT_AMOUNT is still owed, alert",
    ),
    ScenarioOrganization(
        "small_rise",
        True,
        (_inv(60, "open", "10000.00"), _inv(0, "open", "1000.00"), _inv(0, "cancelled", "9999.00")),
        "10000 -> 11000: +10% (the cancelled invoice counts 0), no alert",
    ),
    ScenarioOrganization(
        "small_drop",
        True,
        (_inv(60, "pending", "4000.00"), _inv(0, "credited", "1000.00")),
        "4000 -> 3000: -25%, no alert",
    ),
    ScenarioOrganization(
        "settled_today",
        True,
        (
            _inv(12, "open", "2000.00"),
            _inv(0, "paid", "5000.00", paid=True),
            _inv(0, "refunded", "700.00", paid=True),
        ),
        "2000 -> 2000: invoices that day but no move, no alert",
    ),
    ScenarioOrganization(
        "first_invoice_today",
        True,
        (_inv(0, "open", "750.00"),),
        "0 -> 750: first invoice ever, previous balance 0, ratio null, no alert",
    ),
    ScenarioOrganization(
        "back_from_zero",
        True,
        (_inv(50, "open", "1200.00"), _inv(20, "credited", "1200.00"), _inv(0, "open", "300.00")),
        "0 -> 300 after a full credit: previous balance 0, ratio null, no alert",
    ),
)
SCENARIO_ROWS = sum(len(org.invoices) for org in SCENARIO)


def scenario_organization_ids(seed: int) -> dict[str, int]:
    """Organization id of each scenario organization for `seed` (stable across sizes)."""
    ids = IdMaker(seed)
    return {org.name: ids.one(NS_SCENARIO | position) for position, org in enumerate(SCENARIO)}


def _scenario_by_day(seed: int, days: int) -> dict[int, list[tuple[int, ScenarioInvoice]]]:
    """Day index -> (organization id, invoice); events older than the history move to its first day."""
    by_day: dict[int, list[tuple[int, ScenarioInvoice]]] = {}
    for org_id, org in zip(scenario_organization_ids(seed).values(), SCENARIO, strict=True):
        for invoice in org.invoices:
            day = days - 1 - min(invoice.days_before_end, days - 1)
            by_day.setdefault(day, []).append((org_id, invoice))
    return by_day


def _scenario_organization_rows(seed: int, first_day: date, days: int) -> Iterator[str]:
    rng = random.Random(f"scenario-rows:{seed}")
    for org_id, org in zip(scenario_organization_ids(seed).values(), SCENARIO, strict=True):
        if not org.in_file:
            continue
        first = first_day + timedelta(
            days=days - 1 - min(max(i.days_before_end for i in org.invoices), days - 1)
        )
        created = _timestamp_with_fraction(rng, first - timedelta(days=rng.randrange(1, 90)))
        country = name_hash(rng.choice(list(COUNTRIES)))
        yield f"{org_id},{first.isoformat()},{first.isoformat()},{country},{rng.randrange(1, 20)},{created}"


# --- invoices: batches ---------------------------------------------------------------------------


class _InvoiceRows:
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
        self.in_file = _OrganizationPicker([o for o in organizations if o.in_file])
        self.orphans = _OrganizationPicker([o for o in organizations if not o.in_file])
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
        amount, payment = _amount_strings(int(units) * 100 + int(cents))
        if not invoice.with_payment_amount:
            payment = ""
        if invoice.status in ("paid", "processing", "refunded", "failed"):
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
    _check_sizes(invoices, organizations, days, scenario)
    orgs = build_organizations(seed, organizations, days)
    return _invoice_chunks(seed, orgs, invoices=invoices, end_date=end_date, days=days, scenario=scenario)


def _invoice_chunks(
    seed: int, organizations: list[Organization], *, invoices: int, end_date: date, days: int, scenario: bool
) -> Iterator[str]:
    first_day = end_date - timedelta(days=days - 1)
    rows = _InvoiceRows(seed, organizations)
    rng = random.Random(f"rows:{seed}")
    scenario_days = _scenario_by_day(seed, days) if scenario else {}
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


def _check_sizes(invoices: int, organizations: int, days: int, scenario: bool) -> None:
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
) -> GenerationStats:
    """Write out_dir/organizations.csv and out_dir/invoices.csv."""
    _check_sizes(invoices, organizations, days, scenario)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    first_day = end_date - timedelta(days=days - 1)
    orgs = build_organizations(seed, organizations, days)
    with open(out_dir / "organizations.csv", "w", encoding="utf-8", newline="") as out:
        out.write(ORGANIZATIONS_HEADER + "\n")
        for line in organization_rows(seed, orgs, first_day, end_date):
            out.write(line + "\n")
        if scenario:
            for line in _scenario_organization_rows(seed, first_day, days):
                out.write(line + "\n")
    with open(out_dir / "invoices.csv", "w", encoding="utf-8", newline="", buffering=1 << 20) as out:
        out.write(INVOICES_HEADER + "\n")
        for chunk in _invoice_chunks(
            seed, orgs, invoices=invoices, end_date=end_date, days=days, scenario=scenario
        ):
            out.write(chunk)
    org_count = organizations + (sum(o.in_file for o in SCENARIO) if scenario else 0)
    return GenerationStats(invoices, org_count, time.perf_counter() - started)


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
    and continue the FX history. Ids are numbered from day_offset << 40, so they never collide with
    the main file's (numbered 0 .. N-1) nor with another appended day's; appending the same day_offset
    twice repeats its rows, ids included. organizations.csv is untouched.
    """
    if not 1 <= day_offset < 1 << 20:
        raise ValueError("day_offset must be between 1 and 2**20 - 1")
    _check_sizes(invoices, organizations, days, scenario=False)
    path = out_dir / "invoices.csv"
    with open(path, "rb") as existing:
        if existing.readline().rstrip(b"\r\n").decode() != INVOICES_HEADER:
            raise ValueError(f"{path} does not start with the invoices.csv header")
        existing.seek(-1, 2)
        needs_newline = existing.read(1) != b"\n"  # real files may end without one
    started = time.perf_counter()
    day = days - 1 + day_offset
    rates = next(r for index, r in enumerate(fx_rates(seed, day + 1)) if index == day)
    rows = _InvoiceRows(seed, build_organizations(seed, organizations, days))
    rng = random.Random(f"append:{seed}:{day_offset}")
    day_prefix = f"{(end_date + timedelta(days=day_offset)).isoformat()}T"
    fx = rows.day_fx(rates)
    counter = day_offset << APPEND_DAY_SHIFT
    with open(path, "a", encoding="utf-8", newline="", buffering=1 << 20) as out:
        if needs_newline:
            out.write("\n")
        for start in range(0, invoices, BATCH_ROWS):
            size = min(BATCH_ROWS, invoices - start)
            out.write("\n".join(rows.batch(rng, counter + start, size, day, day_prefix, fx)) + "\n")
    return GenerationStats(invoices, 0, time.perf_counter() - started)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="data-platform-generate",
        description="Write deterministic demo invoices.csv and organizations.csv in the production format.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--invoices", type=int, default=25_000, help="invoice rows (default 25000)")
    parser.add_argument(
        "--organizations", type=int, default=400, help="rows of organizations.csv (random ones)"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--end-date", type=date.fromisoformat, default=DEFAULT_END_DATE, help="latest day, YYYY-MM-DD"
    )
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS, help="days of history ending at --end-date")
    parser.add_argument(
        "--no-scenario", dest="scenario", action="store_false", help="skip the latest-day scenario"
    )
    parser.add_argument(
        "--append-day",
        type=int,
        nargs="?",
        const=1,
        metavar="K",
        help="instead: append --invoices rows dated K days (default 1) after --end-date to OUT/invoices.csv; "
        "give the other options as for the original run",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.append_day is not None:
            stats = append_day(
                args.out,
                invoices=args.invoices,
                organizations=args.organizations,
                seed=args.seed,
                end_date=args.end_date,
                days=args.days,
                day_offset=args.append_day,
            )
        else:
            stats = generate(
                args.out,
                invoices=args.invoices,
                organizations=args.organizations,
                seed=args.seed,
                end_date=args.end_date,
                days=args.days,
                scenario=args.scenario,
            )
    except (ValueError, OSError) as error:
        print(f"data-platform-generate: {error}", file=sys.stderr)
        return 2
    if args.append_day is not None:
        day = args.end_date + timedelta(days=args.append_day)
        done = f"appended {stats.invoices:,} invoices dated {day} to {args.out / 'invoices.csv'}"
    else:
        done = f"wrote {stats.invoices:,} invoices and {stats.organizations:,} organizations to {args.out}"
    print(f"{done} in {stats.seconds:.1f}s ({stats.rows_per_second:,.0f} rows/s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
