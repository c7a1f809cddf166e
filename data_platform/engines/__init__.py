"""The raw ledger on engines other than Postgres, for the same dbt project (DBT_TARGET=duckdb or spark).

Each builder reads the same exports (data_platform.exports) with its engine's own CSV reader and explicit
column types (raw_types), and writes the four raw tables of the Postgres loader with the same ledger
semantics: an invoice gets a new version only when a value changed, absent rows are kept, an export is
loaded once and in date order. Postgres stays the reference: its loader also checks every value's exact
format; these builders rely on their engine's typed CSV reader, which refuses what the type cannot hold.
"""
