"""Day-over-day balance alerts: read the warehouse fact, remember what was sent, tell Slack.

Modules, one job each:
    records   the records (Alert, Batch, Organization) and the vocabulary of states: no database code
    config    command-line flags and environment -> Settings
    plan      which days a run looks at and where the watermark goes (pure date logic)
    noise     the USD floor, severity and suppression (records only)
    routing   the alert_routing seed's routes checked against the environment; alert -> destination
    detect    the marts queries, run in read-only transactions (SQLAlchemy Core), and how far the
              pipeline's last successful build lets them read
    keys      many keys in one statement, bound as arrays (the server's bind-parameter limit)
    ops_tables  the alerter's tables in the ops schema, created on the first run
    ops_migration  upgrades ops tables created by an older alerter
    store     what a run reads and writes in those tables, per destination; the advisory lock
    messages  Slack Block Kit, plain-text fallback and console lines (records only)
    payload   the versioned JSON webhook payload (records only)
    delivery  Slack incoming webhook (paced) or stdout (records only)
    attempts  each HTTP attempt recorded before its request goes out, and bounded by a deadline
    retries   the Slack client's bounded retry policy (slack-sdk retry handlers)
    json_sink the JSON webhook (requests + urllib3 Retry)
    errors    database errors in words a person can act on
    summary   the run's closing line
    cli       the run: lock -> read marts -> record -> deliver -> summary
    exit_codes  the run's exit codes, which the pipeline reads too
"""
