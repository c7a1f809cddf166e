"""Does the next dbt build need --full-refresh? init.sh asks before every build.

The incremental models recompute only the last `incremental_lookback_days` (dbt_project.yml) before
their latest stored day. Two things change older days, and then only a full rebuild is correct:

- the balance rules (`seeds.invoice_enrichment`) changed: every invoice's contribution may differ;
  compare `rules-fingerprint` before and after `dbt seed`;
- the invoices before the window changed: a late or deleted invoice, a status change, or a different
  file altogether; `history-drift` compares invoice counts per UTC day and status in raw.invoices with
  what the incremental aggregate stored. Counts only: a corrected amount, FX rate or organization on
  an old invoice goes unnoticed (FULL_REFRESH=true init.sh after such a correction).

    python -m data_platform.refresh rules-fingerprint   # an md5, or "none" before the first seed
    python -m data_platform.refresh history-drift       # empty when none, else a one-line reason
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import psycopg
import yaml

from data_platform.db import DatabaseUnavailable, connect

RULES_TABLE = "seeds.invoice_enrichment"
DAILY_TOTALS = "intermediate.int_organization_daily_status_totals"
DBT_PROJECT = Path(__file__).resolve().parents[1] / "dbt" / "dbt_project.yml"

RULES_FINGERPRINT_SQL = f"""
    select md5(coalesce(string_agg(rules::text, '|' order by rules.status), ''))
    from {RULES_TABLE} as rules
"""

# created_date is the UTC date of created_at, exactly as in stg_payments__invoices (the staging
# views do not exist between a load and the next build, so this reads raw directly).
HISTORY_DRIFT_SQL = f"""
    with window_start as (
        select max(created_date) - %(lookback_days)s as first_day from {DAILY_TOTALS}
    ),
    stored as (
        select created_date, status, sum(invoice_count) as invoice_count
        from {DAILY_TOTALS}
        group by created_date, status
    ),
    source as (
        select (created_at at time zone 'utc')::date as created_date, status, count(*) as invoice_count
        from raw.invoices
        group by 1, 2
    )
    select count(*), min(coalesce(stored.created_date, source.created_date))
    from stored
    full outer join source
        on stored.created_date = source.created_date and stored.status = source.status
    cross join window_start
    where
        coalesce(stored.created_date, source.created_date) < window_start.first_day
        and stored.invoice_count is distinct from source.invoice_count
"""


def lookback_days(project_file: Path = DBT_PROJECT) -> int:
    return int(yaml.safe_load(project_file.read_text())["vars"]["incremental_lookback_days"])


def _exists(conn: psycopg.Connection, table: str) -> bool:
    return conn.execute("select to_regclass(%s)", (table,)).fetchone()[0] is not None


def rules_fingerprint(conn: psycopg.Connection) -> str:
    """md5 of the rules in status order, or "none" when the seed was never loaded."""
    if not _exists(conn, RULES_TABLE):
        return "none"
    return conn.execute(RULES_FINGERPRINT_SQL).fetchone()[0]


def history_drift(conn: psycopg.Connection, lookback: int) -> str:
    """Why the stored history no longer matches raw.invoices before the window; empty if it does."""
    if not _exists(conn, DAILY_TOTALS):
        return ""  # nothing stored yet: the build is a full one anyway
    groups, first_day = conn.execute(HISTORY_DRIFT_SQL, {"lookback_days": lookback}).fetchone()
    if not groups:
        return ""
    return (
        f"the invoices changed before the incremental window ({groups} day/status groups differ, "
        f"the first on {first_day})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_platform.refresh",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("check", choices=["rules-fingerprint", "history-drift"])
    args = parser.parse_args(argv)
    try:
        with connect() as conn:
            if args.check == "rules-fingerprint":
                print(rules_fingerprint(conn))
            else:
                print(history_drift(conn, lookback_days()))
    except DatabaseUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
