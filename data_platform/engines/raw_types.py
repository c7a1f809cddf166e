"""The raw columns' types in each engine, keyed by the column formats of data_platform.raw_tables.

Decimals have the places of the Postgres raw columns (numeric(18,2) amounts, numeric(18,8) rates: the
formats allow 16 and 10 integer digits), ids are 64-bit integers, timestamps are instants in UTC.

These are only the types the engines' CSV readers cast to, not the loader's format checks (raw_tables'
Format.check): a value the cast accepts is loaded even where the Postgres loader refuses it. DuckDB rounds
extra decimal places (12.345 -> 12.35, 1.000000005 -> 1.00000001), reads `1e3` as the id 1000, a
cut-off or time-less CREATED_AT (`2024-06-2`) as midnight UTC of that day, and converts other offsets
(`-02:00`) to UTC; Spark's reader is lenient in its own ways (not catalogued here).
"""

from __future__ import annotations

from datetime import date, datetime

from data_platform.raw_tables import (
    AMOUNT,
    CURRENCY,
    DATE,
    INT32,
    INT64,
    PAYMENT_AMOUNT,
    RATE,
    STATUS,
    TEXT,
    TIMESTAMP,
    Format,
    TableSpec,
)

DUCKDB: dict[Format, str] = {
    INT64: "BIGINT",
    INT32: "INTEGER",
    AMOUNT: "DECIMAL(18,2)",
    PAYMENT_AMOUNT: "DECIMAL(18,2)",
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
