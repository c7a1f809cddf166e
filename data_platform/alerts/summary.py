"""The one-line account of a run that the alert command prints last."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from data_platform.alerts.records import MAX_UNCONFIRMED_ATTEMPTS, webhook_env_of
from data_platform.wording import plural


def _by_variable(counts: dict[str, int]) -> str:
    """Alerts per destination, each by its webhook variable: `KEY_ACCOUNTS_WEBHOOK 1, SLACK_WEBHOOK_URL 2`."""
    by_variable = {webhook_env_of(destination): count for destination, count in counts.items()}
    return ", ".join(f"{variable} {count:,}" for variable, count in sorted(by_variable.items()))


# what to do about an alert given up on: it may have arrived, or not
GIVEN_UP_ADVICE = (
    "not sent again; check the channel (status 'unknown' in ops.alert_history): to send one again, delete "
    "its row there, then run alert_script.py --since its day"
)


@dataclass
class Summary:
    dry_run: bool = False
    days_processed: int = 0
    first_day: date | None = None
    last_day: date | None = None
    retried: int = 0  # alerts attempted on an earlier run and attempted again
    sent: int = 0
    failed: int = 0  # not confirmed this run, unanswered ones included
    # sent, but no answer came back: they may have arrived; per destination
    unanswered: dict[str, int] = field(default_factory=dict)
    # the answer of each destination whose webhook refuses every message (revoked, channel archived)
    webhook_gone: dict[str, str] = field(default_factory=dict)
    skipped_from_zero: int = 0
    watermark_before: date | None = None
    watermark: date | None = None
    today: date | None = None
    future_days: int = 0  # days in the fact after today: never processed
    last_future_day: date | None = None
    # the last successful build's newest export, when it is before today: later days are not processed
    built_through: date | None = None
    unbuilt_days: int = 0  # days in the fact after it, up to today
    last_unbuilt_day: date | None = None
    given_up: int = 0  # never confirmed after every allowed unanswered attempt: not sent again
    gave_up: int = 0  # of those, given up in this run (its last allowed attempt went unanswered)
    # of those, reported by this run (exit 3): this run's, or an earlier run's that died first
    given_up_reported: int = 0
    # console runs: undelivered alerts per destination a route names (its webhook not set in this run)
    waiting_for_webhook: dict[str, int] = field(default_factory=dict)
    # undelivered alerts per destination no route names any more
    unrouted: dict[str, int] = field(default_factory=dict)
    held_back: int = 0  # passed the ratio rule, below --min-change-usd: not recorded
    suppressed: int = 0  # recorded as suppressed (--suppress-days), never sent
    superseded: int = 0  # waiting alerts whose day a rebuild changed so that it no longer alerts
    reopened: int = 0  # superseded alerts whose day alerts again after a later rebuild, to be sent
    # suppressed alerts nothing holds back any more, judged again: recorded to be sent (or held back again)
    released: int = 0
    # alerts whose organization and day another destination already has (the routes changed since)
    recorded_elsewhere: int = 0
    digests: int = 0  # digest messages sent in place of one message per organization
    # of the failed, those left unattempted once their webhook had failed in this run
    not_attempted: int = 0

    def line(self) -> str:
        days = f"{plural(self.days_processed, 'day')} processed"
        if self.first_day and self.last_day:
            span = self.first_day.isoformat()
            if self.last_day != self.first_day:
                span += f"..{self.last_day.isoformat()}"
            days += f" ({span})"
        verb = "would be sent" if self.dry_run else "sent"
        sent = f"{plural(self.sent, 'alert')} {verb}"
        if self.retried:
            sent += f" ({self.retried:,} retried from earlier runs)"
        if self.digests:
            sent += f" (in {plural(self.digests, 'digest')})"
        skipped = f"{self.skipped_from_zero:,} skipped-from-zero"
        if self.skipped_from_zero:
            skipped += " (--include-from-zero alerts them)"
        # the noise controls say what they held back only when they did
        if self.held_back:
            skipped += f", {self.held_back:,} below --min-change-usd"
        if self.suppressed and self.dry_run:  # records nothing
            skipped += f", {self.suppressed:,} would be suppressed (--suppress-days)"
        elif self.suppressed:
            skipped += f", {self.suppressed:,} suppressed (--suppress-days; recorded in ops.alert_history)"
        watermark = f"watermark {self.watermark.isoformat() if self.watermark else 'not set'}"
        if self.dry_run and self.watermark != self.watermark_before:
            watermark = f"watermark would move to {self.watermark}"
        prefix = "Summary (dry run, nothing changed)" if self.dry_run else "Summary"
        failed = f"{self.failed:,} failed"
        if self.not_attempted:
            failed += f" ({self.not_attempted:,} not attempted once their webhook had failed)"
        line = f"{prefix}: {days}, {sent}, {failed}, {skipped}; {watermark}."
        return " ".join([line, *self.notes()])

    @property
    def still_undelivered(self) -> bool:
        """Some alert is left undelivered: this run's failures, or alerts it could not send at all."""
        return bool(self.failed or self.waiting_for_webhook or self.unrouted)

    def waiting_for_webhook_note(self) -> str:
        waiting = self.waiting_for_webhook
        total = sum(waiting.values())
        variables = "that variable" if len(waiting) == 1 else "those variables"
        them, rows = ("it", "its row") if total == 1 else ("them", "their rows")
        return (
            f"{plural(total, 'alert')} still undelivered ({_by_variable(waiting)}): printing is not "
            f"delivering; a run with {variables} set sends {them} (or delete {rows} from "
            f"ops.alert_history to drop {them})."
        )

    def unrouted_note(self) -> str:
        return (
            f"{plural(sum(self.unrouted.values()), 'alert')} undelivered for destinations no route names "
            f"any more ({_by_variable(self.unrouted)}): never sent until a route names that variable again "
            "(or the rows are deleted from ops.alert_history)."
        )

    def webhook_gone_notes(self) -> list[str]:
        """What to do about each webhook that refused every message (Outcome.webhook_gone)."""
        notes = []
        for destination, answer in self.webhook_gone.items():
            variable = webhook_env_of(destination)
            notes.append(
                f"the {variable} webhook answered {answer}, which Slack gives every message to a webhook "
                "that was revoked, whose channel was archived or whose workspace restricts it: this run sent "
                "it no more, its alerts wait in ops.alert_history, and the next run tries once more (set "
                f"{variable} to a working webhook if it was revoked)."
            )
        return notes

    def notes(self) -> list[str]:
        """What needs a human's eye, one sentence each."""
        notes = []
        if self.future_days:
            notes.append(
                f"{plural(self.future_days, 'day')} after today ({self.today}) in the fact "
                f"(up to {self.last_future_day}) not processed: check the export's dates."
            )
        if self.unbuilt_days:
            notes.append(
                f"{plural(self.unbuilt_days, 'day')} after {self.built_through} in the fact (up to "
                f"{self.last_unbuilt_day}) not processed: no successful pipeline build covers them yet (one "
                "is running, or the last one failed); the alert run after the next successful build sends "
                "their alerts."
            )
        if self.unanswered:
            if len(self.unanswered) == 1:
                where = f"the {webhook_env_of(next(iter(self.unanswered)))} webhook"
            else:
                where = f"their webhooks ({_by_variable(self.unanswered)})"
            unanswered = sum(self.unanswered.values())
            arrived = f"{plural(unanswered, 'alert')} got no answer from {where} and may have arrived"
            # those given up in this run got no answer for the last allowed time: never sent again
            if not self.gave_up:
                then = "a later run sends it again, as long as it was sent fewer than "
                then += f"{MAX_UNCONFIRMED_ATTEMPTS} times"
            elif self.gave_up >= unanswered:
                then = "that was the last allowed attempt (below)"
            else:
                then = (
                    f"a later run sends {unanswered - self.gave_up:,} of them again; for the other "
                    f"{self.gave_up:,} that was the last allowed attempt (below)"
                )
            notes.append(f"{arrived}: {then}.")
        notes.extend(self.webhook_gone_notes())
        if self.given_up:
            notes.append(
                f"{plural(self.given_up, 'alert')} never confirmed after {MAX_UNCONFIRMED_ATTEMPTS} "
                f"unanswered attempts: {GIVEN_UP_ADVICE}."
            )
        if self.superseded:
            waiting = plural(self.superseded, "waiting alert")
            why = "the fact changed since they were recorded and their day no longer alerts"
            if self.dry_run:  # records nothing: the rows keep their status
                notes.append(f"{waiting} would be superseded: {why}.")
            else:
                notes.append(
                    f"{waiting} superseded: {why}; not sent (status 'superseded' in ops.alert_history)."
                )
        if self.reopened:
            reopened = plural(self.reopened, "superseded alert")
            why = "its day alerts again" if self.reopened == 1 else "their days alert again"
            if self.dry_run:
                notes.append(f"{reopened} would be reopened: {why}.")
            else:
                notes.append(f"{reopened} reopened, to be sent as the fact is now: {why}.")
        if self.released:
            released = plural(self.released, "alert")
            why = "suppressed (--suppress-days) that nothing holds back any more"
            if self.dry_run:
                notes.append(f"{released} {why} would be judged again as the fact is now.")
            else:
                notes.append(f"{released} {why} judged again as the fact is now (sent, or held back again).")
        if self.recorded_elsewhere:
            notes.append(
                f"{plural(self.recorded_elsewhere, 'alert')} already sent, or waiting, to another "
                "destination before the routes changed: not sent again."
            )
        if self.waiting_for_webhook:
            notes.append(self.waiting_for_webhook_note())
        if self.unrouted:
            notes.append(self.unrouted_note())
        return notes
