#!/usr/bin/env bash
# The one pipeline runner. The dbt container, the no-Docker demo and the tests all run this script.
#
#   wait for the database -> load raw CSVs -> dbt seed -> dbt build (models + tests)
#   -> dbt docs generate -> one alert run -> serve the docs (when SERVE_DOCS is on)
#
# The database comes from the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE
# (the transformer role). Settings, with defaults:
#   CSV_DIR=csv_data       folder holding invoices.csv and organizations.csv
#   DB_WAIT_SECONDS=60     how long to wait for the database to accept connections
#   FULL_REFRESH=false     rebuild the incremental models from scratch (dbt build --full-refresh)
#   RUN_ALERTS=true        run alert_script.py once after a successful build
#   ALERTER_USER=alerter   role the alert script connects as (password: ALERTER_PASSWORD)
#   SERVE_DOCS=false       serve the dbt docs site after the build (the container turns it on)
#   DOCS_HOST=0.0.0.0 DOCS_PORT=8080
# Any failure stops the pipeline with a non-zero exit code.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
# Use the project's virtual environment when there is one (local runs); the image installs globally.
if [ -x .venv/bin/python ]; then
    PATH="$PWD/.venv/bin:$PATH"
fi

# Docker secrets: PGPASSWORD_FILE, ALERTER_PASSWORD_FILE, SLACK_WEBHOOK_URL_FILE name files holding the
# values (data_platform/secrets.py). Assign first: a failure inside "eval $(...)" would not stop the script.
secret_exports="$(python -m data_platform.secrets shell-exports)"
eval "$secret_exports"
unset secret_exports

CSV_DIR="${CSV_DIR:-csv_data}"
DB_WAIT_SECONDS="${DB_WAIT_SECONDS:-60}"
FULL_REFRESH="${FULL_REFRESH:-false}"
RUN_ALERTS="${RUN_ALERTS:-true}"
SERVE_DOCS="${SERVE_DOCS:-false}"
DOCS_HOST="${DOCS_HOST:-0.0.0.0}"
DOCS_PORT="${DOCS_PORT:-8080}"
DBT_ARGS=(--project-dir dbt --profiles-dir .dbt)

BOOLEAN_SWITCHES=(FULL_REFRESH RUN_ALERTS SERVE_DOCS)
for name in "${BOOLEAN_SWITCHES[@]}"; do
    case "${!name,,}" in
        1 | true | yes | on | 0 | false | no | off | "") ;;
        *) echo "init.sh: ${name} must be true or false, got '${!name}'" >&2; exit 2 ;;
    esac
done

is_on() {
    case "${1,,}" in
        1 | true | yes | on) return 0 ;;
        *) return 1 ;;
    esac
}

step() { printf '\n==> %s\n' "$*"; }

step "waiting for the database (up to ${DB_WAIT_SECONDS}s)"
python -m data_platform.db wait --timeout "$DB_WAIT_SECONDS"

step "loading raw CSVs from ${CSV_DIR}"
python -m data_platform.loader --csv-dir "$CSV_DIR"

step "dbt seed: balance rules"
rules_before="$(python -m data_platform.refresh rules-fingerprint)"
dbt seed "${DBT_ARGS[@]}"
rules_after="$(python -m data_platform.refresh rules-fingerprint)"

# Incremental models recompute only recent days; rebuild everything when older days changed.
BUILD_ARGS=()
if is_on "$FULL_REFRESH"; then
    BUILD_ARGS+=(--full-refresh)
elif [ "$rules_before" != "$rules_after" ]; then
    echo "the balance rules changed (or were seeded for the first time): rebuilding from scratch"
    BUILD_ARGS+=(--full-refresh)
else
    drift="$(python -m data_platform.refresh history-drift)"
    if [ -n "$drift" ]; then
        echo "${drift}: rebuilding from scratch"
        BUILD_ARGS+=(--full-refresh)
    fi
fi

step "dbt build: models and tests ${BUILD_ARGS[*]}"
dbt build "${DBT_ARGS[@]}" "${BUILD_ARGS[@]}"

step "dbt docs generate"
dbt docs generate "${DBT_ARGS[@]}"

if is_on "$RUN_ALERTS"; then
    step "alerts"
    alert_status=0
    PGUSER="${ALERTER_USER:-alerter}" PGPASSWORD="${ALERTER_PASSWORD:-alerter}" \
        python alert_script.py || alert_status=$?
    case "$alert_status" in
        0) ;;
        # 1 = some deliveries failed: they are kept and retried by the next run, the warehouse is fine.
        1) echo "init.sh: some alerts could not be delivered; the next alert run retries them." >&2 ;;
        *) echo "init.sh: the alert run failed (exit ${alert_status})." >&2; exit "$alert_status" ;;
    esac
fi

step "pipeline finished"
if is_on "$SERVE_DOCS"; then
    step "serving the dbt docs on http://${DOCS_HOST}:${DOCS_PORT}"
    exec dbt docs serve "${DBT_ARGS[@]}" --host "$DOCS_HOST" --port "$DOCS_PORT" --no-browser
fi
