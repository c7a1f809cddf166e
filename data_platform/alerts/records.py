"""What the alerts are made of: plain records and their vocabulary, with no database or HTTP code.

Messages and delivery depend on these records only; the queries (detect) and the ops tables
(store) produce them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

# alert kinds
BALANCE_CHANGE = "balance_change"
NEW_BALANCE = "new_balance"

# delivery states, per alert and destination
PENDING = "pending"  # recorded, never tried
SENT = "sent"  # the destination confirmed it: never sent again
FAILED = "failed"  # the destination refused it or could not be reached: nothing was accepted
UNKNOWN = "unknown"  # a request went out and no answer came back: it may have been accepted
STATUSES = (PENDING, SENT, FAILED, UNKNOWN)

# Where alerts go. Each destination keeps its own watermark and delivery state, so printing to
# the console never counts as a delivery to Slack.
SLACK = "slack"
CONSOLE = "console"
DESTINATIONS = (SLACK, CONSOLE)

# A message may reach the destination at most this many times: an attempt whose outcome is unknown
# counts as possibly delivered, and after this many such attempts the alert is not sent again.
MAX_UNCONFIRMED_ATTEMPTS = 2

MAX_DAYS_PER_MESSAGE = 20  # a backfill is split so one Slack message stays readable


@dataclass(frozen=True)
class Organization:
    """Context from marts.dim_organizations; None fields when unknown."""

    organization_id: int
    in_warehouse: bool  # False when dim_organizations has no row at all
    is_missing_from_organizations_file: bool | None = None
    count_total_contracts_active: int | None = None
    first_payment_date: date | None = None
    last_payment_date: date | None = None


@dataclass(frozen=True)
class Alert:
    organization_id: int
    balance_date: date
    alert_kind: str
    previous_balance_usd: Decimal
    balance_usd: Decimal
    balance_change_ratio: Decimal | None
    status: str = PENDING
    attempts: int = 0


@dataclass(frozen=True)
class Batch:
    """The alerts of one organization delivered as one message."""

    organization: Organization
    alerts: tuple[Alert, ...]


def batches(
    alerts: Iterable[Alert],
    organizations: Mapping[int, Organization],
    max_days_per_message: int = MAX_DAYS_PER_MESSAGE,
) -> list[Batch]:
    """Group alerts (ordered by organization, then day) into one message per organization,
    split every `max_days_per_message` days."""
    grouped: list[Batch] = []
    current: list[Alert] = []
    for alert in alerts:
        if current and (
            current[0].organization_id != alert.organization_id or len(current) >= max_days_per_message
        ):
            grouped.append(_batch(current, organizations))
            current = []
        current.append(alert)
    if current:
        grouped.append(_batch(current, organizations))
    return grouped


def _batch(alerts: list[Alert], organizations: Mapping[int, Organization]) -> Batch:
    organization_id = alerts[0].organization_id
    organization = organizations.get(organization_id) or Organization(organization_id, in_warehouse=False)
    return Batch(organization, tuple(alerts))
