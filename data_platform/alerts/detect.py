"""The marts queries: the days to process, the organization-days that alert, their context.

Reads the marts with SQLAlchemy Core (bound parameters only). The tables are declared here with
just the columns the alerts use; dbt owns them, so nothing here creates or reflects them.

The marts belong to the transformer, who could put a view or function there that writes as
whoever reads it. Everything here runs inside a READ ONLY transaction with search_path pinned to
pg_catalog (read_only()), separate from the alerter's own writes to ops: which tables exist and the
routes first, before the run lock, then the rest in one snapshot (read_only_snapshot()).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Date,
    Integer,
    MetaData,
    Numeric,
    Select,
    Table,
    Text,
    and_,
    case,
    distinct,
    func,
    literal,
    not_,
    or_,
    select,
    text,
)

from data_platform.alerts.keys import organization_days_in, organization_ids_in
from data_platform.alerts.records import (
    BALANCE_CHANGE,
    NEW_BALANCE,
    Alert,
    Driver,
    Organization,
    Route,
    TopInvoice,
    Why,
)
from data_platform.paths import dbt_project_var
from data_platform.refresh import BUILD_STATE, BUILD_STATUS_SQL, MARTS_SCHEMA

marts = MetaData(schema=MARTS_SCHEMA)

fact = Table(
    "fct_organization_daily_financials",
    marts,
    Column("organization_id", BigInteger),
    Column("balance_date", Date),
    Column("balance_usd", Numeric),
    Column("previous_balance_usd", Numeric),
    Column("balance_change_ratio", Numeric),
)

organizations = Table(
    "dim_organizations",
    marts,
    Column("organization_id", BigInteger),
    Column("is_missing_from_organizations_file", Boolean),
    Column("first_payment_date", Date),
    Column("last_payment_date", Date),
    Column("count_total_contracts_active", Integer),
    Column("legal_entity_country_code", BigInteger),
)

drivers = Table(
    "fct_organization_daily_drivers",
    marts,
    Column("organization_id", BigInteger),
    Column("balance_date", Date),
    Column("driver_kind", Text),
    Column("invoice_count", BigInteger),
    Column("balance_change_usd", Numeric),
    Column("top_invoices", Text),  # jsonb, read as text so amounts parse as Decimal
)

routes = Table(
    "dim_alert_routes",
    marts,
    Column("priority", Integer),
    Column("route_name", Text),
    Column("organization_id", BigInteger),
    Column("legal_entity_country_code", BigInteger),
    Column("min_balance_usd", Numeric),
    Column("max_balance_usd", Numeric),
    Column("webhook_env", Text),
    Column("sink", Text),
    Column("mention", Text),
    Column("is_default", Boolean),
)

# every marts table the alert run reads: a run stops when one is missing, and locks them all before its
# snapshot (read_only_snapshot)
REQUIRED_TABLES = (fact, organizations, drivers, routes)
TOP_INVOICES = dbt_project_var("top_invoices")  # invoices shown per alert


def missing_tables(conn: Connection) -> list[str]:
    """The marts tables the alerts need that do not exist (yet)."""
    names = [table.fullname for table in REQUIRED_TABLES]
    found = conn.execute(select(*(func.to_regclass(name) for name in names))).one()
    return [name for name, oid in zip(names, found, strict=True) if oid is None]


class MartsNotReady(RuntimeError):
    """The pipeline's record says no day of the marts can be trusted now."""


def built_through(conn: Connection) -> date | None:
    """The last day the marts hold as a successful build left it: the newest export the pipeline's last
    successful build covered. A build after it rewrites only later days (a running one, or one that
    failed, may have written some of them), so a run reads none after it. None: the warehouse has no
    such record (the marts were built without the pipeline: dbt by hand, the tests), every day counts.

    Raises MartsNotReady when no day can be trusted: no build has succeeded yet, or a full rebuild
    started after the last successful one and has not succeeded (it may have replaced any table)."""
    schema, table = BUILD_STATE.split(".")
    readable = conn.execute(
        text(
            "select pg_catalog.has_schema_privilege(n.oid, 'usage') "
            "and pg_catalog.has_table_privilege(c.oid, 'select') "
            "from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname = :schema and c.relname = :table"
        ),
        {"schema": schema, "table": table},
    ).scalar()
    if readable is None:
        return None
    if not readable:
        raise MartsNotReady(
            f"this role cannot read {BUILD_STATE}, the record of the pipeline's successful builds "
            "(the pipeline grants it to ALERTER_USER on its next build)"
        )
    row = conn.execute(text(BUILD_STATUS_SQL)).one_or_none()
    if row is None:
        raise MartsNotReady("no pipeline build has succeeded yet: the marts may be half built")
    if row.full_build_started_at is not None:
        raise MartsNotReady(
            f"a full rebuild of the marts started at {row.full_build_started_at:%Y-%m-%d %H:%M:%S %Z} "
            "and has not succeeded (it is running, or it failed or was stopped, or it was a build by hand, "
            "which the pipeline does not record): the marts may mix old and new numbers until the "
            "pipeline's next build succeeds"
        )
    return row.last_export_date or date.min


