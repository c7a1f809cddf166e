"""What an alert run records in ops.alert_history, per destination, before anything is sent: the waiting
alerts judged against the fact as it is now (new numbers, superseded, or reopened), then the run's new
alerts under the destination their route names, as pending, or suppressed where --suppress-days holds them
back."""

from __future__ import annotations

from datetime import date, timedelta

from sqlalchemy import Connection

from data_platform.alerts import noise, routing, store
from data_platform.alerts.config import MAX_SUPPRESS_DAYS, Settings
from data_platform.alerts.marts_view import MartsView
from data_platform.alerts.records import CONSOLE, Alert, Route
from data_platform.alerts.routing import Destination
from data_platform.alerts.summary import Summary


def judge_waiting(
    ops: Connection, destination: str, view: MartsView, settings: Settings, summary: Summary
) -> None:
    """The destination's waiting alerts as the fact is now: run before the new alerts are recorded, so that
    one superseded does not hold back (through --suppress-days) the alert that replaces it, nor the ones
    it held back already."""
    _as_the_fact_is_now(ops, destination, store.undelivered(ops, destination), view, settings, summary)
    released = _released(ops, destination, view, settings)
    superseded = store.superseded(ops, destination)
    _reopened_if_alerting_again(ops, destination, superseded, view, settings, summary, released)


def record_new(
    ops: Connection,
    view: MartsView,
    routes: list[Route],
    destinations: dict[str, Destination],
    settings: Settings,
    summary: Summary,
) -> None:
    """The run's new alerts, each under the destination its route names now (_by_destination), except
    those another destination already has."""
    for name, alerts in _by_destination(view, routes, destinations).items():
        kept = _not_recorded_elsewhere(ops, name, alerts)
        summary.recorded_elsewhere += len(alerts) - len(kept)
        _record(ops, name, kept, settings, summary)


def _by_destination(
    view: MartsView, routes: list[Route], destinations: dict[str, Destination]
) -> dict[str, list[Alert]]:
    """Each new alert under the destination its route names now, even on a day before that
    destination's own plan starts.

    The run reads the alerts of the union of the plans (each a run of days, all ending on the same
    day), so every alert is on a day some destination's plan covers. Kept only where its own
    destination's plan covers it, an alert the routes now send to a destination whose plan starts
    later (a route added during a catch-up: a first run plans the latest day only) would be recorded
    nowhere while the catching-up destination's watermark moves past its day: lost. An alert its
    destination already has is not recorded again (ops.alert_history's key; store.record_alerts), so a
    destination whose watermark is past the day is not sent it twice; nor is one another destination has
    (store.recorded_elsewhere: a route removed, then put back, would otherwise be sent again what the
    default route was sent meanwhile)."""
    grouped: dict[str, list[Alert]] = {}
    for alert in view.alerts:
        name = routing.destination_of(alert, routes, view.organizations, destinations)
        grouped.setdefault(name, []).append(alert)
    return grouped


def _not_recorded_elsewhere(ops: Connection, destination: str, alerts: list[Alert]) -> list[Alert]:
    """`alerts` but those another destination was sent or may still send (store.recorded_elsewhere)."""
    if destination == CONSOLE:  # printing is a view: a day another destination was sent is printed too
        return alerts
    elsewhere = store.recorded_elsewhere(ops, destination, alerts)
    return [alert for alert in alerts if (alert.organization_id, alert.balance_date) not in elsewhere]


def _record(
    ops: Connection, destination: str, alerts: list[Alert], settings: Settings, summary: Summary
) -> set[tuple[int, date]]:
    """Record `alerts` for `destination` as pending, or as suppressed where --suppress-days holds them back
    (a superseded one is reopened: store.record_alerts); the ones held back."""
    days = settings.noise.suppress_days
    held = noise.suppressed(alerts, _recent(ops, destination, alerts, settings), days)
    summary.suppressed += store.record_alerts(ops, destination, alerts, suppressed=held, suppress_days=days)
    return held


def _recent(ops: Connection, destination: str, alerts: list[Alert], settings: Settings):
    days = settings.noise.suppress_days
    if not days or not alerts:
        return {}
    since = min(alert.balance_date for alert in alerts) - timedelta(days=days)
    return store.recent_alerts(ops, destination, [alert.organization_id for alert in alerts], since)


