"""The shared vocabulary of the generated files: headers, ids, statuses, currencies, FX rates, amounts."""

from __future__ import annotations

import hashlib
import math
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta

from data_platform.paths import dbt_project_var
from data_platform.raw_tables import INVOICES, ORGANIZATIONS

# The headers the loader checks, from the one place that defines the raw columns.
INVOICES_HEADER = INVOICES.csv_header
ORGANIZATIONS_HEADER = ORGANIZATIONS.csv_header
# the hash of an empty value, written for a null parent or transaction (staging turns it into null)
SENTINEL = str(dbt_project_var("empty_hash_sentinel"))

DEFAULT_END_DATE = date(2024, 6, 28)
DEFAULT_DAYS = 1096  # three years
# Organizations are created up to 400 days before the first day, and dates are computed a few days past
# the last one: this margin keeps every date the generator computes inside Python's years 1-9999.
_DATE_MARGIN = timedelta(days=400)
FIRST_DAY_MIN = date.min + _DATE_MARGIN
LAST_DAY_MAX = date.max - _DATE_MARGIN


def check_dates(end_date: date, days: int, later_days: int = 0) -> None:
    """Refuse, before anything is written, the days --end-date, --days and the later days imply when a
    date of the run would fall outside the calendar (OverflowError midway otherwise)."""
    first = end_date.toordinal() - (days - 1)
    last = end_date.toordinal() + max(0, later_days)
    if first < FIRST_DAY_MIN.toordinal() or last > LAST_DAY_MAX.toordinal():
        described = f"--end-date {end_date} with --days {days}" + (
            f" and {later_days} later days" if later_days > 0 else ""
        )
        raise ValueError(
            f"{described} goes past the dates the generator can write: its days must lie between "
            f"{FIRST_DAY_MIN} and {LAST_DAY_MAX}"
        )


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
# statuses of an invoice whose payment was attempted: it has a transaction, a payment currency and method
PAYMENT_ATTEMPTED = frozenset({"paid", "processing", "refunded", "failed"})


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


def timestamp_with_fraction(rng: random.Random, day: date) -> str:
    """CREATED_DATE style: UTC, 0 to 6 fractional digits."""
    clock = f"{day.isoformat()}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}"
    digits = rng.choice((0, 0, 1, 2, 3, 3, 6, 6, 6))
    return f"{clock}.{rng.randrange(10**digits):0{digits}d}Z" if digits else f"{clock}Z"


def amount_strings(cents: int) -> tuple[str, str]:
    """AMOUNT with 2 places and the same value as PAYMENT_AMOUNT with 0-2 places (100, 100.5, 100.25)."""
    units, rest = divmod(cents, 100)
    amount = f"{units}.{rest:02d}"
    if rest == 0:
        return amount, str(units)
    if rest % 10 == 0:
        return amount, f"{units}.{rest // 10}"
    return amount, amount


def payment_method(rng: random.Random, currency: str) -> str:
    if currency == "USDC":
        return "crypto"
    methods = {"card": 55, "bank_transfer": 25, "paypal": 6, "wire": 4}
    if currency == "EUR":
        methods["sepa_debit"] = 20
    if currency == "USD":
        methods["ach"] = 15
    return rng.choices(list(methods), list(methods.values()))[0]


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
