"""How an alert reads: Slack Block Kit, the plain-text fallback, and the console line.

Pure functions of the stored alert and its organization context, so the same words appear in
Slack, on stdout and in --dry-run.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from data_platform.alerts.records import NEW_BALANCE, Alert, Batch, Organization

CENT = Decimal("0.01")


def _not_finite(value: Decimal) -> str:
    # Postgres numeric allows NaN and +-Infinity: shown as they are (Decimal would raise on them),
    # because a message that cannot be formatted would block delivery on every run
    return f"{value:+}" if Decimal(value).is_infinite() else str(value)


def usd(amount: Decimal) -> str:
    """-1234.5 -> '-$1,234.50' (thousands separators, 2 decimals, half-up like an accountant)."""
    if not Decimal(amount).is_finite():
        return _not_finite(amount)
    rounded = Decimal(amount).quantize(CENT, rounding=ROUND_HALF_UP)
    sign = "-" if rounded < 0 else ""
    return f"{sign}${abs(rounded):,.2f}"


def signed_percent(ratio: Decimal) -> str:
    """0.5 -> '+50.00%', -0.75 -> '-75.00%'."""
    if not Decimal(ratio).is_finite():
        return f"{_not_finite(ratio)}%"
    percent = (Decimal(ratio) * 100).quantize(CENT, rounding=ROUND_HALF_UP)
    return f"{percent:+,.2f}%"


def change(alert: Alert) -> str:
    """'$1,000.00 -> $1,500.00 (+50.00%)', or '(new balance)' when the day started from zero."""
    moved = f"{usd(alert.previous_balance_usd)} -> {usd(alert.balance_usd)}"
    if alert.alert_kind == NEW_BALANCE or alert.balance_change_ratio is None:
        return f"{moved} (new balance)"
    return f"{moved} ({signed_percent(alert.balance_change_ratio)})"


def context(organization: Organization) -> str:
    """The organization as dim_organizations knows it, in one phrase."""
    if not organization.in_warehouse:
        return "not in dim_organizations"
    if organization.is_missing_from_organizations_file:
        return "missing from organizations.csv"
    contracts = organization.count_total_contracts_active
    if contracts is None:
        contracts_text = "active contracts unknown"
    else:
        contracts_text = f"{contracts:,} active contract{'' if contracts == 1 else 's'}"
    first = organization.first_payment_date.isoformat() if organization.first_payment_date else "none"
    last = organization.last_payment_date.isoformat() if organization.last_payment_date else "none"
    return f"{contracts_text}, first payment {first}, last payment {last}"


def console_line(organization: Organization, alert: Alert) -> str:
    """One readable line per alert for stdout."""
    label = "new balance" if alert.alert_kind == NEW_BALANCE else "balance alert"
    return (
        f"[{label}] {alert.balance_date.isoformat()} organization {alert.organization_id}: "
        f"{change(alert)}; {context(organization)}"
    )


def _arrow(alert: Alert) -> str:
    if alert.balance_usd.is_nan() or alert.previous_balance_usd.is_nan():
        return ":warning:"
    if alert.balance_usd >= alert.previous_balance_usd:
        return ":chart_with_upwards_trend:"
    return ":chart_with_downwards_trend:"


def _slack_line(alert: Alert) -> str:
    moved = f"{usd(alert.previous_balance_usd)} → {usd(alert.balance_usd)}"
    if alert.alert_kind == NEW_BALANCE or alert.balance_change_ratio is None:
        size = "new balance"
    else:
        size = signed_percent(alert.balance_change_ratio)
    return f"{_arrow(alert)} *{alert.balance_date.isoformat()}*  {moved}  *{size}*"


def slack_message(batch: Batch) -> tuple[str, list[dict[str, Any]]]:
    """(text fallback, Block Kit blocks) for one organization's alerts."""
    organization = batch.organization
    org_id = organization.organization_id
    fallback_days = "; ".join(f"{a.balance_date.isoformat()} {change(a)}" for a in batch.alerts)
    text = f"Balance alert for organization {org_id}: {fallback_days}. {context(organization)}."
    about = context(organization)
    if organization.is_missing_from_organizations_file or not organization.in_warehouse:
        about = f":warning: {about}"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"Balance alert: organization {org_id}"}},
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": "\n".join(_slack_line(a) for a in batch.alerts)},
        },
        {"type": "context", "elements": [{"type": "mrkdwn", "text": about}]},
    ]
    return text, blocks
