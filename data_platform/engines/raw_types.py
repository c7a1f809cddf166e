"""The raw columns' types in each engine, keyed by the column formats of data_platform.raw_tables.

Decimals hold what the Postgres loader's formats allow (amounts 2 places and at most 16 integer digits:
decimal(18,2); rates 8 places and at most 10: decimal(18,8)), ids are 64-bit integers, timestamps are
instants in UTC.

These are only the types the engines' CSV readers cast to, not the loader's format checks (raw_tables'
Format.check): a value the cast accepts is loaded even where the Postgres loader refuses it. DuckDB rounds
extra decimal places (12.345 -> 12.35, 1.000000005 -> 1.00000001), reads `1e3` as the id 1000, a
cut-off or time-less CREATED_AT (`2024-06-2`) as midnight UTC of that day, and converts other offsets
(`-02:00`) to UTC; Spark's reader is lenient in its own ways (not catalogued here; it reads a quoted
empty text, "", as no value). What no cast refuses but the loader does is checked after the read, in
both engines (value_checks): an empty required value, a quoted empty text (DuckDB), a NUL byte, an
amount or rate of 0 or less, a currency code of a length the models' tests refuse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from data_platform.load_errors import (
    NUL_BYTE,
    REQUIRED_VALUE_EMPTY,
    LoadError,
    not_in_format,
    quoted_empty_text,
)
from data_platform.raw_tables import (
    AMOUNT,
    CURRENCY,
    DATE,
    FX_RATE,
    INT32,
    INT64,
    PAYMENT_AMOUNT,
    RATE,
    STATUS,
    TEXT,
    TIMESTAMP,
    Column,
    Format,
    TableSpec,
)

DUCKDB: dict[Format, str] = {
    INT64: "BIGINT",
    INT32: "INTEGER",
    AMOUNT: "DECIMAL(18,2)",
    PAYMENT_AMOUNT: "DECIMAL(18,2)",
    FX_RATE: "DECIMAL(18,8)",
    RATE: "DECIMAL(18,8)",
    DATE: "DATE",
    TIMESTAMP: "TIMESTAMPTZ",
    CURRENCY: "VARCHAR",
    STATUS: "VARCHAR",
    TEXT: "VARCHAR",
}

SPARK: dict[Format, str] = {
    INT64: "bigint",
    INT32: "int",
    AMOUNT: "decimal(18,2)",
    PAYMENT_AMOUNT: "decimal(18,2)",
    FX_RATE: "decimal(18,8)",
    RATE: "decimal(18,8)",
    DATE: "date",
    TIMESTAMP: "timestamp",
    CURRENCY: "string",
    STATUS: "string",
    TEXT: "string",
}


# raw.load_log's columns by their Python type (raw_tables.load_log_columns)
DUCKDB_LOG_TYPES = {date: "DATE", str: "VARCHAR", int: "BIGINT", datetime: "TIMESTAMPTZ", float: "DOUBLE"}
SPARK_LOG_TYPES = {date: "date", str: "string", int: "bigint", datetime: "timestamp", float: "double"}


def column_types(spec: TableSpec, types: dict[Format, str]) -> dict[str, str]:
    """{column name: engine type} in the CSV's column order."""
    return {column.name: types[column.format] for column in spec.columns}


@dataclass(frozen=True)
class ValueCheck:
    column: Column
    refused: str  # SQL, in DuckDB's and Spark's dialect alike: true for a value the loader refuses
    reason: str
    shown: str | None  # the value the message shows: "" for an empty one; a NUL byte's is not shown


def value_checks(spec: TableSpec) -> list[ValueCheck]:
    """The loader's refusals that a typed CSV read lets through: a required value left empty (read as
    null: an INVOICE_ID null would never match its current row, and be added again by every export), a
    quoted empty text, a NUL byte in a text, an amount or rate of 0 or less, a currency code shorter or
    longer than the models' tests allow."""
    checks = []
    for column in spec.columns:
        name, text = column.name, column.sql_type == "text"
        if column.not_null:
            empty = f"{name} is null or {name} = ''" if text else f"{name} is null"
            checks.append(ValueCheck(column, empty, REQUIRED_VALUE_EMPTY, ""))
        elif text:
            checks.append(ValueCheck(column, f"{name} = ''", quoted_empty_text(column.expected), ""))
        if text:
            checks.append(ValueCheck(column, f"instr({name}, chr(0)) > 0", NUL_BYTE, None))
        # stored, these would fail every later build's test, and a loaded export is never corrected
        if column.format.positive:
            checks.append(ValueCheck(column, f"{name} <= 0", not_in_format(column.expected), None))
        if column.format.lengths:
            shortest, longest = column.format.lengths
            wrong_length = f"length({name}) not between {shortest} and {longest}"
            checks.append(ValueCheck(column, wrong_length, not_in_format(column.expected), None))
    return checks


def value_check_columns(spec: TableSpec) -> list[str]:
    """SQL expressions over the read rows: per check, how many values it refuses and the lowest key of
    their rows (what refuse_values reads, in this order)."""
    return [
        expression
        for check in value_checks(spec)
        for expression in (
            f"sum(case when {check.refused} then 1 else 0 end)",
            f"min(case when {check.refused} then {spec.key.name} end)",
        )
    ]


def refuse_values(path: Path, spec: TableSpec, found: Sequence) -> None:
    """LoadError for the first check that refused a value, from the row of value_check_columns."""
    for check, count, key in zip(value_checks(spec), found[0::2], found[1::2], strict=True):
        if count:
            first = f", the lowest {spec.key.header} {key}" if key is not None else ""
            raise LoadError(
                path, f"{check.reason} ({count} row(s){first})", column=check.column.header, value=check.shown
            )
