#!/usr/bin/env bash
# Create .venv (if needed) and install the pinned dependencies plus this package.
# Re-running is cheap: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: Python 3.11 or newer is required (found: $("$PYTHON" --version 2>&1))." >&2
    echo "Set PYTHON=/path/to/python3.11 and run again." >&2
    exit 2
fi

if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    "$PYTHON" -m venv .venv
fi
echo "==> installing pinned dependencies (requirements-dev.lock)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.lock
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
