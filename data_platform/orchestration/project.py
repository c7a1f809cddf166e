"""The dbt project as Dagster sees it: its manifest, parsed when the code location loads.

The manifest is written by `dbt parse` into a folder of its own under the pipeline's target folder
(DBT_TARGET_PATH, default dbt/target), and parsed again only when a file of the dbt project is newer
than it, so every run's step processes (which load the code location again) reuse it instead of
parsing each time. Its own folder, because the code location loads whenever a Dagster process starts,
without the pipeline lock: a parse into the target folder itself could rewrite the files a pipeline
run (init.sh, in the dbt service) is parsing into at that moment (dagster-dbt only copies the pipeline's
partial-parse file from there as a head start; dbt parses in full if the copy is unreadable). Dagster's
own processes parse one at a time (a file lock of dagster-dbt's).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dagster_dbt import DbtCliResource, DbtProject

from data_platform.paths import DBT_PROFILE_TARGET, DBT_PROFILES_DIR, DBT_PROJECT_DIR, dbt_target_dir

# the build step's dbt, killed with the step's process (see the script)
BOUND_DBT = Path(__file__).with_name("bound-dbt")
# what the manifest is parsed from: a newer file means the manifest is stale
PROJECT_SOURCES = ("dbt_project.yml", "models/**/*", "macros/**/*", "seeds/**/*", "tests/**/*")


def _put_interpreter_scripts_on_path() -> None:
    """dbt, which every step and the project's parse run by name, is installed beside this interpreter:
    `.venv/bin/dagster dev` from a shell without the virtualenv activated must find it, as init.sh puts
    .venv/bin first. The code location's and the runs' processes all import this module."""
    scripts = str(Path(sys.executable).parent)
    path = os.environ.get("PATH") or os.defpath  # unset: what a shell would search, sh and all
    if scripts not in path.split(os.pathsep):
        os.environ["PATH"] = f"{scripts}{os.pathsep}{path}"


_put_interpreter_scripts_on_path()


# the folders under the target folder that only Dagster writes: the code location's parse, and the
# daily job's builds (one set of artifacts, and dbt's partial parse, reused by every run)
DEFINITIONS_TARGET_PATH = dbt_target_dir() / "dagster-definitions"
BUILD_TARGET_PATH = dbt_target_dir() / "dagster-build"


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
    """The dbt project with an up-to-date manifest.json (runs `dbt parse` when it is missing or stale).

    A project that no longer parses (a model or a seed's YAML edited wrong) keeps the last manifest that
    did, said on stderr: without definitions the code location loads no schedule, sensor or failure alert,
    while the daemon reports healthy; with them, each run's build fails on dbt's error and is alerted."""
    project = DbtProject(
        project_dir=DBT_PROJECT_DIR,
        profiles_dir=DBT_PROFILES_DIR,
        target=DBT_PROFILE_TARGET,
        target_path=DEFINITIONS_TARGET_PATH,
    )
    if _manifest_is_stale(project):
        try:
            project.preparer.prepare(project)
        except Exception as error:
            if not project.manifest_path.exists():
                raise
            print(
                f"data_platform: the dbt project does not parse ({str(error).strip().splitlines()[0]}): the "
                f"definitions load from the last manifest that parsed ({project.manifest_path}); every run's "
                "dbt build fails, naming the error, until it is fixed",
                file=sys.stderr,
            )
    return project


dbt_project = load_project()
# the pipeline's target, as init.sh passes it: DBT_TARGET in the environment (another engine) must not
# send the daily build elsewhere while the build state is recorded for Postgres
dbt_resource = DbtCliResource(
    project_dir=dbt_project,
    profiles_dir=str(DBT_PROFILES_DIR),
    target=DBT_PROFILE_TARGET,
    dbt_executable=str(BOUND_DBT),
)
