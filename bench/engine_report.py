"""bench/engines.py's results as JSON and as markdown: the engines side by side.

    .venv/bin/python bench/engine_report.py RESULTS.json [--notes NOTES.md]

writes the markdown beside a results JSON again (after a change to this report), with the Notes section
taken from NOTES.md (what the numbers show, written by hand), or else from the markdown it replaces.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import report

# the step lines (procs.step_name) that make up each part of a build
RAW_STEPS = ("loading the exports", "raw ledger")
DBT_STEPS = ("dbt build",)

# How many dbt nodes each engine's table in the markdown shows (the JSON has them all).
TOP_NODES = 10
TITLES = {"postgres": "Postgres", "duckdb": "DuckDB", "spark": "Spark (local)"}
NOTES_PLACEHOLDER = "(to fill in by hand: what the numbers show, and what a missing number means)"


def method_notes() -> list[str]:
    return [
        "One run: the engines build the same generated files one after the other, each from scratch "
        "(a fresh database, a fresh DuckDB file, fresh Spark warehouse and metastore folders), with the "
        "profile's threads: 2 dbt threads on Postgres and DuckDB; on Spark one node at a time (its "
        "session target's `threads: 1`) on `local[2]`, two cores for each node's tasks.",
        "Postgres: `init.sh` with FULL_REFRESH=true, RUN_ALERTS=false, SERVE_DOCS=false, as the pipeline "
        "runs it (wait, the loader, `dbt build` with the rules seed, every model and test); its "
        "`dbt docs generate` step is not counted. The server was already running: its start is not "
        "counted, its memory is reported apart.",
        "DuckDB and Spark: `python -m data_platform.engines.build <engine> --no-unit-tests` (its raw "
        "ledger from the CSVs, then `dbt build --full-refresh` with the seeds and every data test; "
        "without dbt's unit tests, which the daily Postgres build leaves to the test suite too: every "
        "engine runs the same models, seeds and tests). Spark's JVM start-ups (one for the raw ledger, "
        "one for dbt's session) are part of its time.",
        "Times: wall time between the builders' `==> ` step lines. Raw layer = the loader or the raw "
        "ledger step; dbt = the build; other = interpreter start-up, waiting for the database, planning.",
        "Memory: the peak over the build of the summed PSS (proportional set size: shared pages divided "
        "among the processes sharing them) of the command's process tree, polled every 0.2 s; for "
        "Postgres also of the server's processes (postmaster and backends), whose idle value is given.",
        "CPU: the build's CPU seconds (its processes and, for Postgres, the server's, sampled with the "
        "memory) and the whole machine's busy CPU seconds over the same wall time, as average busy cores: "
        "the rest is other work that ran on the shared machine meanwhile and slowed the build down.",
        "Disk: the result's size after the build: Postgres's `pg_database_size` (raw, audit, staging, "
        "marts, with indexes), the DuckDB file (and its WAL), Spark's warehouse folder (Parquet).",
        "Marts: the fact's rows, its latest day, that day's rows and sum of balance_usd, the sum over "
        "every day, and the rows of dim_organizations and fct_invoices (Spark's read back from its "
        "Parquet files with DuckDB). Each engine must match the reference (Postgres when it ran): "
        "counts and sums exactly (USD amounts are exact decimals of cents on every engine).",
    ]


def write(results: dict[str, Any], results_dir: Path) -> tuple[Path, Path]:
    """<results-dir>/<date>-<invoices>-invoices-engines.json and .md; return both paths."""
    return report.write(results, results_dir, "invoices-engines", markdown)


# --- markdown -----------------------------------------------------------------------------------


def _s(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds:,.1f} s" if seconds < 100 else f"{seconds:,.0f} s"


def _mb(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f} MB" if value < 10_000 else f"{value / 1024:,.1f} GB"


def _bytes(value: int | None) -> str:
    return "n/a" if value is None else _mb(value / 1024 / 1024)


def _usd(value: str | None) -> str:
    return "n/a" if value is None else f"${float(value):,.2f}"


def _count(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def _status(result: dict[str, Any]) -> str:
    status = result.get("status")
    if status == "ok":
        return "finished"
    steps = [name for name in result.get("steps_seconds", {}) if name != "start-up"]
    during = f" during `{steps[-1]}`" if steps else ""
    seconds = result.get("process_seconds")
    after = f" after {_s(seconds)}" if seconds is not None else ""
    return f"**{'timeout' if status == 'timeout' else 'failed'}{after}{during}**"


def _row(label: str, cells: list[str]) -> str:
    return f"| {label} | {' | '.join(cells)} |"


def _side_by_side(results: dict[str, Any]) -> list[str]:
    engines = results["engines"]
    names = list(engines)
    invoices = results["parameters"]["invoices"]

    def cells(render) -> list[str]:
        return [render(engines[name]) for name in names]

    def finished(render):
        return lambda r: render(r) if r.get("status") == "ok" else "n/a"

    def per_step_peak(r: dict[str, Any]) -> str:
        peaks = r.get("peak_pss_mb_by_step", {})
        raw = max((v for k, v in peaks.items() if k in RAW_STEPS), default=None)
        dbt = max((v for k, v in peaks.items() if k in DBT_STEPS), default=None)
        return f"{_mb(r.get('peak_pss_mb'))} (raw layer {_mb(raw)}, dbt {_mb(dbt)})"

    def server(r: dict[str, Any]) -> str:
        if r.get("server_peak_pss_mb") is None:
            return "n/a"
        return f"{_mb(r['server_peak_pss_mb'])} (idle {_mb(r.get('server_idle_pss_mb'))})"

    def disk(r: dict[str, Any]) -> str:
        if r.get("disk_bytes") is None:
            return "n/a"
        raw = r.get("disk_bytes_by_part", {}).get("raw")
        return _bytes(r["disk_bytes"]) + (f" (raw layer {_bytes(raw)})" if raw is not None else "")

    def cpu_time(r: dict[str, Any]) -> str:
        cpu = r.get("cpu")
        if not cpu:
            return "n/a"
        return f"{cpu['cpu_seconds'] + cpu['server_cpu_seconds']:,.0f} CPU-s"

    def cores(r: dict[str, Any]) -> str:
        cpu = r.get("cpu")
        if not cpu:
            return "n/a"
        return f"{cpu['build_cores_average']:.2f} / {cpu['other_work_cores_average']:.2f}"

    def nodes(r: dict[str, Any]) -> str:
        counts = r.get("dbt_nodes_by_type") or {}
        return ", ".join(f"{count} {kind}s" for kind, count in counts.items()) or "n/a"

    def load(r: dict[str, Any]) -> str:
        start, end = r.get("load_average_at_start"), r.get("load_average_at_end")
        return " -> ".join(f"{values[0]:.2f}" for values in (start, end) if values) or "n/a"

    lines = [
        "| | " + " | ".join(TITLES.get(name, name) for name in names) + " |",
        "|---|" + "---|" * len(names),
        _row("status", cells(_status)),
        _row(
            "**full build** (raw layer + dbt + other)", cells(finished(lambda r: f"**{_s(r['seconds'])}**"))
        ),
        _row("raw layer (Postgres: the loader)", cells(lambda r: _s(r.get("raw_layer_seconds")))),
        _row("dbt build with seeds and tests", cells(lambda r: _s(r.get("dbt_seconds")))),
        _row("other (start-up, waiting, planning)", cells(lambda r: _s(r.get("other_seconds")))),
        _row(
            "invoices per second, full build",
            cells(finished(lambda r: f"{invoices / r['seconds']:,.0f}")),
        ),
        _row("peak memory of the build's processes (PSS)", cells(per_step_peak)),
        _row("peak memory of the Postgres server (PSS)", cells(server)),
        _row("result on disk", cells(disk)),
        _row("load average (1 min) at start -> end", cells(load)),
        _row("CPU time of the build (its processes, Postgres's server)", cells(cpu_time)),
        _row("cores busy on average: this build / other work on the machine", cells(cores)),
        _row("dbt nodes run", cells(nodes)),
    ]
    return lines


def _marts(results: dict[str, Any]) -> list[str]:
    comparison = results.get("marts_comparison")
    engines = {name: r for name, r in results["engines"].items() if "marts" in r}
    if not comparison or not engines:
        return ["No engine finished: nothing to compare."]
    names = list(engines)
    reference = comparison["reference"]

    def cells(key: str, render) -> list[str]:
        return [render(engines[name]["marts"][key]) for name in names]

    def invoices_rows(marts: dict) -> int:
        # results from before fct_invoices was named so
        return marts["fct_invoices_rows"] if "fct_invoices_rows" in marts else marts["dim_invoices_rows"]

    def verdict(name: str) -> str:
        if name == reference:
            return "(reference)"
        engine = comparison["engines"][name]
        if engine["equal"]:
            return "yes"
        differences = engine.get("sum_differences_usd") or {}
        by = ", ".join(f"{key} by ${float(v):+,.2f}" for key, v in differences.items())
        return f"**no**: {', '.join(engine['differing'])}" + (f" ({by})" if by else "")

    return [
        "| | " + " | ".join(TITLES.get(name, name) for name in names) + " |",
        "|---|" + "---|" * len(names),
        _row("fact rows", cells("fact_rows", _count)),
        _row("latest day", cells("latest_day", str)),
        _row("fact rows on the latest day", cells("latest_day_rows", _count)),
        _row("sum of balance_usd on the latest day", cells("latest_day_balance_usd", _usd)),
        _row("sum of balance_usd, every day", cells("all_days_balance_usd", _usd)),
        _row("dim_organizations rows", cells("dim_organizations_rows", _count)),
        _row("fct_invoices rows", [_count(invoices_rows(engines[name]["marts"])) for name in names]),
        _row(f"equal to {TITLES.get(reference, reference)}'s?", [verdict(name) for name in names]),
    ]


def _nodes(result: dict[str, Any]) -> list[str]:
    nodes = result.get("dbt_nodes") or []
    if not nodes:
        return ["No run_results.json (the build did not finish)."]
    lines = ["| node | status | seconds |", "|---|---|---|"]
    lines += [
        f"| `{n['unique_id']}` | {n['status']} | {n['execution_time']:.2f} |" for n in nodes[:TOP_NODES]
    ]
    if len(nodes) > TOP_NODES:
        lines += ["", f"{len(nodes) - TOP_NODES} more (faster) nodes in the JSON file."]
    return lines


def markdown(results: dict[str, Any], notes: str | None = None) -> str:
    p, machine, versions = results["parameters"], results["machine"], results["versions"]
    load = " / ".join(f"{value:.2f}" for value in machine["load_average_at_start"])
    postgres = results["engines"].get("postgres", {})
    postgres_version = (
        f"Postgres {postgres['server_version']} ({postgres['server']}), "
        if "server_version" in postgres
        else ""
    )
    packages = ", ".join(
        f"{name} {versions[name]}"
        for name in ("dbt-core", "dbt-postgres", "dbt-duckdb", "dbt-spark", "duckdb", "pyspark")
        if versions.get(name)
    )
    invoices_file = p["files"]["invoices.csv"]
    lines = [
        f"# Engines benchmark {results['date']}: {p['invoices']:,} invoices, "
        f"{p['organizations']:,} organizations",
        "",
        f"Machine: {machine['cpu_count']} cores ({machine.get('cpu_model') or 'model unknown'}), "
        f"{machine['memory_gib']} GiB RAM ({machine['memory_available_gib_at_start']} GiB available at the "
        f"start), {machine['platform']}; load average at the start {load} (the machine is shared: other "
        "work may run beside the benchmark, see each engine's load average below).",
        "",
        f"Versions: {postgres_version}{versions.get('java') or 'no Java'}, Python {versions['python']}, "
        f"{packages}.",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Data: invoices.csv {invoices_file['rows']:,} rows ({invoices_file['bytes'] / 1024**2:,.0f} MB), "
        f"organizations.csv {p['files']['organizations.csv']['rows']:,} rows, {p['days']:,} days to "
        f"{p['end_date']}; timeouts "
        + ", ".join(f"{TITLES.get(e, e)} {_s(t)}" for e, t in p["timeouts_seconds"].items())
        + ".",
        "",
        "## Side by side",
        "",
        *_side_by_side(results),
        "",
        "## The marts agree",
        "",
        *_marts(results),
        "",
        "## Steps",
        "",
        "| engine | seconds per step |",
        "|---|---|",
    ]
    for name, result in results["engines"].items():
        steps = ", ".join(
            f"{step} {_s(seconds)}" for step, seconds in result.get("steps_seconds", {}).items()
        )
        docs = result.get("docs_generate_seconds")
        if docs is not None:
            steps += f" (then `dbt docs generate` {_s(docs)}, not counted)"
        lines.append(f"| {TITLES.get(name, name)} | {steps or 'n/a'} |")
    for name, result in results["engines"].items():
        lines += ["", f"## {TITLES.get(name, name)}: slowest dbt nodes", "", *_nodes(result)]
    lines += ["", "## Method", "", *(f"- {note}" for note in results["method"])]
    lines += ["", "## Notes", "", (notes or NOTES_PLACEHOLDER).strip(), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/engine_report.py", description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a <date>-<invoices>-invoices-engines.json")
    parser.add_argument("--notes", type=Path, help="the Notes section's text (markdown)")
    args = parser.parse_args(argv)
    md_path = args.results.with_suffix(".md")
    notes = args.notes.read_text() if args.notes else None
    if notes is None and md_path.exists():
        _, found, kept = md_path.read_text().partition("\n## Notes\n")
        notes = kept if found else None
    md_path.write_text(markdown(json.loads(args.results.read_text()), notes))
    print(md_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
