"""The organizations: Zipf weights, first active days, orphans, and their organizations.csv rows."""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta

from data_platform.generator.values import (
    COUNTRIES,
    NS_ORGANIZATION,
    IdMaker,
    name_hash,
    timestamp_with_fraction,
)


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


class OrganizationPicker:
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
        yield f"{org.id},{first},{last},{country},{contracts},{timestamp_with_fraction(rng, created)}"
