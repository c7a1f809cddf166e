"""The raw ledger as Spark (Parquet) tables from the CSV exports: `python -m data_platform.engines.spark_raw`.

Spark's CSV reader reads each file with the raw layer's column types (raw_types.SPARK, FAILFAST: a value
the type cannot hold stops the load), quoted as the loader's COPY reads it; a file whose quoted values hold
line breaks is read again whole, in one task. The pending exports are applied in date order to the current
state in memory, as the Postgres loader applies them in SQL, and the four raw tables are then written:
raw.invoice_versions and raw.load_log appended, raw.invoices and raw.organizations rewritten. Parquet
tables have no transactions: a failed write can leave a partial ledger, to be rebuilt from scratch
(delete SPARK_WAREHOUSE_DIR and SPARK_METASTORE_DIR). Then `DBT_TARGET=spark dbt build`.

The session matches the `spark` target of .dbt/profiles.yml (local mode, UTC, the same warehouse and
metastore directories), so dbt sees these tables. One process at a time: the metastore is an embedded
Derby database, and a second load is refused at once (one_load_at_a_time).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping
from datetime import date, timedelta
from pathlib import Path

from data_platform import exports as export_discovery
from data_platform.csv_files import Unchanged, check_header, refuse_cut_off
from data_platform.engines.export_log import (
    Checksums,
    log_row,
    needs_load,
    refuse_empty,
    refuse_reloaded,
    refuse_undated,
)
from data_platform.engines.raw_types import (
    SPARK,
    SPARK_LOG_TYPES,
    column_types,
    refuse_values,
    value_check_columns,
)
from data_platform.exports import Export
from data_platform.load_errors import ALLOW_EMPTY_HELP, LoadError, future_invoices, utc_today
from data_platform.raw_tables import INVOICES, ORGANIZATIONS, RAW_SCHEMA, TableSpec, load_log_columns

LOAD_LOG_SCHEMA = ", ".join(load_log_columns(SPARK_LOG_TYPES, not_null=False))
# the folders' variables and defaults, as the dbt profile's spark target has them
WAREHOUSE_VARIABLE, DEFAULT_WAREHOUSE_DIR = "SPARK_WAREHOUSE_DIR", "spark-warehouse"
METASTORE_VARIABLE, DEFAULT_METASTORE_DIR = "SPARK_METASTORE_DIR", "spark-metastore"
LOCK_FILE = "data_platform-load.lock"
LOCK_HELD = "DATA_PLATFORM_SPARK_LOCK_HELD"  # set by engines.build, which holds the lock for its steps
REPLACEMENT_CHARACTER = "\ufffd"  # what Spark's reader puts in place of bytes that are not UTF-8


def directories(environ: Mapping[str, str] | None = None) -> tuple[Path, Path]:
    """The warehouse and metastore directories, as the dbt profile's spark target reads them."""
    environ = os.environ if environ is None else environ
    warehouse = Path(environ.get(WAREHOUSE_VARIABLE) or DEFAULT_WAREHOUSE_DIR).resolve()
    metastore = Path(environ.get(METASTORE_VARIABLE) or DEFAULT_METASTORE_DIR).resolve()
    return warehouse, metastore


def session():
    from pyspark.sql import SparkSession

    warehouse, metastore = directories()
    return (
        SparkSession.builder.master(f"local[{os.environ.get('DBT_THREADS', '').strip() or '2'}]")
        .appName("data_platform raw ledger")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.warehouse.dir", str(warehouse))
        .config("spark.driver.extraJavaOptions", f"-Dderby.system.home={metastore}")
        .config("spark.ui.enabled", "false")
        .enableHiveSupport()
        .getOrCreate()
    )


def _table(name: str) -> str:
    return f"{RAW_SCHEMA}.{name}"


def _read(spark, spec: TableSpec, path: Path):
    check_header(spec, path)
    schema = ", ".join(f"{name} {sql_type}" for name, sql_type in column_types(spec, SPARK).items())

    def typed(**options):
        # CSV as the loader's COPY reads it: a doubled quote is one quote, a backslash a plain character
        # (Spark's default escape is the backslash)
        return spark.read.csv(
            str(path), schema=schema, header=True, mode="FAILFAST", nullValue="", escape='"', **options
        ).localCheckpoint()

    try:
        frame = typed()
    except Exception as error:  # py4j or pyspark errors
        if _malformed_record(error) is None:
            raise LoadError(path, f"Spark cannot read it: {_first_line(error)}") from None
        # a quoted value may hold a line break, which only a whole-file read (one task: slower) can take
        try:
            frame = typed(multiLine=True)
        except Exception as error:
            raise LoadError(
                path, f"Spark cannot read it with the raw column types: {_reason(error)}"
            ) from None
        _refuse_crlf_inside_values(frame, spec, path)
    from pyspark.sql import functions as F

    duplicate = frame.groupBy(spec.key.name).count().where(F.col("count") > 1).first()
    if duplicate:
        raise LoadError(
            path,
            f"{spec.key.header} {duplicate[0]} appears {duplicate[1]} times: an export holds each one once",
            column=spec.key.header,
        )
    return frame