def _numbers(alert: Alert) -> tuple:
    return alert.alert_kind, alert.previous_balance_usd, alert.balance_usd, alert.balance_change_ratio


def _unchanged(alert: Alert, view: MartsView) -> bool:
    """No rebuild changed the recorded alert's day: the fact's row has the numbers it was recorded with."""
    row, _ = view.fact_now.get((alert.organization_id, alert.balance_date), (None, False))
    return row is not None and _numbers(row) == _numbers(alert)


def _as_the_fact_is_now(
    ops: Connection,
    destination: str,
    alerts: list[Alert],
    view: MartsView,
    settings: Settings,
    summary: Summary,
) -> None:
    """The destination's undelivered alerts are sent with the drivers the fact has now: one whose day a
    rebuild changed since it was recorded takes the current numbers, which those drivers explain, or,
    when the day no longer alerts, is superseded and not sent. An unchanged day is sent as recorded."""
    superseded = []
    for alert in alerts:
        if _unchanged(alert, view):
            continue
        current = _alert_now(alert, view, settings)
        if current:
            store.record_current_numbers(ops, destination, current)
        else:
            superseded.append(alert)
    if superseded:
        store.record_superseded(ops, destination, superseded)
        summary.superseded += len(superseded)


def _released(
    ops: Connection, destination: str, view: MartsView, settings: Settings
) -> set[tuple[int, date]]:
    """The destination's held-back alerts that nothing holds back now, judged by the --suppress-days rule
    (noise.held_back_by) in the window each was held back under, against the alerts sent or waiting as
    they are now: a holder superseded or given up, a waiting holder a rebuild made a `warning`, or a
    held-back day a rebuild changed into a `critical` one. A day no rebuild changed keeps the severity it
    was held back with, as a sent holder keeps its own: a changed severity setting alone releases nothing.
    Marked to be judged again as the fact is now (_reopened_if_alerting_again); their keys. One whose day
    no longer alerts stays as it is."""
    # one held back before windows were kept: in the widest a run can use, so never released while held
    held = [
        (alert, MAX_SUPPRESS_DAYS if window is None else window)
        for alert, window in store.held_back(ops, destination)
    ]
    if not held:
        return set()
    since = min(alert.balance_date - timedelta(days=window) for alert, window in held)
    recent = store.recent_alerts(
        ops, destination, sorted({alert.organization_id for alert, _ in held}), since
    )
    free = []
    for alert, window in held:
        judged = alert if _unchanged(alert, view) else _alert_now(alert, view, settings)
        if judged and not noise.held_back_by(judged, recent.get(alert.organization_id, ()), window):
            free.append(judged)
    store.record_released(ops, destination, free)
    return {(alert.organization_id, alert.balance_date) for alert in free}


def _reopened_if_alerting_again(
    ops: Connection,
    destination: str,
    alerts: list[Alert],
    view: MartsView,
    settings: Settings,
    summary: Summary,
    released: set[tuple[int, date]],
) -> None:
    """A superseded alert was never sent: when its day alerts again (a later rebuild, a rules change undone
    say), it is reopened with the day's numbers and sent, its attempts kept (store.record_alerts), by any
    run, not only one that processes its day again; --suppress-days holds it back as it would a new one.
    Not where another destination was sent the day, or may still send it, meanwhile (the routes changed
    while it was superseded): it stays superseded. `released`: the held-back alerts this run found
    nothing holds back any more (_released), counted apart."""
    again = [current for current in (_alert_now(alert, view, settings) for alert in alerts) if current]
    # not counted in the summary: the row stays superseded, and every run would say it again
    again = _not_recorded_elsewhere(ops, destination, again)
    if again:
        held = _record(ops, destination, again, settings, summary)
        keys = {(alert.organization_id, alert.balance_date) for alert in again}
        summary.released += len(keys & released)
        # one held back again is counted as suppressed: it is not to be sent
        summary.reopened += len(keys - released - held)
        summary.suppressed -= len(held & released)  # suppressed before: not this run's


def _alert_now(alert: Alert, view: MartsView, settings: Settings) -> Alert | None:
    """The alert the fact gives the alert's organization and day now, with this run's noise settings,
    or None when the day no longer alerts (or its row is gone)."""
    row, alerts_now = view.fact_now.get((alert.organization_id, alert.balance_date), (None, False))
    current = noise.apply_floor_and_severity([row] if alerts_now else [], settings.noise).alerts
    return current[0] if current else None
