"""What a failed `dbt build` left to say, read from its target folder: each failed node's error, and for
each failed data test what to do about it (its YAML's `meta` `hint`) and the first rows it stored in the
audit schema. Both runners print it: init.sh's pipeline, and Dagster's build step in its failure."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg

from data_platform.db import connect
from data_platform.load_errors import MAX_VALUE_CHARS
from data_platform.steps import say

FAILED_ROWS_SHOWN = 5
ERROR_LINES_SHOWN = 4  # of a failed model's or seed's error: dbt's heading, the database's reason, ...


def report(target_dir: Path, limit: int = FAILED_ROWS_SHOWN) -> list[str]:
    """Each node that failed in the last run's results: a model's or seed's error, or a test's that could
    not run (their first lines, the database's reason among them), then each failing test's message, what
    to do about it when its YAML says (its `meta` `hint`), and the first rows it stored."""
    try:
        results = json.loads((target_dir / "run_results.json").read_text())["results"]
    except (OSError, ValueError, KeyError):
        return []
    failed = [
        (result, *_kind_and_name(result)) for result in results if result.get("status") in ("fail", "error")
    ]
    lines: list[str] = []
    for result, kind, name in failed:
        if kind != "test":
            lines.append(f"failed {kind} {name}: {_first_lines(result)}")
        elif result.get("status") == "error":
            # its query did not finish: it found no rows, and its audit view may be an earlier build's
            lines.append(f"test {name} could not run: {_first_lines(result)}")
    tests = [
        (result, name) for result, kind, name in failed if kind == "test" and result.get("status") == "fail"
    ]
    if not tests:
        return lines
    hints = _hints(target_dir)
    with connect() as conn:
        for result, name in tests:
            relation = result.get("relation_name")
            lines.append(f"failed test {name}: {result.get('message') or result.get('status')}")
            if result.get("unique_id") in hints:
                lines.append(f"  {hints[result['unique_id']]}")
            if not relation:
                continue
            try:
                cursor = conn.execute(f"select * from {relation} limit {int(limit)}")
            except psycopg.Error as error:
                conn.rollback()
                lines.append(f"  (its failing rows could not be read: {str(error).strip()})")
                continue
            columns = [column.name for column in cursor.description]
            lines.append(f"  first failing rows (all of them: select * from {relation}):")
            for row in cursor.fetchall():
                lines.append(
                    "  "
                    + ", ".join(
                        f"{column}={_shortened(repr(value))}"
                        for column, value in zip(columns, row, strict=True)
                    )
                )
    return lines


def _shortened(shown: str) -> str:
    """A failing row's value cut to the loader's length for a value it shows: a whole 500,000-character
    status is no help in a log line, nor in a Dagster failure alert."""
    return shown if len(shown) <= MAX_VALUE_CHARS else shown[: MAX_VALUE_CHARS - 3] + "..."


def _first_lines(result: dict) -> str:
    """A failed node's message in one line: its first lines (dbt's heading, the database's reason)."""
    message = [line.strip() for line in (result.get("message") or "").splitlines() if line.strip()]
    return " / ".join(message[:ERROR_LINES_SHOWN] or ["error"])


def _kind_and_name(result: dict) -> tuple[str, str]:
    """("test", "not_null_fct_invoices_invoice_id") from a result's unique id, kind.project.name[.hash]."""
    parts = str(result.get("unique_id", "")).split(".")
    return parts[0], parts[2] if len(parts) > 2 else parts[-1]


def _hints(target_dir: Path) -> dict[str, str]:
    """What to do when a test fails, by unique id: its YAML's `meta: {hint: ...}`, read from the build's
    manifest."""
    try:
        nodes = json.loads((target_dir / "manifest.json").read_text())["nodes"]
    except (OSError, ValueError, KeyError):
        return {}
    return {
        unique_id: node["config"]["meta"]["hint"]
        for unique_id, node in nodes.items()
        if isinstance(node.get("config", {}).get("meta", {}).get("hint"), str)
    }


def forget_run_results(target_dir: Path) -> None:
    """Call it before a build: one that dies writes no run results, and the previous command's would be
    reported as its failed tests."""
    (target_dir / "run_results.json").unlink(missing_ok=True)


def show(target_dir: Path, limit: int = FAILED_ROWS_SHOWN) -> None:
    """Print each failed node's error, and for each failed dbt test the first rows it stored in the audit
    schema."""
    for line in report(target_dir, limit):
        say(("" if line.startswith(" ") else "\n") + line)
