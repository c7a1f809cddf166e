"""The raw columns' types in each engine, keyed by the column formats of data_platform.raw_tables.

Decimals keep the places the exports write (numeric(18,2) amounts, numeric(18,8) rates: the formats
allow 16 and 10 integer digits), ids are 64-bit integers, timestamps are instants read as UTC.
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
