#!/usr/bin/env bash
# The one test command: set up .venv, lint, and run the whole suite against a real Postgres
# (TEST_DATABASE_URL if set, else testcontainers when Docker answers, else embedded pgserver).
# Extra arguments go to pytest, e.g. scripts/test.sh -k loader
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/bootstrap.sh
scripts/lint.sh
echo "==> pytest"
exec .venv/bin/python -m pytest "$@"
