"""The raw layer: the CSV files' columns and exact formats, and the ledger tables they land in.

This module is the single source of the CSV headers, the column types and what a value must look
like. Column names are the lowercased CSV headers. Every *_ID and TYPE is a signed 64-bit hash
(bigint, never float), amounts and rates are exact numerics with the places the export writes,
currency codes are text because `USDC` has four letters. Sentinels stay raw: staging turns them
into nulls.

Each format is an SQL test over the value as text. It accepts exactly what the exports write and
refuses what Postgres would otherwise read into a plausible value: `now`, `epoch`, `1e100000`,
`+5`, `0x10`, `1_000`, `NaN`, `Infinity`, timestamps with an offset other than Z, cut-off values
such as `2024-06-2`. Most tests are round trips (the value cast to its type and written back must
be the text itself), which cost far less than a regular expression per value.

The tables (schema raw) are a ledger, created here if missing and never dropped:
- raw.invoices: the current state, one row per invoice;
- raw.invoice_versions: every version of every invoice, append-only;
- raw.organizations: the current state of the organizations;
- raw.load_log: one row per loaded export;
- raw.file_checksums: the export files' checksums by path, size and times (file_checksums.py).
"""

from __future__ import annotations

import typing
from dataclasses import astuple, dataclass, fields
from datetime import date, datetime

from psycopg import sql

RAW_SCHEMA = "raw"


# Longer than any value a format with a cast accepts (a timestamp with 6 fractional digits: 27 bytes).
# A cast that refuses a value names it whole in its error: a longer value is refused before any cast, so
# a value of hundreds of MiB never travels to the loader inside an error message.
LONGEST_CAST_INPUT_BYTES = 64


@dataclass(frozen=True)
class Format:
    """What a column's text must look like, as SQL over the placeholder {v}."""

    sql_type: str  # the column's type in the raw tables
    expected: str  # for error messages: what a value must look like
    check: str  # true when {v} is in the export's exact format; may raise on garbage
    cast_type: str | None = None  # the type `check` casts to (None: it never raises)
    positive: bool = False  # over 0 (a decimal the models' `positive` tests check): part of `check` too
    # (shortest, longest) characters (a code the models' `length_between` tests check): part of `check` too
    lengths: tuple[int, int] | None = None

    def check_sql(self, value: sql.Composable) -> sql.Composable:
        # joined, not sql.SQL.format: the regular expressions hold braces
        parts = self.check.split("{v}")
        composed: list[sql.Composable] = [sql.SQL(parts[0])]
        for part in parts[1:]:
            composed += [value, sql.SQL(part)]
        if self.cast_type is None:
            return sql.Composed(composed)
        # a CASE, not an AND: only it fixes the order of evaluation
        return sql.SQL("case when octet_length({}) > {} then false else {} end").format(
            value, sql.Literal(LONGEST_CAST_INPUT_BYTES), sql.Composed(composed)
        )

    def safe_check_sql(self, value: sql.Composable) -> sql.Composable:
        """`check` that never raises: for finding the offending value after a failed load."""
        if self.cast_type is None:
            return self.check_sql(value)
        return sql.SQL("case when pg_input_is_valid({}, {}) then {} else false end").format(
            value, sql.Literal(self.cast_type), self.check_sql(value)
        )


def _decimal(
    places: str, scale_test: str, integer_digits: int, example: str, positive: bool = False
) -> Format:
    """positive: over 0, as the models' `positive` tests require: a version stored with 0 or less would fail
    every later build's test, and an export once loaded cannot be corrected in place."""
    return Format(
        "numeric",
        f"a decimal{' over 0' if positive else ''} with {places} such as {example}, at most {integer_digits} "
        "digits before the point",
        f"{{v}}::numeric::text = {{v}} and scale({{v}}::numeric) {scale_test} "
        f"and abs({{v}}::numeric) < 1e{integer_digits}" + (" and {v}::numeric > 0" if positive else ""),
        "numeric",
        positive,
    )


