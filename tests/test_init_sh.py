"""init.sh's own behaviour, apart from the pipeline steps: waiting for the database, bad switches."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import PROJECT_ROOT


def run_init_sh(tmp_path: Path, **env_vars: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # a socket directory where no server listens
    env.update(PGHOST=str(tmp_path), PGUSER="transformer", PGDATABASE="warehouse", **env_vars)
    return subprocess.run(
        ["bash", str(PROJECT_ROOT / "init.sh")], env=env, capture_output=True, text=True, timeout=120
    )


def test_gives_up_waiting_for_the_database_with_a_clear_message(tmp_path):
    started = time.monotonic()
    result = run_init_sh(tmp_path, DB_WAIT_SECONDS="3")
    elapsed = time.monotonic() - started
    assert result.returncode == 2
    assert "did not accept connections within 3s" in result.stderr
    assert f"transformer@{tmp_path}:5432/warehouse" in result.stderr
    assert 3 <= elapsed < 60
    assert "loading raw CSVs" not in result.stdout


def test_rejects_a_switch_that_is_not_a_boolean(tmp_path):
    result = run_init_sh(tmp_path, SERVE_DOCS="maybe", DB_WAIT_SECONDS="1")
    assert result.returncode == 2
    assert "SERVE_DOCS must be true or false, got 'maybe'" in result.stderr
