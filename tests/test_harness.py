"""The test suite itself: a session cleans up after itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT

# one test that writes dbt output for a module's tests (pipeline_env), one that parses the project for
# the Dagster definitions (orchestration_support)
LEAVING_DBT_OUTPUT = (
    "tests/test_pipeline.py::test_warm_dbt_runs_its_command_in_the_environment_sent_after_it_parsed",
    "tests/test_orchestration.py::test_the_daily_schedule_defaults_to_six_utc_and_reads_pipeline_schedule",
)


@pytest.mark.slow  # a session of its own, a server and two dbt parses
def test_a_session_leaves_nothing_in_the_temporary_folder_but_pytests_own(tmp_path):
    """A whole run makes hundreds of dbt output folders (megabytes each): left behind, run after run they
    would fill the machine's temporary folder."""
    # short: an embedded server's socket goes in its data folder, under TMPDIR, or in the runtime folder
    short = Path(tempfile.mkdtemp(prefix="dp_"))
    try:
        # with a space: pgserver starts no server under it, so the session puts its server elsewhere
        temporary, runtime = short / "t m", short / "r"
        temporary.mkdir()
        # a session of its own (not a worker of this one's); platformdirs' runtime folder would otherwise
        # fall back to one named after the user in the temporary folder
        # and a server of its own: one named by TEST_DATABASE_URL is shared under this session's locks
        ignored = ("PYTEST_", "TEST_DATABASE_URL")
        env = {name: value for name, value in os.environ.items() if not name.startswith(ignored)}
        env.update(TMPDIR=str(temporary), XDG_RUNTIME_DIR=str(runtime))
        # pytest's own folders (tmp_path) stay, in one place it prunes, under the run's --basetemp
        args = ["-q", "-n", "0", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "basetemp")]
        result = subprocess.run(
            [sys.executable, "-m", "pytest", *args, *LEAVING_DBT_OUTPUT],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "2 passed" in result.stdout
        assert sorted(path.name for path in temporary.iterdir()) == []
    finally:
        shutil.rmtree(short, ignore_errors=True)
