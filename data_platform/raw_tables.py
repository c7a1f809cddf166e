"""The raw tables: one spec per CSV file, the single source of their header and column types.

Column names are the lowercased CSV headers. Types follow the raw contract exactly: every *_ID
and TYPE is a signed 64-bit hash (bigint, never float), amounts are exact numerics, and currency
codes are text because `USDC` has four letters. Sentinels stay raw: staging turns them into nulls.

Every numeric, date and timestamp column also gets a CHECK constraint `<column>_is_finite`: Postgres
parses `NaN`, `Infinity` and `-Infinity` (numeric) and `infinity`, `-infinity` (date, timestamptz) as
valid values, and NaN would even pass a downstream `amount > 0` test. The loader maps a violation back
to the file's line, column and value.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

RAW_SCHEMA = "raw"

# What a value of each type must look like: appended to COPY errors so the user knows the fix.
EXPECTED = {
    "bigint": "a signed 64-bit integer",
    "integer": "a 32-bit integer",
    "numeric": "a decimal number such as 12.50",
    "text": "text",
    "date": "a date YYYY-MM-DD",
    "timestamptz": "an ISO-8601 UTC timestamp such as 2023-07-17T04:00:40.096Z",
}


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str
    not_null: bool = False

    @property
    def header(self) -> str:
        return self.name.upper()

    @property
    def expected(self) -> str:
        return EXPECTED[self.sql_type]

    @property
    def check_name(self) -> str:
        return f"{self.name}_is_finite"

    def check(self) -> sql.Composable | None:
        """`constraint <name> check (...)` rejecting the infinite and NaN values, or None.

        A CHECK that evaluates to null passes, so empty (null) values stay allowed where the column
        is nullable. NaN sorts above Infinity in Postgres, so `< 'Infinity'` rejects it too.
        """
        column = sql.Identifier(self.name)
        if self.sql_type == "numeric":
            condition = sql.SQL("{} < 'Infinity' and {} > '-Infinity'").format(column, column)
        elif self.sql_type in ("date", "timestamptz"):
            condition = sql.SQL("isfinite({})").format(column)
        else:
            return None
        return sql.SQL("constraint {} check ({})").format(sql.Identifier(self.check_name), condition)


@dataclass(frozen=True)
class TableSpec:
    name: str
    file_name: str
    columns: tuple[Column, ...]

    @property
    def header(self) -> tuple[str, ...]:
        return tuple(column.header for column in self.columns)

    @property
    def loading_name(self) -> str:
        """The table the load fills before it is swapped in under `name`."""
        return f"{self.name}__loading"

    def column(self, name: str) -> Column | None:
        return next((column for column in self.columns if column.name == name), None)

    def checked_column(self, constraint_name: str) -> Column | None:
        """The column whose CHECK constraint is named `constraint_name`."""
        return next((column for column in self.columns if column.check_name == constraint_name), None)

    def create_statement(self, table: str) -> sql.Composed:
        """`create table raw.<table> (...)` with the contract's columns and CHECK constraints."""
        columns = [
            sql.SQL("{} {}{}").format(
                sql.Identifier(column.name),
                sql.SQL(column.sql_type),
                sql.SQL(" not null" if column.not_null else ""),
            )
            for column in self.columns
        ]
        checks = [check for column in self.columns if (check := column.check()) is not None]
        return sql.SQL("create table {} ({})").format(
            sql.Identifier(RAW_SCHEMA, table), sql.SQL(", ").join(columns + checks)
        )

    @property
    def csv_header(self) -> str:
        """The header line of the CSV file, without line ending."""
        return ",".join(self.header)


INVOICES = TableSpec(
    name="invoices",
    file_name="invoices.csv",
    columns=(
        Column("invoice_id", "bigint", not_null=True),
        Column("parent_invoice_id", "bigint"),
        Column("transaction_id", "bigint"),
        Column("organization_id", "bigint", not_null=True),
        Column("type", "bigint"),
        Column("status", "text", not_null=True),
        Column("currency", "text", not_null=True),
        Column("payment_currency", "text"),
        Column("payment_method", "text"),
        Column("amount", "numeric", not_null=True),
        Column("payment_amount", "numeric"),
        Column("fx_rate", "numeric", not_null=True),
        Column("fx_rate_payment", "numeric"),
        Column("created_at", "timestamptz", not_null=True),
    ),
)

ORGANIZATIONS = TableSpec(
    name="organizations",
    file_name="organizations.csv",
    columns=(
        Column("organization_id", "bigint", not_null=True),
        Column("first_payment_date", "date"),
        Column("last_payment_date", "date"),
        Column("legal_entity_country_code", "bigint"),
        Column("count_total_contracts_active", "integer"),
        Column("created_date", "timestamptz"),
    ),
)

# Load order: organizations first (small), so a bad invoices file fails after the quick part.
TABLES: dict[str, TableSpec] = {spec.name: spec for spec in (ORGANIZATIONS, INVOICES)}
