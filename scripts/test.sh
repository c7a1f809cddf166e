#!/usr/bin/env bash
# The one test command: set up .venv, lint, and run the whole suite against a real Postgres
# (TEST_DATABASE_URL if set, else testcontainers when Docker answers, else embedded pgserver).
# Extra arguments go to pytest, e.g. scripts/test.sh -k loader, or the quick set without the
# whole-pipeline tests: scripts/test.sh -m "not slow". Tests run in parallel on every CPU core
# (pytest-xdist, -n auto); -n 0 runs them in one process, -n 4 in four (the last -n given wins).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/bootstrap.sh
scripts/lint.sh
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    echo "WARNING: chromium is not installed: the browser tests (the docs site, the Dagster UI) will be SKIPPED." >&2
    echo "         Install it (apt-get install chromium) to run them; CI installs it and requires them." >&2
fi
echo "==> pytest"
exec .venv/bin/python -m pytest -n auto "$@"
