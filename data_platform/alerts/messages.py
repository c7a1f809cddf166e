"""How an alert reads: Slack Block Kit, the plain-text fallback, and the console line.

Pure functions of the stored alert and its organization context, so the same words appear in
Slack, on stdout and in --dry-run.
"""

from __future__ import annotations

from decimal import ROUND_DOWN, ROUND_HALF_UP, Context, Decimal
from typing import Any

from data_platform.alerts.records import (
    CRITICAL,
    NEW_BALANCE,
    SEVERITIES,
    Alert,
    Digest,
    Driver,
    Message,
    Organization,
    TopInvoice,
    Why,
    organization_of,
)

CENT = Decimal("0.01")


def half_up(value: Decimal, step: Decimal, *, scale: int = 0, rounding: str = ROUND_HALF_UP) -> Decimal:
    """value x 10**scale rounded to step, half up (or by `rounding`), exactly whatever its size: the default
    context keeps 28 digits, and a quantize that needs more raises (a balance may be ~1e24 USD, its ratio
    larger still)."""
    value = Decimal(value)
    kept = len(value.as_tuple().digits)  # scaleb keeps every digit of the value
    # the result's digits: before the point, the step's places, one more for a carry (999.995 -> 1000.00)
    result = value.adjusted() + scale + 1 - step.as_tuple().exponent + 1
    wide = Context(prec=max(kept, result, 28))
    return value.scaleb(scale, context=wide).quantize(step, rounding=rounding, context=wide)


def _not_finite(value: Decimal) -> str:
    # Postgres numeric allows NaN and +-Infinity: shown as they are (Decimal would raise on them),
    # because a message that cannot be formatted would block delivery on every run
    return f"{value:+}" if Decimal(value).is_infinite() else str(value)


def usd(amount: Decimal) -> str:
    """-1234.5 -> '-$1,234.50' (thousands separators, 2 decimals, half-up like an accountant)."""
    if not Decimal(amount).is_finite():
        return _not_finite(amount)
    rounded = half_up(amount, CENT)
    sign = "-" if rounded < 0 else ""
    return f"{sign}${rounded.copy_abs():,.2f}"


def ratio_shown(ratio: Decimal, step: Decimal, *, scale: int = 0) -> Decimal:
    """ratio x 10**scale rounded half up to `step`, except onto a whole percent the change has not
    reached, which is cut instead: a change short of a threshold (the 100% of `critical`, the 50% of an
    alert) never reads as reaching it beside the severity it was given (0.9999996 is 99.99%, not 100.00%)."""
    shown = half_up(ratio, step, scale=scale)
    # scaleb only moves the point: a context as wide as the digits keeps it exact
    percent = shown.scaleb(2 - scale, context=Context(prec=len(shown.as_tuple().digits) + 1))
    exact = Decimal(ratio).scaleb(scale, context=Context(prec=len(Decimal(ratio).as_tuple().digits) + 1))
    if percent == percent.to_integral_value() and shown.copy_abs() > exact.copy_abs():  # abs() rounds to 28
        shown = half_up(ratio, step, scale=scale, rounding=ROUND_DOWN)
    return shown


def signed_percent(ratio: Decimal) -> str:
    """0.5 -> '+50.00%', -0.75 -> '-75.00%', 2/3 -> '+66.67%', 0.9999996 -> '+99.99%' (ratio_shown)."""
    if not Decimal(ratio).is_finite():
        return f"{_not_finite(ratio)}%"
    return f"{ratio_shown(ratio, CENT, scale=2):+,.2f}%"


def change(alert: Alert) -> str:
    """'$1,000.00 -> $1,500.00 (+50.00%)', or '(new balance)' when the day started from zero."""
    moved = f"{usd(alert.previous_balance_usd)} -> {usd(alert.balance_usd)}"
    if alert.alert_kind == NEW_BALANCE or alert.balance_change_ratio is None:
        return f"{moved} (new balance)"
    return f"{moved} ({signed_percent(alert.balance_change_ratio)})"


