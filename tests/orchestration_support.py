"""Loading the Dagster definitions in a test process.

The definitions parse the dbt project when first imported (into DBT_TARGET_PATH), and Python keeps
the module, so every test of the session shares one target folder. Steps and sensors read the
environment when they run: `environment()` (the assets' own `process_environment`) swaps os.environ for
the block, like a daemon's process.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import yaml
from conftest import PROJECT_ROOT, scratch_dir

from data_platform.orchestration.environment import process_environment as environment

TARGET = scratch_dir() / "dagster_target"
# the profile's env_var() calls must resolve to parse; nothing connects at parse time
PARSE_ENV = {"PGHOST": "localhost", "PGUSER": "parse", "PGPASSWORD": "parse", "PGDATABASE": "parse"}
# Settings only the pipeline's steps use: a value they cannot use fails the runs, naming it
# (configuration.problems), and never the sensors' ticks
UNUSABLE_PIPELINE_SETTINGS = [
    {"FULL_REFRESH": "sometimes"},
    {"RUN_ALERTS": "maybe"},
    {"DB_WAIT_SECONDS": "soon"},
    {"PIPELINE_LOCK_TIMEOUT": "-1"},
]


def dagster_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """`base` (default os.environ) with dbt on PATH, the shared target folder, and `extra`."""
    env = {**PARSE_ENV, **(os.environ if base is None else base)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        DBT_TARGET_PATH=str(TARGET),
        DBT_LOG_PATH=str(TARGET / "logs"),
        DBT_SEND_ANONYMOUS_USAGE_STATS="false",
    )
    env.pop("SLACK_WEBHOOK_URL", None)
    env.update(extra)
    return env


def load_definitions():
    """The `Definitions` object (parses the dbt project on first use)."""
    with environment(dagster_env()):
        from data_platform.orchestration.definitions import defs
    return defs


@contextmanager
def freshness_clock_ahead(hours: float) -> Iterator[None]:
    """The freshness sensor's clock `hours` ahead, so that export folders made before landed that long
    ago (the sensor reads a folder's change time, which cannot be set back)."""
    from data_platform.orchestration import freshness

    later = freshness.utc_now() + dt.timedelta(hours=hours)
    with mock.patch.object(freshness, "utc_now", lambda: later):
        yield


def dagster_pg_url(conninfo: str, **replaced: str) -> str:
    """A libpq conninfo, with `replaced` parameters, as Dagster's Postgres storage takes it (DAGSTER_PG_URL;
    its host may be a socket folder)."""
    from psycopg.conninfo import conninfo_to_dict
    from sqlalchemy.engine import URL

    params = {**conninfo_to_dict(conninfo), **replaced}
    url = URL.create(
        "postgresql+psycopg2",
        username=str(params.get("user", "postgres")),
        password=str(params.get("password") or "") or None,
        database=str(params["dbname"]),
        query={"host": str(params.get("host", "localhost")), "port": str(params.get("port", "5432"))},
    )
    return url.render_as_string(hide_password=False)


def daily_home(tmp_path: Path, storage: dict | None = None) -> Path:
    """dagster_home/dagster.yaml as the daily profile reads it, with its storage `storage` (Dagster's
    storage settings), by default a temporary sqlite."""
    config = yaml.safe_load((PROJECT_ROOT / "dagster_home" / "dagster.yaml").read_text())
    config["storage"] = storage or {"sqlite": {"base_dir": str(tmp_path / "storage")}}
    home = tmp_path / "daily_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return home


def daemons_origin(job_name: str):
    """Where a run the daemon launched says its job comes from: the daemon launches (and retries) a run
    from its code location."""
    from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteRepositoryOrigin

    location = RegisteredCodeLocationOrigin("data_platform.orchestration.definitions")
    return RemoteRepositoryOrigin(location, "__repository__").get_job_origin(job_name)
