"""Bring ops tables created by an older alerter up to the per-destination layout.

The older layout kept one watermark and one delivery state per organization-day, whatever the
channel. Deployed databases have it, so the upgrade runs on every run, in the run's transaction
and under its lock, and does nothing once the tables have a `destination` column.

Older rows are assigned as follows: an alert sent goes to where it went (`stdout` -> console);
one Slack already tried (attempts or an error recorded) stays Slack's; one never tried could have
been either's, so it becomes pending for both, and nothing waiting is lost. The old watermark
becomes the watermark of both destinations, so neither replays days the old alerter covered.

Then routing: destinations become any route's webhook variable, alerts may be `suppressed`, and
every alert gets a severity (`warning` for the older rows: there was no other). Then a status added
later (`superseded`) is allowed by the status check, and given-up alerts get the time a run reported
them (the older ones count as reported), and alerts get the digest they were sent in, suppressed
alerts the window they were held back under, and every alert the words it was sent with (none for the
older ones: their runs did not keep them).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, text

_HAS_DESTINATION = """
select exists (
    select from information_schema.columns
    where table_schema = 'ops' and table_name = :table_name and column_name = 'destination'
)
"""

_UPGRADE_WATERMARK = """
alter table ops.alert_watermark drop constraint alert_watermark_pkey;
alter table ops.alert_watermark add column destination text;
insert into ops.alert_watermark (alert_name, destination, last_processed_date, updated_at)
    select alert_name, 'console', last_processed_date, updated_at
    from ops.alert_watermark where destination is null;
update ops.alert_watermark set destination = 'slack' where destination is null;
alter table ops.alert_watermark alter column destination set not null;
alter table ops.alert_watermark add constraint alert_watermark_pkey primary key (alert_name, destination);
alter table ops.alert_watermark add constraint alert_watermark_destination_check
    check (destination in ('slack', 'console'));
"""

_UPGRADE_HISTORY = """
drop index if exists ops.alert_history_undelivered_idx;
alter table ops.alert_history drop constraint alert_history_pkey;
alter table ops.alert_history drop constraint alert_history_status_check;
alter table ops.alert_history add column destination text;
alter table ops.alert_history add column unanswered_attempts integer not null default 0;
update ops.alert_history
    set destination = case when delivered_via = 'stdout' then 'console' else 'slack' end
    where status = 'sent';
update ops.alert_history set destination = 'slack'
    where destination is null and (attempts > 0 or last_error is not null or delivered_via = 'slack');
insert into ops.alert_history (
    destination, organization_id, balance_date, alert_kind, previous_balance_usd, balance_usd,
    balance_change_ratio, status, attempts, detected_at
)
    select 'console', organization_id, balance_date, alert_kind, previous_balance_usd, balance_usd,
        balance_change_ratio, status, attempts, detected_at
    from ops.alert_history where destination is null;
update ops.alert_history set destination = 'slack' where destination is null;
alter table ops.alert_history drop column delivered_via;
alter table ops.alert_history alter column destination set not null;
alter table ops.alert_history
    add constraint alert_history_pkey primary key (destination, organization_id, balance_date);
alter table ops.alert_history add constraint alert_history_destination_check
    check (destination in ('slack', 'console'));
alter table ops.alert_history add constraint alert_history_status_check
    check (status in ('pending', 'sent', 'failed', 'unknown'));
"""


# Routing and suppression: a destination may be any route's webhook variable, an alert may be
# `suppressed`, and every alert has a severity (older ones were all warnings: there was no other).
_HAS_SEVERITY = """
select exists (
    select from information_schema.columns
    where table_schema = 'ops' and table_name = 'alert_history' and column_name = 'severity'
)
"""

_UPGRADE_ROUTES = """
alter table ops.alert_history add column severity text not null default 'warning';
alter table ops.alert_history add constraint alert_history_severity_check
    check (severity in ('warning', 'critical'));