def _refuse_crlf_inside_values(frame, spec: TableSpec, path: Path) -> None:
    """A file whose lines end in CRLF, and whose quoted values hold line breaks (so CRLFs too): Spark's
    whole-file reader stores each as LF, where Postgres and DuckDB keep CRLF, and an export read again later
    would seem to change those invoices."""
    with path.open("rb") as file:
        header = file.readline(1 << 16)
    if not header.endswith(b"\r\n") or not spec.text_columns:
        return
    broken = " or ".join(f"instr({column.name}, '\\n') > 0" for column in spec.text_columns)
    if frame.where(broken).limit(1).count():
        raise LoadError(
            path,
            "its lines end in CRLF and a quoted value holds a line break, which Spark's reader would store "
            "as LF (Postgres and DuckDB keep CRLF): give the file LF line endings, or load it on Postgres or "
            "DuckDB",
        )


_MALFORMED_RECORD = re.compile(
    r"Malformed records are detected in record parsing: (.*?)\.?\s*Parse Mode", re.S
)


def _malformed_record(error: Exception) -> str | None:
    """The record the reader refused, as far as it parsed it, from the Java stack's message; None for
    another error."""
    found = _MALFORMED_RECORD.search(str(error))
    return found.group(1) if found else None


def _reason(error: Exception) -> str:
    record = _malformed_record(error)
    if record is None:
        return _first_line(error)
    return (
        f"a record it cannot parse, read as {record!r} (a null where the file has a value is a value its "
        "column's type cannot hold; else a record cut short or a quote never closed)"
    )


def _first_line(error: Exception) -> str:
    """The error's first line; from a Java stack (Py4J), the Java exception's, not "An error occurred while
    calling o38.localCheckpoint."."""
    text = str(error).strip()
    _, java, thrown = text.partition("\n: ")
    text = thrown.strip() if java and thrown.strip() else text
    return text.splitlines()[0] if text else type(error).__name__


def _refuse_values(frame, spec: TableSpec, path: Path) -> None:
    """What the loader refuses and the typed read took (raw_types.value_checks), in an export to load; and
    text Spark's reader decoded with U+FFFD in place of bytes that are not UTF-8, which the loader refuses
    (stored, the text would be changed for good)."""
    checks = value_check_columns(spec)
    replaced = [
        f"min(case when instr({column.name}, '{REPLACEMENT_CHARACTER}') > 0 then {spec.key.name} end)"
        for column in spec.text_columns
    ]
    found = frame.selectExpr(*checks, *replaced).first()  # one pass over the file's rows for both
    refuse_values(path, spec, found[: len(checks)])
    for column, key in zip(spec.text_columns, found[len(checks) :], strict=True):
        if key is not None:
            raise LoadError(
                path,
                f"bytes that are not UTF-8, or U+FFFD (the lowest {spec.key.header} {key}): the file must be "
                "UTF-8, and Spark's reader would store U+FFFD in place of such bytes",
                column=column.header,
            )


def _changes(incoming, current, spec: TableSpec):
    """The incoming rows that are new or differ from the current ones, with the current row's columns
    prefixed `current_` (null for a new row)."""
    from pyspark.sql import functions as F

    key = spec.key.name
    renamed = current.select([F.col(name).alias(f"current_{name}") for name in current.columns])
    joined = incoming.join(renamed, incoming[key] == renamed[f"current_{key}"], "left")
    differs = F.lit(False)
    for column in spec.columns:
        differs = differs | ~F.col(column.name).eqNullSafe(F.col(f"current_{column.name}"))
    return joined.where(F.col(f"current_{key}").isNull() | differs).localCheckpoint()


