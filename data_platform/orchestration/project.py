"""The dbt project as Dagster sees it: its manifest, parsed when the code location loads.

The manifest is written by `dbt parse` into a folder of its own under the pipeline's target folder
(DBT_TARGET_PATH, default dbt/target), and parsed again only when the dbt project's files (by path and
content) or dbt's version differ from those it was parsed from, so every run's step processes (which load the
code location again) reuse it instead of parsing each time. The target folder outlives an image's upgrade (a
compose volume): a file's time alone would miss a file removed, or a new dbt. Its own folder, because the code
location loads whenever a Dagster process starts, without the pipeline lock: a parse into the target folder
itself could rewrite the files a pipeline run (init.sh, in the dbt service) is parsing into at that moment
(dagster-dbt only copies the pipeline's partial-parse file from there as a head start; dbt parses in full if
the copy is unreadable). Dagster's processes parse one at a time, under a lock of this module's.
"""

from __future__ import annotations

import fcntl
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

from dagster_dbt import DbtCliResource, DbtProject

from data_platform.paths import DBT_PROFILE_TARGET, DBT_PROFILES_DIR, DBT_PROJECT_DIR, dbt_target_dir
from data_platform.refresh import files_fingerprint

# the build step's dbt, killed with the step's process (see the script)
BOUND_DBT = Path(__file__).with_name("bound-dbt")
# what the manifest is parsed from
PROJECT_SOURCES = ("dbt_project.yml", "models/**/*", "macros/**/*", "seeds/**/*", "tests/**/*")
# beside the manifest: the fingerprint of what it was parsed from, and the lock its processes parse under
MANIFEST_SOURCES_FILE = "manifest.sources"
PARSE_LOCK_FILE = "manifest.sources.lock"


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


def sources_fingerprint(project_dir: Path = DBT_PROJECT_DIR, dbt_version: str | None = None) -> str:
    """What a manifest parsed now would be parsed from: the project's files and the dbt that parses them."""
    return f"dbt-core {dbt_version or version('dbt-core')} {files_fingerprint(project_dir, PROJECT_SOURCES)}"


def manifest_is_stale(manifest: Path, sources: str) -> bool:
    """Whether `manifest` is missing, or was parsed from other sources than `sources` (a fingerprint)."""
    recorded = manifest.with_name(MANIFEST_SOURCES_FILE)
    return not (manifest.exists() and recorded.exists() and recorded.read_text() == sources)


def _record_sources(manifest: Path, sources: str) -> None:
    # whole or not at all: a process killed while writing leaves no half fingerprint
    handle, part = tempfile.mkstemp(dir=manifest.parent, prefix=f"{MANIFEST_SOURCES_FILE}.")
    with os.fdopen(handle, "w") as out:
        out.write(sources)
    os.replace(part, manifest.with_name(MANIFEST_SOURCES_FILE))


@contextmanager
def _parsing_alone(manifest: Path) -> Iterator[None]:
    """One process at a time from its fingerprint to its record (every container of the daily profile
    loads the code location at its start, on one volume): Dagster's own lock around the parse skips it,
    without a word, when another process wrote the manifest meanwhile, from files that may be older than
    this process's fingerprint, which would then be recorded for it."""
    manifest.parent.mkdir(parents=True, exist_ok=True)
    with open(manifest.with_name(PARSE_LOCK_FILE), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


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
    with _parsing_alone(project.manifest_path):
        # taken before the parse: a file edited during it makes the next load parse again
        sources = sources_fingerprint()
        if not manifest_is_stale(project.manifest_path, sources):
            return project
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
        _record_sources(project.manifest_path, sources)
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
