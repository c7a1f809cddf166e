"""The JSON webhook payload, version 1: what any HTTP receiver (a Teams workflow, an incident tool,
a script) gets for one organization's alerts or for a digest. Documented in the README ("Balance
alerts"); a change that removes or renames a field must raise PAYLOAD_VERSION.

Ids and amounts are strings: organization and invoice ids are 64-bit and amounts exact decimals,
which JSON numbers in many receivers (JavaScript among them) would round.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from data_platform.alerts import messages
from data_platform.alerts.records import (
    SEVERITIES,
    Alert,
    Batch,
    Digest,
    Message,
    Organization,
    organization_of,
)

PAYLOAD_SCHEMA = "data_platform.balance_alerts"
PAYLOAD_VERSION = 1
_RATIO = Decimal("0.000001")


def _decimal(value: Decimal | None, step: Decimal = messages.CENT) -> str | None:
    if value is None:
        return None
    if not Decimal(value).is_finite():
        return str(value)
    return str(messages.half_up(value, step))


def _ratio(value: Decimal | None) -> str | None:
    """To 6 places, not rounded onto a whole percent it has not reached, as the messages show it."""
    if value is None or not Decimal(value).is_finite():
        return _decimal(value)
    return str(messages.ratio_shown(value, _RATIO))


def _organization(organization: Organization) -> dict[str, Any]:
    return {
        "organization_id": str(organization.organization_id),
        "in_warehouse": organization.in_warehouse,
        "missing_from_organizations_file": organization.is_missing_from_organizations_file,
        "active_contracts": organization.count_total_contracts_active,
        "first_payment_date": _day(organization.first_payment_date),
        "last_payment_date": _day(organization.last_payment_date),
        "context": messages.context(organization),
    }


def _day(value) -> str | None:
    return value.isoformat() if value else None


def _alert(alert: Alert) -> dict[str, Any]:
    return {
        "organization_id": str(alert.organization_id),
        "balance_date": alert.balance_date.isoformat(),
        "alert_kind": alert.alert_kind,
        "severity": alert.severity,
        "previous_balance_usd": _decimal(alert.previous_balance_usd),
        "balance_usd": _decimal(alert.balance_usd),
        "change_usd": _decimal(alert.change_usd),
        "change_ratio": _ratio(alert.balance_change_ratio),
        "drivers": [
            {
                "kind": d.kind,
                "invoice_count": d.invoice_count,
                "balance_change_usd": _decimal(d.balance_change_usd),
            }
            for d in alert.why.drivers
        ],
        "top_invoices": [
            {
                "invoice_id": str(i.invoice_id),
                "status": i.status,
                "previous_status": i.previous_status,
                "balance_change_usd": _decimal(i.balance_change_usd),
            }
            for i in alert.why.top_invoices
        ],
    }


def json_payload(message: Message) -> dict[str, Any]:
    text, _ = messages.slack_message(message)
    common = {"schema": PAYLOAD_SCHEMA, "version": PAYLOAD_VERSION, "mention": message.mention, "text": text}
    if isinstance(message, Batch):
        return {
            **common,
            "type": "alerts",
            "organization": _organization(message.organization),
            "alerts": [_alert(alert) for alert in message.alerts],
        }
    digest: Digest = message
    return {
        **common,
        "type": "digest",
        "alert_count": len(digest.alerts),
        "counts": {level: digest.count(level) for level in SEVERITIES},
        "first_day": digest.first_day.isoformat(),
        "last_day": digest.last_day.isoformat(),
        "top": [
            {
                **_alert(a),
                "organization": _organization(organization_of(digest.organizations, a.organization_id)),
            }
            for a in digest.top
        ],
        "list_the_rest": messages.list_the_rest(digest),
    }
