"""Freshness alerts: the data went stale (and recovered).

Stale: no new export folder for EXPORT_MAX_AGE_HOURS, or exports loaded that no successful build covered.
The sensor's cursor records whether the last alert said stale or fresh, and the causes it told that still
stand, and a tick sends only when there is news: stale, fresh again, or still stale for a cause not told
(a build failing while no export arrives, say); a cause fixed while another stands is not news. It moves
that record only once the message was delivered, or after MAX_UNCONFIRMED_ATTEMPTS unanswered attempts,
logged as an error saying to check the channel. It also keeps what the last tick found, so that while a
run is in progress (a Dagster run of any job, or init.sh's run, which holds the pipeline lock), when the
fact lags the exports it is loading, the last verdict about the fact stands instead of a new one.
"""

import datetime as dt
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunsFilter,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from data_platform import refresh
from data_platform.alerts.detect import fact
from data_platform.alerts.records import MAX_UNCONFIRMED_ATTEMPTS
from data_platform.db import connect
from data_platform.load_errors import LoadError
from data_platform.orchestration.notify import (
    OpsMessage,
    channel_from_environment,
    dagster_base_url,
    given_up,
)
from data_platform.orchestration.run_retries import waiting_to_run_again
from data_platform.orchestration.sensors import export_folders, exports_dir
from data_platform.pipeline_lock import PipelineLock

DEFAULT_EXPORT_MAX_AGE_HOURS = 26.0
# a longer wait means nothing (and nan or inf would switch the check off): such a value is an error
MAX_EXPORT_MAX_AGE_HOURS = 24 * 366
FACT = fact.fullname
# the causes of staleness besides FACT: the same cause in new words (an age grown by an hour) is no news
SETTING = "EXPORT_MAX_AGE_HOURS"
LANDING_FOLDER = "landing folder"
NO_EXPORT = "no export"
LATE_EXPORT = "no new export"
IN_PROGRESS = [DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]


@dataclass(frozen=True)
class Freshness:
    exports: tuple[str, ...] = ()  # about the export folders: a setting, the landing folder, their age
    fact: tuple[str, ...] = ()  # about the daily fact: loaded exports no successful build covered
    # what each problem is about, in the order of `problems`: one said again in other words (an age grown
    # by an hour, a newer export loaded and still not built) is no news, a cause fixed or found is
    causes: tuple[str, ...] = ()

    @property
    def problems(self) -> tuple[str, ...]:
        return self.exports + self.fact

    @property
    def stale(self) -> bool:
        return bool(self.problems)


def export_max_age_hours(environ: Mapping[str, str] | None = None) -> float:
    raw = (os.environ if environ is None else environ).get("EXPORT_MAX_AGE_HOURS", "").strip()
    if not raw:
        return DEFAULT_EXPORT_MAX_AGE_HOURS
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_EXPORT_MAX_AGE_HOURS:  # nan compares false
        raise ValueError(
            f"EXPORT_MAX_AGE_HOURS must be a number of hours > 0 and at most {MAX_EXPORT_MAX_AGE_HOURS} "
            f"(a year), got {raw!r}"
        )
    return value


def _export_problems(now: dt.datetime, max_age_hours: float) -> tuple[tuple[str, str], ...]:
    """(cause, problem) pairs: a landing folder the loader would refuse, then, from the dated folders it
    holds all the same, how long ago the newest landed (an operator who fixes the one must not be left
    thinking the exports arrive)."""
    directory = exports_dir()
    try:
        return _age_problems(now, max_age_hours, directory, export_folders(directory))
    except LoadError as error:
        dated = export_folders(directory, skip_unexpected=True)
        return (
            (LANDING_FOLDER, str(error)),
            *(_age_problems(now, max_age_hours, directory, dated) if dated else ()),
        )


def _age_problems(
    now: dt.datetime, max_age_hours: float, directory: Path, folders: list[Path]
) -> tuple[tuple[str, str], ...]:
    if not folders:
        return ((NO_EXPORT, f"no export folder (YYYY-MM-DD) in {directory}"),)
    newest = folders[-1]
    stat = newest.stat()
    # the change time: a folder copied with its times kept (cp -rp, rsync -a) landed when it was copied,
    # and only its change time says so (it cannot be set back)
    landed = dt.datetime.fromtimestamp(max(stat.st_mtime, stat.st_ctime), dt.UTC)
    age_hours = (now - landed).total_seconds() / 3600
    if age_hours > max_age_hours:
        late = (
            f"no new export for {age_hours:.1f} h: the newest, {newest.name}, landed "
            f"{landed:%Y-%m-%d %H:%M} UTC (EXPORT_MAX_AGE_HOURS={max_age_hours:g})"
        )
        return ((LATE_EXPORT, late),)
    return ()


def _fact_problems() -> tuple[str, ...]:
    """Loaded exports that no successful build has covered. Not the fact's last day: the fact has rows
    only for days with ledger entries, so exports without new or changed invoices add none."""
    with connect() as conn:
        newest = refresh.latest_export(conn)
        build = refresh.recorded_state(conn) if newest else None
    covered = build.last_export_date if build else None
    if newest is None or (covered is not None and covered >= newest):
        return ()
    built = (
        f"the last successful build covered up to {covered}"
        if covered
        else "but no successful build is recorded"
    )
    return (f"{FACT} is behind: exports up to {newest} are loaded, {built}",)


def utc_now() -> dt.datetime:
    """The freshness sensor's clock (tests move it forward: a folder's change time cannot be set back)."""
    return dt.datetime.now(dt.UTC)


