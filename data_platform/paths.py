"""Where the project's own files are, for every module that runs dbt or reads what it writes."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DBT_PROJECT_DIR = PROJECT_ROOT / "dbt"
DBT_PROFILES_DIR = PROJECT_ROOT / ".dbt"
# on every dbt command line: dbt runs from the project root, not from its project folder
DBT_DIR_ARGS = ("--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROFILES_DIR))
# the pipeline loads and builds Postgres whatever DBT_TARGET says (the other engines' raw layer comes
# from data_platform.engines, see the README's "Other engines"); Dagster's dbt resource uses it too
DBT_PROFILE_TARGET = "dev"
DBT_ARGS = (*DBT_DIR_ARGS, "--target", DBT_PROFILE_TARGET)


def dbt_project_var(name: str):
    """A variable of dbt_project.yml, for Python that must agree with the models."""
    return _dbt_project()["vars"][name]


def dbt_models_schema(folder: str) -> str:
    """The schema dbt builds a models folder into: its `+schema` in dbt_project.yml, trimmed, as
    macros/generate_schema_name.sql takes it."""
    project = _dbt_project()
    return project["models"][project["name"]][folder]["+schema"].strip()


def _dbt_project() -> dict:
    with (DBT_PROJECT_DIR / "dbt_project.yml").open(encoding="utf-8") as project:
        return yaml.safe_load(project)


def dbt_target_dir(environ: Mapping[str, str] | None = None) -> Path:
    """dbt's output folder (manifest, run results, the docs site): DBT_TARGET_PATH, as dbt reads it (a
    relative one is the project folder's)."""
    environ = os.environ if environ is None else environ
    return DBT_PROJECT_DIR / (environ.get("DBT_TARGET_PATH") or "target")


def dbt_log_dir(environ: Mapping[str, str] | None = None) -> Path:
    """dbt's log folder: DBT_LOG_PATH, as dbt reads it."""
    environ = os.environ if environ is None else environ
    return Path(environ.get("DBT_LOG_PATH") or DBT_PROJECT_DIR / "logs")
