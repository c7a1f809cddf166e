"""Where each alert goes: the routes of the alert_routing seed (read from marts.dim_alert_routes)
checked against the environment, and each alert matched to its route.

A route names the environment variable holding its webhook. When none of the routes' variables is
set, every alert is printed to the console (a fresh checkout, the demo). Otherwise every route's
variable must be set: a route left without a webhook is a configuration error before anything is
sent or recorded, never a silently lost alert.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from data_platform.alerts.config import ConfigError, Settings, webhook_url
from data_platform.alerts.records import (
    CONSOLE,
    DEFAULT_WEBHOOK_ENV,
    SINKS,
    SLACK_SINK,
    WEBHOOK_ENV_PATTERN,
    Alert,
    Organization,
    Route,
    organization_of,
    route_for,
)

SEED = "dbt/seeds/alert_routing.csv"
_VARIABLE = re.compile(WEBHOOK_ENV_PATTERN)


@dataclass(frozen=True)
class Destination:
    """A delivery state and where it goes: a route's webhook, or the console."""

    name: str  # the destination in ops (records.destination_for), or `console`
    route: Route | None = None  # None: the console
    url: str | None = None

    @property
    def label(self) -> str:
        return self.route.webhook_env if self.route else "stdout"


def routes_in_seed(path: Path) -> list[Route] | None:
    """The routes the seed file at `path` will give marts.dim_alert_routes once built, so that the pipeline
    can check them before its load and build; None when a row cannot be read as the seed's column types
    (dbt seed then refuses it, in its own words)."""
    try:
        # utf-8-sig: dbt reads a seed starting with a byte order mark
        with path.open(newline="", encoding="utf-8-sig") as file:
            return [_seed_route(row) for row in csv.DictReader(file)]
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, InvalidOperation):
        return None


def _seed_route(row: Mapping[str, str | None]) -> Route:
    def value(column: str, kind=str):
        text = row[column]
        # dbt seeds an empty field, and `null` in any case and padding, as null
        return None if text is None or text.strip().lower() in ("", "null") else kind(text)

    criteria = {
        "organization_id": value("organization_id", int),
        "legal_entity_country_code": value("legal_entity_country_code", int),
        "min_balance_usd": value("min_balance_usd", Decimal),
        "max_balance_usd": value("max_balance_usd", Decimal),
    }
    return Route(
        priority=int(row["priority"] or ""),
        name=value("route_name") or "",
        webhook_env=value("webhook_env") or "",
        sink=value("sink") or SLACK_SINK,  # as dim_alert_routes: no sink is Slack's
        mention=value("mention"),
        is_default=all(criterion is None for criterion in criteria.values()),
        **criteria,
    )


def check_routes(routes: Sequence[Route], source: str = "marts.dim_alert_routes") -> None:
    """The seed's rows can work: a default route, known sinks, variable names (never URLs), and one kind of
    message per webhook. `source`: where the routes were read, for the message (the seed file itself,
    before a build)."""
    if not any(route.is_default for route in routes):
        raise ConfigError(
            f"{source} has no default route: add a row with no organization_id, "
            f"legal_entity_country_code or balance band to {SEED} and rerun init.sh"
        )
    for route in routes:
        where = f"route {route.name!r} (priority {route.priority}) in {SEED}"
        if not _VARIABLE.fullmatch(route.webhook_env or ""):
            # not echoed: a URL pasted here by mistake is a secret
            raise ConfigError(
                f"{where}: webhook_env must name an environment variable (A-Z, 0-9, _), not hold a URL"
            )
        if route.sink not in SINKS:
            raise ConfigError(f"{where}: sink must be one of {', '.join(SINKS)}, got {route.sink!r}")
    _refuse_shared_webhooks_that_differ(routes)


def _refuse_shared_webhooks_that_differ(routes: Sequence[Route]) -> None:
    """Routes naming the same variable share one destination, which sends one kind of message: the same
    sink and mention, or a route's alerts would go in another route's format, with its mention."""
    first: dict[str, Route] = {}
    for route in sorted(routes, key=lambda route: route.priority):
        other = first.setdefault(route.webhook_env, route)
        if (route.sink, route.mention) != (other.sink, other.mention):
            raise ConfigError(
                f"routes {other.name!r} and {route.name!r} in {SEED} both send to {route.webhook_env} but "
                f"with another sink or mention ({other.sink} {other.mention or 'no mention'}; {route.sink} "
                f"{route.mention or 'no mention'}): one webhook takes one kind of message. Give them the "
                "same sink and mention, or each its own webhook variable"
            )


def destinations(
    routes: Sequence[Route], settings: Settings, source: str = "marts.dim_alert_routes"
) -> dict[str, Destination]:
    """One destination per webhook variable, in priority order; only the console when none is set. Each
    variable is read from the run's environment, SLACK_WEBHOOK_URL as config.load read and checked it;
    `source`: check_routes."""
    check_routes(routes, source)
    ordered = sorted(routes, key=lambda route: route.priority)
    known = {DEFAULT_WEBHOOK_ENV: settings.webhook_url}
    urls = {
        route.webhook_env: known.get(route.webhook_env)
        or webhook_url(settings.environment, route.webhook_env)
        for route in ordered
    }
    if not any(urls.values()):
        return {CONSOLE: Destination(CONSOLE)}
    unset = [route for route in ordered if not urls[route.webhook_env]]
    if unset:
        names = "; ".join(f"route {r.name!r} needs {r.webhook_env} (or {r.webhook_env}_FILE)" for r in unset)
        raise ConfigError(
            f"{names}: not set, so its alerts could not be delivered. Set it, or remove the route from "
            f"{SEED}. Nothing was sent."
        )
    found: dict[str, Destination] = {}
    for route in ordered:  # routes naming the same variable have the same sink and mention (check_routes)
        found.setdefault(route.destination, Destination(route.destination, route, urls[route.webhook_env]))
    return found


def destination_of(
    alert: Alert,
    routes: Sequence[Route],
    organizations: Mapping[int, Organization],
    found: Mapping[str, Destination],
) -> str:
    """The destination an alert goes to: the console when nothing is configured, else its first route."""
    if CONSOLE in found:
        return CONSOLE
    ordered = sorted(routes, key=lambda route: route.priority)
    route = route_for(ordered, organization_of(organizations, alert.organization_id), alert)
    assert route is not None  # check_routes: there is a default route
    return route.destination
