#!/usr/bin/env bash
# Lint the Python (ruff) and the dbt SQL (SQLFluff, postgres dialect, jinja templater).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> sqlfluff"
.venv/bin/sqlfluff lint dbt --disable-progress-bar
