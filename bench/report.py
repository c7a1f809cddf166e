"""The benchmark's targets, and the results as JSON and as a markdown table."""

from __future__ import annotations

import json
import operator
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# How many dbt nodes each per-model table in the markdown shows (the JSON has them all).
TOP_NODES = 15


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    path: tuple[str, str]  # (measure, field) in results["measures"]: the value
    comparison: str  # ">=" or "<="
    threshold: float | tuple[str, str]  # a number, or (measure, field) when the run computes it
    unit: str


TARGETS = (
    Target(
        "generator_rows_per_second", "generator", ("generation", "rows_per_second"), ">=", 200_000, "rows/s"
    ),
    Target(
        "loader_over_copy",
        "loader time / psql \\copy time",
        ("loader_vs_copy", "loader_over_copy"),
        "<=",
        1.5,
        "x",
    ),
    Target("loader_peak_rss_mb", "loader peak RSS", ("loader_rss", "peak_rss_mb"), "<=", 150, "MB"),
    Target(
        "loader_rss_growth_mb", "loader RSS growth, 10% -> 100%", ("loader_rss", "growth_mb"), "<=", 30, "MB"
    ),
    Target(
        "snapshot_load_seconds",
        "full-snapshot next day load",
        ("snapshot_day", "load_seconds"),
        "<=",
        ("snapshot_day", "load_bound_seconds"),
        "s",
    ),
    Target("pipeline_over_floor", "full pipeline / floor", ("pipeline_vs_floor", "ratio"), "<=", 2.0, "x"),
    Target(
        "export_load_seconds",
        "the next day's export loaded (raw.load_log)",
        ("next_day", "export_load_seconds"),
        "<=",
        2.0,
        "s",
    ),
    Target("next_day_seconds", "next day end to end", ("next_day", "seconds"), "<=", 15.0, "s"),
    Target(
        "full_pipeline_over_next_day",
        "full pipeline / next day",
        ("next_day", "full_pipeline_over_next_day"),
        ">=",
        10.0,
        "x",
    ),
    Target("alert_query_median_ms", "alert query median", ("alert_query", "median_ms"), "<=", 100.0, "ms"),
)
_COMPARE: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le}


def evaluate(measures: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each target with its measured value, its threshold and whether it is met."""
    evaluated = {}
    for target in TARGETS:
        measure, field = target.path
        value = measures[measure][field]
        if isinstance(target.threshold, tuple):
            threshold = measures[target.threshold[0]][target.threshold[1]]
        else:
            threshold = target.threshold
        evaluated[target.key] = {
            "label": target.label,
            "value": value,
            "comparison": target.comparison,
            "threshold": threshold,
            "unit": target.unit,
            "met": value is not None and _COMPARE[target.comparison](value, threshold),
        }
    return evaluated


def _free_stem(results_dir: Path, stem: str) -> str:
    """`stem`, or `stem`-run<N> with the first N free: a later run of the same day never overwrites the
    results of an earlier one (committed or not). An unnumbered file counts as run 1."""

    def taken(name: str) -> bool:
        return any((results_dir / f"{name}{suffix}").exists() for suffix in (".json", ".md"))

    if not taken(stem) and not taken(f"{stem}-run1"):
        return stem
    number = 2
    while taken(f"{stem}-run{number}"):
        number += 1
    return f"{stem}-run{number}"


def write(
    results: dict[str, Any], results_dir: Path, kind: str = "invoices", render=None
) -> tuple[Path, Path]:
    """<results-dir>/<date>-<invoices>-<kind>.json and .md (rendered by `render`, default this module's
    markdown), or -run2, -run3, ... when that day's run already wrote there; return both paths."""
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = _free_stem(results_dir, f"{results['date']}-{results['parameters']['invoices']}-{kind}")
    json_path, md_path = results_dir / f"{stem}.json", results_dir / f"{stem}.md"
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    md_path.write_text((render or markdown)(results))
    return json_path, md_path


# --- markdown -----------------------------------------------------------------------------------


def _s(seconds: float) -> str:
    return f"{seconds:,.2f} s" if seconds < 100 else f"{seconds:,.0f} s"


def _rate(rows_per_second: float) -> str:
    return f"{rows_per_second:,.0f} rows/s"


def _met(targets: dict[str, dict[str, Any]], key: str) -> str:
    return _yes(targets[key]["met"])


def _yes(value: bool) -> str:
    return "yes" if value else "**no**"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.2f}x"