def context(organization: Organization) -> str:
    """The organization as dim_organizations knows it, in one phrase."""
    if not organization.in_warehouse:
        return "not in dim_organizations"
    if organization.is_missing_from_organizations_file:
        return "missing from organizations.csv"
    contracts = organization.count_total_contracts_active
    if contracts is None:
        contracts_text = "active contracts unknown"
    else:
        contracts_text = f"{contracts:,} active contract{'' if contracts == 1 else 's'}"
    first = organization.first_payment_date.isoformat() if organization.first_payment_date else "none"
    last = organization.last_payment_date.isoformat() if organization.last_payment_date else "none"
    return f"{contracts_text}, first payment {first}, last payment {last}"


def signed_usd(amount: Decimal) -> str:
    """+1500 -> '+$1,500.00', -40 -> '-$40.00'."""
    text = usd(amount)
    return text if text.startswith(("-", "+")) or not Decimal(amount).is_finite() else f"+{text}"


DRIVER_NOUNS = {
    "new_invoices": ("new invoice", "new invoices"),
    "payments": ("payment", "payments"),
    "credits": ("credit", "credits"),
    "cancellations": ("cancellation", "cancellations"),
    "other_changes": ("other change", "other changes"),
}


def _driver_noun(kind: str, count: int) -> str:
    singular, plural = DRIVER_NOUNS.get(kind, (kind, kind))
    return singular if count == 1 else plural


def _driver_text(driver: Driver) -> str:
    """'2 new invoices +$300.00'."""
    noun = _driver_noun(driver.kind, driver.invoice_count)
    return f"{driver.invoice_count:,} {noun} {signed_usd(driver.balance_change_usd)}"


def drivers_text(why: Why) -> str:
    """'1 payment -$2,000.00, 2 new invoices +$300.00' (largest effect first)."""
    return ", ".join(_driver_text(driver) for driver in why.drivers)


def invoice_status(invoice: TopInvoice) -> str:
    """'paid (was open)' for a change to an older invoice, 'open' for a new one (or a change that kept its
    status: an amount corrected): a credit of an invoice that was owed moves the balance by both amounts,
    which its status alone does not explain."""
    if invoice.previous_status in (None, invoice.status):
        return invoice.status
    return f"{invoice.status} (was {invoice.previous_status})"


def top_invoices_text(why: Why) -> str:
    """'993340845701069171 paid (was open) -$2,000.00, ...'."""
    return ", ".join(
        f"{i.invoice_id} {invoice_status(i)} {signed_usd(i.balance_change_usd)}" for i in why.top_invoices
    )


def why_phrase(why: Why) -> str:
    """'; why: ...; top invoices: ...', or nothing when the marts have no drivers for the day."""
    phrase = f"; why: {drivers_text(why)}" if why.drivers else ""
    if why.top_invoices:
        phrase += f"; top invoices: {top_invoices_text(why)}"
    return phrase


def console_line(organization: Organization, alert: Alert) -> str:
    """One readable line per alert for stdout."""
    label = "new balance" if alert.alert_kind == NEW_BALANCE else "balance alert"
    return (
        f"[{label}] {alert.balance_date.isoformat()} organization {alert.organization_id}: "
        f"{change(alert)}, {alert.severity}; {context(organization)}{why_phrase(alert.why)}"
    )


def counts_text(digest: Digest) -> str:
    """'25 alerts (3 critical, 22 warning), 2024-03-01..2024-03-05'."""
    by_severity = ", ".join(f"{digest.count(level)} {level}" for level in reversed(SEVERITIES))
    span = digest.first_day.isoformat()
    if digest.last_day != digest.first_day:
        span += f"..{digest.last_day.isoformat()}"
    return f"{len(digest.alerts)} alerts ({by_severity}), {span}"


def list_the_rest(digest: Digest) -> str:
    """The query that lists every alert the digest stands for, and no other."""
    return (
        "select organization_id, balance_date, severity, previous_balance_usd, balance_usd, status, "
        f"alert_text from ops.alert_history where destination = '{digest.destination}' and digest_id = "
        f"'{digest.digest_id}' order by abs(balance_usd - previous_balance_usd) desc"
    )


