"""The settings a Dagster process of the daily profile reads for itself, checked in one place.

Every Dagster process (webserver, daemon, code server, run worker) loads the definitions, and a value
that cannot be used must not stop them from loading: without them there is no schedule, no sensor and
no failure alert, while the daemon still reports healthy. So each such value falls back (a secret file
stays unresolved, PIPELINE_SCHEDULE takes its default) or is read only by the steps (the pipeline's own
settings, FULL_REFRESH and the like; the sensors read CSV_DIR alone), definitions.py prints the problems
when it loads, and every step of every run fails with them (assets.pipeline_step), so that the run
failure alert names them.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

from data_platform import pipeline, secrets
from data_platform.orchestration.schedules import pipeline_schedule


def problems(environ: MutableMapping[str, str] | None = None) -> list[Exception]:
    """Resolve the secret files into `environ` (default os.environ: secrets.apply_to_environ), then
    return every setting that cannot be used, each error naming it."""
    environ = os.environ if environ is None else environ
    found: list[Exception] = list(secrets.apply_to_environ(environ))
    try:
        pipeline_schedule(environ)
    except ValueError as error:
        found.append(error)
    try:
        pipeline.Settings.from_environment(environ)
    except pipeline.PipelineError as error:  # the first one only, as init.sh reports it
        # the alert run's settings quote a secret file's error found above: said once
        if not any(str(earlier) in str(error) for earlier in found):
            found.append(error)
    return found
