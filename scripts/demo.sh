#!/usr/bin/env bash
# The demo without Docker: same pipeline (init.sh) as the container, then the docs on :8080.
#
# Database: the one named by the PG* variables when PGHOST or PGDATABASE is set (a superuser:
# init.sql creates the roles), otherwise an embedded Postgres (pgserver) kept in ./.pgdata
# (DEMO_PGDATA overrides the folder).
# Stop the docs server with Ctrl-C; the embedded database keeps running, and its data, for the next run
# (stop it: .venv/bin/python -m data_platform.bootstrap stop, plus --data-dir if DEMO_PGDATA moved it).
set -euo pipefail
# relative paths given by the caller (DEMO_PGDATA, and CSV_DIR and *_FILE for init.sh) are the caller's
if [ -n "${DEMO_PGDATA:-}" ] && [[ $DEMO_PGDATA != /* ]]; then
    DEMO_PGDATA="$PWD/$DEMO_PGDATA"
fi
caller="$PWD"
cd "$(dirname "$0")/.."
project="$PWD"

scripts/bootstrap.sh

if [ -z "${PGHOST:-}" ] && [ -z "${PGDATABASE:-}" ]; then
    DEMO_PGDATA="${DEMO_PGDATA:-$project/.pgdata}"
    echo "==> starting the embedded Postgres in ${DEMO_PGDATA}"
    # assign first: a failure inside "eval $(...)" would not stop the script
    exports="$(.venv/bin/python -m data_platform.bootstrap embedded --data-dir "$DEMO_PGDATA" --database warehouse)"
    eval "$exports"
fi

echo "==> applying init.sql to ${PGUSER:-${USER:-$(id -un)}}@${PGHOST:-localhost}/${PGDATABASE:-}"
.venv/bin/python -m data_platform.bootstrap init-sql

# From here on the pipeline runs as the transformer role, exactly as in the container.
export PGUSER=transformer
export PGPASSWORD="${TRANSFORMER_PASSWORD:-transformer}"
export SERVE_DOCS="${SERVE_DOCS:-true}"
cd "$caller"
exec "$project/init.sh"