alter table ops.alert_history drop constraint alert_history_status_check;
alter table ops.alert_history add constraint alert_history_status_check check ({status_check});
alter table ops.alert_history drop constraint alert_history_destination_check;
alter table ops.alert_history add constraint alert_history_destination_check check ({destination_check});
alter table ops.alert_watermark drop constraint alert_watermark_destination_check;
alter table ops.alert_watermark add constraint alert_watermark_destination_check check ({destination_check});
drop index if exists ops.alert_history_undelivered_idx;
"""


_STATUS_CHECK = """
select pg_get_constraintdef(oid) from pg_constraint
where conrelid = 'ops.alert_history'::regclass and conname = 'alert_history_status_check'
"""

_UPGRADE_STATUSES = """
alter table ops.alert_history drop constraint alert_history_status_check;
alter table ops.alert_history add constraint alert_history_status_check check ({status_check});
"""


# Given-up alerts are reported once, by a run's exit code: the ones given up before that are taken as
# reported (their runs' summaries said so), so an upgrade does not report them again.
_HAS_GIVEN_UP_REPORTED = """
select exists (
    select from information_schema.columns
    where table_schema = 'ops' and table_name = 'alert_history' and column_name = 'given_up_reported_at'
)
"""

_UPGRADE_GIVEN_UP_REPORTED = """
alter table ops.alert_history add column given_up_reported_at timestamptz;
update ops.alert_history set given_up_reported_at = now()
    where status not in ({closed}) and unanswered_attempts >= {max_unanswered};
"""


# A digest's alerts carry its id, so the query in the message lists exactly them.
_HAS_DIGEST_ID = """
select exists (
    select from information_schema.columns
    where table_schema = 'ops' and table_name = 'alert_history' and column_name = 'digest_id'
)
"""

_UPGRADE_DIGEST_ID = "alter table ops.alert_history add column digest_id text"


# A suppressed alert keeps the window it was held back under (the older ones have none: judged in the widest).
_HAS_SUPPRESS_DAYS = """
select exists (
    select from information_schema.columns
    where table_schema = 'ops' and table_name = 'alert_history' and column_name = 'suppress_days'
)
"""

_UPGRADE_SUPPRESS_DAYS = "alter table ops.alert_history add column suppress_days integer"


# An alert keeps the words it was sent with: a rebuild may change the marts that explained it.
_HAS_ALERT_TEXT = """
select exists (
    select from information_schema.columns
    where table_schema = 'ops' and table_name = 'alert_history' and column_name = 'alert_text'
)
"""

_UPGRADE_ALERT_TEXT = "alter table ops.alert_history add column alert_text text"


def _run(conn: Connection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(text(statement))


def upgrade(
    conn: Connection,
    status_check: str,
    destination_check: str,
    statuses: Sequence[str],
    closed: Sequence[str],
    max_unanswered: int,
) -> None:
    """Upgrade each ops table still in an older layout (idempotent). The new checks come from the
    table definitions (store), so the upgraded tables match freshly created ones."""
    for table_name, script in (("alert_watermark", _UPGRADE_WATERMARK), ("alert_history", _UPGRADE_HISTORY)):
        if not conn.execute(text(_HAS_DESTINATION), {"table_name": table_name}).scalar_one():
            _run(conn, script)
    if not conn.execute(text(_HAS_SEVERITY)).scalar_one():
        _run(
            conn,
            _UPGRADE_ROUTES.format(status_check=status_check, destination_check=destination_check),
        )
    allowed = conn.execute(text(_STATUS_CHECK)).scalar_one()
    if any(f"'{status}'" not in allowed for status in statuses):
        _run(conn, _UPGRADE_STATUSES.format(status_check=status_check))
    if not conn.execute(text(_HAS_GIVEN_UP_REPORTED)).scalar_one():
        closed_list = ", ".join(f"'{status}'" for status in closed)
        _run(conn, _UPGRADE_GIVEN_UP_REPORTED.format(closed=closed_list, max_unanswered=max_unanswered))
    if not conn.execute(text(_HAS_DIGEST_ID)).scalar_one():
        _run(conn, _UPGRADE_DIGEST_ID)
    if not conn.execute(text(_HAS_SUPPRESS_DAYS)).scalar_one():
        _run(conn, _UPGRADE_SUPPRESS_DAYS)
    if not conn.execute(text(_HAS_ALERT_TEXT)).scalar_one():
        _run(conn, _UPGRADE_ALERT_TEXT)
