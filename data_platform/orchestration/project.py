"""The dbt project as Dagster sees it: its manifest, parsed when the code location loads.

The manifest is written by `dbt parse` into the same target folder the pipeline uses (DBT_TARGET_PATH,
default dbt/target), and parsed again only when a file of the dbt project is newer than it, so every
run's step processes (which load the code location again) reuse it instead of parsing each time.
"""

from __future__ import annotations

import os
from pathlib import Path

from dagster_dbt import DbtCliResource, DbtProject

from data_platform.pipeline import PROJECT_ROOT

DBT_PROJECT_DIR = PROJECT_ROOT / "dbt"
DBT_PROFILES_DIR = PROJECT_ROOT / ".dbt"
# what the manifest is parsed from: a newer file means the manifest is stale
PROJECT_SOURCES = ("dbt_project.yml", "models/**/*", "macros/**/*", "seeds/**/*", "tests/**/*")


def _target_path() -> Path:
    return Path(os.environ.get("DBT_TARGET_PATH") or DBT_PROJECT_DIR / "target")


def _manifest_is_stale(project: DbtProject) -> bool:
    manifest = project.manifest_path
    if not manifest.exists():
        return True
    built = manifest.stat().st_mtime
    return any(
        path.stat().st_mtime > built
        for pattern in PROJECT_SOURCES
        for path in DBT_PROJECT_DIR.glob(pattern)
        if path.is_file()
    )


def load_project() -> DbtProject:
    """The dbt project with an up-to-date manifest.json (runs `dbt parse` when it is missing or stale)."""
    project = DbtProject(
        project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROFILES_DIR, target_path=_target_path()
    )
    if _manifest_is_stale(project):
        project.preparer.prepare(project)
    return project


dbt_project = load_project()
dbt_resource = DbtCliResource(project_dir=dbt_project, profiles_dir=str(DBT_PROFILES_DIR))
