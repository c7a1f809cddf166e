"""The pipeline's settings: environment variables, each checked before anything is loaded, so that a
setting to fix is said at once (exit code EXIT_CONFIG), not found by a step after the load."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from data_platform.alerts import config as alert_config
from data_platform.alerts import routing
from data_platform.exports import CSV_DIR_NAME, CSV_DIR_VARIABLE
from data_platform.paths import PROJECT_ROOT
from data_platform.pipeline_errors import EXIT_CONFIG, PipelineError

DEFAULT_CSV_DIR = PROJECT_ROOT / CSV_DIR_NAME
BOOLEAN_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False}
BOOLEAN_WORDS |= {"no": False, "off": False}


def _boolean(environ: dict[str, str], name: str, default: bool) -> bool:
    """An empty or blank value is unset, as for every other setting (and compose's ${NAME:-default})."""
    raw = environ.get(name, "")
    if not raw.strip():
        return default
    try:
        return BOOLEAN_WORDS[raw.strip().lower()]
    except KeyError:
        raise PipelineError(f"{name} must be true or false, got {raw!r}", EXIT_CONFIG) from None


def _number(environ: dict[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "")
    if not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        raise PipelineError(f"{name} must be a number of seconds >= 0, got {raw!r}", EXIT_CONFIG)
    if not math.isfinite(value):  # nan or inf: the wait would never end
        raise PipelineError(f"{name} must be a finite number of seconds, got {raw!r}", EXIT_CONFIG)
    return value


def _port(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    value = int(raw) if raw.isascii() and raw.isdigit() else 0
    if not 1 <= value <= 65535:
        raise PipelineError(f"{name} must be a port number from 1 to 65535, got {raw!r}", EXIT_CONFIG)
    return value


def _check_threads(environ: Mapping[str, str]) -> None:
    """DBT_THREADS, which dbt's profiles read (blank: their default), is a whole number from 1: checked
    before the load, not found by dbt after it (0 was a traceback, a word a compilation error)."""
    raw = environ.get("DBT_THREADS", "").strip()
    if raw and not (raw.isascii() and raw.isdigit() and int(raw) >= 1):
        raise PipelineError(f"DBT_THREADS must be a whole number from 1, got {raw!r}", EXIT_CONFIG)


ROUTING_SEED = PROJECT_ROOT / routing.SEED


def _check_alert_settings(environ: Mapping[str, str]) -> None:
    """The alert run's own settings (ALERT_*, the webhook, each route's webhook), as it reads them at the
    run's end: a setting to fix is said before the load and the build, not after them, and a Dagster step
    does not retry it. ALERT_LOCK_TIMEOUT is the pipeline's to set (run_alerts). The routes are the seed
    file's, which the build is about to put in the marts; one the build would refuse is left to it."""
    try:
        settings = alert_config.load(
            [], {name: value for name, value in environ.items() if name != "ALERT_LOCK_TIMEOUT"}
        )
        routes = routing.routes_in_seed(ROUTING_SEED)
        if routes is not None:
            routing.destinations(routes, settings, routing.SEED)
    except alert_config.ConfigError as error:
        raise PipelineError(f"the alert run's settings: {error}", EXIT_CONFIG) from None


def csv_dir_from_environment(environ: Mapping[str, str] | None = None) -> Path:
    """CSV_DIR, the exports' folder, absolute. The export sensor and the freshness check read it here, not
    through Settings: another setting that cannot be used must fail the runs, not stop them watching the
    exports. A relative one is taken from the working directory, as the loader's --csv-dir is: the steps
    run in the project's folder."""
    raw = (os.environ if environ is None else environ).get(CSV_DIR_VARIABLE)
    return Path(raw).absolute() if raw else DEFAULT_CSV_DIR


@dataclass(frozen=True)
class Settings:
    """The pipeline's switches (environment variables), with their defaults."""

    csv_dir: Path = DEFAULT_CSV_DIR
    db_wait_seconds: float = 60
    lock_timeout_seconds: float = 600
    full_refresh: bool = False
    run_alerts: bool = True
    alerter_user: str = "alerter"
    alerter_password: str = "alerter"
    serve_docs: bool = False
    docs_host: str = "127.0.0.1"  # this machine only: the container sets 0.0.0.0 itself
    docs_port: int = 8080

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        serve_docs = _boolean(env, "SERVE_DOCS", cls.serve_docs)
        _check_threads(env)
        run_alerts = _boolean(env, "RUN_ALERTS", cls.run_alerts)
        if run_alerts:
            _check_alert_settings(env)
        return cls(
            csv_dir=csv_dir_from_environment(env),
            db_wait_seconds=_number(env, "DB_WAIT_SECONDS", cls.db_wait_seconds),
            lock_timeout_seconds=_number(env, "PIPELINE_LOCK_TIMEOUT", cls.lock_timeout_seconds),
            full_refresh=_boolean(env, "FULL_REFRESH", cls.full_refresh),
            run_alerts=run_alerts,
            alerter_user=env.get("ALERTER_USER", "").strip() or cls.alerter_user,
            alerter_password=env.get("ALERTER_PASSWORD") or cls.alerter_password,
            serve_docs=serve_docs,
            docs_host=env.get("DOCS_HOST") or cls.docs_host,
            # read only by the docs server: a run that serves none does not fail on it
            docs_port=_port(env, "DOCS_PORT", cls.docs_port) if serve_docs else cls.docs_port,
        )
