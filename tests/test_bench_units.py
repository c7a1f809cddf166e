"""The benchmark's computations on known inputs, without a database: what each reported number is made
of (which run, which step, which memory, which unit), where a step's time ends, and how the markdown's
verdicts follow the targets.

tests/test_bench_smoke.py runs the whole harness, but there every timing is whatever the machine gave,
so a number computed from the wrong run or the wrong step would still look plausible; here each input is
chosen so that only the right computation gives the expected value. No timing is asserted.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from process_support import python_waiting

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT / "bench"))

import files  # noqa: E402  (bench/ is a folder of scripts, not a package)
import measures  # noqa: E402
import procs  # noqa: E402
import report  # noqa: E402
import run  # noqa: E402

MIB = 1024 * 1024
# a committed results file of bench/run.py, in the shape report.markdown renders
COMMITTED_RESULTS = PROJECT_ROOT / "bench" / "results" / "2026-12-05-12700000-invoices-run18.json"


# --- procs: steps, memory ------------------------------------------------------------------------


def test_step_seconds_end_at_the_cut_and_a_repeated_step_adds_up():
    markers = [
        (0.5, "loading the exports in /data"),
        (2.0, "dbt build: rules, models and tests"),
        (5.0, "loading the exports in /data again"),
        (6.0, "dbt docs generate"),
        (8.0, "alerts"),
    ]
    # cut where the docs step starts (engines.py does so for Postgres): the docs step is not a step of it
    assert procs.step_seconds(markers, 6.0) == {"start-up": 0.5, "loading the exports": 2.5, "dbt build": 3.0}


def test_peak_rss_is_reported_in_mebibytes():
    assert procs.Timed(seconds=1.0, peak_rss_bytes=150 * MIB).peak_rss_mb == 150
    assert procs.Timed(seconds=1.0).peak_rss_mb is None


def test_the_memory_sampler_keeps_a_peak_it_never_polled():
    # the child's peak is over before the sampler starts: only the kernel's high-water mark has it
    script = (
        "import sys\nblock = b'x' * (200 * 1024 * 1024)\ndel block\n"
        "print('freed', flush=True)\nsys.stdin.read()\n"
    )
    with python_waiting(script, "freed") as child:
        sampler = procs._RssSampler(child.pid)
        sampler.start()
        while sampler.peak == 0 and sampler.is_alive():  # until its first poll
            time.sleep(0.01)
        sampler.stopped.set()
        sampler.join()
        assert sampler.process.memory_info().rss < 100 * MIB
    assert sampler.peak >= 200 * MIB


def test_rows_are_counted_with_or_without_a_final_newline(tmp_path):
    with_newline, without = tmp_path / "a.csv", tmp_path / "b.csv"
    with_newline.write_bytes(b"id,name\n1,a\n2,b\n")
    without.write_bytes(b"id,name\n1,a\n2,b")
    assert files.count_rows(with_newline) == files.count_rows(without) == 2


# --- measures: which run, which step -------------------------------------------------------------


def _timed(seconds: float, peak_mb: float | None = None, markers=()) -> procs.Timed:
    peak = None if peak_mb is None else int(peak_mb * MIB)
    return procs.Timed(seconds=seconds, peak_rss_bytes=peak, markers=list(markers))


@dataclass
class _Bench:
    """Stands in for workspace.Bench: each command (by its log name) takes the time the test gives it,
    each query (by a piece of its text) answers what the test says, each comparison finds the
    differences the test says (by the left table)."""

    work: Path
    timings: dict[str, procs.Timed]
    answers: dict[str, list[tuple]] = field(default_factory=dict)
    differing: dict[str, list[int]] = field(default_factory=dict)
    database: str = "bench"

    @contextmanager
    def fresh_database(self, label: str):
        yield f"{self.database}_{label}"

    def load(self, csv_dir: Path, name: str, database: str) -> procs.Timed:
        return self.timings[name]

    def copy(self, dataset: files.Dataset, name: str, database: str) -> procs.Timed:
        return self.timings[name]

    def psql_file(self, path: Path, name: str) -> procs.Timed:
        return self.timings[name]

    def settle(self, database: str | None = None) -> float:
        return 0.25

    def pipeline(self, csv_dir: Path, name: str, on_step, **settings: str) -> procs.Timed:
        timed = self.timings[name]
        for _, text in timed.markers:
            on_step(text)
        return timed

    def dbt(self, name: str, *arguments: str) -> tuple[procs.Timed, Path]:
        run_results = self.work / f"{name}.json"
        run_results.write_text(json.dumps({"results": []}))
        return self.timings[name], run_results

    def differences(self, left: str, right: str, columns: str = "*") -> list[int]:
        return self.differing.get(left, [0, 0])

    def query(self, statement, params=None, *, role: str = "transformer", database: str | None = None):
        return next((rows for text, rows in self.answers.items() if text in str(statement)), [])


def _base(directory: Path, invoices: int = 20) -> files.Dataset:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / files.INVOICES).write_text("id\n" + "".join(f"{n}\n" for n in range(invoices)))
    (directory / files.ORGANIZATIONS).write_text("id\n1\n2\n")
    return files.Dataset(directory, {"files": files._describe(directory, files.FILES)})


def test_loader_vs_copy_takes_the_best_of_each_and_the_peak_of_every_loader_run(tmp_path):
    bench = _Bench(
        tmp_path,
        {
            "load-head": _timed(1.0, peak_mb=40.0),
            "copy-1": _timed(2.0),
            "copy-2": _timed(3.0),
            "load-1": _timed(4.0, peak_mb=30.0),
            "load-2": _timed(5.0, peak_mb=35.0),
        },
    )
    loader, rss = measures.loader_vs_copy(bench, _base(tmp_path / "base"))
    assert loader["rows"] == 22  # invoices and organizations
    assert (loader["loader_best_seconds"], loader["copy_best_seconds"]) == (4.0, 2.0)
    assert (loader["loader_rows_per_second"], loader["copy_rows_per_second"]) == (6, 11)  # 22 / 4, 22 / 2
    assert loader["loader_over_copy"] == 2.0
    # the head file's peak above the full file's: the growth is negative, the peak is the head's
    assert rss["full_file"]["peak_rss_mb"] == 35.0
    assert rss["head"]["peak_rss_mb"] == 40.0
    assert (rss["peak_rss_mb"], rss["growth_mb"]) == (40.0, -5.0)


def test_snapshot_day_compares_its_load_with_copy(tmp_path):
    bench = _Bench(
        tmp_path,
        {"snapshot-load-base": _timed(9.0), "snapshot-load": _timed(3.0, 50.0), "snapshot-copy": _timed(2.0)},
        answers={"invoices_unchanged from raw.load_log": [(110, 10, 20, 80)]},
    )
    base = _base(tmp_path / "base")
    snapshot = measures.snapshot_day(bench, base, base)
    counts = (snapshot["invoices_new"], snapshot["invoices_changed"], snapshot["invoices_unchanged"])
    assert counts == (10, 20, 80)
    assert snapshot["load_over_copy"] == 1.5
    assert snapshot["load_bound_seconds"] == 1.5 * 2.0 + 15


PIPELINE_STEPS = [
    (1.0, "loading the exports in /csv"),
    (3.0, "dbt build: rules, models and tests, rebuilt from scratch (first run)"),
    (8.0, "dbt docs generate"),
    (9.5, "pipeline finished"),
]


def _pipeline_bench(tmp_path: Path, **differing: list[int]) -> _Bench:
    return _Bench(
        tmp_path,
        {
            "pipeline": _timed(10.0, markers=PIPELINE_STEPS),
            "floor-copy": _timed(1.0),
            "floor-fact": _timed(1.5),
        },
        differing=differing,
    )


def test_pipeline_time_leaves_out_the_docs_step_and_the_floor_is_copy_plus_aggregate(tmp_path):
    base = _base(tmp_path / "base")
    pipe, _ = measures.pipeline_vs_floor(_pipeline_bench(tmp_path), base, base, 2.0)
    assert (pipe["pipeline_seconds"], pipe["docs_generate_seconds"]) == (8.5, 1.5)
    assert (pipe["floor_seconds"], pipe["ratio"]) == (3.5, round(8.5 / 3.5, 3))
    assert pipe["floor_matches_fact"] is True


@pytest.mark.parametrize("differing", [[1, 0], [0, 1]])
def test_the_floor_does_not_match_when_either_side_has_a_row_the_other_lacks(tmp_path, differing):
    base = _base(tmp_path / "base")
    bench = _pipeline_bench(tmp_path, **{"marts.fct_organization_daily_financials": differing})
    pipe, _ = measures.pipeline_vs_floor(bench, base, base, 2.0)
    assert pipe["floor_matches_fact"] is False


NEXT_DAY_STEPS = [
    (0.5, "loading the exports in /csv"),
    (2.0, "dbt build: rules, models and tests, days from 2024-06-29 (new exports)"),
    (4.0, "dbt docs generate"),
    (5.0, "alerts"),
]


def _next_day(tmp_path: Path, markers=NEXT_DAY_STEPS, bench=None, **differing: list[int]) -> dict:
    bench = (bench or _Bench)(
        tmp_path,
        {"next-day": _timed(6.0, markers=markers), "rebuild": _timed(20.0)},
        answers={
            "raw.file_checksums": [(0,)],
            "duration_seconds from raw.load_log": [(30, 10, 20, 0.75)],
        },
        differing=differing,
    )
    landing = files.Dataset(tmp_path, {"files": {}})
    measure, _, _ = measures.next_day(bench, landing, landing, 50.0)
    return measure


def test_next_day_time_leaves_out_the_docs_step_and_is_compared_with_the_full_pipeline(tmp_path):
    day = _next_day(tmp_path)
    assert (day["seconds"], day["docs_generate_seconds"]) == (5.0, 1.0)
    assert day["full_pipeline_over_next_day"] == 10.0
    assert (day["invoices_new"], day["invoices_changed"], day["export_load_seconds"]) == (10, 20, 0.75)
    assert day["incremental"] is True and day["results_match"] is True


def test_a_next_day_without_a_build_step_is_not_incremental(tmp_path):
    assert _next_day(tmp_path, markers=[(0.5, "loading the exports in /csv")])["incremental"] is False


def test_one_mart_differing_from_the_rebuild_is_a_mismatch(tmp_path):
    assert _next_day(tmp_path, **{"marts.fct_invoices": [0, 1]})["results_match"] is False


def test_the_floor_is_compared_on_every_column_of_the_fact():
    # a column left out of the comparison could differ and the floor would still "match"
    models = yaml.safe_load((PROJECT_ROOT / "dbt" / "models" / "marts" / "_marts__models.yml").read_text())
    [fact] = [model for model in models["models"] if model["name"] == "fct_organization_daily_financials"]
    assert measures.FACT_COLUMNS.split(", ") == [column["name"] for column in fact["columns"]]


def test_a_file_hashed_under_two_paths_counts_as_read_again(tmp_path):
    duckdb = pytest.importorskip("duckdb")

    class Checksums(_Bench):
        """Answers the checksums query from a table where one file was hashed under two paths."""

        def query(self, statement, params=None, **kwargs):
            if "raw.file_checksums" not in str(statement):
                return super().query(statement, params, **kwargs)
            with duckdb.connect() as conn:
                conn.execute("create schema raw")
                conn.execute("create table raw.file_checksums (path varchar, sha256 varchar)")
                conn.execute(
                    "insert into raw.file_checksums values"
                    " ('invoices.csv', 'a'), ('organizations.csv', 'b'), ('moved/invoices.csv', 'a')"
                )
                return conn.execute(statement).fetchall()

    assert _next_day(tmp_path, bench=Checksums)["files_read_again"] == 1


def test_dbt_nodes_are_listed_slowest_first():
    results = {
        "results": [
            {"unique_id": f"model.p.{name}", "status": "success", "execution_time": seconds}
            for name, seconds in (("a", 1.0), ("b", 3.0), ("c", 2.0))
        ]
    }
    ordered = [node["unique_id"] for node in measures.node_timings(results)]
    assert ordered == ["model.p.b", "model.p.c", "model.p.a"]


# --- run.py's parameters, report.py's verdicts -------------------------------------------------------


def test_the_next_day_export_scales_with_the_invoices():
    real = run.parse_args([])
    assert (real.new_invoices, real.changed_invoices) == (10_000, 20_000)
    tenth = run.parse_args(["--invoices", "1270000"])
    assert (tenth.new_invoices, tenth.changed_invoices) == (1_000, 2_000)


def test_a_target_without_a_value_is_not_met():
    results = json.loads(COMMITTED_RESULTS.read_text())
    results["measures"]["pipeline_vs_floor"]["ratio"] = None  # a floor of 0 s: no ratio
    assert report.evaluate(results["measures"])["pipeline_over_floor"]["met"] is False


# each markdown row with a verdict -> the target (or check) it shows
ROW_VERDICTS = {
    "Generator": "generator_rows_per_second",
    "Loader, ": "loader_over_copy",
    "Loader peak RSS, full file": "loader_peak_rss_mb",
    "Loader peak RSS, first 10%": "loader_rss_growth_mb",
    "Full-snapshot next day": "snapshot_load_seconds",
    "Full pipeline": "pipeline_over_floor",
    "Next day's export": "export_load_seconds",
    "Next day end to end": "next_day_seconds",
    "Next day vs the full pipeline": "full_pipeline_over_next_day",
    "Alert query": "alert_query_median_ms",
    "Next day's marts == a full rebuild's": "results_match",
}


@pytest.mark.parametrize("missed", list(ROW_VERDICTS.values()))
def test_each_markdown_row_shows_its_own_verdict(missed):
    results = json.loads(COMMITTED_RESULTS.read_text())
    for target in results["targets"].values():
        target["met"] = True
    results["measures"]["next_day"]["results_match"] = results["measures"]["next_day"]["incremental"] = True
    if missed == "results_match":
        results["measures"]["next_day"]["results_match"] = False
    else:
        results["targets"][missed]["met"] = False
    verdicts = {}
    for label, *_, met in report._summary_rows(copy.deepcopy(results)):
        [key] = [key for prefix, key in ROW_VERDICTS.items() if label.startswith(prefix)] or [None]
        if key:
            verdicts[key] = met
    assert set(verdicts) == set(ROW_VERDICTS.values())
    assert {key for key, met in verdicts.items() if met != "yes"} == {missed}
    assert verdicts[missed] == "**no**"


CHECKS = ("floor_matches_fact", "next_day_was_incremental", "next_day_matches_full_rebuild")


@pytest.mark.parametrize("failing", CHECKS)
def test_each_check_of_a_run_is_its_own_measure(tmp_path, monkeypatch, failing):
    """run.measure with the measurements given: each check reports its own measure, the floor gets the
    best COPY time and the next day the full pipeline's time."""
    m = json.loads(COMMITTED_RESULTS.read_text())["measures"]
    source = {
        "floor_matches_fact": m["pipeline_vs_floor"],
        "next_day_was_incremental": m["next_day"],
        "next_day_matches_full_rebuild": m["next_day"],
    }
    measure = {"floor_matches_fact": "floor_matches_fact", "next_day_was_incremental": "incremental"}
    source[failing][measure.get(failing, "results_match")] = False
    dataset = files.Dataset(tmp_path, {"files": {}, "generation": m["generation"]})
    passed = {}

    def pipeline_vs_floor(bench, base, landing, copy_seconds):
        passed["copy_seconds"] = copy_seconds
        return m["pipeline_vs_floor"], []

    def next_day(bench, landing, day, pipeline_seconds):
        passed["pipeline_seconds"] = pipeline_seconds
        return m["next_day"], [], []

    monkeypatch.setattr(run, "environment", lambda bench, server_kind: {})
    for name in ("next_day_dataset", "snapshot_dataset", "landing_folder"):
        monkeypatch.setattr(files, name, lambda *args: dataset)
    monkeypatch.setattr(files, "base_dataset", lambda *args: (dataset, True))
    loader = m["loader_vs_copy"], m["loader_rss"]
    monkeypatch.setattr(measures, "loader_vs_copy", lambda bench, base: loader)
    monkeypatch.setattr(measures, "snapshot_day", lambda bench, base, snapshot: m["snapshot_day"])
    monkeypatch.setattr(measures, "pipeline_vs_floor", pipeline_vs_floor)
    monkeypatch.setattr(measures, "next_day", next_day)
    monkeypatch.setattr(measures, "alert_query", lambda bench, repeat: m["alert_query"])
    bench = _Bench(tmp_path, {})
    results = run.measure(bench, run.parse_args([]), "given")
    assert {name for name, ok in results["checks"].items() if not ok} == {failing}
    assert passed == {
        "copy_seconds": m["loader_vs_copy"]["copy_best_seconds"],
        "pipeline_seconds": m["pipeline_vs_floor"]["pipeline_seconds"],
    }
    assert results["targets"] == report.evaluate(m)