INT64 = Format(
    "bigint",
    "a signed 64-bit integer in plain digits, such as -4611686018427387905",
    "{v}::bigint::text = {v}",
    "bigint",
)
INT32 = Format("integer", "an integer in plain digits, such as 12", "{v}::integer::text = {v}", "integer")
# numeric(18,2)-sized amounts and numeric(18,8)-sized rates: refused, never rounded
AMOUNT = _decimal("exactly 2 places", "= 2", 16, "12.50", positive=True)
PAYMENT_AMOUNT = _decimal("0 to 2 places", "<= 2", 16, "100, 100.5 or 100.25")
FX_RATE = _decimal("exactly 8 places", "= 8", 10, "1.00000000", positive=True)
RATE = _decimal("exactly 8 places", "= 8", 10, "1.00000000")
DATE = Format("date", "a date YYYY-MM-DD", "length({v}) = 10 and {v}::date::text = {v}", "date")
# the text up to the seconds must be the timestamp's own UTC rendering (the load sets timezone UTC
# and datestyle ISO): no offset, no keyword, no cut-off; then Z, or a point, 1 to 6 ASCII digits and Z
# (the cast reads `.5 Z`, `.0e0Z` or `.Zx0Z` too). The rest being ASCII, bytes count as characters:
# octet_length and ltrim cost what the looser test did, a regular expression a fifth more.
TIMESTAMP = Format(
    "timestamptz",
    "an ISO-8601 UTC timestamp such as 2023-07-17T04:00:40.096Z (0 to 6 fractional digits, then Z)",
    "substr({v}, 11, 1) = 'T' "
    "and (octet_length({v}) = 20 and right({v}, 1) = 'Z' "
    "or octet_length({v}) between 22 and 27 and substr({v}, 20, 1) = '.' "
    "and ltrim(substr({v}, 21), '0123456789') = 'Z') "
    "and left({v}::timestamptz::text, 19) = replace(left({v}, 19), 'T', ' ')",
    "timestamptz",
)
_SHORTEST_CODE, _LONGEST_CODE = 3, 4  # as the models' length_between tests on currency codes say
CURRENCY = Format(
    "text",
    f"{_SHORTEST_CODE} or {_LONGEST_CODE} capital letters such as USD or USDC",
    "{v} ~ '^[A-Z]{" + f"{_SHORTEST_CODE},{_LONGEST_CODE}" + "}$'",
    lengths=(_SHORTEST_CODE, _LONGEST_CODE),
)
STATUS = Format("text", "a lowercase status such as paid or open", "{v} ~ '^[a-z][a-z_]*$'")
# "" is an empty text to CSV, no value an empty field: a quoted empty value would be a version of its own
TEXT = Format("text", "text that is not empty", "{v} <> ''")


@dataclass(frozen=True)
class Column:
    name: str
    format: Format
    not_null: bool = False

    @property
    def header(self) -> str:
        return self.name.upper()

    @property
    def sql_type(self) -> str:
        return self.format.sql_type

    @property
    def expected(self) -> str:
        return self.format.expected

    def definition(self) -> sql.Composable:
        return sql.SQL("{} {}{}").format(
            sql.Identifier(self.name), sql.SQL(self.sql_type), sql.SQL(" not null" if self.not_null else "")
        )


@dataclass(frozen=True)
class TableSpec:
    name: str
    file_name: str
    columns: tuple[Column, ...]

    @property
    def header(self) -> tuple[str, ...]:
        return tuple(column.header for column in self.columns)

    @property
    def csv_header(self) -> str:
        """The header line of the CSV file, without line ending."""
        return ",".join(self.header)

    @property
    def key(self) -> Column:
        return self.columns[0]

    @property
    def text_columns(self) -> tuple[Column, ...]:
        return tuple(column for column in self.columns if column.sql_type == "text")

    def column(self, name: str) -> Column | None:
        return next((column for column in self.columns if column.name == name), None)

    def names(self, prefix: str | None = None) -> sql.Composable:
        """The CSV columns as an SQL list, optionally qualified: `prefix.invoice_id, ...`."""
        if prefix is None:
            return sql.SQL(", ").join(sql.Identifier(column.name) for column in self.columns)
        return sql.SQL(", ").join(sql.Identifier(prefix, column.name) for column in self.columns)


INVOICES = TableSpec(
    name="invoices",
    file_name="invoices.csv",
    columns=(
        Column("invoice_id", INT64, not_null=True),
        Column("parent_invoice_id", INT64),
        Column("transaction_id", INT64),
        Column("organization_id", INT64, not_null=True),
        Column("type", INT64),
        Column("status", STATUS, not_null=True),
        Column("currency", CURRENCY, not_null=True),
        Column("payment_currency", CURRENCY),
        Column("payment_method", TEXT),
        Column("amount", AMOUNT, not_null=True),
        Column("payment_amount", PAYMENT_AMOUNT),
        Column("fx_rate", FX_RATE, not_null=True),
        Column("fx_rate_payment", RATE),
        Column("created_at", TIMESTAMP, not_null=True),
    ),
)

ORGANIZATIONS = TableSpec(
    name="organizations",
    file_name="organizations.csv",
    columns=(
        Column("organization_id", INT64, not_null=True),
        Column("first_payment_date", DATE),
        Column("last_payment_date", DATE),
        Column("legal_entity_country_code", INT64),
        Column("count_total_contracts_active", INT32),
        Column("created_date", TIMESTAMP),
    ),
)

TABLES: dict[str, TableSpec] = {spec.name: spec for spec in (ORGANIZATIONS, INVOICES)}


