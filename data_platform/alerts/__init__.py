"""Day-over-day balance alerts: read the warehouse fact, remember what was sent, tell Slack.

Modules, one job each:
    config    command-line flags and environment -> Settings
    detect    which days to process and which organization-days alert (SQLAlchemy Core, marts)
    store     the alerter's own state in the ops schema: watermark, alert history, advisory lock
    messages  Slack Block Kit, plain-text fallback and console lines
    delivery  Slack incoming webhook (slack-sdk retry handlers) or stdout
    cli       the run: lock -> detect -> record -> deliver -> summary, and exit codes
"""
