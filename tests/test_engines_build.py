"""data_platform.engines.build's settings (its builds are compared with Postgres's in test_engines_equal), and
its dbt tests failing on raw data the models' rules refuse."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT
from process_support import KILLED_AT_START, fake_python
from test_ledger import BASE_ROWS, DAY_2, write_export
from test_pipeline import write_fixture

from data_platform.engines import build
from data_platform.refresh import UNIT_TESTS_EXCLUDED


def test_an_engine_build_writes_dbt_output_beside_the_postgres_builds(monkeypatch):
    # dbt/target is the Postgres build's: its manifest and the docs site the pipeline serves
    monkeypatch.delenv("DBT_TARGET_PATH", raising=False)
    for engine in build.ENGINES:
        assert build.environment(engine)["DBT_TARGET_PATH"] == str(PROJECT_ROOT / "dbt" / f"target-{engine}")
    monkeypatch.setenv("DBT_TARGET_PATH", "/elsewhere")
    assert build.environment("duckdb")["DBT_TARGET_PATH"] == "/elsewhere"


def test_the_lint_leaves_an_engine_builds_dbt_output_alone(tmp_path, monkeypatch):
    """scripts/lint.sh lints dbt/: an engine build's compiled SQL in dbt/target-<engine>/ failed it."""
    monkeypatch.delenv("DBT_TARGET_PATH", raising=False)
    for name in (".sqlfluff", ".sqlfluffignore"):
        shutil.copy(PROJECT_ROOT / name, tmp_path / name)
    for folder in ("dbt/macros", "scripts/sqlfluff_libs"):
        shutil.copytree(PROJECT_ROOT / folder, tmp_path / folder)
    for engine in build.ENGINES:
        target = Path(build.environment(engine)["DBT_TARGET_PATH"]).relative_to(PROJECT_ROOT)
        (tmp_path / target / "compiled").mkdir(parents=True)
        (tmp_path / target / "compiled" / "model.sql").write_text("SELECT  a FROM b\n")  # fails the rules
    sqlfluff = Path(sys.executable).parent / "sqlfluff"
    linted = subprocess.run(
        [str(sqlfluff), "lint", "dbt", "--disable-progress-bar"], cwd=tmp_path, capture_output=True, text=True
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_allow_empty_builds_a_header_only_export(monkeypatch, tmp_path, capfd):
    """As with the loader's --allow-empty; the raw builder runs for real, dbt (test_engines_equal's) not."""
    duckdb = pytest.importorskip("duckdb")
    csv_dir = write_export(write_fixture(tmp_path / "csv", BASE_ROWS), DAY_2, [])
    monkeypatch.setenv("DUCKDB_PATH", str(tmp_path / "warehouse.duckdb"))
    run_child, dbt_commands = build.run_child, []

    def raw_builder_only(command, env):
        if "data_platform.engines.duckdb_raw" in command:
            return run_child(command, env)
        dbt_commands.append(command[1])
        return 0

    monkeypatch.setattr(build, "run_child", raw_builder_only)
    assert build.main(["duckdb", "--csv-dir", str(csv_dir)]) == 1
    assert "no data rows, only the header (pass --allow-empty" in capfd.readouterr().err
    assert dbt_commands == []
    assert build.main(["duckdb", "--csv-dir", str(csv_dir), "--allow-empty"]) == 0
    assert dbt_commands == ["build"]
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as conn:
        days = [day for (day,) in conn.execute("select export_date from raw.load_log order by 1").fetchall()]
    assert days == [date(2023, 1, 6), date(2023, 1, 7)]


def steps_of(monkeypatch, *arguments: str) -> list[tuple[list[str], dict[str, str]]]:
    """(command, environment) of each step build.main would run, none of them run."""
    steps = []
    monkeypatch.setattr(build, "run_child", lambda command, env: steps.append((command, env)) or 0)
    assert build.main(list(arguments)) == 0
    return steps


def test_the_dbt_step_rebuilds_everything_on_the_engines_own_target(monkeypatch, tmp_path):
    # the warehouse's state is not tracked here as the Postgres pipeline's is: only a full refresh is exact
    monkeypatch.setenv("DUCKDB_PATH", str(tmp_path / "warehouse.duckdb"))
    csv_dir = str(write_fixture(tmp_path / "csv", BASE_ROWS))
    (_, _), (dbt, _) = steps_of(monkeypatch, "duckdb", "--csv-dir", csv_dir)
    assert dbt[1:3] == ["build", "--full-refresh"]
    assert dbt[-2:] == ["--target", "duckdb"]
    assert "unit_test" not in dbt  # by default the unit tests run too
    (_, _), (daily, _) = steps_of(monkeypatch, "duckdb", "--csv-dir", csv_dir, "--no-unit-tests")
    assert daily == [*dbt[:3], *UNIT_TESTS_EXCLUDED, *dbt[3:]]


def test_relative_paths_are_the_callers_not_the_project_folders(monkeypatch, tmp_path):
    """The steps run from the project folder: a relative --csv-dir or DUCKDB_PATH, given from elsewhere,
    would name other files there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DUCKDB_PATH", "warehouse.duckdb")
    write_fixture(tmp_path / "csv", BASE_ROWS)
    (raw, raw_env), (_, dbt_env) = steps_of(monkeypatch, "duckdb", "--csv-dir", "csv")
    assert raw[raw.index("--csv-dir") + 1] == str(tmp_path / "csv")
    assert raw_env["DUCKDB_PATH"] == dbt_env["DUCKDB_PATH"] == str(tmp_path / "warehouse.duckdb")


@pytest.mark.parametrize("engine", build.ENGINES)
def test_no_exports_leave_no_warehouse_behind(engine, monkeypatch, tmp_path, capfd):
    """A missing CSV folder made an empty warehouse.duckdb (and started Spark to make its metastore)."""
    locations = {"DUCKDB_PATH": "warehouse.duckdb", "SPARK_WAREHOUSE_DIR": "sw", "SPARK_METASTORE_DIR": "sm"}
    for name, path in locations.items():
        monkeypatch.setenv(name, str(tmp_path / path))
    assert build.main([engine, "--csv-dir", str(tmp_path / "missing")]) == 1
    assert f"error: {tmp_path / 'missing'}: CSV directory not found" in capfd.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_a_step_killed_by_a_signal_is_said_so_and_exits_as_a_shell_would(monkeypatch, tmp_path, capfd):
    """The OOM killer's SIGKILL: the build said "exit -9" and exited with it (247 in the shell)."""
    monkeypatch.setattr(build.sys, "executable", fake_python(tmp_path, KILLED_AT_START))
    monkeypatch.setenv("DUCKDB_PATH", str(tmp_path / "warehouse.duckdb"))
    assert build.run("duckdb", str(write_fixture(tmp_path / "csv"))) == 128 + signal.SIGKILL
    said = capfd.readouterr().err
    assert "error: the duckdb raw ledger was not built: it was killed by SIGKILL (out of memory?)" in said


def test_a_stopped_build_stops_its_running_step(tmp_path):
    """SIGTERM ended the build and left its dbt running, still writing to the warehouse."""
    fake_dbt = tmp_path / "bin" / "dbt"
    fake_dbt.parent.mkdir()
    fake_dbt.write_text(
        f"#!{sys.executable}\nimport os, time\n"
        "open(os.environ['FAKE_DBT_PID'], 'w').write(str(os.getpid()))\ntime.sleep(300)\n"
    )
    fake_dbt.chmod(0o755)
    pid_file = tmp_path / "dbt.pid"
    env = {
        **os.environ,
        "PATH": f"{fake_dbt.parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(PROJECT_ROOT),
        "DUCKDB_PATH": str(tmp_path / "warehouse.duckdb"),
        "DBT_TARGET_PATH": str(tmp_path / "target"),
        "FAKE_DBT_PID": str(pid_file),
    }
    csv_dir = write_fixture(tmp_path / "csv", BASE_ROWS)
    command = [sys.executable, "-m", "data_platform.engines.build", "duckdb", "--csv-dir", str(csv_dir)]
    building = subprocess.Popen(command, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not pid_file.exists() or not pid_file.read_text():  # the raw ledger is built, dbt runs
            assert building.poll() is None and time.monotonic() < deadline, building.stderr.read()
            time.sleep(0.1)
        dbt_pid = int(pid_file.read_text())
        building.send_signal(signal.SIGTERM)
        assert building.wait(timeout=60) == 128 + signal.SIGTERM
        assert "duckdb build: stopped by SIGTERM" in building.stderr.read()
        with pytest.raises(ProcessLookupError):  # stopped and waited for: gone
            os.kill(dbt_pid, 0)
    finally:
        building.kill()
        with contextlib.suppress(ProcessLookupError, ValueError, FileNotFoundError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_a_duckdb_file_held_by_another_process_is_an_error_not_a_traceback(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    csv_dir = write_fixture(tmp_path / "csv", BASE_ROWS)
    database = tmp_path / "warehouse.duckdb"
    command = [sys.executable, "-m", "data_platform.engines.duckdb_raw", "--csv-dir", str(csv_dir)]
    with duckdb.connect(str(database)):  # a dbt run or a notebook on the file
        held = subprocess.run(
            [*command, "--database", str(database)], capture_output=True, text=True, cwd=PROJECT_ROOT
        )
    assert held.returncode == 1
    assert held.stderr.startswith(f"error: the DuckDB file {database}: IO Error: Could not set lock")
    assert "Traceback" not in held.stderr


@pytest.mark.slow
def test_a_currency_code_of_the_wrong_length_in_raw_data_fails_the_build_at_its_length_tests(tmp_path):
    """The raw builders refuse such codes as the loader does (test_duckdb_raw, test_spark_raw), but raw data
    written by other means may hold one: the build fails naming staging's two length_between tests, each
    on its one row, and nothing else."""
    duckdb = pytest.importorskip("duckdb")
    from test_engines_equal import engine_env

    csv_dir = write_fixture(tmp_path / "csv", BASE_ROWS)
    command = [sys.executable, "-m", "data_platform.engines.build", "duckdb", "--csv-dir", str(csv_dir)]
    options = {
        "cwd": PROJECT_ROOT,
        "env": engine_env("duckdb", tmp_path),
        "capture_output": True,
        "text": True,
    }
    first = subprocess.run([*command, "--no-unit-tests"], **options, timeout=900)
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-3000:]
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as conn:
        paid = "select min(invoice_id) from raw.invoice_versions where payment_currency is not null"
        (with_payment,) = conn.execute(paid).fetchone()
        conn.execute(
            "update raw.invoice_versions set payment_currency = 'US' where invoice_id = ?", [with_payment]
        )
        conn.execute(
            "update raw.invoice_versions set currency = 'EURO1' where invoice_id = "
            "(select max(invoice_id) from raw.invoice_versions)"
        )

    built = subprocess.run([*command, "--no-unit-tests"], **options, timeout=900)

    assert built.returncode == 1, built.stdout[-6000:] + built.stderr[-3000:]
    assert "error: dbt build on duckdb failed (exit 1)" in built.stderr
    # dbt's summary: each failing test's name, then on its next line how many rows failed it; two errors
    failures = dict(re.findall(r"Failure in test (\S+) .*\n.*Got (\d+) results?,", built.stdout))
    assert failures == {
        "length_between_stg_payments__invoice_versions_currency__4__3": "1",
        "length_between_stg_payments__invoice_versions_payment_currency__4__3": "1",
    }, built.stdout[-6000:]
    assert re.search(r"Done\. PASS=\d+ WARN=\d+ ERROR=2 ", built.stdout), built.stdout[-6000:]