def read_only(conn: Connection, isolation: str = "read committed") -> None:
    """Start a READ ONLY transaction with search_path pinned to pg_catalog (pg_temp last).

    A function the transformer hides behind a marts view runs as the alerter, and could otherwise
    write the alerter's ops tables: here any write fails. No unqualified name can resolve to an
    object in marts.
    """
    if conn.in_transaction():
        raise RuntimeError("read_only() must start its own transaction")
    conn.execute(text(f"set transaction isolation level {isolation}, read only"))
    conn.execute(text("set local search_path = pg_catalog, pg_temp"))


def read_only_snapshot(conn: Connection) -> None:
    """Start a read_only() REPEATABLE READ transaction that sees one committed version of the marts.

    dbt may rebuild them during a run: an incremental run deletes and re-inserts a window of days, a
    table model (dim_organizations, dim_alert_routes, a full refresh of the fact) swaps in a new table.
    Planning, recording the alerts and reading their organizations and drivers must not straddle such a
    commit, so they share one snapshot. Every table the run reads is locked first, in one statement,
    because LOCK TABLE takes no snapshot: a swap committed after the snapshot but before our first read
    of that table would leave us a new table whose rows the snapshot cannot see (an empty fact, or no
    organization's context, which routes match on). The lock is the ACCESS SHARE any select takes: it
    only makes a swap wait until the transaction ends, before anything is sent (marts_view.read_marts).
    """
    read_only(conn, "repeatable read")
    tables = ", ".join(conn.dialect.identifier_preparer.format_table(table) for table in REQUIRED_TABLES)
    conn.execute(text(f"lock table {tables} in access share mode"))


def latest_day(conn: Connection, up_to: date | None = None) -> date | None:
    """The fact's latest day, or its latest day on or before `up_to`."""
    query = select(func.max(fact.c.balance_date))
    if up_to is not None:
        query = query.where(fact.c.balance_date <= up_to)
    return conn.execute(query).scalar_one()


def days_after(conn: Connection, day: date, through: date | None = None) -> tuple[int, date | None]:
    """How many distinct days the fact has after `day` (up to `through`), and the last of them."""
    query = select(func.count(distinct(fact.c.balance_date)), func.max(fact.c.balance_date)).where(
        fact.c.balance_date > day
    )
    if through is not None:
        query = query.where(fact.c.balance_date <= through)
    row = conn.execute(query).one()
    return row[0], row[1]


@dataclass(frozen=True)
class RangeStats:
    days_processed: int  # days of the fact inside the range
    first_day: date | None
    last_day: date | None
    moves_from_zero: int  # previous balance 0, new not 0 (no ratio), moved by the USD floor or more
    from_zero_below_floor: int  # the same, moved by less: held back even with --include-from-zero


def range_stats(conn: Connection, start: date, end: date, min_change_usd: Decimal) -> RangeStats:
    from_zero = and_(fact.c.previous_balance_usd == 0, fact.c.balance_usd != fact.c.previous_balance_usd)
    # noise.below_floor in SQL (NaN and infinities sort above every number: never below the floor)
    floor = literal(min_change_usd, Numeric)
    below_floor = func.abs(fact.c.balance_usd - fact.c.previous_balance_usd) < floor
    row = conn.execute(
        select(
            func.count(distinct(fact.c.balance_date)),
            func.min(fact.c.balance_date),
            func.max(fact.c.balance_date),
            func.count().filter(and_(from_zero, not_(below_floor))),
            func.count().filter(and_(from_zero, below_floor)),
        ).where(fact.c.balance_date.between(start, end))
    ).one()
    return RangeStats(
        days_processed=row[0],
        first_day=row[1],
        last_day=row[2],
        moves_from_zero=row[3],
        from_zero_below_floor=row[4],
    )


def _rule(threshold: Decimal, include_from_zero: bool):
    """Rule: previous_balance_usd <> 0 and abs(balance_change_ratio) >= threshold; with
    include_from_zero also previous = 0 and a new balance that is not 0 ("new balance")."""
    by_ratio = and_(
        fact.c.previous_balance_usd != 0,
        func.abs(fact.c.balance_change_ratio) >= literal(threshold, Numeric),
    )
    from_zero = and_(fact.c.previous_balance_usd == 0, fact.c.balance_usd != fact.c.previous_balance_usd)
    return or_(by_ratio, from_zero) if include_from_zero else by_ratio


def _alert_columns() -> tuple:
    kind = case((fact.c.previous_balance_usd == 0, NEW_BALANCE), else_=BALANCE_CHANGE)
    return (
        fact.c.organization_id,
        fact.c.balance_date,
        kind.label("alert_kind"),
        fact.c.previous_balance_usd,
        fact.c.balance_usd,
        fact.c.balance_change_ratio,
    )


