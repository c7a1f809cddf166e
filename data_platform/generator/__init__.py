"""Deterministic, streaming generator of demo invoices.csv and organizations.csv, and of dated exports.

The files match the production format exactly (csv_data/README.md): no quoting, LF line ends, a header,
empty unquoted fields for nulls, signed 64-bit hash ids, the empty-value hash as sentinel in
PARENT_INVOICE_ID / TRANSACTION_ID, FX rates as currency units per 1 USD with 8 places.

Shape of the data (all driven by one seed, same arguments -> same bytes):
- organizations get Zipf weights (a few very large, a long tail) and a first active day, so the
  population grows over the history; about 10% of invoice rows go to orphan organization ids that are
  deliberately left out of organizations.csv;
- daily volume grows over the history, dips at weekends and spikes on the first of the month;
- statuses are dominated by `paid`, all 11 appear; some paid rows have no PAYMENT_AMOUNT;
- 26 currencies (USDC among them) whose FX rates follow a small mean-reverting daily random walk.

The scenario step (on by default, `--no-scenario` to drop it) adds a handful of dedicated organizations
with hand-written invoices (`SCENARIO`), so the latest day always has organizations whose balance moves
by >= 50%, some that move less, and some whose previous balance is zero. They take part of the
--invoices budget and never get random invoices, so their balances are exactly as written.

Dated exports (`--next-days`) follow the base files: each day's new invoices plus status changes of older
ones (exports.py), the first of them with the scenario's payments and cancellations (`NEXT_DAY_SCENARIO`).

Modules: values (headers, ids, currencies, FX), organizations, scenario, invoices (the base files),
exports (the dated exports), cli.
"""

from data_platform.generator.cli import main
from data_platform.generator.invoices import BATCH_ROWS, GenerationStats, append_day, generate, invoice_chunks
from data_platform.generator.organizations import Organization, build_organizations
from data_platform.generator.scenario import SCENARIO, SCENARIO_ROWS, scenario_organization_ids
from data_platform.generator.values import (
    CURRENCIES,
    DEFAULT_DAYS,
    DEFAULT_END_DATE,
    INVOICES_HEADER,
    ORGANIZATIONS_HEADER,
    SENTINEL,
)

__all__ = [
    "BATCH_ROWS",
    "CURRENCIES",
    "DEFAULT_DAYS",
    "DEFAULT_END_DATE",
    "INVOICES_HEADER",
    "ORGANIZATIONS_HEADER",
    "SCENARIO",
    "SCENARIO_ROWS",
    "SENTINEL",
    "GenerationStats",
    "Organization",
    "append_day",
    "build_organizations",
    "generate",
    "invoice_chunks",
    "main",
    "scenario_organization_ids",
]
