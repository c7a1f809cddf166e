"""Dated exports (--next-days): the committed 2024-06-29 export, its alerts under ledger semantics, and the
generator's rules for status changes (plausible, partial, deterministic, streaming).

The ledger is recomputed here in plain Python from the CSV files, independently of the warehouse: an
invoice's first version books its contribution on its created day, a later version books (new - old
contribution) on the day of the export that holds it.
"""

from __future__ import annotations

import csv
import shutil
import tracemalloc
from collections import defaultdict
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal, localcontext
from pathlib import Path

import pytest
from test_generator import CSV_DATA, DEMO_ARGS, RULES, assert_invoice_format, read_table

from data_platform import generator
from data_platform.exports import day_folders
from data_platform.generator import INVOICES_HEADER, append_day, generate, main, scenario_organization_ids
from data_platform.generator.exports import TRANSITIONS, write_exports
from data_platform.generator.scenario import NEXT_DAY_SCENARIO

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEMO_DAY = date(2024, 6, 29)
DEMO_EXPORT = CSV_DATA / "exports" / DEMO_DAY.isoformat() / "invoices.csv"
EXPORT_ARGS = ("--next-days", "1")
EXPORT_COMMAND = "python -m data_platform.generator --out csv_data " + " ".join((*DEMO_ARGS, *EXPORT_ARGS))
THRESHOLD = Decimal("0.5")  # the alert's default rule: previous <> 0 and |ratio| >= 0.5
# Random organizations that also cross 50% on 2024-06-29 (a payment each, no new invoice): listed in
# csv_data/README.md with the scenario's.
RANDOM_ALERTS = {"1119745032997059256", "3559126079453424785"}
# columns a status change never touches
KEPT = (
    "INVOICE_ID",
    "PARENT_INVOICE_ID",
    "ORGANIZATION_ID",
    "TYPE",
    "CURRENCY",
    "AMOUNT",
    "FX_RATE",
    "CREATED_AT",
)


def usd(amount: str, fx: Decimal) -> Decimal:
    """As the warehouse books it: to the cent, half away from zero."""
    return (Decimal(amount or "0") / fx).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def contribution(row: dict[str, str]) -> Decimal:
    invoiced, paid = RULES[row["STATUS"]]
    fx = Decimal(row["FX_RATE"])
    return invoiced * usd(row["AMOUNT"], fx) - paid * usd(row["PAYMENT_AMOUNT"], fx)


@dataclass
class DayMove:
    previous: Decimal  # balance at the end of the day before
    new: Decimal
    new_invoices: int
    changed_invoices: int

    @property
    def ratio(self) -> Decimal | None:
        return (self.new - self.previous) / abs(self.previous) if self.previous else None

    @property
    def alerts(self) -> bool:
        return self.ratio is not None and abs(self.ratio) >= THRESHOLD


