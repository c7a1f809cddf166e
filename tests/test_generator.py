"""The demo data generator: exact file format, determinism, the latest-day scenario, append-day, streaming.

Balances are recomputed here in plain Python (csv + Decimal) from the default rules
(dbt/seeds/invoice_enrichment.csv), so the committed demo is checked independently of the warehouse that
will later compute the same numbers.
"""

from __future__ import annotations

import fcntl
import os
import re
import tracemalloc
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta
from decimal import Decimal, localcontext
from pathlib import Path

import pytest

from data_platform import generator
from data_platform.generator import (
    INVOICES_HEADER,
    ORGANIZATIONS_HEADER,
    SENTINEL,
    append_day,
    generate,
    invoice_chunks,
    main,
    scenario_organization_ids,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CSV_DATA = PROJECT_ROOT / "csv_data"
# The command that made csv_data/ (also pinned in csv_data/README.md).
DEMO_ARGS = ("--invoices", "25000", "--organizations", "400", "--seed", "42", "--end-date", "2024-06-28")
DEMO_ARGS += ("--days", "1096")
DEMO_COMMAND = "python -m data_platform.generator --out csv_data " + " ".join(DEMO_ARGS)

STATUSES = {
    "paid", "open", "pending", "awaiting_payment", "processing", "skipped", "failed", "unpayable",
    "cancelled", "refunded", "credited",
}  # fmt: skip
# (invoiced, paid) coefficients: the default balance rules
RULES = {
    "paid": (1, 1), "processing": (1, 1), "open": (1, 0), "pending": (1, 0), "awaiting_payment": (1, 0),
    "skipped": (1, 0), "failed": (1, 0), "unpayable": (1, 0), "cancelled": (0, 0), "refunded": (0, 0),
    "credited": (-1, 0),
}  # fmt: skip

INT64 = r"-?\d{1,19}"
INVOICE_PATTERNS = {
    "INVOICE_ID": INT64,
    "PARENT_INVOICE_ID": INT64,
    "TRANSACTION_ID": INT64,
    "ORGANIZATION_ID": INT64,
    "TYPE": INT64,
    "STATUS": "|".join(sorted(STATUSES)),
    "CURRENCY": r"[A-Z]{3,4}",
    "PAYMENT_CURRENCY": r"(?:[A-Z]{3,4})?",
    "PAYMENT_METHOD": r"[a-z_]*",
    "AMOUNT": r"\d+\.\d{2}",
    "PAYMENT_AMOUNT": r"(?:\d+(?:\.\d{1,2})?)?",
    "FX_RATE": r"\d+\.\d{8}",
    "FX_RATE_PAYMENT": r"(?:\d+\.\d{8})?",
    "CREATED_AT": r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z",
}
ORGANIZATION_PATTERNS = {
    "ORGANIZATION_ID": INT64,
    "FIRST_PAYMENT_DATE": r"(?:\d{4}-\d{2}-\d{2})?",
    "LAST_PAYMENT_DATE": r"(?:\d{4}-\d{2}-\d{2})?",
    "LEGAL_ENTITY_COUNTRY_CODE": INT64,
    "COUNT_TOTAL_CONTRACTS_ACTIVE": r"[1-9]\d*",
    "CREATED_DATE": r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?Z",
}


def read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Split the file by hand: the format has no quoting, so a plain split must give every field."""
    text = path.read_text(encoding="utf-8")
    assert '"' not in text and "\r" not in text
    header, *lines = text.removesuffix("\n").split("\n")
    columns = header.split(",")
    rows = []
    for number, line in enumerate(lines, start=2):
        fields = line.split(",")
        assert len(fields) == len(columns), f"{path.name} line {number}: {line!r}"
        rows.append(dict(zip(columns, fields, strict=True)))
    return columns, rows


def assert_invoice_format(rows: list[dict[str, str]]) -> None:
    patterns = {column: re.compile(pattern) for column, pattern in INVOICE_PATTERNS.items()}
    for row in rows:
        for column, pattern in patterns.items():
            assert pattern.fullmatch(row[column]), f"{column}={row[column]!r} in {row}"
        for column in ("INVOICE_ID", "PARENT_INVOICE_ID", "TRANSACTION_ID", "ORGANIZATION_ID", "TYPE"):
            assert -(2**63) <= int(row[column]) < 2**63
        assert Decimal(row["AMOUNT"]) > 0 and Decimal(row["FX_RATE"]) > 0
        if row["PAYMENT_AMOUNT"]:
            assert Decimal(row["PAYMENT_AMOUNT"]) == Decimal(row["AMOUNT"]), row
        # the payment FX rate is there exactly when the payment currency is
        assert bool(row["PAYMENT_CURRENCY"]) == bool(row["FX_RATE_PAYMENT"]), row
        if row["CURRENCY"] == "USD":
            assert row["FX_RATE"] == "1.00000000"
        if row["PAYMENT_CURRENCY"] == "USD":
            assert row["FX_RATE_PAYMENT"] == "1.00000000"
        if row["PAYMENT_CURRENCY"] == row["CURRENCY"]:
            assert row["FX_RATE_PAYMENT"] == row["FX_RATE"]
        datetime.fromisoformat(row["CREATED_AT"])


def assert_organization_format(rows: list[dict[str, str]]) -> None:
    patterns = {column: re.compile(pattern) for column, pattern in ORGANIZATION_PATTERNS.items()}
    for row in rows:
        for column, pattern in patterns.items():
            assert pattern.fullmatch(row[column]), f"{column}={row[column]!r} in {row}"
        first, last = row["FIRST_PAYMENT_DATE"], row["LAST_PAYMENT_DATE"]
        assert bool(first) == bool(last), row
        if first:
            assert date.fromisoformat(first) <= date.fromisoformat(last)
        datetime.fromisoformat(row["CREATED_DATE"])


def daily_balance_changes(invoices: list[dict[str, str]]) -> dict[str, dict[date, Decimal]]:
    """organization -> UTC day -> sum of balance contributions in USD that day."""
    changes: dict[str, dict[date, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    with localcontext() as context:
        context.prec = 50
        for row in invoices:
            invoiced, paid = RULES[row["STATUS"]]
            fx = Decimal(row["FX_RATE"])
            payment = Decimal(row["PAYMENT_AMOUNT"] or "0")
            contribution = invoiced * Decimal(row["AMOUNT"]) / fx - paid * payment / fx
            changes[row["ORGANIZATION_ID"]][date.fromisoformat(row["CREATED_AT"][:10])] += contribution
    return changes


@pytest.fixture(scope="module")
def demo() -> dict[str, list]:
    invoice_columns, invoices = read_table(CSV_DATA / "invoices.csv")
    organization_columns, organizations = read_table(CSV_DATA / "organizations.csv")
    return {
        "invoice_columns": invoice_columns,
        "invoices": invoices,
        "organization_columns": organization_columns,
        "organizations": organizations,
    }


def small(out: Path, seed: int = 7, **overrides) -> Path:
    options = {
        "invoices": 3000,
        "organizations": 60,
        "seed": seed,
        "end_date": date(2023, 3, 31),
        "days": 120,
    }
    generate(out, **{**options, **overrides})
    return out


# --- the committed demo ------------------------------------------------------------------------


def test_demo_files_are_what_the_pinned_command_writes(tmp_path: Path) -> None:
    assert DEMO_COMMAND in (CSV_DATA / "README.md").read_text(encoding="utf-8")
    assert main(["--out", str(tmp_path), *DEMO_ARGS]) == 0
    for name in ("invoices.csv", "organizations.csv"):
        assert (tmp_path / name).read_bytes() == (CSV_DATA / name).read_bytes(), name


def test_demo_is_small_enough_to_commit() -> None:
    total = sum((CSV_DATA / name).stat().st_size for name in ("invoices.csv", "organizations.csv"))
    assert total < 5_000_000


def test_demo_headers_are_exact(demo) -> None:
    assert ",".join(demo["invoice_columns"]) == INVOICES_HEADER
    assert ",".join(demo["organization_columns"]) == ORGANIZATIONS_HEADER
    assert INVOICES_HEADER.split(",") == list(INVOICE_PATTERNS)
    assert ORGANIZATIONS_HEADER.split(",") == list(ORGANIZATION_PATTERNS)


def test_demo_every_field_has_the_production_format(demo) -> None:
    assert_invoice_format(demo["invoices"])
    assert_organization_format(demo["organizations"])


def test_demo_ids_are_int64_hashes_with_the_empty_sentinel(demo) -> None:
    invoices = demo["invoices"]
    invoice_ids = [int(row["INVOICE_ID"]) for row in invoices]
    assert len(set(invoice_ids)) == len(invoice_ids)
    everything = invoice_ids + [int(row["ORGANIZATION_ID"]) for row in invoices]
    assert sum(abs(value) > 2**53 for value in everything) > 0.9 * len(everything)
    assert min(everything) < -(2**53) and max(everything) > 2**53
    assert any(row["PARENT_INVOICE_ID"] == SENTINEL for row in invoices)
    assert any(row["PARENT_INVOICE_ID"] != SENTINEL for row in invoices)
    transactions = Counter(row["TRANSACTION_ID"] for row in invoices if row["TRANSACTION_ID"] != SENTINEL)
    assert SENTINEL in {row["TRANSACTION_ID"] for row in invoices}
    assert max(transactions.values()) > 1  # not unique
    assert 2 <= len({row["TYPE"] for row in invoices}) <= 10
    assert any(int(row["LEGAL_ENTITY_COUNTRY_CODE"]) < 0 for row in demo["organizations"])


def test_demo_has_a_realistic_shape(demo) -> None:
    invoices, organizations = demo["invoices"], demo["organizations"]
    statuses = Counter(row["STATUS"] for row in invoices)
    assert set(statuses) == STATUSES
    assert statuses.most_common(1)[0][0] == "paid" and statuses["paid"] > 0.5 * len(invoices)
    currencies = {row["CURRENCY"] for row in invoices}
    assert "USDC" in currencies and len(currencies) >= 15
    assert any(row["STATUS"] == "paid" and not row["PAYMENT_AMOUNT"] for row in invoices)
    payment_places = {
        len(row["PAYMENT_AMOUNT"].partition(".")[2]) for row in invoices if row["PAYMENT_AMOUNT"]
    }
    assert payment_places == {0, 1, 2}
    fraction_digits = {len(re.sub(r".*:\d{2}\.?|Z$", "", row["CREATED_DATE"])) for row in organizations}
    assert {0, 6} <= fraction_digits and len(fraction_digits) >= 3
    # about 10% of invoice rows belong to organizations missing from organizations.csv
    known = {row["ORGANIZATION_ID"] for row in organizations}
    orphan_share = sum(row["ORGANIZATION_ID"] not in known for row in invoices) / len(invoices)
    assert 0.07 < orphan_share < 0.13
    # long tail: the biggest organization has far more invoices than the typical one
    per_organization = sorted(Counter(row["ORGANIZATION_ID"] for row in invoices).values())
    assert per_organization[-1] > 20 * per_organization[len(per_organization) // 2]
    days = sorted({row["CREATED_AT"][:10] for row in invoices})
    assert date.fromisoformat(days[-1]) - date.fromisoformat(days[0]) > timedelta(days=2 * 365)
    # FX rates are daily: one rate per currency per day, near the currency's base rate
    rates = {(row["CURRENCY"], row["CREATED_AT"][:10]): row["FX_RATE"] for row in invoices}
    assert all(rates[(row["CURRENCY"], row["CREATED_AT"][:10])] == row["FX_RATE"] for row in invoices)
    base = {currency.code: currency.rate for currency in generator.CURRENCIES}
    assert all(0.7 < float(rate) / base[currency] < 1.4 for (currency, _), rate in rates.items())


def test_demo_latest_day_has_large_small_and_from_zero_moves(demo) -> None:
    changes = daily_balance_changes(demo["invoices"])
    latest = max(day for days in changes.values() for day in days)
    large, small_moves, from_zero = [], [], []
    for organization, days in changes.items():
        if latest not in days:
            continue
        previous = sum((change for day, change in days.items() if day < latest), Decimal(0))
        if previous == 0:
            from_zero.append(organization)
            continue
        ratio = abs(days[latest] / previous)
        if ratio >= Decimal("0.5"):
            large.append(organization)
        elif ratio > 0:
            small_moves.append(organization)
    assert len(large) >= 3 and len(small_moves) >= 2 and len(from_zero) >= 1
    # the exact counts csv_data/README.md states
    assert (len(large), len(from_zero)) == (7, 2), (large, from_zero)


def test_demo_scenario_organizations_behave_as_documented(demo) -> None:
    ids = {name: str(value) for name, value in scenario_organization_ids(42).items()}
    changes = daily_balance_changes(demo["invoices"])
    latest = date(2024, 6, 28)

    def previous_and_current(name: str) -> tuple[Decimal, Decimal]:
        days = changes[ids[name]]
        previous = sum((change for day, change in days.items() if day < latest), Decimal(0))
        return previous, previous + days[latest]

    assert previous_and_current("surge") == (1000, 1800)
    assert previous_and_current("exactly_half") == (2000, 3000)  # ratio exactly 0.5
    assert previous_and_current("just_below_half") == (1000, Decimal("1499.99"))
    assert previous_and_current("negative_previous") == (-1000, -400)
    assert previous_and_current("paid_without_payment_amount") == (100, 180)
    assert previous_and_current("settled_today") == (2000, 2000)
    assert previous_and_current("first_invoice_today") == (0, 750)
    assert previous_and_current("back_from_zero") == (0, 300)
    assert set(changes[ids["first_invoice_today"]]) == {latest}
    previous, current = previous_and_current("eur_surge")
    assert Decimal("0.55") < (current - previous) / previous < Decimal("0.65")
    in_file = {row["ORGANIZATION_ID"] for row in demo["organizations"]}
    assert ids["orphan_surge"] not in in_file
    assert all(ids[org.name] in in_file for org in generator.SCENARIO if org.in_file)


# --- the generator -----------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    first, again, other = small(tmp_path / "a"), small(tmp_path / "b"), small(tmp_path / "c", seed=8)
    for name in ("invoices.csv", "organizations.csv"):
        assert (first / name).read_bytes() == (again / name).read_bytes()
        assert (first / name).read_bytes() != (other / name).read_bytes()
    columns, invoices = read_table(first / "invoices.csv")
    assert ",".join(columns) == INVOICES_HEADER and len(invoices) == 3000
    assert_invoice_format(invoices)
    assert_organization_format(read_table(first / "organizations.csv")[1])
    assert {row["CREATED_AT"][:10] for row in invoices} <= {
        (date(2023, 3, 31) - timedelta(days=offset)).isoformat() for offset in range(120)
    }


def test_append_day_adds_one_fresh_day(tmp_path: Path) -> None:
    out = small(tmp_path, scenario=False)
    original = (out / "invoices.csv").read_bytes()
    known_organizations = {row["ORGANIZATION_ID"] for row in read_table(out / "invoices.csv")[1]}
    # real files may end without a final newline: appending must still start a new line
    (out / "invoices.csv").write_bytes(original.removesuffix(b"\n"))
    options = {"organizations": 60, "seed": 7, "end_date": date(2023, 3, 31), "days": 120}
    append_day(out, invoices=800, day_offset=1, **options)
    cli = [
        "--out",
        str(out),
        "--append-day",
        "2",
        "--invoices",
        "500",
        "--organizations",
        "60",
        "--seed",
        "7",
    ]
    assert main([*cli, "--end-date", "2023-03-31", "--days", "120"]) == 0

    appended = (out / "invoices.csv").read_bytes()
    assert appended.startswith(original)
    _, rows = read_table(out / "invoices.csv")
    old, day1, day2 = rows[:3000], rows[3000:3800], rows[3800:]
    assert len(day2) == 500
    assert {row["CREATED_AT"][:10] for row in day1} == {"2023-04-01"}
    assert {row["CREATED_AT"][:10] for row in day2} == {"2023-04-02"}
    assert_invoice_format(day1 + day2)
    ids = [row["INVOICE_ID"] for row in rows]
    assert len(set(ids)) == len(ids)  # fresh ids, unique across the file
    assert {row["ORGANIZATION_ID"] for row in day1 + day2} <= known_organizations | {
        str(org.id) for org in generator.build_organizations(7, 60, 120)
    }
    assert {row["ORGANIZATION_ID"] for row in old} & {row["ORGANIZATION_ID"] for row in day1}
    assert sorted(p.name for p in out.iterdir()) == ["invoices.csv", "organizations.csv"]  # no temporary


def test_append_day_keeps_the_file_mode_and_memory_flat_as_the_file_grows(tmp_path: Path) -> None:
    # a 20x larger file (0.6 -> 12 MB) must not raise the peak: the old rows are copied as a stream
    options = {"organizations": 50, "seed": 1, "end_date": date(2024, 6, 28), "days": 4}
    peaks = []
    for invoices in (4_000, 80_000):
        out = tmp_path / str(invoices)
        generate(out, invoices=invoices, scenario=False, **options)
        (out / "invoices.csv").chmod(0o640)
        tracemalloc.start()
        try:
            append_day(out, invoices=100, **options)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert (out / "invoices.csv").stat().st_mode & 0o777 == 0o640
    small_peak, large_peak = peaks
    assert large_peak < 1.25 * small_peak, (small_peak, large_peak)


def test_scenario_needs_room_and_can_be_switched_off(tmp_path: Path, capsys) -> None:
    assert main(["--out", str(tmp_path), "--invoices", "10", "--organizations", "5"]) == 2
    assert "--no-scenario" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--invoices", "10", "--organizations", "5", "--no-scenario"]) == 0
    assert len(read_table(tmp_path / "invoices.csv")[1]) == 10
    assert "rows/s" in capsys.readouterr().err


def test_the_scenario_fits_the_least_room_it_asks_for_and_no_less(tmp_path: Path, capsys) -> None:
    least = ["--organizations", "5", "--invoices", str(generator.SCENARIO_ROWS), "--days", "2"]
    assert main(["--out", str(tmp_path / "least"), *least]) == 0
    assert len(read_table(tmp_path / "least" / "invoices.csv")[1]) == generator.SCENARIO_ROWS
    # one day holds no previous balance to move from, and fewer rows cannot hold the scenario's
    for short in (["--invoices", str(generator.SCENARIO_ROWS - 1)], ["--days", "1"]):
        assert main(["--out", str(tmp_path / "short"), *least, *short]) == 2
        assert (
            f"scenario needs --invoices >= {generator.SCENARIO_ROWS} and --days >= 2"
            in capsys.readouterr().err
        )
        assert not (tmp_path / "short").exists()


def test_a_short_history_holds_every_scenario_invoice_on_its_days(tmp_path: Path) -> None:
    # scenario invoices older than the history move to its first day: none is lost or dated before it
    out = small(tmp_path, invoices=200, days=5)
    _, invoices = read_table(out / "invoices.csv")
    assert len(invoices) == 200
    days = {(date(2023, 3, 27) + timedelta(days=offset)).isoformat() for offset in range(5)}
    assert {row["CREATED_AT"][:10] for row in invoices} == days
    scenario = {str(value) for value in scenario_organization_ids(7).values()}
    first_invoice = {}
    for row in invoices:
        if row["ORGANIZATION_ID"] in scenario:
            first_invoice.setdefault(row["ORGANIZATION_ID"], row["CREATED_AT"][:10])
    # a scenario organization's first payment date is the day of its first invoice
    organizations = [
        row for row in read_table(out / "organizations.csv")[1] if row["ORGANIZATION_ID"] in scenario
    ]
    assert len(organizations) == sum(org.in_file for org in generator.SCENARIO)
    for row in organizations:
        assert row["FIRST_PAYMENT_DATE"] == first_invoice[row["ORGANIZATION_ID"]], row


@pytest.mark.parametrize("size", [["--invoices", "-1"], ["--organizations", "0"], ["--days", "0"]])
def test_sizes_below_their_least_are_refused_and_write_nothing(tmp_path: Path, capsys, size) -> None:
    cli = ["--invoices", "0", "--organizations", "1", "--days", "1", "--no-scenario"]
    assert main(["--out", str(tmp_path / "least"), *cli]) == 0
    assert read_table(tmp_path / "least" / "invoices.csv")[1] == []
    assert main(["--out", str(tmp_path / "out"), *cli, *size]) == 2
    assert capsys.readouterr().err.endswith(
        "data-platform-generate: need --invoices >= 0, --organizations >= 1 and --days >= 1\n"
    )
    assert not (tmp_path / "out").exists()


def test_append_day_refuses_day_zero_and_leaves_the_file(tmp_path: Path) -> None:
    # day 0 is the file's own last day, and its rows would take the ids of the file's first rows
    out = small(tmp_path, scenario=False)
    before = (out / "invoices.csv").read_bytes()
    options = {"invoices": 10, "organizations": 60, "seed": 7, "end_date": date(2023, 3, 31), "days": 120}
    with pytest.raises(ValueError, match="day_offset must be between 1 and 2\\*\\*20 - 1"):
        append_day(out, day_offset=0, **options)
    assert (out / "invoices.csv").read_bytes() == before


def test_append_day_refuses_a_file_without_the_invoices_header(tmp_path: Path, capsys) -> None:
    # an organizations.csv (or any other file) in invoices.csv's place gets no invoice rows
    out = small(tmp_path, scenario=False)
    organizations = (out / "organizations.csv").read_bytes()
    (out / "invoices.csv").write_bytes(organizations)
    cli = ["--out", str(out), "--append-day", "--invoices", "10", "--organizations", "60", "--seed", "7"]
    assert main([*cli, "--end-date", "2023-03-31", "--days", "120"]) == 2
    assert "invoices.csv does not start with the invoices.csv header" in capsys.readouterr().err
    assert (out / "invoices.csv").read_bytes() == organizations


def _peak_bytes(invoices: int) -> int:
    tracemalloc.start()
    try:
        for chunk in invoice_chunks(invoices=invoices, organizations=50, seed=1, days=4, scenario=False):
            assert chunk.count("\n") <= generator.invoices.BATCH_ROWS and chunk.endswith("\n")
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_flat_as_rows_grow(monkeypatch) -> None:
    # 4 days of 1k vs 10k rows: with batches of 1k rows both hold one batch at a time (holding a whole
    # day would nearly triple the peak, holding everything would grow it tenfold)
    monkeypatch.setattr(generator.invoices, "BATCH_ROWS", 1000)
    small_peak, large_peak = _peak_bytes(4_000), _peak_bytes(40_000)
    assert large_peak < 1.25 * small_peak, (small_peak, large_peak)


# --- failed and refused runs -------------------------------------------------------------------


def test_a_failed_run_leaves_the_previous_base_files_intact(tmp_path: Path, monkeypatch) -> None:
    small(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    chunks = generator.invoices._invoice_chunks

    def interrupted(*args, **kwargs):
        yield next(chunks(*args, **kwargs))
        raise KeyboardInterrupt  # Ctrl-C while invoices.csv is half written

    monkeypatch.setattr(generator.invoices, "_invoice_chunks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        small(tmp_path, seed=8)
    # the old pair, byte for byte, and no temporary left beside it
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_failed_first_run_leaves_no_new_folder(tmp_path: Path, monkeypatch) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr(generator.invoices, "_invoice_chunks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        small(tmp_path / "new" / "out")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_append_leaves_the_file_as_it_was(tmp_path: Path, monkeypatch) -> None:
    out = small(tmp_path, scenario=False)
    # without a final newline, so a failed append must not leave the one it adds either
    (out / "invoices.csv").write_bytes((out / "invoices.csv").read_bytes().removesuffix(b"\n"))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(generator.invoices, "BATCH_ROWS", 100)
    chunks = generator.invoices.later_day_chunks

    def interrupted(*args, **kwargs):
        yield next(chunks(*args, **kwargs))
        raise KeyboardInterrupt  # Ctrl-C after 100 of the 800 rows

    monkeypatch.setattr(generator.invoices, "later_day_chunks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        append_day(out, invoices=800, organizations=60, seed=7, end_date=date(2023, 3, 31), days=120)
    # the old file, byte for byte, and no temporary left beside it
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("failure", [OSError, KeyboardInterrupt])
@pytest.mark.parametrize("existed", [True, False])
def test_a_failed_rename_puts_back_the_base_files_already_replaced(
    tmp_path: Path, monkeypatch, failure, existed
) -> None:
    # organizations.csv is renamed into place first: when invoices.csv's rename then fails (or Ctrl-C
    # comes between them), the new organizations.csv must not stay beside the old invoices.csv
    out = small(tmp_path / "out") if existed else tmp_path / "out"

    def contents() -> dict[str, bytes | bool]:
        return {str(p.relative_to(tmp_path)): p.is_file() and p.read_bytes() for p in tmp_path.rglob("*")}

    before = contents()
    replace = os.replace

    def failing(source, destination):
        if Path(destination).name == "invoices.csv":
            raise failure("the second rename fails")
        replace(source, destination)

    monkeypatch.setattr(generator.files.os, "replace", failing)
    with pytest.raises(failure, match="the second rename fails"):
        small(out, seed=8)
    monkeypatch.undo()
    # the old pair, byte for byte, no temporary nor kept-aside file; no folder the run made
    assert contents() == before


def test_a_directory_in_a_base_files_place_is_refused_before_anything_is_replaced(
    tmp_path: Path, capsys
) -> None:
    # os.replace cannot put a file over a directory: found only at the second rename, organizations.csv
    # was already the new one
    out = small(tmp_path / "out")
    (out / "invoices.csv").unlink()
    (out / "invoices.csv").mkdir()
    (out / "invoices.csv" / "keep").write_text("kept")
    before = (out / "organizations.csv").read_bytes()
    cli = ["--out", str(out), "--invoices", "3000", "--organizations", "60", "--seed", "8"]
    assert main([*cli, "--end-date", "2023-03-31", "--days", "120"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"data-platform-generate: {out / 'invoices.csv'} is a directory, which the new file cannot replace: "
        "nothing was written; move it away first\n"
    )
    assert (out / "organizations.csv").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["invoices.csv", "organizations.csv"]
    assert (out / "invoices.csv" / "keep").read_text() == "kept"


@pytest.mark.parametrize(
    "dates",
    [
        ["--days", "10000000"],
        ["--end-date", "0001-01-05", "--days", "10"],
        ["--end-date", "9999-12-31", "--days", "10"],
        ["--end-date", "9999-12-20", "--days", "10", "--append-day", "30"],
        ["--end-date", "9999-12-20", "--days", "10", "--next-days", "30"],
    ],
)
def test_dates_out_of_range_are_a_clear_error_and_write_nothing(tmp_path: Path, capsys, dates) -> None:
    out = tmp_path / "out"
    assert main(["--out", str(out), "--invoices", "100", "--no-scenario", *dates]) == 2
    err = capsys.readouterr().err
    assert err.startswith("data-platform-generate: ") and "Traceback" not in err
    assert "between 0002-02-05 and 9998-11-26" in err
    assert not out.exists()


def test_the_first_and_last_dates_the_error_names_can_be_written(tmp_path: Path) -> None:
    # the range the error gives is inclusive at both ends
    first, last = generator.values.FIRST_DAY_MIN, generator.values.LAST_DAY_MAX
    cli = ["--invoices", "10", "--organizations", "2", "--no-scenario", "--days", "10"]
    assert main(["--out", str(tmp_path / "first"), *cli, "--end-date", str(first + timedelta(days=9))]) == 0
    assert main(["--out", str(tmp_path / "last"), *cli, "--end-date", str(last)]) == 0
    assert main(["--out", str(tmp_path / "before"), *cli, "--end-date", str(first + timedelta(days=8))]) == 2
    assert main(["--out", str(tmp_path / "after"), *cli, "--end-date", str(last + timedelta(days=1))]) == 2


def test_an_output_folder_that_cannot_be_made_is_a_clear_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "out"  # under a file: cannot be made
    cli = ["--out", str(out), "--invoices", "100", "--organizations", "10", "--days", "5", "--no-scenario"]
    assert main(cli) == 2
    err = capsys.readouterr().err
    assert err.startswith("data-platform-generate: ") and "Traceback" not in err


def test_a_second_run_into_the_same_folder_is_refused_and_leaves_the_first_ones_files(
    tmp_path: Path, capsys
) -> None:
    # another run (here: its lock on the folder) is writing .invoices.csv.partial: taken for a killed run's
    # leftover, it was removed, and the first run then renamed the second's half-written file into place
    out = tmp_path / "out"
    out.mkdir()
    in_progress = out / ".invoices.csv.partial"
    in_progress.write_text("the first run's rows so far\n")
    folder = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        cli = ["--out", str(out), "--invoices", "100", "--organizations", "10", "--days", "5"]
        assert main([*cli, "--no-scenario"]) == 2
    finally:
        os.close(folder)
    err = capsys.readouterr().err
    assert err == f"data-platform-generate: another generator run is writing to {out}; wait for it to end\n"
    assert in_progress.read_text() == "the first run's rows so far\n"
    assert sorted(p.name for p in out.iterdir()) == [".invoices.csv.partial"]
    # once it ended, a run goes ahead
    assert main([*cli, "--no-scenario"]) == 0


@pytest.mark.parametrize("end_date", ["20240628", "2024-W26-5"])
def test_an_end_date_not_written_yyyy_mm_dd_is_a_usage_error(tmp_path: Path, capsys, end_date) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(out), "--invoices", "100", "--end-date", end_date])
    assert exit_info.value.code == 2
    assert f"expected a date as YYYY-MM-DD, got '{end_date}'" in capsys.readouterr().err
    assert not out.exists()
