"""Which days a run looks at, and where the watermark stands afterwards: pure date logic."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta


@dataclass(frozen=True)
class Plan:
    """The days a run looks at, and where the watermark stands afterwards.

    start..end are calendar bounds; the days processed are the fact's days inside them.
    """

    start: date | None
    end: date | None
    new_watermark: date | None

    @property
    def is_empty(self) -> bool:
        return self.start is None or self.end is None or self.start > self.end


def plan_days(
    *,
    watermark: date | None,
    latest: date | None,
    only_date: date | None = None,
    since: date | None = None,
    today: date | None = None,
) -> Plan:
    """Choose the days to process from the data's dates, never past `today` (the UTC date).

    A day after today in the fact is a bad export, not news: processing it would move the
    watermark into the future and silence every later day, so the days end at today.

    - default: every day after the watermark up to the latest day; with no watermark only the latest
      day, so a first run does not flood the channel with all of history;
    - --date D: exactly D; --since S: S up to the latest day.

    The watermark only moves forward, and only over days this run covered without a gap, so it never
    skips a day that was not looked at. (It may move over days whose alerts failed to deliver: those
    are recorded in the alert history first and retried from there, not from the watermark.)
    """
    if latest is not None and today is not None and latest > today:
        latest = today
    if only_date is not None and today is not None and only_date > today:
        return Plan(None, None, watermark)
    if latest is None:  # empty fact: nothing to do, nothing learned
        return Plan(None, None, watermark)
    if only_date is not None:
        start = end = only_date
    elif since is not None:
        start, end = since, latest
    elif watermark is None:
        start = end = latest
    elif watermark >= latest:  # nothing new (also spares watermark + 1 day when it is date.max)
        return Plan(None, None, watermark)
    else:
        start, end = watermark + timedelta(days=1), latest

    covered_to = min(end, latest)  # never move the watermark past the data
    if start > covered_to:
        moves = False
    elif watermark is None:
        # only a run that reaches the latest day may set the first watermark (a one-off old
        # --date must not make the next run backfill everything after it)
        moves = covered_to == latest
    else:
        moves = (start - watermark).days <= 1 and covered_to > watermark
    return Plan(start, end, covered_to if moves else watermark)