def run_in_progress(instance: DagsterInstance) -> bool:
    """A Dagster run of any job (the daily job, "Materialize all", `dagster asset materialize`...), one
    failed that Dagster's run retries are about to start again, or init.sh's run (the dbt container,
    outside Dagster: it holds the pipeline lock)."""
    # the retry is queued before the daemon moves past its failure: asked first, no moment is missed
    if waiting_to_run_again(instance):
        return True
    if instance.get_run_records(filters=RunsFilter(statuses=IN_PROGRESS), limit=1):
        return True
    with connect() as conn:
        return PipelineLock.held(conn)


def check_freshness(
    now: dt.datetime, max_age_hours: float | None = None, fact: tuple[str, ...] | None = None
) -> Freshness:
    """The export folders judged at `now` against `max_age_hours` (default: EXPORT_MAX_AGE_HOURS); the
    fact judged too, unless `fact` gives the verdict to keep. An EXPORT_MAX_AGE_HOURS that cannot be used
    is a problem of its own, reported like the others, and the default stands in for it meanwhile: a
    sensor that raised on every tick would tell nobody."""
    exports: tuple[tuple[str, str], ...] = ()
    if max_age_hours is None:
        try:
            max_age_hours = export_max_age_hours()
        except ValueError as error:
            max_age_hours = DEFAULT_EXPORT_MAX_AGE_HOURS
            default = f"{error}; the exports are checked against the default, {max_age_hours:g} h"
            exports = ((SETTING, default),)
    exports += _export_problems(now, max_age_hours)
    fact = _fact_problems() if fact is None else fact
    return Freshness(
        tuple(problem for _, problem in exports),
        fact,
        tuple(cause for cause, _ in exports) + (FACT,) * len(fact),
    )


def _recorded(cursor: str | None) -> tuple[bool, Freshness, int]:
    """(whether the last alert said stale, the problems the last tick found, the unanswered attempts of
    the message saying otherwise; earlier releases' cursors have none, nor the causes)."""
    if not cursor:
        return False, Freshness(), 0  # nothing said yet: assume fresh, so the first stale tick alerts
    state = json.loads(cursor)
    unanswered = int(state.get("unanswered", 0))
    if "problems" in state:
        # an earlier release's cursor, before the fact's verdict was kept apart: told apart by their words
        problems = state["problems"]
        exports = tuple(problem for problem in problems if _cause_in_words(problem) != FACT)
        fact = tuple(problem for problem in problems if _cause_in_words(problem) == FACT)
        causes = None
    else:
        exports, fact = tuple(state.get("exports", ())), tuple(state.get("fact", ()))
        causes = state.get("causes")
    if causes is None or len(causes) != len(exports) + len(fact):  # before they were kept, or set by hand
        causes = [_cause_in_words(problem) for problem in exports + fact]
    return state["stale"], Freshness(exports, fact, tuple(causes)), unanswered


def _cause_in_words(problem: str) -> str:
    """The cause of a problem in a cursor written before the causes were kept, from its words."""
    for opening, cause in (
        (f"{FACT} is behind", FACT),
        ("no new export for ", LATE_EXPORT),
        ("no export folder ", NO_EXPORT),
        ("EXPORT_MAX_AGE_HOURS ", SETTING),
    ):
        if problem.startswith(opening):
            return cause
    return LANDING_FOLDER


def _cursor(said_stale: bool, found: Freshness, unanswered: int = 0) -> str:
    return json.dumps(
        {
            "stale": said_stale,
            "exports": list(found.exports),
            "fact": list(found.fact),
            "causes": list(found.causes),
            "unanswered": unanswered,
        }
    )


@sensor(name="freshness_alerts", minimum_interval_seconds=300, default_status=DefaultSensorStatus.RUNNING)
def freshness_alerts(context: SensorEvaluationContext):
    said_stale, last, unanswered = _recorded(context.cursor)
    # an alert sent records what its tick found, and a failed one keeps the tick before's: the causes told
    # (and still standing) are the last tick's
    told = frozenset(last.causes) if said_stale else frozenset()
    # while a run is in progress, the fact lags the exports it is loading: keep the last verdict about
    # it (stale stays stale, fresh stays fresh) until a tick after the run judges it again
    running = run_in_progress(context.instance)
    current = check_freshness(utc_now(), fact=last.fact if running else None)
    if current.stale == said_stale and told.issuperset(current.causes):
        # nothing untold: a cause fixed while others stand is no news (and, no longer counted as told, is
        # news if it comes back); the cursor keeps the problems for the next tick during a run; a change
        # that went unanswered is moot now: its count goes
        context.update_cursor(_cursor(current.stale, current))
        return SkipReason("stale: " + "; ".join(current.problems) if current.stale else "fresh")
    resolved = tuple(
        f"resolved: {problem}"
        for cause, problem in zip(last.causes, last.problems, strict=True)
        if cause not in current.causes
    )
    if current.stale:
        title = "Data is still stale" if said_stale else "Data is stale"
        details = current.problems + (resolved if said_stale else ())
        message = OpsMessage(title, details=details, link=f"{dagster_base_url()}/assets")
    else:
        message = OpsMessage("Data is fresh again", details=resolved)
    outcome = channel_from_environment().send(message)
    if not outcome.delivered:
        if outcome.unanswered:
            # it may have arrived: resent every tick, a slow Slack would get a copy each time
            unanswered += 1
        if unanswered < MAX_UNCONFIRMED_ATTEMPTS:
            context.update_cursor(_cursor(said_stale, last, unanswered))
            return SkipReason(
                f"the freshness alert could not be delivered ({outcome.error}); next tick retries"
            )
        # counted as said, so that the next change is alerted as usual
        problem = given_up(f"the freshness alert ({message.title})", outcome.error)
        context.log.error(problem)
        context.update_cursor(_cursor(current.stale, current))
        return SkipReason(problem)
    context.update_cursor(_cursor(current.stale, current))
    return SkipReason(f"sent: {message.title}")
