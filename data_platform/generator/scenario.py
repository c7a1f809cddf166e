"""Hand-written scenario organizations whose balances are exact, so the demo's alerts are known in advance.

SCENARIO writes the latest day of the base files (--end-date); NEXT_DAY_SCENARIO changes the status of some
of its invoices in the first dated export after it (see exports.py).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta

from data_platform.generator.values import COUNTRIES, NS_SCENARIO, IdMaker, name_hash, timestamp_with_fraction


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


@dataclass(frozen=True)
class ScenarioChange:
    """A new status for one SCENARIO invoice, in the first dated export after the base files."""

    organization: str  # a SCENARIO organization's name
    invoice: ScenarioInvoice  # which of its invoices, as SCENARIO writes it
    new_status: str
    with_payment_amount: bool  # PAYMENT_AMOUNT = AMOUNT in the new version (else empty)
    expectation: str  # what the export day shows (default rules, ledger semantics)


def _change(
    organization: str, days: int, status: str, amount: str, new_status: str, paid: bool, expectation: str
) -> ScenarioChange:
    by_name = {org.name: org for org in SCENARIO}
    (invoice,) = [
        i
        for i in by_name[organization].invoices
        if (i.days_before_end, i.status, i.amount) == (days, status, amount)
    ]
    return ScenarioChange(organization, invoice, new_status, paid, expectation)


# Only older invoices change, and these organizations never get new invoices: whatever moves their
# balance on the export day is a payment, a cancellation or a status without balance effect.
NEXT_DAY_SCENARIO: tuple[ScenarioChange, ...] = (
    _change(
        "settled_today", 12, "open", "2000.00", "paid", True,
        "2000 -> 0: its only open invoice paid, -100%, alert",
    ),
    _change(
        "exactly_half", 15, "pending", "2000.00", "cancelled", False,
        "3000 -> 1000: an older invoice cancelled, -66.67%, alert",
    ),
    _change(
        "small_rise", 0, "open", "1000.00", "paid", True,
        "11000 -> 10000: yesterday's invoice paid, -9.09%, no alert",
    ),
    _change(
        "just_below_half", 9, "open", "1000.00", "processing", False,
        "1499.99 -> 1499.99: payment in flight without an amount yet, a change that moves nothing, no alert",
    ),
)  # fmt: skip


def scenario_organization_ids(seed: int) -> dict[str, int]:
    """Organization id of each scenario organization for `seed` (stable across sizes)."""
    ids = IdMaker(seed)
    return {org.name: ids.one(NS_SCENARIO | position) for position, org in enumerate(SCENARIO)}


def scenario_by_day(seed: int, days: int) -> dict[int, list[tuple[int, ScenarioInvoice]]]:
    """Day index -> (organization id, invoice); events older than the history move to its first day."""
    by_day: dict[int, list[tuple[int, ScenarioInvoice]]] = {}
    for org_id, org in zip(scenario_organization_ids(seed).values(), SCENARIO, strict=True):
        for invoice in org.invoices:
            day = days - 1 - min(invoice.days_before_end, days - 1)
            by_day.setdefault(day, []).append((org_id, invoice))
    return by_day


def scenario_organization_rows(seed: int, first_day: date, days: int) -> Iterator[str]:
    rng = random.Random(f"scenario-rows:{seed}")
    for org_id, org in zip(scenario_organization_ids(seed).values(), SCENARIO, strict=True):
        if not org.in_file:
            continue
        first = first_day + timedelta(
            days=days - 1 - min(max(i.days_before_end for i in org.invoices), days - 1)
        )
        created = timestamp_with_fraction(rng, first - timedelta(days=rng.randrange(1, 90)))
        country = name_hash(rng.choice(list(COUNTRIES)))
        yield f"{org_id},{first.isoformat()},{first.isoformat()},{country},{rng.randrange(1, 20)},{created}"
