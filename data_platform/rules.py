"""Fingerprint of the balance rules (the `seeds.invoice_enrichment` table).

The incremental models only recompute a trailing window, but a rule change alters every invoice's
contribution back to the first day. init.sh compares the fingerprint before and after `dbt seed`
and rebuilds from scratch when the rules changed.

    python -m data_platform.rules fingerprint   # prints an md5, or "none" before the first seed
"""

from __future__ import annotations

import argparse
import sys

from data_platform.db import DatabaseUnavailable, connect

RULES_TABLE = "seeds.invoice_enrichment"


def rules_fingerprint() -> str:
    """md5 of the rules table's rows in status order, or "none" when it does not exist yet."""
    with connect() as conn:
        exists = conn.execute("select to_regclass(%s)", (RULES_TABLE,)).fetchone()[0]
        if exists is None:
            return "none"
        fingerprint = f"""
            select md5(coalesce(string_agg(rules::text, '|' order by rules.status), ''))
            from {RULES_TABLE} as rules
        """
        return conn.execute(fingerprint).fetchone()[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_platform.rules", description=__doc__)
    parser.add_argument("command", choices=["fingerprint"])
    parser.parse_args(argv)
    try:
        print(rules_fingerprint())
    except DatabaseUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
