"""Command line: `python -m data_platform.generator --help`."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import timedelta
from pathlib import Path

from data_platform.exports import EXPORTS_FOLDER, date_argument
from data_platform.generator.exports import write_exports
from data_platform.generator.invoices import append_day, generate
from data_platform.generator.values import DEFAULT_DAYS, DEFAULT_END_DATE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="data-platform-generate",
        description="Write deterministic demo invoices.csv, organizations.csv and dated exports in the "
        "production format.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--invoices", type=int, default=25_000, help="invoice rows (default 25000)")
    parser.add_argument(
        "--organizations", type=int, default=400, help="rows of organizations.csv (random ones)"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--end-date", type=date_argument, default=DEFAULT_END_DATE, help="latest day, YYYY-MM-DD"
    )
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS, help="days of history ending at --end-date")
    parser.add_argument(
        "--no-scenario",
        dest="scenario",
        action="store_false",
        help="skip the scenario: its organizations in the base files, its changes in the first export",
    )
    parser.add_argument(
        "--append-day",
        type=int,
        nargs="?",
        const=1,
        metavar="K",
        help="instead: append --invoices rows dated K days (default 1) after --end-date to OUT/invoices.csv; "
        "give the other options as for the original run. Refused while OUT/exports holds dated exports, "
        "which follow the file as it is",
    )
    exports = parser.add_argument_group(
        "dated exports",
        "--next-days N reads OUT/invoices.csv (the base export; give the options of the run that "
        "wrote it) and writes EXPORTS_DIR/<YYYY-MM-DD>/invoices.csv for the N days after --end-date: "
        "each day's new invoices plus status changes of older invoices (open -> paid, cancelled, "
        "credited, ...): only new and changed rows. With the scenario, the first day also pays and "
        "cancels invoices of scenario organizations. A day folder already there is kept when its "
        "invoices.csv is what these options write for that day (so --next-days 2 after --next-days 1 "
        "adds the second day; only missing days are written), and refused otherwise.",
    )
    exports.add_argument("--next-days", type=int, metavar="N", help="instead: write N dated exports")
    exports.add_argument(
        "--new-invoices", type=int, metavar="K", help="new invoices per export (default --invoices / --days)"
    )
    exports.add_argument(
        "--changed-invoices",
        type=int,
        metavar="M",
        help="random older invoices whose status changes, per export (default twice --new-invoices; "
        "the scenario adds its own on the first day)",
    )
    exports.add_argument(
        "--exports-dir",
        type=Path,
        help="where the dated folders go (default OUT/exports); also for the base files' run, whose new base "
        "files are refused while this folder holds dated exports that follow other ones",
    )
    return parser


def _write_exports(args: argparse.Namespace) -> str:
    new = args.new_invoices if args.new_invoices is not None else round(args.invoices / max(1, args.days))
    started = time.perf_counter()
    written = write_exports(
        args.out,
        args.exports_dir or args.out / EXPORTS_FOLDER,
        next_days=args.next_days,
        new_invoices=new,
        changed_invoices=args.changed_invoices if args.changed_invoices is not None else 2 * new,
        organizations=args.organizations,
        seed=args.seed,
        end_date=args.end_date,
        days=args.days,
        scenario=args.scenario,
    )
    lines = [
        f"{'kept' if e.kept else 'wrote'} {e.path}: {e.new:,} new and {e.changed:,} changed invoices"
        + (" (already as these options write it)" if e.kept else "")
        for e in written
    ]
    return "\n".join(lines) + f"\nin {time.perf_counter() - started:.1f}s"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.next_days is not None and args.append_day is not None:
        parser.error("give --next-days or --append-day, not both")
    if args.next_days is None and (args.new_invoices, args.changed_invoices) != (None, None):
        parser.error("--new-invoices and --changed-invoices go with --next-days")
    if args.append_day is not None and args.exports_dir is not None:
        parser.error(
            "--exports-dir goes with --next-days or a run that writes the base files, not --append-day"
        )
    try:
        if args.next_days is not None:
            print(_write_exports(args), file=sys.stderr)
            return 0
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
                exports_dir=args.exports_dir,
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