class SparkLedger:
    """The raw tables' current state in memory, with the exports applied since it was read."""

    def __init__(self, spark):
        from pyspark.sql import functions as F

        self.spark = spark
        self.F = F
        spark.sql(f"create database if not exists {RAW_SCHEMA}")
        self.invoices = self._current("invoices", INVOICES, "version int, first_seen_on date, seen_on date")
        self.organizations = self._current("organizations", ORGANIZATIONS, "seen_on date")
        self._add_previous_seen_on()
        self.new_versions = []
        self.log_rows = []
        self.logged = {}
        self.sources = {}
        if spark.catalog.tableExists(_table("load_log")):
            for row in spark.table(_table("load_log")).collect():
                self.logged[row.export_date] = Checksums(row.invoices_sha256, row.organizations_sha256)
                self.sources[row.export_date] = row.source

    def _current(self, name: str, spec: TableSpec, extra: str):
        if self.spark.catalog.tableExists(_table(name)):
            return self.spark.table(_table(name)).localCheckpoint()
        columns = ", ".join(f"{n} {t}" for n, t in column_types(spec, SPARK).items())
        return self.spark.createDataFrame([], f"{columns}, {extra}")

    def _add_previous_seen_on(self) -> None:
        """A history written by an earlier release gets each version's previous_seen_on, once. Like every
        write here, the rewrite is not atomic (see the module's docstring)."""
        from pyspark.sql import Window

        F, table = self.F, _table("invoice_versions")
        if not self.spark.catalog.tableExists(table):
            return
        versions = self.spark.table(table)
        if "previous_seen_on" in versions.columns:
            return
        earlier = F.lag("seen_on").over(Window.partitionBy("invoice_id").orderBy("version"))
        rewritten = versions.withColumn("previous_seen_on", earlier).localCheckpoint()
        rewritten.write.format("parquet").mode("overwrite").saveAsTable(table)

    def apply(self, export: Export, *, allow_empty: bool = False, today: date | None = None) -> date | None:
        """Apply one export to the state in memory; its date, or None when it was loaded already. today: the
        UTC date no export may be after (default: today's)."""
        F = self.F
        today = today or utc_today()
        started = time.monotonic()
        unchanged = Unchanged.now(export.files)  # before any file is read
        with unchanged.reading():
            incoming = _read(self.spark, INVOICES, export.invoices)
        export_date = export.date or incoming.select(F.max(F.to_date("created_at"))).first()[0]
        checksums = Checksums.of(export)
        unchanged.check()  # the checksums are of the rows read
        invoice_rows = incoming.count()
        if export_date is not None and not needs_load(
            export,
            export_date,
            checksums,
            self.logged,
            today=today,
        ):
            return None
        refuse_empty(export.invoices, invoice_rows, INVOICES.name, allow_empty=allow_empty)
        refuse_cut_off(export.invoices)
        _refuse_values(incoming, INVOICES, export.invoices)
        export_date = refuse_undated(export, export_date)
        _refuse_future_invoices(incoming, export, export_date)
        day = F.lit(export_date)
        changes = _changes(incoming, self.invoices, INVOICES)
        new, changed = changes.select(
            F.count(F.when(F.col("current_invoice_id").isNull(), 1)),
            F.count(F.when(F.col("current_invoice_id").isNotNull(), 1)),
        ).first()
        refuse_reloaded(
            export.invoices,
            checksums.invoices,
            changed,
            export_date,
            {earlier: logged.invoices for earlier, logged in self.logged.items()},
            self.sources,
        )
        self._apply_invoices(changes, day)
        organization_rows, organizations_new, organizations_changed = (
            self._apply_organizations(export, unchanged, day, allow_empty)
            if export.organizations
            else (0, 0, 0)
        )

        self.logged[export_date] = checksums
        self.sources[export_date] = export.logged_source
        self.log_rows.append(
            log_row(
                export,
                export_date,
                checksums,
                invoice_rows=invoice_rows,
                invoices=(new, changed),
                organization_rows=organization_rows,
                organizations=(organizations_new, organizations_changed),
                started=started,
            ).values()
        )
        return export_date

    def _apply_invoices(self, changes, day) -> None:
        """Each new or changed invoice: a new version, and its current state."""
        F = self.F
        names = [column.name for column in INVOICES.columns]
        version = (F.coalesce(F.col("current_version"), F.lit(0)) + 1).cast("int")
        self.new_versions.append(
            changes.select(
                *names,
                version.alias("version"),
                day.alias("seen_on"),
                F.col("current_seen_on").alias("previous_seen_on"),
            )
        )
        replaced = changes.select(
            *names,
            version.alias("version"),
            F.coalesce(F.col("current_first_seen_on"), day).alias("first_seen_on"),
            day.alias("seen_on"),
        )
        kept = self.invoices.join(changes.select("invoice_id"), "invoice_id", "left_anti")
        self.invoices = kept.unionByName(replaced).localCheckpoint()

    def _apply_organizations(
        self, export: Export, unchanged: Unchanged, day, allow_empty: bool
    ) -> tuple[int, int, int]:
        """The export's organizations file read, checked and applied: (rows, new, changed)."""
        F = self.F
        with unchanged.reading():
            incoming = _read(self.spark, ORGANIZATIONS, export.organizations)
        rows = incoming.count()
        refuse_empty(export.organizations, rows, ORGANIZATIONS.name, allow_empty=allow_empty)
        refuse_cut_off(export.organizations)
        _refuse_values(incoming, ORGANIZATIONS, export.organizations)
        changes = _changes(incoming, self.organizations, ORGANIZATIONS)
        new, changed = changes.select(
            F.count(F.when(F.col("current_organization_id").isNull(), 1)),
            F.count(F.when(F.col("current_organization_id").isNotNull(), 1)),
        ).first()
        names = [column.name for column in ORGANIZATIONS.columns]
        kept = self.organizations.join(changes.select("organization_id"), "organization_id", "left_anti")
        self.organizations = kept.unionByName(changes.select(*names, day.alias("seen_on"))).localCheckpoint()
        return rows, new, changed

    def write(self) -> None:
        """Append the new versions and log rows; rewrite the current state (held in checkpoints)."""
        for frame in self.new_versions:
            frame.write.format("parquet").mode("append").saveAsTable(_table("invoice_versions"))
        self.invoices.write.format("parquet").mode("overwrite").saveAsTable(_table("invoices"))
        self.organizations.write.format("parquet").mode("overwrite").saveAsTable(_table("organizations"))
        log = self.spark.createDataFrame(self.log_rows, LOAD_LOG_SCHEMA)
        log.write.format("parquet").mode("append").saveAsTable(_table("load_log"))


