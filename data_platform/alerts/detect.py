"""What to look at: the days to process and the organization-days that alert.

Reads the marts with SQLAlchemy Core (bound parameters only). The tables are declared here with
just the columns the alerts use; dbt owns them, so nothing here creates or reflects them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
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
    and_,
    case,
    distinct,
    func,
    literal,
    or_,
    select,
    text,
)

marts = MetaData(schema="marts")

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
)

REQUIRED_TABLES = ("marts.fct_organization_daily_financials", "marts.dim_organizations")

BALANCE_CHANGE = "balance_change"
NEW_BALANCE = "new_balance"


@dataclass(frozen=True)
class Plan:
    """The days a run looks at, and where the watermark stands afterwards.

    start..end are calendar bounds; the days processed are the fact's days inside them.
    """

    start: date | None
    end: date | None
    new_watermark: date | None

    @property
    def is_empty(self) -> bool:
        return self.start is None or self.end is None or self.start > self.end


def plan_days(
    *, watermark: date | None, latest: date | None, only_date: date | None = None, since: date | None = None
) -> Plan:
    """Choose the days to process from the data's dates (never the wall clock).

    - default: every day after the watermark up to the latest day; with no watermark only the latest
      day, so a first run does not flood the channel with all of history;
    - --date D: exactly D; --since S: S up to the latest day.

    The watermark only moves forward, and only over days this run covered without a gap, so it never
    skips a day that was not looked at. (It may move over days whose alerts failed to deliver: those
    are recorded in the alert history first and retried from there, not from the watermark.)
    """
    if latest is None:  # empty fact: nothing to do, nothing learned
        return Plan(None, None, watermark)
    if only_date is not None:
        start = end = only_date
    elif since is not None:
        start, end = since, latest
    elif watermark is None:
        start = end = latest
    elif watermark >= latest:  # nothing new (also spares watermark + 1 day when it is date.max)
        return Plan(None, None, watermark)
    else:
        start, end = watermark + timedelta(days=1), latest

    covered_to = min(end, latest)  # never move the watermark past the data
    if start > covered_to:
        moves = False
    elif watermark is None:
        # only a run that reaches the latest day may set the first watermark (a one-off old
        # --date must not make the next run backfill everything after it)
        moves = covered_to == latest
    else:
        moves = (start - watermark).days <= 1 and covered_to > watermark
    return Plan(start, end, covered_to if moves else watermark)


def missing_tables(conn: Connection) -> list[str]:
    """The marts tables the alerts need that do not exist (yet)."""
    found = conn.execute(select(*(func.to_regclass(name) for name in REQUIRED_TABLES))).one()
    return [name for name, oid in zip(REQUIRED_TABLES, found, strict=True) if oid is None]


def begin_consistent_read(conn: Connection) -> None:
    """Start a REPEATABLE READ transaction that sees one committed version of the fact.

    dbt may rebuild the fact during a run: an incremental run deletes and re-inserts a window of
    days, a full refresh swaps in a new table. Planning (the latest day) and recording the alerts
    must not straddle such a commit, so they share one snapshot. The table is locked first because
    LOCK TABLE takes no snapshot: a swap committed after the snapshot but before our first read
    would leave us a new table whose rows that snapshot cannot see (an empty fact). The lock is the
    ACCESS SHARE any select takes: it only makes a swap wait until we commit.
    """
    if conn.in_transaction():
        raise RuntimeError("begin_consistent_read() must start its own transaction")
    conn.execute(text("set transaction isolation level repeatable read"))
    table = conn.dialect.identifier_preparer.format_table(fact)
    conn.execute(text(f"lock table {table} in access share mode"))


def latest_day(conn: Connection) -> date | None:
    return conn.execute(select(func.max(fact.c.balance_date))).scalar_one()


@dataclass(frozen=True)
class RangeStats:
    days_processed: int  # days of the fact inside the range
    first_day: date | None
    last_day: date | None
    moves_from_zero: int  # previous balance 0, new balance not 0: no ratio, so no percentage rule


def range_stats(conn: Connection, start: date, end: date) -> RangeStats:
    from_zero = and_(fact.c.previous_balance_usd == 0, fact.c.balance_usd != fact.c.previous_balance_usd)
    row = conn.execute(
        select(
            func.count(distinct(fact.c.balance_date)),
            func.min(fact.c.balance_date),
            func.max(fact.c.balance_date),
            func.count().filter(from_zero),
        ).where(fact.c.balance_date.between(start, end))
    ).one()
    return RangeStats(days_processed=row[0], first_day=row[1], last_day=row[2], moves_from_zero=row[3])


def alerts_query(start: date, end: date, threshold: Decimal, include_from_zero: bool) -> Select:
    """One row per alerting organization-day in start..end (bound parameters throughout).

    Rule: previous_balance_usd <> 0 and abs(balance_change_ratio) >= threshold; with
    include_from_zero also previous = 0 and a new balance that is not 0 ("new balance").
    """
    by_ratio = and_(
        fact.c.previous_balance_usd != 0,
        func.abs(fact.c.balance_change_ratio) >= literal(threshold, Numeric),
    )
    from_zero = and_(fact.c.previous_balance_usd == 0, fact.c.balance_usd != fact.c.previous_balance_usd)
    rule = or_(by_ratio, from_zero) if include_from_zero else by_ratio
    kind = case((fact.c.previous_balance_usd == 0, NEW_BALANCE), else_=BALANCE_CHANGE)
    return (
        select(
            fact.c.organization_id,
            fact.c.balance_date,
            kind.label("alert_kind"),
            fact.c.previous_balance_usd,
            fact.c.balance_usd,
            fact.c.balance_change_ratio,
        )
        .where(fact.c.balance_date.between(start, end), rule)
        .order_by(fact.c.balance_date, fact.c.organization_id)
    )
