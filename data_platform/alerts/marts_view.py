"""What one alert run reads from the marts, in one read-only snapshot and before anything is committed to
ops: each destination's plan of days, the alerts of those days past the noise floor, every organization's
context, and, for those alerts and the waiting ones, their drivers and their fact row as it is now."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date

from sqlalchemy import Connection

from data_platform.alerts import detect, noise
from data_platform.alerts.config import Settings
from data_platform.alerts.errors import PIPELINE_HINT, AlertError
from data_platform.alerts.plan import Plan, plan_days
from data_platform.alerts.records import Alert, Organization, Why
from data_platform.alerts.summary import Summary


@dataclass
class MartsView:
    """What one read-only snapshot of the marts says about this run."""

    plans: dict[str, Plan]  # per destination
    alerts: list[Alert] = field(default_factory=list)
    organizations: dict[int, Organization] = field(default_factory=dict)
    why: dict[tuple[int, date], Why] = field(default_factory=dict)
    # every waiting or new alert's fact row as it is now, and whether it meets the rule
    fact_now: dict[tuple[int, date], tuple[Alert, bool]] = field(default_factory=dict)


def read_marts(
    reader: Connection,
    settings: Settings,
    summary: Summary,
    watermarks: dict[str, date | None],
    waiting: Iterable[tuple[int, date]],
    today: date,
) -> MartsView:
    """One read-only snapshot: plan each destination's days, find their alerts, every organization's
    context and every alert's drivers."""
    detect.read_only_snapshot(reader)
    try:
        try:
            built = detect.built_through(reader)
        except detect.MartsNotReady as error:
            raise AlertError(
                f"{error}; nothing was read or sent. Alerts run after a build succeeds."
            ) from None
        up_to = today if built is None else min(today, built)
        latest = detect.latest_day(reader, up_to=up_to)
        summary.future_days, summary.last_future_day = detect.days_after(reader, today)
        if up_to < today:
            summary.built_through = up_to
            summary.unbuilt_days, summary.last_unbuilt_day = detect.days_after(reader, up_to, through=today)
        _check_requested_day(settings, latest, today, built)
        plans = {
            name: plan_days(
                watermark=watermark, latest=latest, only_date=settings.date, since=settings.since, today=today
            )
            for name, watermark in watermarks.items()
        }
        view = MartsView(plans)
        planned = [plan for plan in plans.values() if not plan.is_empty]
        if planned:
            view.alerts = _alerts_between(reader, planned, settings, summary)
        waiting = set(waiting)
        wanted = {organization_id for organization_id, _ in waiting} | {
            a.organization_id for a in view.alerts
        }
        view.organizations = detect.organization_context(reader, wanted)
        keys = waiting | {(a.organization_id, a.balance_date) for a in view.alerts}
        view.why = detect.why(reader, keys)
        view.fact_now = detect.fact_now(reader, keys, settings.threshold, settings.include_from_zero)
        return view
    finally:
        reader.rollback()  # read only: nothing to keep


def _alerts_between(
    reader: Connection, planned: list[Plan], settings: Settings, summary: Summary
) -> list[Alert]:
    """The alerts of the days from the earliest planned one to the latest, past the noise floor; the
    days' counts go to `summary`."""
    start = min(plan.start for plan in planned)  # type: ignore[type-var]
    end = max(plan.end for plan in planned)  # type: ignore[type-var]
    stats = detect.range_stats(reader, start, end, settings.noise.min_change_usd)
    summary.days_processed, summary.first_day, summary.last_day = (
        stats.days_processed,
        stats.first_day,
        stats.last_day,
    )
    query = detect.alerts_query(start, end, settings.threshold, settings.include_from_zero)
    filtered = noise.apply_floor_and_severity(detect.fetch_alerts(reader, query), settings.noise)
    summary.held_back = filtered.held_back
    if not settings.include_from_zero:
        # counted as the flag would judge them: "skipped" are only those it would alert
        summary.skipped_from_zero = stats.moves_from_zero
        summary.held_back += stats.from_zero_below_floor
    return filtered.alerts


def _check_requested_day(settings: Settings, latest: date | None, today: date, built: date | None) -> None:
    """--date / --since after the data's latest day is a mistake (or data not loaded yet), not a no-op."""
    requested = settings.date or settings.since
    if requested is None or (latest is not None and requested <= latest):
        return
    flag = "--date" if settings.date else "--since"
    if requested > today:
        raise AlertError(
            f"{flag} {requested} is after today ({today}, UTC): future days are never processed."
        )
    if built is not None and requested > built:
        raise AlertError(
            f"{flag} {requested} is after {built}, the newest export the last successful pipeline build "
            "covered: later days wait for a build to succeed."
        )
    if latest is None:
        raise AlertError(f"{flag} {requested}: {detect.fact.fullname} has no rows yet: {PIPELINE_HINT}.")
    raise AlertError(
        f"{flag} {requested} is after the latest day in {detect.fact.fullname} ({latest}): "
        "nothing to process. Load and build newer data first, or pick an earlier day."
    )