def alerts_query(start: date, end: date, threshold: Decimal, include_from_zero: bool) -> Select:
    """One row per alerting organization-day in start..end (bound parameters throughout)."""
    return (
        select(*_alert_columns())
        .where(fact.c.balance_date.between(start, end), _rule(threshold, include_from_zero))
        .order_by(fact.c.balance_date, fact.c.organization_id)
    )


def fact_now(
    conn: Connection,
    organization_days: Iterable[tuple[int, date]],
    threshold: Decimal,
    include_from_zero: bool,
) -> dict[tuple[int, date], tuple[Alert, bool]]:
    """Each organization-day's fact row as it is now (as an Alert) and whether it meets the rule; a day
    without a row is left out."""
    wanted = set(organization_days)
    if not wanted:
        return {}
    rule = _rule(threshold, include_from_zero).label("alerts")
    query = select(*_alert_columns(), rule).where(
        organization_days_in(fact.c.organization_id, fact.c.balance_date, wanted)
    )
    return {(row.organization_id, row.balance_date): (_alert(row), row.alerts) for row in conn.execute(query)}


def _alert(row) -> Alert:
    """A row of _alert_columns() as a record."""
    return Alert(
        organization_id=row.organization_id,
        balance_date=row.balance_date,
        alert_kind=row.alert_kind,
        previous_balance_usd=row.previous_balance_usd,
        balance_usd=row.balance_usd,
        balance_change_ratio=row.balance_change_ratio,
    )


def fetch_alerts(conn: Connection, query: Select) -> list[Alert]:
    """The rows of alerts_query() as records (only the alerting rows ever reach Python)."""
    return [_alert(row) for row in conn.execute(query)]


def organization_context(conn: Connection, organization_ids: Iterable[int]) -> dict[int, Organization]:
    """dim_organizations' row for each organization that has one."""
    ids = sorted(set(organization_ids))
    if not ids:
        return {}
    dim = organizations
    rows = conn.execute(
        select(
            dim.c.organization_id,
            dim.c.is_missing_from_organizations_file,
            dim.c.count_total_contracts_active,
            dim.c.first_payment_date,
            dim.c.last_payment_date,
            dim.c.legal_entity_country_code,
        ).where(organization_ids_in(dim.c.organization_id, ids))
    )
    return {
        row.organization_id: Organization(
            organization_id=row.organization_id,
            in_warehouse=True,
            is_missing_from_organizations_file=row.is_missing_from_organizations_file,
            count_total_contracts_active=row.count_total_contracts_active,
            first_payment_date=row.first_payment_date,
            last_payment_date=row.last_payment_date,
            legal_entity_country_code=row.legal_entity_country_code,
        )
        for row in rows
    }


def alert_routes(conn: Connection) -> list[Route]:
    """The routing rules, in the order they are tried."""
    rows = conn.execute(select(routes).order_by(routes.c.priority, routes.c.route_name))
    return [
        Route(
            priority=row.priority,
            name=row.route_name,
            webhook_env=row.webhook_env,
            sink=row.sink,
            mention=row.mention,
            organization_id=row.organization_id,
            legal_entity_country_code=row.legal_entity_country_code,
            min_balance_usd=row.min_balance_usd,
            max_balance_usd=row.max_balance_usd,
            is_default=row.is_default,
        )
        for row in rows
    ]


def why(conn: Connection, organization_days: Iterable[tuple[int, date]]) -> dict[tuple[int, date], Why]:
    """Each organization-day's drivers (largest effect first) and its top invoices by absolute effect:
    the largest of its driver kinds' top invoices, which include the day's largest overall."""
    wanted = set(organization_days)
    if not wanted:
        return {}
    found: dict[tuple[int, date], list] = defaultdict(list)
    rows = conn.execute(
        select(
            drivers.c.organization_id,
            drivers.c.balance_date,
            drivers.c.driver_kind,
            drivers.c.invoice_count,
            drivers.c.balance_change_usd,
            drivers.c.top_invoices.cast(Text).label("top_invoices"),
        ).where(organization_days_in(drivers.c.organization_id, drivers.c.balance_date, wanted))
    )
    for row in rows:
        found[(row.organization_id, row.balance_date)].append(row)
    return {day: _why(rows) for day, rows in found.items()}


def _why(rows: list) -> Why:
    driver_list = sorted(
        (Driver(row.driver_kind, row.invoice_count, row.balance_change_usd) for row in rows),
        key=lambda driver: (-abs(driver.balance_change_usd), driver.kind),
    )
    invoices = [
        TopInvoice(
            int(item["invoice_id"]),
            str(item["status"]),
            item["balance_change_usd"],
            # absent from a drivers mart built before the mart kept it
            None if item.get("previous_status") is None else str(item["previous_status"]),
        )
        for row in rows
        for item in json.loads(row.top_invoices or "[]", parse_float=Decimal, parse_int=Decimal)
    ]
    invoices.sort(key=lambda invoice: (-abs(invoice.balance_change_usd), invoice.invoice_id))
    return Why(tuple(driver_list), tuple(invoices[:TOP_INVOICES]))