def _summary_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    m, t = results["measures"], results["targets"]
    gen, load, rss, snap = m["generation"], m["loader_vs_copy"], m["loader_rss"], m["snapshot_day"]
    pipe, day, alert = m["pipeline_vs_floor"], m["next_day"], m["alert_query"]
    cached = " (cached files: time of their generation)" if gen["reused"] else ""
    return [
        (
            "Generator",
            f"{_rate(gen['rows_per_second'])} ({gen['invoices']:,} invoices in {_s(gen['seconds'])}){cached}",
            ">= 200,000 rows/s",
            "",
            _met(t, "generator_rows_per_second"),
        ),
        (
            f"Loader, {load['rows']:,} rows into an empty warehouse (best of 2)",
            f"{_s(load['loader_best_seconds'])} ({_rate(load['loader_rows_per_second'])})",
            f"`psql \\copy`: {_s(load['copy_best_seconds'])} ({_rate(load['copy_rows_per_second'])})",
            f"{_ratio(load['loader_over_copy'])} the COPY time (target <= 1.5x)",
            _met(t, "loader_over_copy"),
        ),
        (
            "Loader peak RSS, full file",
            f"{rss['full_file']['peak_rss_mb']:,.0f} MB ({rss['full_file']['rows']:,} invoices)",
            "<= 150 MB",
            "",
            _met(t, "loader_peak_rss_mb"),
        ),
        (
            "Loader peak RSS, first 10% of the file",
            f"{rss['head']['peak_rss_mb']:,.0f} MB ({rss['head']['rows']:,} invoices)",
            "growth to the full file <= 30 MB",
            f"{rss['growth_mb']:+,.1f} MB",
            _met(t, "loader_rss_growth_mb"),
        ),
        (
            f"Full-snapshot next day: load of {snap['invoice_rows']:,} invoices "
            f"({snap['invoices_new']:,} new, {snap['invoices_changed']:,} changed)",
            f"{_s(snap['load_seconds'])} (peak RSS {snap['load_peak_rss_mb']:,.0f} MB)",
            f"<= 1.5 x `\\copy` {_s(snap['copy_seconds'])} + 15 s = {_s(snap['load_bound_seconds'])}",
            f"{_ratio(snap['load_over_copy'])} the COPY time",
            _met(t, "snapshot_load_seconds"),
        ),
        (
            "Full pipeline: load + seed + build with tests (FULL_REFRESH)",
            _s(pipe["pipeline_seconds"]),
            f"floor {_s(pipe['floor_seconds'])} (`\\copy` {_s(pipe['floor_copy_seconds'])} "
            f"+ aggregate {_s(pipe['floor_aggregate_seconds'])})",
            f"{_ratio(pipe['ratio'])} (target <= 2x)",
            _met(t, "pipeline_over_floor"),
        ),
        ("dbt docs generate (not in the pipeline time)", _s(pipe["docs_generate_seconds"]), "", "", ""),
        (
            f"Next day's export, {day['export_invoice_rows']:,} invoices, into the loaded warehouse: "
            "the loader's time as `raw.load_log` records it (to its commit)",
            _s(day["export_load_seconds"]),
            "<= 2 s",
            "",
            _met(t, "export_load_seconds"),
        ),
        (
            f"Next day end to end: {day['invoices_new']:,} new + {day['invoices_changed']:,} changed "
            "invoices (load, seed, build with tests, alerts)",
            _s(day["seconds"]),
            "<= 15 s",
            "",
            _met(t, "next_day_seconds"),
        ),
        (
            "Next day vs the full pipeline",
            "",
            ">= 10x faster",
            f"{_ratio(day['full_pipeline_over_next_day'])}",
            _met(t, "full_pipeline_over_next_day"),
        ),
        (
            "dbt docs generate after the next day (not in its time)",
            _s(day["docs_generate_seconds"]),
            "",
            "",
            "",
        ),
        (
            "Next day's marts == a full rebuild's (fact, fct_invoices, dim_organizations)",
            ", ".join(f"{mart}: {_yes(not any(pair))}" for mart, pair in day["rows_differing"].items()),
            "must match",
            "",
            _yes(day["results_match"]),
        ),
        (
            f"Alert query on the latest day (median of {alert['repeat']})",
            f"{alert['median_ms']:,.1f} ms ({alert['rows']:,} rows)",
            "<= 100 ms",
            "",
            _met(t, "alert_query_median_ms"),
        ),
    ]