def ledger_moves(base: Path, exports: list[tuple[date, Path]]) -> dict[date, dict[str, DayMove]]:
    """Per export day, each organization with activity that day -> its move under ledger semantics."""
    state: dict[str, dict[str, str]] = {}
    booked: dict[str, dict[date, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    moves: dict[date, dict[str, DayMove]] = {}
    with localcontext() as context:
        context.prec = 50
        for row in read_table(base)[1]:
            state[row["INVOICE_ID"]] = row
            booked[row["ORGANIZATION_ID"]][date.fromisoformat(row["CREATED_AT"][:10])] += contribution(row)
        for day, path in exports:
            counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
            for row in read_table(path)[1]:
                organization, old = row["ORGANIZATION_ID"], state.get(row["INVOICE_ID"])
                if old is None:
                    booked[organization][date.fromisoformat(row["CREATED_AT"][:10])] += contribution(row)
                    counts[organization][0] += 1
                else:
                    booked[organization][day] += contribution(row) - contribution(old)
                    counts[organization][1] += 1
                state[row["INVOICE_ID"]] = row
            moves[day] = {}
            for organization, (new, changed) in counts.items():
                previous = sum((v for d, v in booked[organization].items() if d < day), Decimal(0))
                current = sum((v for d, v in booked[organization].items() if d <= day), Decimal(0))
                moves[day][organization] = DayMove(previous, current, new, changed)
    return moves


@pytest.fixture(scope="module")
def demo_moves() -> dict[str, DayMove]:
    return ledger_moves(CSV_DATA / "invoices.csv", [(DEMO_DAY, DEMO_EXPORT)])[DEMO_DAY]


def small_base(out: Path, seed: int = 7, scenario: bool = True) -> dict:
    options = {"organizations": 60, "seed": seed, "end_date": date(2023, 3, 31), "days": 120}
    generate(out, invoices=3000, scenario=scenario, **options)
    return options


def export_paths(exports_dir: Path) -> list[tuple[date, Path]]:
    return [(date.fromisoformat(p.name), p / "invoices.csv") for p in sorted(exports_dir.iterdir())]


# --- the committed demo export -----------------------------------------------------------------


def test_demo_export_is_what_the_pinned_command_writes(tmp_path: Path) -> None:
    assert EXPORT_COMMAND in (CSV_DATA / "README.md").read_text(encoding="utf-8")
    # the base files are regenerated by test_generator; a copy is the same base
    shutil.copyfile(CSV_DATA / "invoices.csv", tmp_path / "invoices.csv")
    assert main(["--out", str(tmp_path), *DEMO_ARGS, *EXPORT_ARGS]) == 0
    assert (tmp_path / "exports" / "2024-06-29" / "invoices.csv").read_bytes() == DEMO_EXPORT.read_bytes()
    # exactly one export is shipped, without organizations.csv
    assert sorted(p.relative_to(CSV_DATA).as_posix() for p in (CSV_DATA / "exports").rglob("*")) == [
        "exports/2024-06-29",
        "exports/2024-06-29/invoices.csv",
    ]


def test_demo_export_has_the_format_and_only_new_and_changed_rows() -> None:
    columns, rows = read_table(DEMO_EXPORT)
    assert ",".join(columns) == INVOICES_HEADER
    assert_invoice_format(rows)
    base = {row["INVOICE_ID"]: row for row in read_table(CSV_DATA / "invoices.csv")[1]}
    changed = [row for row in rows if row["INVOICE_ID"] in base]
    new = [row for row in rows if row["INVOICE_ID"] not in base]
    assert len({row["INVOICE_ID"] for row in rows}) == len(rows)
    assert (len(new), len(changed)) == (23, 50)  # --invoices / --days new, twice that + 4 scenario changes
    assert {row["CREATED_AT"][:10] for row in new} == {"2024-06-29"}
    for row in changed:
        old = base[row["INVOICE_ID"]]
        assert row != old  # no unchanged rows in a partial export
        assert old["STATUS"] not in final_statuses() and row["STATUS"] != old["STATUS"], (old, row)
        assert all(row[column] == old[column] for column in KEPT), (old, row)
    assert {"paid", "cancelled", "credited"} <= {row["STATUS"] for row in changed}


def test_demo_export_alerts_are_the_documented_ones(demo_moves) -> None:
    names = {str(value): name for name, value in scenario_organization_ids(42).items()}

    def move(name: str) -> tuple[Decimal, Decimal]:
        (organization,) = [org for org, scenario_name in names.items() if scenario_name == name]
        return demo_moves[organization].previous, demo_moves[organization].new

    # the scenario's changes (NEXT_DAY_SCENARIO), all in USD so the numbers are exact
    assert move("settled_today") == (2000, 0)  # its only open invoice paid: -100%, alert
    assert move("exactly_half") == (3000, 1000)  # an older pending invoice cancelled: -66.67%, alert
    assert move("small_rise") == (11000, 10000)  # a payment of -9.09%: no alert
    assert move("just_below_half") == (Decimal("1499.99"), Decimal("1499.99"))  # processing, no amount
    scenario_moves = [demo_moves[org] for org, name in names.items() if org in demo_moves]
    assert len(scenario_moves) == 4 and all(m.new_invoices == 0 for m in scenario_moves)

    alerting = {org for org, m in demo_moves.items() if m.alerts}
    expected_scenario = {org for org, name in names.items() if name in ("settled_today", "exactly_half")}
    assert alerting == expected_scenario | RANDOM_ALERTS
    # every alert of the day moves only because older invoices changed: no new invoice for them
    assert all(demo_moves[org].new_invoices == 0 and demo_moves[org].changed_invoices for org in alerting)
    # no random organization sits near the threshold, where rounding in the warehouse could flip it
    for org, m in demo_moves.items():
        if m.ratio is not None:
            assert abs(abs(m.ratio) - THRESHOLD) > Decimal("0.01"), (org, m)
    # csv_data/README.md states each alert with its numbers
    readme = (CSV_DATA / "README.md").read_text(encoding="utf-8")
    for org in alerting:
        m = demo_moves[org]
        row = f"| `{org}` | {m.previous:,.2f} | {m.new:,.2f} | {m.ratio:+.2%} |"
        assert row in readme, row


# --- the generator's exports -------------------------------------------------------------------


def test_exports_are_deterministic_and_do_not_depend_on_how_many_days(tmp_path: Path) -> None:
    options = small_base(tmp_path / "base")
    write = {"new_invoices": 40, "changed_invoices": 60, **options}
    write_exports(tmp_path / "base", tmp_path / "a", next_days=3, **write)
    write_exports(tmp_path / "base", tmp_path / "b", next_days=3, **write)
    write_exports(tmp_path / "base", tmp_path / "c", next_days=2, **write)
    days = ["2023-04-01", "2023-04-02", "2023-04-03"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == days
    for index, day in enumerate(days):
        first = (tmp_path / "a" / day / "invoices.csv").read_bytes()
        assert first == (tmp_path / "b" / day / "invoices.csv").read_bytes()
        if index < 2:
            assert first == (tmp_path / "c" / day / "invoices.csv").read_bytes()
    other = small_base(tmp_path / "other", seed=8)
    write_exports(tmp_path / "other", tmp_path / "d", next_days=1, **{**write, **other})
    assert (tmp_path / "d" / days[0] / "invoices.csv").read_bytes() != (
        tmp_path / "a" / days[0] / "invoices.csv"
    ).read_bytes()


def test_each_change_follows_the_latest_version_and_only_from_non_final_statuses(tmp_path: Path) -> None:
    options = small_base(tmp_path)
    write_exports(
        tmp_path, tmp_path / "exports", next_days=4, new_invoices=50, changed_invoices=120, **options
    )
    state = {row["INVOICE_ID"]: row for row in read_table(tmp_path / "invoices.csv")[1]}
    scenario = {str(value) for value in scenario_organization_ids(7).values()}
    changed_from_exports = 0
    for day, path in export_paths(tmp_path / "exports"):
        columns, rows = read_table(path)
        assert ",".join(columns) == INVOICES_HEADER
        assert_invoice_format(rows)
        assert len({row["INVOICE_ID"] for row in rows}) == len(rows)
        changed = [row for row in rows if row["INVOICE_ID"] in state]
        new = [row for row in rows if row["INVOICE_ID"] not in state]
        assert len(new) == 50 and {row["CREATED_AT"][:10] for row in new} == {day.isoformat()}
        assert len(changed) == 120 + (4 if day == date(2023, 4, 1) else 0)
        for row in changed:
            old = state[row["INVOICE_ID"]]  # the latest version: base or an earlier export
            changed_from_exports += old["CREATED_AT"][:10] > "2023-03-31"  # new in an earlier export
            assert old["STATUS"] in TRANSITIONS and row["STATUS"] in TRANSITIONS[old["STATUS"]], (old, row)
            assert all(row[column] == old[column] for column in KEPT), (old, row)
            if row["ORGANIZATION_ID"] in scenario:
                assert day == date(2023, 4, 1)  # NEXT_DAY_SCENARIO, and only on the first day
            elif row["STATUS"] in ("paid", "processing", "refunded"):
                assert Decimal(row["PAYMENT_AMOUNT"]) == Decimal(row["AMOUNT"]) and row["PAYMENT_CURRENCY"]
                assert row["TRANSACTION_ID"] != generator.SENTINEL and row["PAYMENT_METHOD"]
            else:
                assert row["PAYMENT_AMOUNT"] == ""
        state.update((row["INVOICE_ID"], row) for row in rows)
    assert changed_from_exports  # invoices created in an earlier export change later too


def final_statuses() -> set[str]:
    """The statuses that never change again (`is_final` in the rules seed): paid is not paid twice."""
    with open(PROJECT_ROOT / "dbt" / "seeds" / "invoice_enrichment.csv", encoding="utf-8") as seed:
        return {row["status"] for row in csv.DictReader(seed) if row["is_final"] == "true"}


def test_transitions_only_leave_non_final_statuses_of_the_rules_seed() -> None:
    final = final_statuses()
    assert final  # the seed says which statuses are final
    assert set(TRANSITIONS) == set(RULES) - final
    assert all(set(targets) <= set(RULES) for targets in TRANSITIONS.values())


def test_exports_need_the_scenario_of_the_base_or_no_scenario(tmp_path: Path, capsys) -> None:
    small_base(tmp_path, scenario=False)
    cli = ["--out", str(tmp_path), "--invoices", "3000", "--organizations", "60", "--seed", "7"]
    cli += ["--end-date", "2023-03-31", "--days", "120", "--next-days", "1"]
    assert main(cli) == 2
    error = capsys.readouterr().err
    assert "has no scenario invoice" in error and "--no-scenario" in error
    assert not (tmp_path / "exports" / "2023-04-01" / "invoices.csv").exists()
    assert main([*cli, "--no-scenario", "--changed-invoices", "5", "--exports-dir", str(tmp_path / "x")]) == 0
    export = (tmp_path / "x" / "2023-04-01" / "invoices.csv").read_text().splitlines()
    assert len(export) == 1 + 5 + 25  # header, changed, then new invoices (default --invoices / --days)
    assert "2023-04-01" in capsys.readouterr().err
    # the new invoices are the rows --append-day writes for the same day
    append_day(tmp_path, invoices=25, organizations=60, seed=7, end_date=date(2023, 3, 31), days=120)
    assert export[-25:] == (tmp_path / "invoices.csv").read_text().splitlines()[-25:]


def test_export_options_are_checked(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["--out", str(tmp_path), "--next-days", "1", "--append-day", "1"])
    assert refused.value.code == 2
    assert "not both" in capsys.readouterr().err
    for option in ("--new-invoices", "--changed-invoices"):  # else silently ignored
        with pytest.raises(SystemExit) as refused:
            main(["--out", str(tmp_path), option, "5"])
        assert refused.value.code == 2
        assert "--new-invoices and --changed-invoices go with --next-days" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        main(["--out", str(tmp_path), "--append-day", "1", "--exports-dir", str(tmp_path / "x")])
    assert refused.value.code == 2
    # the usage line names every option: the error's own words tell which check refused it
    assert (
        "--exports-dir goes with --next-days or a run that writes the base files" in capsys.readouterr().err
    )
    assert main(["--out", str(tmp_path), "--next-days", "1"]) == 2
    assert "invoices.csv not found" in capsys.readouterr().err
    (tmp_path / "invoices.csv").write_text("INVOICE_ID,STATUS\n")
    assert main(["--out", str(tmp_path), "--next-days", "1", "--no-scenario"]) == 2
    assert "line 1: expected the invoices.csv header" in capsys.readouterr().err
    (tmp_path / "invoices.csv").write_text(f"{INVOICES_HEADER}\n1,2,3\n")
    assert main(["--out", str(tmp_path), "--next-days", "1", "--no-scenario"]) == 2
    assert "invoice row 1 has fewer than 14 fields: b'1,2,3'" in capsys.readouterr().err
    (tmp_path / "invoices.csv").write_text(f"{INVOICES_HEADER}\n1,2,3,4,5,open,USD\nx1,2,3,4,5,open,USD\n")
    assert main(["--out", str(tmp_path), "--next-days", "1", "--no-scenario"]) == 2
    assert "invoice row 2: INVOICE_ID is not an integer: b'x1,2,3,4,5,open,USD'" in capsys.readouterr().err


@pytest.mark.parametrize("counts", [{"next_days": 0}, {"new_invoices": -1}, {"changed_invoices": -1}])
def test_export_counts_below_their_least_are_refused_and_write_nothing(tmp_path: Path, counts) -> None:
    options = small_base(tmp_path)
    written = {"next_days": 1, "new_invoices": 40, "changed_invoices": 60, **counts}
    with pytest.raises(
        ValueError, match="need --next-days >= 1, --new-invoices >= 0 and --changed-invoices >= 0"
    ):
        write_exports(tmp_path, tmp_path / "exports", **written, **options)
    assert not (tmp_path / "exports").exists()


def test_the_scenario_changes_apply_to_a_history_shorter_than_their_invoices_age(tmp_path: Path) -> None:
    # the base files move invoices older than the history to its first day: the changes find them there
    options = {"organizations": 60, "seed": 7, "end_date": date(2023, 3, 31), "days": 5}
    generate(tmp_path, invoices=500, **options)
    (export,) = write_exports(
        tmp_path, tmp_path / "exports", next_days=1, new_invoices=10, changed_invoices=20, **options
    )
    assert export.changed == 20 + len(NEXT_DAY_SCENARIO)


def _export_peak_bytes(base_dir: Path, exports_dir: Path) -> int:
    tracemalloc.start()
    try:
        write_exports(
            base_dir, exports_dir, next_days=1, new_invoices=100, changed_invoices=200,
            organizations=50, seed=1, end_date=date(2024, 6, 28), days=4, scenario=False,
        )  # fmt: skip
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_export_memory_stays_flat_as_the_base_grows(tmp_path: Path) -> None:
    # a 20x larger base (0.6 -> 12 MB) must not raise the peak (about 7 MB): the base is streamed and only
    # the sample of changed rows is held (holding the base's lines would add more than 11 MB)
    peaks = []
    for invoices in (4_000, 80_000):
        base = tmp_path / str(invoices)
        generate(base, invoices=invoices, organizations=50, seed=1, days=4, scenario=False)
        peaks.append(_export_peak_bytes(base, base / "exports"))
    small_peak, large_peak = peaks
    assert large_peak < 1.25 * small_peak, (small_peak, large_peak)


# --- refused and failed runs -------------------------------------------------------------------


def test_an_existing_export_folder_is_refused_and_kept(tmp_path: Path, capsys) -> None:
    cli = ["--out", str(tmp_path), "--invoices", "3000", "--organizations", "60", "--seed", "7"]
    cli += ["--end-date", "2023-03-31", "--days", "120"]
    assert main([*cli, "--next-days", "1"]) == 2  # no base yet
    assert main(cli) == 0
    assert main([*cli, "--next-days", "1"]) == 0
    day = tmp_path / "exports" / "2023-04-01"
    written = (day / "invoices.csv").read_bytes()
    capsys.readouterr()
    # another run over the same day with other options (a loaded export would then be refused as changed)
    # writes nothing, not even the day after it
    assert main([*cli, "--next-days", "2", "--changed-invoices", "5"]) == 2
    err = capsys.readouterr().err
    assert f"{day} already exists and its invoices.csv is not the export these options write" in err
    assert "Traceback" not in err
    assert (day / "invoices.csv").read_bytes() == written
    assert [p.name for p in (tmp_path / "exports").iterdir()] == ["2023-04-01"]


def test_a_longer_run_with_the_same_options_keeps_the_days_written_and_adds_the_next(
    tmp_path: Path, capsys
) -> None:
    # the day after the demo's export: refused as "already exists", there was no way to write it there
    cli = ["--out", str(tmp_path), "--invoices", "3000", "--organizations", "60", "--seed", "7"]
    cli += ["--end-date", "2023-03-31", "--days", "120"]
    assert main(cli) == 0
    assert main([*cli, "--next-days", "1"]) == 0
    first = tmp_path / "exports" / "2023-04-01" / "invoices.csv"
    written = first.stat()
    capsys.readouterr()

    assert main([*cli, "--next-days", "2"]) == 0

    assert f"kept {first}: " in capsys.readouterr().err
    assert (first.stat().st_ino, first.stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    # the second day is the one a single two-day run writes: it follows the first day's versions
    assert main([*cli, "--next-days", "2", "--exports-dir", str(tmp_path / "at_once")]) == 0
    for day in ("2023-04-01", "2023-04-02"):
        kept_or_added = (tmp_path / "exports" / day / "invoices.csv").read_bytes()
        assert kept_or_added == (tmp_path / "at_once" / day / "invoices.csv").read_bytes(), day
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == ["2023-04-01", "2023-04-02"]

    # only the missing days are written, wherever they are; a kept day is the whole file, not its start
    shutil.rmtree(tmp_path / "exports" / "2023-04-01")
    with (tmp_path / "exports" / "2023-04-02" / "invoices.csv").open("a") as kept:
        kept.write("\n")
    assert main([*cli, "--next-days", "2"]) == 2
    assert "2023-04-02 already exists and its invoices.csv is not the export" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == ["2023-04-02"]
    shutil.copy(tmp_path / "at_once" / "2023-04-02" / "invoices.csv", tmp_path / "exports" / "2023-04-02")
    assert main([*cli, "--next-days", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == ["2023-04-01", "2023-04-02"]
    for day in ("2023-04-01", "2023-04-02"):
        rewritten = (tmp_path / "exports" / day / "invoices.csv").read_bytes()
        assert rewritten == (tmp_path / "at_once" / day / "invoices.csv").read_bytes(), day


@pytest.mark.parametrize("exports_dir", [None, "landing/exports"])
def test_base_files_that_no_longer_match_their_exports_are_refused(
    tmp_path: Path, capsys, exports_dir: str | None
) -> None:
    out = tmp_path / "out"
    exports = tmp_path / exports_dir if exports_dir else out / "exports"
    where = ["--exports-dir", str(exports)] if exports_dir else []  # the base run is told where they are
    cli = ["--out", str(out), "--invoices", "3000", "--organizations", "60"]
    cli += ["--end-date", "2023-03-31", "--days", "120"]
    assert main([*cli, "--seed", "7"]) == 0
    assert main([*cli, "--seed", "7", "--next-days", "1", *where]) == 0
    assert [p.name for p in exports.iterdir()] == ["2023-04-01"]
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main([*cli, "--seed", "8", *where]) == 2
    err = capsys.readouterr().err
    assert f"{exports} holds dated exports" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # the same base again (the demo's regeneration) is fine
    assert main([*cli, "--seed", "7", *where]) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_append_day_is_refused_while_dated_exports_follow_the_base(tmp_path: Path, capsys) -> None:
    # a day appended to the base file dates it (by its latest CREATED_AT) to the day of the export that
    # follows it: the loader then refuses the set, so nothing may be appended
    cli = ["--out", str(tmp_path), "--invoices", "3000", "--organizations", "60", "--seed", "7"]
    cli += ["--end-date", "2023-03-31", "--days", "120"]
    assert main(cli) == 0
    assert main([*cli, "--next-days", "1"]) == 0
    exports = tmp_path / "exports"
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main([*cli, "--append-day"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"data-platform-generate: {exports} holds dated exports") and "Traceback" not in err
    assert "Nothing was written" in err
    # the base byte for byte, and no temporary beside it
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    # dot entries only (a temporary, a .DS_Store) are no export: the day is appended
    shutil.rmtree(exports / "2023-04-01")
    (exports / ".2023-04-01.partial").mkdir()
    (exports / ".DS_Store").write_bytes(b"")
    assert main([*cli, "--append-day"]) == 0
    assert (tmp_path / "invoices.csv").read_bytes().startswith(before["invoices.csv"])


def test_next_days_are_refused_after_a_day_appended_to_the_base(tmp_path: Path, capsys) -> None:
    # the appended day's invoices are in the base file: the first export would hold them again
    cli = ["--out", str(tmp_path), "--invoices", "3000", "--organizations", "60", "--seed", "7"]
    cli += ["--end-date", "2023-03-31", "--days", "120"]
    assert main(cli) == 0
    assert main([*cli, "--append-day"]) == 0
    capsys.readouterr()
    assert main([*cli, "--next-days", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"data-platform-generate: {tmp_path / 'invoices.csv'} holds invoices created on 2023-04-01, after "
        "--end-date 2023-03-31"
    )
    assert not (tmp_path / "exports").exists()


@pytest.mark.parametrize("existed", [False, True])
def test_a_dated_export_appears_only_once_complete(tmp_path: Path, monkeypatch, existed) -> None:
    options = small_base(tmp_path / "base")
    chunks = generator.exports.later_day_chunks

    def interrupted(*args, **kwargs):
        yield next(chunks(*args, **kwargs))
        raise KeyboardInterrupt  # Ctrl-C while the day's invoices.csv is half written

    monkeypatch.setattr(generator.exports, "later_day_chunks", interrupted)
    exports_dir = tmp_path / "landing" / "exports"
    if existed:
        exports_dir.mkdir(parents=True)
    with pytest.raises(KeyboardInterrupt):
        write_exports(
            tmp_path / "base", exports_dir, next_days=1, new_invoices=40, changed_invoices=60, **options
        )
    # a loader or the sensor sees no folder (dot names are ignored), and no temporary is left; the folders
    # the run made are gone, one that was there before stays
    if existed:
        assert list(exports_dir.iterdir()) == []
    else:
        assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]


def test_a_dated_export_being_written_is_invisible_to_the_loader(tmp_path: Path, monkeypatch) -> None:
    """While a day is written, the loader and the export sensor (both through day_folders) see neither
    an export nor an entry they would refuse as not named YYYY-MM-DD."""
    options = small_base(tmp_path / "base")
    exports_dir = tmp_path / "landing" / "exports"
    seen = []
    chunks = generator.exports.later_day_chunks

    def looking(*args, **kwargs):
        seen.append(day_folders(exports_dir))  # raises LoadError on an unexpected entry
        yield from chunks(*args, **kwargs)

    monkeypatch.setattr(generator.exports, "later_day_chunks", looking)
    write_exports(
        tmp_path / "base", exports_dir, next_days=2, new_invoices=40, changed_invoices=60, **options
    )
    assert seen == [[], []]
    assert [day.isoformat() for day, _ in day_folders(exports_dir)] == ["2023-04-01", "2023-04-02"]


def test_a_temporary_left_by_a_killed_run_is_not_renamed_into_place(tmp_path: Path) -> None:
    # a run killed with SIGKILL cannot clean up: its half-written files must not end up in the export
    options = small_base(tmp_path / "base")
    exports_dir = tmp_path / "exports"
    stale = exports_dir / ".2023-04-01.partial"
    stale.mkdir(parents=True)
    (stale / "organizations.csv").write_text("half a file")
    write_exports(
        tmp_path / "base", exports_dir, next_days=1, new_invoices=40, changed_invoices=60, **options
    )
    assert sorted(p.name for p in exports_dir.iterdir()) == ["2023-04-01"]
    assert sorted(p.name for p in (exports_dir / "2023-04-01").iterdir()) == ["invoices.csv"]


def test_a_link_in_a_day_folders_place_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    # a link to an unmounted share does not exist() but is there: writing through it would fail half way
    options = small_base(tmp_path / "base")
    exports_dir = tmp_path / "exports"
    exports_dir.mkdir()
    (exports_dir / "2023-04-01").symlink_to(tmp_path / "unmounted")
    with pytest.raises(ValueError, match="2023-04-01 already exists: nothing was written"):
        write_exports(
            tmp_path / "base", exports_dir, next_days=1, new_invoices=40, changed_invoices=60, **options
        )
    assert sorted(p.name for p in exports_dir.iterdir()) == ["2023-04-01"]


def test_new_base_files_are_allowed_beside_an_exports_folder_holding_only_dot_entries(tmp_path: Path) -> None:
    # a temporary or a dotfile is no export the new base files could contradict
    small_base(tmp_path / "base")
    (tmp_path / "base" / "exports" / ".2023-04-01.partial").mkdir(parents=True)
    (tmp_path / "base" / "exports" / ".DS_Store").write_bytes(b"")
    small_base(tmp_path / "base", seed=8)  # other options: other base files