def _table(name: str) -> sql.Identifier:
    return sql.Identifier(RAW_SCHEMA, name)


def _columns(spec: TableSpec) -> list[sql.Composable]:
    return [column.definition() for column in spec.columns]


@dataclass(frozen=True)
class LoadLogRow:
    """One row of raw.load_log, a loaded export: every engine's ledger logs these columns, in this order."""

    export_date: date
    source: str
    invoices_sha256: str
    organizations_sha256: str | None  # None: the export has no organizations file
    invoice_rows: int
    invoices_new: int
    invoices_changed: int
    invoices_unchanged: int
    organization_rows: int
    organizations_new: int
    organizations_changed: int
    loaded_at: datetime
    duration_seconds: float

    @staticmethod
    def names() -> list[str]:
        return [field.name for field in fields(LoadLogRow)]

    def values(self) -> tuple:
        return astuple(self)


def load_log_columns(types: dict[type, str], *, not_null: bool = True) -> list[str]:
    """raw.load_log's column definitions from an engine's types for date, str, int, datetime, float;
    every column but organizations_sha256 `not null` unless not_null=False."""
    definitions = []
    for name, hint in typing.get_type_hints(LoadLogRow).items():
        optional = typing.get_args(hint)  # (str, NoneType) for `str | None`, () for a plain type
        python_type = optional[0] if optional else hint
        constraint = " not null" if not_null and not optional else ""
        definitions.append(f"{name} {types[python_type]}{constraint}")
    return definitions


POSTGRES_LOG_TYPES = {date: "date", str: "text", int: "bigint", datetime: "timestamptz", float: "numeric"}


# every relation create_statements() makes
LEDGER_RELATIONS = (
    "invoices",
    "invoice_versions",
    "organizations",
    "load_log",
    "file_checksums",
)


# Indexes earlier releases created and the ledger no longer keeps: dropped once from an existing warehouse.
# raw.invoices' index on seen_on made every status change write each index of the current state;
# raw.invoice_versions' primary key (seen_on, invoice_id) serves what its seen_on index did.
RETIRED_INDEXES = ("invoices_seen_on", "invoice_versions_seen_on")


# A version is found by its export day and invoice: a day's versions are one range of the key (what an
# incremental build reads), its new entries all go to the key's end (random invoice ids scattered a day's
# 30,000 entries over as many pages, each read and logged whole), and a version's predecessor is the one
# seen on its previous_seen_on.
VERSIONS_KEY = "primary key (seen_on, invoice_id)"

# For a history written before previous_seen_on existed (Postgres and DuckDB; {versions}: the table).
FILL_PREVIOUS_SEEN_ON = """
    update {versions} as later
    set previous_seen_on = earlier.seen_on
    from {versions} as earlier
    where
        later.version > 1
        and earlier.invoice_id = later.invoice_id and earlier.version = later.version - 1
"""


def create_statements() -> list[sql.Composable]:
    """The raw ledger's DDL, every statement idempotent: nothing is ever dropped or replaced."""
    invoices = sql.SQL(", ").join(
        [
            *_columns(INVOICES),
            sql.SQL("version integer not null"),
            sql.SQL("first_seen_on date not null"),
            sql.SQL("seen_on date not null"),
            sql.SQL("primary key (invoice_id)"),
        ]
    )
    versions = sql.SQL(", ").join(
        [
            *_columns(INVOICES),
            sql.SQL("version integer not null"),
            sql.SQL("seen_on date not null"),
            sql.SQL("previous_seen_on date"),
            sql.SQL(VERSIONS_KEY),
        ]
    )
    organizations = sql.SQL(", ").join(
        [*_columns(ORGANIZATIONS), sql.SQL("seen_on date not null"), sql.SQL("primary key (organization_id)")]
    )
    return [
        # Room on each page for a changed invoice's new row, next to the old one. Only the key is indexed,
        # so that row replaces the old one in place (a HOT update) and writes no index entry.
        sql.SQL("create table if not exists {} ({}) with (fillfactor = 90)").format(
            _table("invoices"), invoices
        ),
        sql.SQL("create table if not exists {} ({})").format(_table("invoice_versions"), versions),
        sql.SQL("create table if not exists {} ({})").format(_table("organizations"), organizations),
        sql.SQL("create table if not exists {} ({}, primary key (export_date))").format(
            _table("load_log"), sql.SQL(", ").join(map(sql.SQL, load_log_columns(POSTGRES_LOG_TYPES)))
        ),
        sql.SQL(
            """create table if not exists {} (
                path text primary key,
                size_bytes bigint not null,
                modified_ns bigint not null,
                changed_ns bigint not null,
                sha256 text not null
            )"""
        ).format(_table("file_checksums")),
    ]