def digest_lines(digest: Digest, recorded: bool = True) -> list[str]:
    """The digest on stdout: a heading, the top alerts' lines, how to list them all (`recorded` False:
    a dry run, whose alerts no query finds)."""
    lines = [f"[balance digest] {counts_text(digest)}; the {len(digest.top)} largest by USD change:"]
    lines += [console_line(organization_of(digest.organizations, a.organization_id), a) for a in digest.top]
    the_rest = list_the_rest(digest) if recorded else "not listed (a dry run records nothing)"
    lines.append(f"[balance digest] all {len(digest.alerts)}: {the_rest}")
    return lines


def _arrow(alert: Alert) -> str:
    if alert.balance_usd.is_nan() or alert.previous_balance_usd.is_nan():
        return ":warning:"
    if alert.balance_usd >= alert.previous_balance_usd:
        return ":chart_with_upwards_trend:"
    return ":chart_with_downwards_trend:"


def _severity_mark(alert: Alert) -> str:
    return ":rotating_light: critical" if alert.severity == CRITICAL else alert.severity


def _slack_line(alert: Alert) -> str:
    moved = f"{usd(alert.previous_balance_usd)} → {usd(alert.balance_usd)}"
    if alert.alert_kind == NEW_BALANCE or alert.balance_change_ratio is None:
        size = "new balance"
    else:
        size = signed_percent(alert.balance_change_ratio)
    return f"{_arrow(alert)} *{alert.balance_date.isoformat()}*  {moved}  *{size}*  {_severity_mark(alert)}"


MAX_FIELDS = 10  # Block Kit's limit per section


def _why_block(alert: Alert) -> dict[str, Any] | None:
    """A section with one field per driver and one for the top invoices."""
    why = alert.why
    fields = [
        {"type": "mrkdwn", "text": f"*{_driver_noun(d.kind, 2).capitalize()}*\n{_driver_text(d)}"}
        for d in why.drivers
    ][: MAX_FIELDS - 1]
    if why.top_invoices:
        top = "\n".join(
            f"`{i.invoice_id}` {invoice_status(i)} {signed_usd(i.balance_change_usd)}"
            for i in why.top_invoices
        )
        fields.append({"type": "mrkdwn", "text": f"*Top invoices*\n{top}"})
    if not fields:
        return None
    heading = f"*Why it moved on {alert.balance_date.isoformat()}*"
    return {"type": "section", "text": {"type": "mrkdwn", "text": heading}, "fields": fields}


def _mention_block(mention: str | None) -> list[dict[str, Any]]:
    return [{"type": "section", "text": {"type": "mrkdwn", "text": mention}}] if mention else []


def slack_message(message: Message) -> tuple[str, list[dict[str, Any]]]:
    """(text fallback, Block Kit blocks) for one organization's alerts, or for a digest."""
    if isinstance(message, Digest):
        return _slack_digest(message)
    batch = message
    organization = batch.organization
    org_id = organization.organization_id
    fallback_days = "; ".join(
        f"{a.balance_date.isoformat()} {change(a)}, {a.severity}{why_phrase(a.why)}" for a in batch.alerts
    )
    text = f"Balance alert for organization {org_id}: {fallback_days}. {context(organization)}."
    if batch.mention:
        text = f"{batch.mention} {text}"
    about = context(organization)
    if organization.is_missing_from_organizations_file or not organization.in_warehouse:
        about = f":warning: {about}"
    why_blocks = [block for block in map(_why_block, batch.alerts) if block]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"Balance alert: organization {org_id}"}},
        *_mention_block(batch.mention),
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": "\n".join(_slack_line(a) for a in batch.alerts)},
        },
        *why_blocks,
        {"type": "context", "elements": [{"type": "mrkdwn", "text": about}]},
    ]
    return text, blocks


def _slack_digest(digest: Digest) -> tuple[str, list[dict[str, Any]]]:
    top = "\n".join(f"organization `{a.organization_id}` {_slack_line(a)}" for a in digest.top)
    text = f"Balance alerts digest: {counts_text(digest)}."
    if digest.mention:
        text = f"{digest.mention} {text}"
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": f"Balance alerts: {len(digest.alerts)} alerts"},
        },
        *_mention_block(digest.mention),
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{counts_text(digest)}*"}},
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": f"*The {len(digest.top)} largest by USD change*\n{top}"},
        },
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": f"All of them: `{list_the_rest(digest)}`"}],
        },
    ]
    return text, blocks
