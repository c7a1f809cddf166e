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
    path: tuple[str, str]  # (measure, field) in results["measures"]
    comparison: str  # ">=" or "<="
    threshold: float
    unit: str


TARGETS = (
    Target(
        "generator_rows_per_second",
        "generator",
        ("generation", "rows_per_second"),
        ">=",
        200_000,
        "rows/s",
    ),
    Target("loader_to_copy_ratio", "loader vs psql \\copy", ("loader_vs_copy", "ratio"), ">=", 0.8, "x"),
    Target("loader_peak_rss_mb", "loader peak RSS", ("loader_rss", "peak_rss_mb"), "<=", 200, "MB"),
    Target(
        "pipeline_to_floor_ratio", "full pipeline vs floor", ("pipeline_vs_floor", "ratio"), "<=", 2.0, "x"
    ),
    Target(
        "incremental_build_seconds",
        "incremental dbt build",
        ("incremental", "incremental_build_seconds"),
        "<=",
        10.0,
        "s",
    ),
    Target(
        "full_to_incremental_ratio",
        "full rebuild vs incremental build",
        ("incremental", "ratio_full_to_incremental"),
        ">=",
        10.0,
        "x",
    ),
    Target("alert_query_median_ms", "alert query median", ("alert_query", "median_ms"), "<=", 100.0, "ms"),
)
_COMPARE: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le}


def evaluate(measures: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each target with its measured value and whether it is met."""
    evaluated = {}
    for target in TARGETS:
        measure, field = target.path
        value = measures[measure][field]
        evaluated[target.key] = {
            "label": target.label,
            "value": value,
            "target": f"{target.comparison} {target.threshold:g} {target.unit}",
            "met": value is not None and _COMPARE[target.comparison](value, target.threshold),
        }
    return evaluated


def write(results: dict[str, Any], results_dir: Path) -> tuple[Path, Path]:
    """bench/results/<date>-<invoices>-invoices.json and .md; return both paths."""
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{results['date']}-{results['parameters']['invoices']}-invoices"
    json_path, md_path = results_dir / f"{stem}.json", results_dir / f"{stem}.md"
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    md_path.write_text(markdown(results))
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
    gen, load, rss = m["generation"], m["loader_vs_copy"], m["loader_rss"]
    pipe, inc, alert = m["pipeline_vs_floor"], m["incremental"], m["alert_query"]
    cached = " (cached files: time of their generation)" if gen["reused"] else ""
    docs = pipe["docs_generate_seconds"]
    return [
        (
            "Generator",
            f"{_rate(gen['rows_per_second'])} ({gen['invoices']:,} invoices in {_s(gen['seconds'])}){cached}",
            "target >= 200,000 rows/s",
            "",
            _met(t, "generator_rows_per_second"),
        ),
        (
            f"Loader, {load['rows']:,} rows (best of 2)",
            f"{_rate(load['loader_rows_per_second'])} ({_s(load['loader_best_seconds'])})",
            f"floor `psql \\copy`: {_rate(load['floor_rows_per_second'])} ({_s(load['floor_best_seconds'])})",
            f"{_ratio(load['ratio'])} (target >= 0.8)",
            _met(t, "loader_to_copy_ratio"),
        ),
        (
            "Loader peak RSS, full file",
            f"{rss['full_file']['peak_rss_mb']:,.0f} MB ({rss['full_file']['rows']:,} invoices)",
            "target <= 200 MB",
            "",
            _met(t, "loader_peak_rss_mb"),
        ),
        (
            "Loader peak RSS, first 10% of the file",
            f"{rss['head']['peak_rss_mb']:,.0f} MB ({rss['head']['rows']:,} invoices)",
            "flat as the file grows",
            f"full / 10%: {_ratio(rss['growth_ratio'])}",
            "",
        ),
        (
            "Full pipeline: load + seed + build with tests",
            _s(pipe["pipeline_seconds"]),
            f"floor: {_s(pipe['floor_seconds'])} (`\\copy` {_s(pipe['floor_copy_seconds'])} "
            f"+ `create table as` {_s(pipe['floor_daily_fact_seconds'])})",
            f"{_ratio(pipe['ratio'])} (target <= 2)",
            _met(t, "pipeline_to_floor_ratio"),
        ),
        (
            "dbt docs generate (not in the pipeline time)",
            "n/a" if docs is None else _s(docs),
            "",
            "",
            "",
        ),
        (
            f"Load after appending one day ({inc['append_invoices']:,} invoices; whole file reloaded)",
            _s(inc["append_load_seconds"]),
            "",
            "",
            "",
        ),
        (
            "Incremental `dbt build` (models + tests)",
            _s(inc["incremental_build_seconds"]),
            "target <= 10 s",
            "",
            _met(t, "incremental_build_seconds"),
        ),
        ("Incremental `dbt run` (models only)", _s(inc["incremental_run_seconds"]), "", "", ""),
        (
            "Full rebuild `dbt build --full-refresh`",
            _s(inc["full_rebuild_seconds"]),
            "target >= 10x the incremental build",
            f"full / incremental: {_ratio(inc['ratio_full_to_incremental'])}",
            _met(t, "full_to_incremental_ratio"),
        ),
        (
            "Incremental rows == full rebuild rows",
            f"fact: {_yes(inc['fact_match'])}, dim_organizations: {_yes(inc['dim_organizations_match'])}",
            "must match",
            "",
            _yes(inc["results_match"]),
        ),
        (
            f"Alert query on the latest day (median of {alert['repeat']})",
            f"{alert['median_ms']:,.1f} ms ({alert['rows']:,} rows)",
            "target <= 100 ms",
            "",
            _met(t, "alert_query_median_ms"),
        ),
    ]


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
        f"Machine: {machine['cpu_count']} cores, {machine['memory_gib']:.1f} GiB RAM, {machine['platform']}. "
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
        "Full rebuild (`dbt build --full-refresh`, after the appended day):",
        "",
        *_node_table(results["model_timings"]["full_refresh_build"]),
        "",
        "Incremental build (`dbt build`, one appended day):",
        "",
        *_node_table(results["model_timings"]["incremental_build"]),
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