def _steps_table(results: dict[str, Any]) -> list[str]:
    pipe, day = results["measures"]["pipeline_vs_floor"], results["measures"]["next_day"]
    names = list(dict.fromkeys([*pipe["steps_seconds"], *day["steps_seconds"]]))
    rows = [
        (
            name,
            _s(pipe["steps_seconds"][name]) if name in pipe["steps_seconds"] else "",
            _s(day["steps_seconds"][name]) if name in day["steps_seconds"] else "",
        )
        for name in names
    ]
    return _table(("init.sh step", "full pipeline", "next day"), rows)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def _node_table(nodes: list[dict[str, Any]]) -> list[str]:
    rows = [(f"`{n['unique_id']}`", n["status"], f"{n['execution_time']:,.2f}") for n in nodes[:TOP_NODES]]
    lines = _table(("node", "status", "seconds"), rows)
    if len(nodes) > TOP_NODES:
        lines.append(f"\n{len(nodes) - TOP_NODES} more (faster) nodes in the JSON file.")
    return lines


def markdown(results: dict[str, Any]) -> str:
    p, machine, pg = results["parameters"], results["machine"], results["postgres"]
    versions = results["versions"]
    out = [
        f"# Benchmark {results['date']}: {p['invoices']:,} invoices, {p['organizations']:,} organizations",
        "",
        f"Machine: {machine['cpu_count']} cores, {machine['memory_gib']:.1f} GiB RAM, {machine['platform']}; "
        f"load average at the start {' / '.join(str(x) for x in machine['load_average_at_start'])} "
        "(the machine is shared). "
        f"Postgres {pg['version']} ({pg['server']}); Python {versions['python']}, "
        f"dbt-core {versions['dbt-core']}, dbt-postgres {versions['dbt-postgres']}.",
        "",
        "Postgres settings: "
        + ", ".join(f"`{name}={value}`" for name, value in pg["settings"].items())
        + ".",
        "",
        f"Command: `{results['command']}`",
        "",
        *_table(("measure", "value", "floor / target", "ratio", "met?"), _summary_rows(results)),
        "",
        "## Where the time goes: dbt nodes by execution time",
        "",
        "The full pipeline's `dbt build --full-refresh`:",
        "",
        *_node_table(results["model_timings"]["full_pipeline_build"]),
        "",
        "The next day's incremental `dbt build`:",
        "",
        *_node_table(results["model_timings"]["next_day_build"]),
        "",
        "## Where the time goes: init.sh steps",
        "",
        *_steps_table(results),
        "",
        "## Method",
        "",
        *(f"- {line}" for line in results["method"]),
        "",
        "## Notes",
        "",
        "_To be filled in: what the numbers show, why a missed target is missed and what would fix it._",
        "",
    ]
    return "\n".join(out)
