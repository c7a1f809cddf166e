"""Noise controls: the USD floor, severity and suppression. Pure functions of the records.

Only the organization-days that pass the ratio rule reach Python (detect.alerts_query), so these
run over a handful of rows, never over the fact.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from decimal import Decimal

from data_platform.alerts.records import CRITICAL, SEVERITIES, WARNING, Alert


@dataclass(frozen=True)
class NoiseSettings:
    min_change_usd: Decimal = Decimal(1000)  # |balance - previous| below this is held back
    critical_threshold: Decimal = Decimal(1)  # abs(ratio) at or above this is critical (1 = 100%)
    critical_usd: Decimal | None = Decimal(100_000)  # |balance - previous| above this is critical
    suppress_days: int = 0  # 0 = off


def _finite(value: Decimal | None) -> bool:
    return value is not None and Decimal(value).is_finite()


def below_floor(alert: Alert, min_change_usd: Decimal) -> bool:
    """The move is too small in USD to matter, whatever its ratio (a NaN is shown, never held back)."""
    change = alert.change_usd
    return _finite(change) and abs(change) < min_change_usd


def severity(alert: Alert, noise: NoiseSettings) -> str:
    ratio, change = alert.balance_change_ratio, alert.change_usd
    if _finite(ratio) and abs(ratio) >= noise.critical_threshold:  # type: ignore[arg-type]
        return CRITICAL
    if noise.critical_usd is not None and _finite(change) and abs(change) > noise.critical_usd:
        return CRITICAL
    return WARNING


def rank(severity_name: str | None) -> int:
    return SEVERITIES.index(severity_name) if severity_name in SEVERITIES else 0


@dataclass(frozen=True)
class Filtered:
    alerts: list[Alert]  # to record as pending, each with its severity
    held_back: int  # below --min-change-usd: not recorded at all


def apply_floor_and_severity(alerts: Iterable[Alert], noise: NoiseSettings) -> Filtered:
    kept, held_back = [], 0
    for alert in alerts:
        if below_floor(alert, noise.min_change_usd):
            held_back += 1
        else:
            kept.append(replace(alert, severity=severity(alert, noise)))
    return Filtered(kept, held_back)


def suppressed(
    alerts: Sequence[Alert], recent: Mapping[int, Iterable[tuple[date, str]]], suppress_days: int
) -> set[tuple[int, date]]:
    """The (organization, day) of the alerts to hold back: the organization was alerted (sent or
    waiting, not itself suppressed) in the `suppress_days` days before, at the same or a higher
    severity. `recent` holds the earlier alerts from ops; earlier alerts of this run count too, so a
    backfill suppresses like daily runs would."""
    if suppress_days <= 0:
        return set()
    alerted: dict[int, list[tuple[date, str]]] = defaultdict(list)
    for organization_id, days in recent.items():
        alerted[organization_id].extend(days)
    held: set[tuple[int, date]] = set()
    for alert in sorted(alerts, key=lambda a: (a.balance_date, a.organization_id)):
        if held_back_by(alert, alerted[alert.organization_id], suppress_days):
            held.add((alert.organization_id, alert.balance_date))
        else:
            alerted[alert.organization_id].append((alert.balance_date, alert.severity))
    return held


def held_back_by(alert: Alert, alerted: Iterable[tuple[date, str]], suppress_days: int) -> bool:
    """`alerted`, the (day, severity) of the organization's alerts sent or waiting, holds the alert back:
    one of them is in the `suppress_days` days before its day, at the same or a higher severity."""
    since = alert.balance_date - timedelta(days=suppress_days)
    before = [rank(level) for day, level in alerted if since <= day < alert.balance_date]
    return bool(before) and rank(alert.severity) <= max(before)
