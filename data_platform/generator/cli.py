"""Command line: `python -m data_platform.generator --help`."""

from __future__ import annotations

import argparse
import sys
from datetime import date, timedelta
from pathlib import Path

from data_platform.generator.invoices import append_day, generate
from data_platform.generator.values import DEFAULT_DAYS, DEFAULT_END_DATE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="data-platform-generate",
        description="Write deterministic demo invoices.csv and organizations.csv in the production format.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--invoices", type=int, default=25_000, help="invoice rows (default 25000)")
    parser.add_argument(
        "--organizations", type=int, default=400, help="rows of organizations.csv (random ones)"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--end-date", type=date.fromisoformat, default=DEFAULT_END_DATE, help="latest day, YYYY-MM-DD"
    )
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS, help="days of history ending at --end-date")
    parser.add_argument(
        "--no-scenario", dest="scenario", action="store_false", help="skip the latest-day scenario"
    )
    parser.add_argument(
        "--append-day",
        type=int,
        nargs="?",
        const=1,
        metavar="K",
        help="instead: append --invoices rows dated K days (default 1) after --end-date to OUT/invoices.csv; "
        "give the other options as for the original run",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.append_day is not None:
            stats = append_day(
                args.out,
                invoices=args.invoices,
                organizations=args.organizations,
                seed=args.seed,
                end_date=args.end_date,
                days=args.days,
                day_offset=args.append_day,
            )
        else:
            stats = generate(
                args.out,
                invoices=args.invoices,
                organizations=args.organizations,
                seed=args.seed,
                end_date=args.end_date,
                days=args.days,
                scenario=args.scenario,
            )
    except (ValueError, OSError) as error:
        print(f"data-platform-generate: {error}", file=sys.stderr)
        return 2
    if args.append_day is not None:
        day = args.end_date + timedelta(days=args.append_day)
        done = f"appended {stats.invoices:,} invoices dated {day} to {args.out / 'invoices.csv'}"
    else:
        done = f"wrote {stats.invoices:,} invoices and {stats.organizations:,} organizations to {args.out}"
    print(f"{done} in {stats.seconds:.1f}s ({stats.rows_per_second:,.0f} rows/s)", file=sys.stderr)
    return 0
