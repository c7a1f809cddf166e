"""What the alerts are made of: plain records and their vocabulary, with no database or HTTP code.

Messages and delivery depend on these records only; the queries (detect) and the ops tables
(store) produce them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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
SUPPRESSED = "suppressed"  # held back by --suppress-days: recorded, never sent
# not delivered before a rebuild changed its day so that it no longer alerts: never sent
SUPERSEDED = "superseded"
STATUSES = (PENDING, SENT, FAILED, UNKNOWN, SUPPRESSED, SUPERSEDED)

# how loud an alert is; a higher rank lets an alert through a suppression
WARNING = "warning"
CRITICAL = "critical"
SEVERITIES = (WARNING, CRITICAL)  # in rising order

# Where alerts go. Each destination keeps its own watermark and delivery state, so printing to
# the console never counts as a delivery to Slack. A route of the alert_routing seed is a destination
# named after its webhook's environment variable; SLACK_WEBHOOK_URL keeps the name `slack` it had
# before routing existed, so its state carries over.
SLACK = "slack"
CONSOLE = "console"
DEFAULT_WEBHOOK_ENV = "SLACK_WEBHOOK_URL"
WEBHOOK_ENV_PATTERN = "[A-Z_][A-Z0-9_]*"  # the name of a route's webhook variable
DESTINATION_PATTERN = f"^({CONSOLE}|{SLACK}|{WEBHOOK_ENV_PATTERN})$"  # what ops accepts as a destination


def destination_for(webhook_env: str) -> str:
    """The delivery-state name of the route whose webhook is in `webhook_env`."""
    return SLACK if webhook_env == DEFAULT_WEBHOOK_ENV else webhook_env


def webhook_env_of(destination: str) -> str:
    """The environment variable holding a destination's webhook (destination_for the other way)."""
    return DEFAULT_WEBHOOK_ENV if destination == SLACK else destination


# sinks: how a route's messages are written
SLACK_SINK = "slack"  # Block Kit
JSON_SINK = "json"  # the versioned JSON payload (messages.json_payload)
SINKS = (SLACK_SINK, JSON_SINK)

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
    legal_entity_country_code: int | None = None  # routes may match on it


@dataclass(frozen=True)
class Driver:
    """One kind of movement behind a day's change (marts.fct_organization_daily_drivers)."""

    kind: str  # new_invoices, payments, credits, cancellations, other_changes
    invoice_count: int
    balance_change_usd: Decimal


@dataclass(frozen=True)
class TopInvoice:
    invoice_id: int
    status: str  # booked that day; moved_away in the organization an invoice left
    balance_change_usd: Decimal
    # the status the day's change replaced (taken back in this organization); None for a new invoice
    previous_status: str | None = None


@dataclass(frozen=True)
class Why:
    """Why a balance moved on a day: its drivers (largest first) and the invoices that moved it most."""

    drivers: tuple[Driver, ...] = ()
    top_invoices: tuple[TopInvoice, ...] = ()


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
    severity: str = WARNING
    why: Why = Why()

    @property
    def change_usd(self) -> Decimal:
        return self.balance_usd - self.previous_balance_usd


@dataclass(frozen=True)
class Route:
    """One row of marts.dim_alert_routes: which organizations it takes and where they go."""

    priority: int
    name: str
    webhook_env: str
    sink: str = SLACK_SINK
    mention: str | None = None
    organization_id: int | None = None
    legal_entity_country_code: int | None = None
    min_balance_usd: Decimal | None = None
    max_balance_usd: Decimal | None = None
    is_default: bool = False  # the mart's: no criteria, it takes every organization

    @property
    def destination(self) -> str:
        return destination_for(self.webhook_env)

    def matches(self, organization: Organization, alert: Alert) -> bool:
        if self.organization_id is not None and organization.organization_id != self.organization_id:
            return False
        if (
            self.legal_entity_country_code is not None
            and organization.legal_entity_country_code != self.legal_entity_country_code
        ):
            return False
        banded = self.min_balance_usd is not None or self.max_balance_usd is not None
        if banded and not alert.balance_usd.is_finite():
            return False  # no band holds a NaN (which cannot be compared) or an infinity: the default route
        if self.min_balance_usd is not None and not alert.balance_usd >= self.min_balance_usd:
            return False
        return self.max_balance_usd is None or alert.balance_usd < self.max_balance_usd


def route_for(routes: Sequence[Route], organization: Organization, alert: Alert) -> Route | None:
    """The first route (by priority) that matches; None only when there is no default route."""
    return next((route for route in routes if route.matches(organization, alert)), None)


@dataclass(frozen=True)
class Batch:
    """The alerts of one organization delivered as one message."""

    organization: Organization
    alerts: tuple[Alert, ...]
    mention: str | None = None


DIGEST_TOP = 10  # alerts a digest shows by name


@dataclass(frozen=True)
class Digest:
    """One message standing for many alerts of one destination (more than --digest-over in a run)."""

    destination: str
    alerts: tuple[Alert, ...]  # every alert it stands for: all are marked by its outcome
    organizations: Mapping[int, Organization]
    mention: str | None = None
    # names its alerts' rows in ops.alert_history (digest_id), so its query lists exactly them
    digest_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def count(self, severity: str) -> int:
        return sum(1 for alert in self.alerts if alert.severity == severity)

    @property
    def top(self) -> tuple[Alert, ...]:
        """The DIGEST_TOP alerts with the largest absolute USD change, a NaN first: its query (ordered
        by the change, descending) lists it first, Postgres sorting NaN above every number."""

        def largest_first(alert: Alert) -> tuple[bool, Decimal, int, date]:
            change = alert.change_usd
            size = Decimal(0) if change.is_nan() else -abs(change)  # a NaN cannot be compared
            return (not change.is_nan(), size, alert.organization_id, alert.balance_date)

        return tuple(sorted(self.alerts, key=largest_first)[:DIGEST_TOP])

    @property
    def first_day(self) -> date:
        return min(alert.balance_date for alert in self.alerts)

    @property
    def last_day(self) -> date:
        return max(alert.balance_date for alert in self.alerts)


Message = Batch | Digest


def batches(
    alerts: Iterable[Alert],
    organizations: Mapping[int, Organization],
    max_days_per_message: int = MAX_DAYS_PER_MESSAGE,
    mention: str | None = None,
) -> list[Batch]:
    """Group alerts (ordered by organization, then day) into one message per organization,
    split every `max_days_per_message` days."""
    grouped: list[Batch] = []
    current: list[Alert] = []
    for alert in alerts:
        if current and (
            current[0].organization_id != alert.organization_id or len(current) >= max_days_per_message
        ):
            grouped.append(_batch(current, organizations, mention))
            current = []
        current.append(alert)
    if current:
        grouped.append(_batch(current, organizations, mention))
    return grouped


def organization_of(organizations: Mapping[int, Organization], organization_id: int) -> Organization:
    return organizations.get(organization_id) or Organization(organization_id, in_warehouse=False)


def _batch(alerts: list[Alert], organizations: Mapping[int, Organization], mention: str | None) -> Batch:
    return Batch(organization_of(organizations, alerts[0].organization_id), tuple(alerts), mention)