def _refuse_future_invoices(incoming, export: Export, export_date: date) -> None:
    from pyspark.sql import functions as F

    future = incoming.where(F.col("created_at") >= F.lit(export_date + timedelta(days=1)))
    count = future.count()
    if count:
        invoice_id, created_at = (
            future.orderBy("created_at", "invoice_id")
            .select("invoice_id", F.col("created_at").cast("string"))
            .first()
        )
        raise future_invoices(export.invoices, count, export_date, value=created_at, invoice_id=invoice_id)


def build_raw(csv_dir: Path | str, *, allow_empty: bool = False, today: date | None = None) -> list[date]:
    """Load every pending export under csv_dir into the Spark raw tables; the dates loaded. allow_empty:
    load header-only files (else refused, as by the Postgres loader); today: as in SparkLedger.apply."""
    exports = export_discovery.discover(csv_dir)  # before the session: no exports, no metastore
    with one_load_at_a_time():
        spark = session()
        try:
            ledger = SparkLedger(spark)
            if not ledger.logged:  # as the Postgres loader: a misnamed base can load only first
                export_discovery.refuse_misnamed_base(csv_dir)
            loaded = [
                day
                for export in exports
                if (day := ledger.apply(export, allow_empty=allow_empty, today=today))
            ]
            if loaded:
                ledger.write()
            return loaded
        finally:
            spark.stop()


@contextlib.contextmanager
def one_load_at_a_time(environ: Mapping[str, str] | None = None) -> Iterator[None]:
    """Hold a lock beside the metastore for the load (engines.build: for the load and dbt's build, and
    says so to the load with LOCK_HELD): a second one is refused at once, where Derby's own lock made it
    retry for minutes and end in a Java stack trace (the lock dies with the process)."""
    import fcntl  # POSIX only: here, so that engines.build imports on any system for DuckDB

    environ = os.environ if environ is None else environ
    if environ.get(LOCK_HELD) == "1":
        yield
        return
    _, metastore = directories(environ)
    metastore.mkdir(parents=True, exist_ok=True)
    with (metastore / LOCK_FILE).open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LoadError(
                metastore,
                "another Spark load or build is using this metastore (SPARK_METASTORE_DIR): run again when "
                "it has finished",
            ) from None
        yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_platform.engines.spark_raw", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--csv-dir", default=export_discovery.csv_dir_default(), help=export_discovery.CSV_DIR_HELP
    )
    parser.add_argument(
        "--allow-empty",
        action="store_true",
        help=ALLOW_EMPTY_HELP,
    )
    args = parser.parse_args(argv)
    try:
        loaded = build_raw(args.csv_dir, allow_empty=args.allow_empty)
    except LoadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    warehouse, _ = directories()
    print(f"{warehouse}: exports loaded: {', '.join(map(str, loaded)) or 'none (all loaded already)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
