#!/usr/bin/env bash
# The pipeline runner of the dbt container, the no-Docker demo and the tests. The daily profile's
# Dagster assets do not run it: they call the same steps of data_platform/pipeline.py directly.
#
#   wait for the database -> load the pending exports -> plan the build (full or incremental)
#   -> dbt build (the seeds, models and tests, in one command) -> record the build
#   -> dbt docs generate -> one alert run -> serve the docs (when SERVE_DOCS is on)
#
# The steps live in data_platform/pipeline.py; this script only finds Python and hands over to it.
# The database comes from the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE
# (the transformer role). Settings, with defaults:
#   CSV_DIR=csv_data            folder holding the exports (invoices.csv + organizations.csv, exports/<day>/);
#                               unset: the project's csv_data, relative: from the caller's directory
#   DB_WAIT_SECONDS=60          how long to wait for the database to accept connections (to start, or
#                               to free a connection slot)
#   PIPELINE_LOCK_TIMEOUT=600   how long to wait for another pipeline run to finish
#   FULL_REFRESH=false          rebuild the incremental models from scratch
#   RUN_ALERTS=true             run alert_script.py once after a successful build
#   ALERTER_USER=alerter        role the alert script connects as (password: ALERTER_PASSWORD)
#   SERVE_DOCS=false            serve the dbt docs site after the build (the container turns it on)
#   DOCS_HOST=127.0.0.1 DOCS_PORT=8080  (this machine only; the container sets DOCS_HOST=0.0.0.0)
# Any failure stops the pipeline with a non-zero exit code (2 for a setting; 3, busy: another pipeline run,
# or a loader or alert run by hand, held its lock past PIPELINE_LOCK_TIMEOUT; 6: the database failed during
# the load, run again once it is back; 130/143: stopped; 128 + N: a step killed by signal N, such as 137 for
# the OOM killer's SIGKILL). A run that
# built the warehouse but could not deliver every alert exits 4 (5: some were given up on), unless the
# docs are served afterwards.
set -euo pipefail

# A relative path in a setting is the caller's, as for the loader's --csv-dir, though the script runs in
# its own folder: made absolute before the cd. The paths: CSV_DIR and every NAME_FILE (the secrets below,
# an alert route's webhook).
for setting in $(compgen -e); do
    path="${!setting:-}"
    if [[ ($setting == CSV_DIR || $setting == *_FILE) && -n $path && $path != /* ]]; then
        export "$setting=$PWD/$path"
    fi
done
unset setting path

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

# exec: the pipeline receives the signals sent to this script (docker stop, Ctrl-C) and passes them on
exec python -m data_platform.pipeline
