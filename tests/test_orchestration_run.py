"""The daily job, run in-process against the test Postgres with Dagster's storage configured by
dagster_home/dagster.yaml (the dagster role and database init.sql creates): every asset and check
materialises, the fact equals what init.sh builds from the same files, the Dagster UI shows the asset
graph of that run in headless Chromium, and a failing dbt test sends one failure alert."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from conftest import PROJECT_ROOT, hold_the_loaders_lock, pipeline_env, sessions_blocked_by
from dagster import (
    AssetCheckSeverity,
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    build_sensor_context,
)
from orchestration_support import TARGET, dagster_env, dagster_pg_url, environment, load_definitions
from process_support import kill_group, process_group_alive, read_log
from slack_stub import OK, SlackStub, server_error, slow
from test_docs_site import ARTIFACTS, free_port, needs_chromium, png_distinct_bytes, run_chromium, serving
from test_pipeline import (
    EXPECTED_FACT,
    HEADER,
    INVOICE_ROWS,
    SENTINEL,
    fact_rows,
    write_bad_export,
    write_fixture,
)

from data_platform import pipeline, refresh
from data_platform.orchestration import failure_alerts, run_records

pytestmark = pytest.mark.slow
LAYERS = ("raw", "seeds", "staging", "intermediate", "marts")


def run_env(database, csv_dir, **extra: str) -> dict[str, str]:
    # the fixture's moves are tens of dollars: no floor on the alerted change
    env = dagster_env(pipeline_env(database, csv_dir, ALERT_MIN_CHANGE_USD="0"), **extra)
    # the build reuses the manifest parsed when the definitions loaded
    env["DBT_TARGET_PATH"] = str(TARGET)
    return env


@pytest.fixture(scope="module")
def defs():
    return load_definitions()


def dagster_storage_url(database) -> str:
    """DAGSTER_PG_URL for the dagster role's database on the test server (init.sql's role and password)."""
    return dagster_pg_url(database.conninfo("admin"), user="dagster", password="dagster", dbname="dagster")


@pytest.fixture(scope="module")
def dagster_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("dagster_home")
    shutil.copy(PROJECT_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    return home


@pytest.fixture(scope="module")
def database(make_database):
    return make_database()


@pytest.fixture(scope="module")
def instance(dagster_home, database):
    with environment({**os.environ, "DAGSTER_PG_URL": dagster_storage_url(database)}):
        instance = DagsterInstance.from_config(str(dagster_home))
    with instance:
        yield instance


@pytest.fixture(scope="module")
def daily_run(defs, instance, database, tmp_path_factory):
    csv_dir = write_fixture(tmp_path_factory.mktemp("dagster_csv"))
    # DBT_TARGET picks another engine for a hand-run dbt (.dbt/profiles.yml); like init.sh, the daily
    # build must still build Postgres, whose fact the tests below read
    with environment(run_env(database, csv_dir, DBT_TARGET="duckdb")):
        result = defs.resolve_job_def("daily_pipeline").execute_in_process(
            instance=instance, raise_on_error=False
        )
    return database, csv_dir, result


def test_every_asset_and_check_materialises(defs, daily_run):
    _, _, result = daily_run
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    graph = defs.get_repository_def().asset_graph
    materialised = {event.asset_key for event in result.get_asset_materialization_events()}
    assert materialised == set(graph.get_all_asset_keys())
    evaluations = result.get_asset_check_evaluations()
    assert {evaluation.asset_check_key for evaluation in evaluations} == set(graph.asset_check_keys)
    # the fixture's orphan organization trips the one warn-severity test, as it warns under init.sh
    not_passed = {(e.asset_check_key.name, e.severity) for e in evaluations if not e.passed}
    assert {severity for _, severity in not_passed} <= {AssetCheckSeverity.WARN}, not_passed
    assert [name for name, _ in not_passed] == [
        "relationships_stg_payments__invoice_versions_organization_id__organization_id__ref_stg_payments__organizations_"
    ]


def test_the_fact_equals_what_init_sh_builds(daily_run):
    # what init.sh builds from the same fixture is EXPECTED_FACT: test_pipeline.py's fixture_pipeline
    # runs it and asserts so, so a second init.sh run here would only repeat that
    database, _, _ = daily_run
    assert fact_rows(database) == EXPECTED_FACT


def test_the_run_records_the_build_and_alerts_like_init_sh(daily_run):
    database, _, _ = daily_run
    # the build state is written only after a successful build, with the newest export it covered (the
    # fixture's one export, dated by its newest invoice): the next plan's window starts the day after it
    assert database.query("select last_export_date from raw.build_state") == [(dt.date(2023, 1, 6),)]
    # init.sh's one alert of the fixture (test_pipeline.py's test_pipeline_alerts_on_the_latest_day): org 2
    # on its latest day, -60 -> -30 (+50%); the orphan's move from zero is skipped
    alerts = database.query(
        "select organization_id, balance_date, previous_balance_usd, balance_usd from ops.alert_history "
        "order by organization_id, balance_date"
    )
    assert alerts == [(2, dt.date(2023, 1, 6), -60, -30)]


def test_a_selection_of_some_models_records_nothing_and_a_full_one_leaves_the_next_build_full(
    defs, instance, daily_run
):
    """A build of some models only must not move the window of the models it skipped (README: "a selection
    of some models records nothing"); rebuilt from scratch, it replaced their tables with whatever the
    files now say, so the next build is full, as after a full rebuild that did not finish."""
    database, csv_dir, _ = daily_run
    recorded = "select last_export_date, built_at, full_build_started_at from raw.build_state"
    [before] = database.query(recorded)
    assert before[2] is None
    routes = AssetKey(["marts", "dim_alert_routes"])
    try:
        with environment(run_env(database, csv_dir, FULL_REFRESH="true")):
            result = defs.resolve_job_def("daily_pipeline").execute_in_process(
                instance=instance, asset_selection=[routes], raise_on_error=False
            )
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        assert {e.asset_key for e in result.get_asset_materialization_events()} == {routes}
        [after] = database.query(recorded)
        assert after[:2] == before[:2], "the selection was recorded as a build"
        assert after[2] is not None, "the full rebuild of a selection left no mark"
        with environment(run_env(database, csv_dir)):
            assert pipeline.plan(pipeline.Settings.from_environment()).reason.startswith(
                "the last full rebuild did not finish"
            )
    finally:  # the other tests of the module expect the next build to be incremental
        database.query("update raw.build_state set full_build_started_at = null returning 1")


def graphql(url: str, query: str) -> dict:
    request = urllib.request.Request(
        f"{url}graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def wait_for_code_locations(url: str, timeout: float) -> None:
    """Until every code location the webserver serves has loaded, and loaded without an error."""
    query = """
        { workspaceOrError { ... on Workspace { locationEntries {
            name loadStatus locationOrLoadError { __typename }
        } } } }
    """
    deadline = time.monotonic() + timeout
    while True:
        entries = graphql(url, query)["data"]["workspaceOrError"]["locationEntries"]
        loading = [entry["name"] for entry in entries if entry["loadStatus"] != "LOADED"]
        if entries and not loading:
            failed = [
                e["name"] for e in entries if e["locationOrLoadError"]["__typename"] != "RepositoryLocation"
            ]
            assert failed == [], f"code locations failed to load: {failed}"
            return
        assert time.monotonic() < deadline, f"code locations still loading after {timeout}s: {loading}"
        time.sleep(1)


@needs_chromium
def test_the_dagster_ui_shows_the_asset_graph_of_the_run(daily_run, dagster_home, database, tmp_path):
    run_id = daily_run[2].run_id
    port = free_port()
    env = dagster_env(DAGSTER_HOME=str(dagster_home), DAGSTER_PG_URL=dagster_storage_url(database))
    webserver = [
        str(Path(sys.executable).parent / "dagster-webserver"),
        *("--host", "127.0.0.1", "--port", str(port)),
        *("-m", "data_platform.orchestration.definitions"),
    ]
    with serving(webserver, env, port, timeout=300) as served:
        url = served.url
        # the UI's first-visit community dialog would cover the graph: record it as seen, as its button does
        assert graphql(url, "mutation { setNuxSeen }") == {"data": {"setNuxSeen": True}}
        # the port answers before the code location has loaded; a page opened meanwhile shows no assets
        wait_for_code_locations(url, timeout=120)
        pages = {
            # every asset, grouped by layer
            "dagster-asset-groups.png": (f"{url}asset-groups", [*LAYERS, "alerts", "docs"]),
            # every asset the docs are built from, one node each, with the run's materialisations
            "dagster-asset-graph.png": (
                f"{url}assets/dbt_docs?view=lineage&lineageScope=upstream&lineageDepth=10",
                ["dbt_docs", "invoice_enrichment", "load_log"],
            ),
            # the run itself: its steps, and that it succeeded
            "dagster-run.png": (
                f"{url}runs/{run_id}",
                ["raw_tables", "dbt_build", "balance_alerts", "Success"],
            ),
        }
        ARTIFACTS.mkdir(exist_ok=True)
        for name, (page, expected) in pages.items():
            # a page renders after its queries answer: on a busy machine, later than chromium's budget
            for _ in range(3):
                dom = run_chromium("--dump-dom", page, tmp_path=tmp_path).stdout
                missing = [text for text in expected if text not in dom]
                if not missing:
                    break
            assert missing == [], f"{missing} not on {page}"
            shot = run_chromium(
                f"--screenshot={ARTIFACTS / name}", "--window-size=1600,1000", page, tmp_path=tmp_path
            )
            assert shot.returncode == 0, shot.stderr
            assert png_distinct_bytes(ARTIFACTS / name) > 50


@pytest.mark.parametrize("step", ["dbt_docs", "raw_tables"])
def test_the_docs_and_load_steps_wait_for_a_pipeline_run_like_the_others(defs, instance, daily_run, step):
    # the docs are generated into the target folder a pipeline run (init.sh) parses and builds into; a load
    # beside its build would reach some of its models and not others
    from data_platform.orchestration.assets import RAW_TABLE_KEYS

    database, csv_dir, _ = daily_run
    selection = [AssetKey("dbt_docs")] if step == "dbt_docs" else list(RAW_TABLE_KEYS.values())
    with environment(run_env(database, csv_dir, PIPELINE_LOCK_TIMEOUT="1")), pipeline.PipelineLock(timeout=0):
        result = defs.resolve_job_def("daily_pipeline").execute_in_process(
            instance=instance, asset_selection=selection, raise_on_error=False
        )
    assert not result.success
    failures = [event for event in result.all_events if event.is_step_failure]
    assert [event.step_key for event in failures] == [step]
    assert "another pipeline run holds the lock" in failures[0].step_failure_data.error.message


def test_the_load_step_waits_for_the_database_like_init_sh(defs, instance, daily_run):
    # the daily job's first step after a server restart: wait DB_WAIT_SECONDS, then say what was waited for
    from data_platform.orchestration.assets import RAW_TABLE_KEYS

    database, csv_dir, _ = daily_run
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = run_env(database, csv_dir, PGHOST="127.0.0.1", PGPORT=str(port), DB_WAIT_SECONDS="1")
    with environment(env):
        result = defs.resolve_job_def("daily_pipeline").execute_in_process(
            instance=instance, asset_selection=list(RAW_TABLE_KEYS.values()), raise_on_error=False
        )
    failures = [event for event in result.all_events if event.is_step_failure]
    assert [event.step_key for event in failures] == ["raw_tables"]
    assert "the database did not accept connections within 1s" in failures[0].step_failure_data.error.message


def test_the_build_step_waits_for_a_loader_run_by_hand_like_init_sh(defs, instance, daily_run):
    # an export a loader run by hand committed during the build would reach some models and not others
    database, csv_dir, _ = daily_run
    with database.connect("transformer", autocommit=True) as by_hand:
        hold_the_loaders_lock(by_hand)
        with environment(run_env(database, csv_dir, PIPELINE_LOCK_TIMEOUT="1")):
            result = defs.resolve_job_def("daily_pipeline").execute_in_process(
                instance=instance,
                asset_selection=[AssetKey(["marts", "dim_alert_routes"])],
                raise_on_error=False,
            )
    failures = [event for event in result.all_events if event.is_step_failure]
    assert [event.step_key for event in failures] == ["dbt_build"]
    assert "a loader run by hand still holds the loader's lock" in failures[0].step_failure_data.error.message


def failed_daily_run_alert(defs, instance, database, csv_dir: Path) -> tuple[str, str]:
    """Run the daily job on `csv_dir`, which must fail it, and tick the failure sensor around it: (the
    one failure alert Slack got, the run's id)."""
    sensor = defs.get_sensor_def("run_failure_alerts")
    with SlackStub() as slack:
        env = run_env(database, csv_dir, SLACK_WEBHOOK_URL=slack.url, DAGSTER_BASE_URL="http://dagster.test")
        with environment(env):
            # the first tick starts the sensor's cursor (it never alerts about runs from before it)
            first = sensor.evaluate_tick(build_sensor_context(instance=instance, definitions=defs))
            result = defs.resolve_job_def("daily_pipeline").execute_in_process(
                instance=instance, raise_on_error=False
            )
            assert not result.success
            second = sensor.evaluate_tick(
                build_sensor_context(instance=instance, definitions=defs, cursor=first.cursor)
            )
            third = sensor.evaluate_tick(
                build_sensor_context(instance=instance, definitions=defs, cursor=second.cursor)
            )
        assert json.loads(third.cursor)["pending"] == []  # nothing left to send
        assert len(slack.delivered) == 1, slack.requests
        return slack.delivered[0]["text"], result.run_id


def test_a_failing_dbt_test_sends_one_failure_alert_naming_the_step(defs, instance, daily_run, tmp_path):
    database, _, _ = daily_run
    unknown = f"999,{SENTINEL},{SENTINEL},1,-7,disputed,USD,,,5.00,,1.00000000,,2023-01-07T10:00:00.000Z"
    broken = write_fixture(tmp_path / "broken", [*INVOICE_ROWS, unknown])
    text, run_id = failed_daily_run_alert(defs, instance, database, broken)
    assert "step dbt_build" in text
    # the build was incremental: the next run retries its days
    assert "\ndbt build failed; the next run builds the days from 2023-01-07 again\nfailed test " in text
    assert "from_field='disputed'" in text  # the failing test's rows, from the error's first lines
    assert f"http://dagster.test/runs/{run_id}" in text


def test_a_build_step_whose_dbt_dies_shows_no_failed_test_of_an_earlier_build(
    defs, instance, daily_run, tmp_path
):
    """A dbt that dies writes no run results: the step's failure quoted the previous build's failed tests."""
    from data_platform.orchestration.project import BUILD_TARGET_PATH

    database, csv_dir, _ = daily_run
    earlier = {
        "unique_id": "test.data_platform.an_earlier_failure",
        "status": "fail",
        "message": "Got 1 result",
    }
    BUILD_TARGET_PATH.mkdir(parents=True, exist_ok=True)
    (BUILD_TARGET_PATH / "run_results.json").write_text(json.dumps({"results": [earlier]}))
    dying = tmp_path / "bin"
    dying.mkdir()
    real_dbt = Path(sys.executable).parent / "dbt"  # dagster-dbt asks for its version first
    # the build is killed, as the OOM killer would
    (dying / "dbt").write_text(f'#!/bin/sh\n[ "$1" = --version ] && exec {real_dbt} "$@"\nkill -KILL $$\n')
    (dying / "dbt").chmod(0o755)
    env = run_env(database, csv_dir)
    env["PATH"] = f"{dying}{os.pathsep}{env['PATH']}"
    with environment(env):
        result = defs.resolve_job_def("daily_pipeline").execute_in_process(
            instance=instance, raise_on_error=False
        )
    failures = [event for event in result.all_events if event.is_step_failure]
    assert [event.step_key for event in failures] == ["dbt_build"]
    message = failures[0].step_failure_data.error.message
    assert "dbt build was killed by SIGKILL (out of memory?)" in message  # as init.sh says it
    assert "an_earlier_failure" not in message
    # nothing in the data to fix, and no retry of a step's failure: nothing else starts the build again
    run = instance.get_run_by_id(result.run_id)
    assert failure_alerts.failure_message(instance, run, "http://d").details[-1] == failure_alerts.CATCH_UP


def test_a_load_step_whose_loader_is_killed_says_so_and_what_to_do(
    instance, daily_run, tmp_path, monkeypatch
):
    from dagster import materialize
    from process_support import KILLED_AT_START, fake_python

    from data_platform.orchestration import assets

    database, csv_dir, _ = daily_run
    monkeypatch.setattr(pipeline.sys, "executable", fake_python(tmp_path, KILLED_AT_START))
    with environment(run_env(database, csv_dir)):
        result = materialize([assets.raw_tables], instance=instance, raise_on_error=False)
    assert not result.success
    message = failure_alerts.failure_message(instance, instance.get_run_by_id(result.run_id), "http://d")
    assert message.details[0].startswith("the loader was killed by SIGKILL (out of memory?)")
    assert message.details[-1] == failure_alerts.CATCH_UP


def start_daily_job(database, csv_dir: Path, dagster_home: Path, log: Path) -> tuple[subprocess.Popen, dict]:
    """`dagster job execute` of the daily job on a database of its own, in its own process group (the run's
    process, its steps' processes and dbt), its output in `log`: the run, and its environment."""
    env = run_env(
        database,
        csv_dir,
        DAGSTER_HOME=str(dagster_home),
        DAGSTER_PG_URL=dagster_storage_url(database),
        PYTHONUNBUFFERED="1",  # its log is read as it is written
    )
    with log.open("w") as out:
        run = subprocess.Popen(
            [
                *(str(Path(sys.executable).parent / "dagster"), "job", "execute"),
                *("-m", "data_platform.orchestration.definitions", "-j", "daily_pipeline"),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return run, env


def wait_while_running(
    run: subprocess.Popen, log: Path, done: Callable[[], object], deadline: float, pause: float = 0.2
) -> None:
    """Wait until `done()`; fail, with the run's log, should the run end or `deadline` pass first."""
    while not done():
        assert run.poll() is None and time.monotonic() < deadline, read_log(log)[-5000:]
        time.sleep(pause)


def test_terminating_a_run_stops_its_dbt_build_and_records_nothing(
    instance, dagster_home, make_database, tmp_path
):
    """Dagster terminates a run (Terminate in the UI, or run monitoring's limit) by interrupting its
    process, which interrupts its steps: the build's dbt must stop, its statement end, and nothing be
    recorded, rather than go on building beside the next run. The interrupt mostly ends the step between
    two of dbt's events, before dbt sees it: dbt then dies with its step, and only the server's check of
    its client ends its statement."""
    database = make_database()
    log = tmp_path / "run.log"
    with database.connect("admin") as holder:
        run, env = start_daily_job(database, write_fixture(tmp_path / "csv"), dagster_home, log)
        try:
            # once the load is done, hold a lock that the build waits for at its first use of
            # raw.organizations: dbt is then stopped in the middle of its build, whatever the machine's speed
            deadline = time.monotonic() + 300
            wait_while_running(run, log, lambda: "raw_tables - STEP_SUCCESS" in read_log(log), deadline)
            holder.execute("lock table raw.organizations in access exclusive mode")
            wait_while_running(run, log, lambda: sessions_blocked_by(database, holder), deadline)
            assert set(sessions_blocked_by(database, holder)) == {"dbt"}
            run.send_signal(signal.SIGINT)  # what Dagster's termination does to the run's process
            run.wait(timeout=120)
            # nothing of the run is left running: no process, and no statement of dbt's (cancelled by dbt
            # when the interrupt reached it, else ended by the server once dbt died with its step)
            deadline = time.monotonic() + 30
            while process_group_alive(run.pid):
                assert time.monotonic() < deadline, (
                    "a process of the run outlived it\n" + read_log(log)[-5000:]
                )
                time.sleep(0.2)
        finally:
            kill_group(run)  # only what a failed assertion left
        output = read_log(log)
        while sessions_blocked_by(database, holder):
            assert time.monotonic() < deadline, f"dbt's statement still waits for the lock\n{output[-5000:]}"
            time.sleep(0.2)
        holder.rollback()
    run_id = re.search(r" - daily_pipeline - ([0-9a-f-]{36}) - ", output).group(1)
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.FAILURE
    # from the run's event log: the step's own log line may not reach the run's output before it ends
    steps = {
        (event.dagster_event.event_type, event.dagster_event.step_key)
        for event in instance.all_logs(run_id)
        if event.dagster_event is not None and event.dagster_event.step_key is not None
    }
    assert (DagsterEventType.STEP_FAILURE, "dbt_build") in steps, sorted(steps)
    assert (DagsterEventType.STEP_START, "balance_alerts") not in steps, sorted(steps)
    assert database.query(f"select * from {refresh.BUILD_STATE}") == []
    with environment(env), pipeline.PipelineLock(timeout=0):
        pass  # free for the next run


@pytest.mark.parametrize("when", ["under its dbt build", "while its process starts"])
def test_a_step_whose_run_process_was_killed_outright_stops_instead_of_building_unseen(
    dagster_home, make_database, tmp_path, when
):
    """The run's process killed outright (kill -9, the OOM killer) leaves its step's process without a
    parent: it must stop, its dbt's statement end and its pipeline lock go, rather than build on unseen,
    holding the lock that the run's retry waits for; a step whose process was still starting too."""
    from data_platform.orchestration.assets import ORPHAN_EXIT_SECONDS

    database = make_database()
    log = tmp_path / "run.log"
    with database.connect("admin") as holder:
        run, env = start_daily_job(database, write_fixture(tmp_path / "csv"), dagster_home, log)
        try:
            deadline = time.monotonic() + 300
            pause = 0.05 if when == "while its process starts" else 0.2
            wait_while_running(
                run, log, lambda: "raw_tables - STEP_SUCCESS" in read_log(log), deadline, pause
            )
            if when == "under its dbt build":
                holder.execute("lock table raw.organizations in access exclusive mode")
                wait_while_running(run, log, lambda: sessions_blocked_by(database, holder), deadline)
            else:  # the build step's process is being started: it imports Dagster and the definitions

                def step_processes() -> list[psutil.Process]:
                    children = psutil.Process(run.pid).children()
                    return [child for child in children if "spawn_main" in " ".join(child.cmdline())]

                wait_while_running(run, log, step_processes, deadline, pause)
                time.sleep(1.5)  # past its start-up data, still importing (seconds)
                assert "dbt_build - STEP_START" not in read_log(log)
            left = psutil.Process(run.pid).children(recursive=True)  # the build step's process, its dbt
            run.kill()  # the run's process alone, as the OOM killer would
            run.wait()
            # within the time the step has to stop before it is ended, whatever it was doing
            _, alive = psutil.wait_procs(left, timeout=ORPHAN_EXIT_SECONDS + 30)
            assert alive == [], f"{alive} outlived the run's process\n{read_log(log)[-5000:]}"
            deadline = time.monotonic() + 30
            while sessions_blocked_by(database, holder):
                assert time.monotonic() < deadline, f"dbt's statement still waits\n{read_log(log)[-5000:]}"
                time.sleep(0.2)
        finally:
            kill_group(run)  # only what a failed assertion left
        holder.rollback()
    # no build recorded (a step stopped before its build started made no record table)
    if database.query(f"select to_regclass('{refresh.BUILD_STATE}')")[0][0] is not None:
        assert database.query(f"select * from {refresh.BUILD_STATE}") == []
    with environment(env), pipeline.PipelineLock(timeout=0):
        pass  # free for the retry


def test_a_bad_export_sends_a_failure_alert_with_the_loaders_error(defs, instance, make_database, tmp_path):
    # the alert says what is wrong with which file, line, column and value, without opening the run's logs
    csv_dir = write_fixture(tmp_path / "csv")
    loader_error = write_bad_export(csv_dir)
    text, _ = failed_daily_run_alert(defs, instance, make_database(), csv_dir)
    assert "step raw_tables" in text
    assert f"\nthe load failed: {loader_error}\n" in text
    assert "nothing was built" in text


def forget_slack(database) -> None:
    """Slack's alert history and watermark gone: its next run starts afresh (its first run sends the
    latest day's alerts)."""
    with database.connect("admin", autocommit=True) as conn:
        conn.execute("delete from ops.alert_history where destination = 'slack'")
        conn.execute("delete from ops.alert_watermark where destination = 'slack'")


def test_undelivered_balance_alerts_fail_their_step_so_it_is_retried(daily_run):
    # a run that could not deliver its alerts must not end green: the step fails, so its retry policy
    # sends them again, and a run that still cannot is reported as failed
    from dagster import Failure, build_asset_context

    from data_platform.orchestration.assets import balance_alerts

    database, csv_dir, _ = daily_run
    with SlackStub() as slack:
        slack.always(server_error(500))
        env = run_env(database, csv_dir, SLACK_WEBHOOK_URL=slack.url, ALERT_HTTP_RETRIES="0")
        with environment(env):
            with pytest.raises(Failure, match="could not be delivered") as failed:
                balance_alerts(build_asset_context())
            assert slack.requests and not slack.delivered
            # the run's failure alert quotes why, with where to: no "above" in a Slack message
            description = failed.value.description
            assert "alert_script.py: delivery to slack failed for organization " in description, description
            assert "HTTP 500" in description, description
            assert "retried on the next run" in description, description
            slack.always(OK)
            balance_alerts(build_asset_context())  # the retry
        assert slack.delivered, "the retry sent nothing"


def test_run_alerts_off_leaves_the_slack_channel_untouched(daily_run):
    # RUN_ALERTS=false skips the alert run in the daily job as it does in init.sh: the step succeeds
    # without sending anything, whatever waits to be sent
    from dagster import build_asset_context

    from data_platform.orchestration.assets import balance_alerts

    database, csv_dir, _ = daily_run

    forget_slack(database)  # Slack's first run would send the latest day's alerts
    try:
        with SlackStub() as slack:
            slack.always(server_error(500))
            env = run_env(
                database, csv_dir, SLACK_WEBHOOK_URL=slack.url, ALERT_HTTP_RETRIES="0", RUN_ALERTS="false"
            )
            with environment(env):
                balance_alerts(build_asset_context())
            assert slack.requests == []
    finally:
        forget_slack(database)


def test_a_balance_alert_given_up_fails_the_step_without_a_retry_that_would_end_green(daily_run):
    # a retry after the attempt that gave up would find nothing left to send and end the run green:
    # no failure alert, although the alert may never have arrived
    from dagster import Failure, build_asset_context

    from data_platform.orchestration.assets import balance_alerts

    database, csv_dir, _ = daily_run

    forget_slack(database)  # Slack's first run: the latest day's alerts
    try:
        with SlackStub() as slack:
            slack.always(slow())  # each message arrives, its answer after the client gave up
            env = run_env(database, csv_dir, SLACK_WEBHOOK_URL=slack.url, ALERT_HTTP_TIMEOUT="0.3")
            with environment(env):
                with pytest.raises(Failure, match="could not be delivered") as first:
                    balance_alerts(build_asset_context())
                assert first.value.allow_retries  # its first unanswered attempt: a retry may confirm it
                with pytest.raises(Failure, match="not sent again") as retry:
                    balance_alerts(build_asset_context())
            assert not retry.value.allow_retries, "the step would be retried into green"
            assert "check the channel" in retry.value.description
            assert "never confirmed after" in retry.value.description, "the alert run's own words"
            assert len(slack.requests) == 2  # one alert, sent twice, never confirmed
    finally:
        forget_slack(database)  # the other tests' Slack starts afresh too


def test_after_giving_up_on_an_alert_the_step_still_retries_the_others_then_fails(daily_run, monkeypatch):
    # a give-up fails the run without Dagster's retries, but the alerts still waiting in that run get
    # theirs from the step (the real alert runs behind these outcomes: the test above and test_alerts)
    from dagster import Failure, build_asset_context

    from data_platform import pipeline
    from data_platform.orchestration import assets

    database, csv_dir, _ = daily_run
    # an error in the step's own retries (say the pipeline lock is busy) must not end it retryable either:
    # Dagster's retry would find the give-up reported and end green
    busy = pipeline.PipelineError("another pipeline run holds the lock", pipeline.EXIT_BUSY)
    ends = [
        pipeline.AlertRunEnd(pipeline.AlertRun[name]) for name in ("GIVEN_UP", "UNDELIVERED", "DELIVERED")
    ]
    outcomes = [ends[0], busy, *ends[1:]]
    runs = []

    def scripted_alert_run(settings):
        runs.append(settings)
        outcome = outcomes[len(runs) - 1]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(assets, "_alert_run", scripted_alert_run)
    monkeypatch.setattr(assets, "GIVEN_UP_RETRY_DELAYS_SECONDS", (0, 0, 0, 0))
    with environment(run_env(database, csv_dir)), pytest.raises(Failure, match="check the channel") as failed:
        assets.balance_alerts(build_asset_context())
    assert len(runs) == 4, "the alerts still waiting were not retried until delivered"
    assert not failed.value.allow_retries
    # the first run said the others were not delivered: the failure alert must not leave it at that; and
    # as that run said nothing to quote, the alert points at the step's log
    assert failed.value.description == (
        f"{pipeline.AlertRun.GIVEN_UP.value} (see the step's log)\n"
        "the step's retries then delivered the run's other alerts"
    )


def test_an_alert_step_that_gave_up_records_it_in_the_run_and_its_failure_says_it_once(
    daily_run, instance, monkeypatch
):
    # recorded before the step retries the run's other alerts, for minutes: a run cut off meanwhile has
    # no failure of the step to say it (test_ops_alerts: the failure alert of such a run)
    from dagster import materialize

    from data_platform.orchestration import assets, failure_alerts

    database, csv_dir, _ = daily_run
    said = ("slack: 1 alert never confirmed after 2 unanswered attempts",)
    outcomes = [pipeline.AlertRun.GIVEN_UP, *[pipeline.AlertRun.UNDELIVERED] * 4]
    recorded_by_then = []

    def scripted_alert_run(settings):
        # what a run cut off now would hold: the record must come before the step's retries
        run_id = instance.get_runs(limit=1)[0].run_id
        observed = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_OBSERVATION).records
        recorded_by_then.append(len(observed))
        return pipeline.AlertRunEnd(outcomes.pop(0), said)

    monkeypatch.setattr(assets, "_alert_run", scripted_alert_run)
    monkeypatch.setattr(assets, "GIVEN_UP_RETRY_DELAYS_SECONDS", (0, 0, 0, 0))
    with environment(run_env(database, csv_dir)):
        result = materialize([assets.balance_alerts], instance=instance, raise_on_error=False)
    assert not result.success and outcomes == []
    assert recorded_by_then == [0, 1, 1, 1, 1]
    observations = instance.get_records_for_run(result.run_id, of_type=DagsterEventType.ASSET_OBSERVATION)
    recorded = [
        record.event_log_entry.dagster_event.event_specific_data.asset_observation.metadata
        for record in observations.records
    ]
    assert [metadata[run_records.GIVEN_UP_METADATA].value for metadata in recorded] == [
        f"{pipeline.AlertRun.GIVEN_UP.value}; the alert run said:\n{said[0]}"
    ]
    run = instance.get_run_by_id(result.run_id)
    text = failure_alerts.failure_message(instance, run, "http://dagster.test").text()
    assert text.count("check the channel they go to") == 1, text
    assert text.count(said[0]) == 1, text


def test_a_give_up_recorded_by_an_attempt_that_then_ended_fails_the_steps_retry(
    daily_run, instance, monkeypatch
):
    """An attempt whose process is killed during its retries of the run's other alerts is retried by Dagster
    within the run. That retry found the give-up reported (its alert run says it once) and ended green:
    nothing told anyone to check the channel."""
    from dagster import RetryRequested, materialize

    from data_platform.orchestration import assets, failure_alerts

    database, csv_dir, _ = daily_run
    said = ("slack: 1 alert never confirmed after 2 unanswered attempts",)

    def killed(settings):
        # what Dagster does with a step whose process died: retry it (here at once, not after its policy's
        # minute)
        raise RetryRequested(max_retries=1, seconds_to_wait=0)

    outcomes = [lambda settings: pipeline.AlertRunEnd(pipeline.AlertRun.GIVEN_UP, said), killed]
    outcomes.append(lambda settings: pipeline.AlertRunEnd(pipeline.AlertRun.DELIVERED))
    monkeypatch.setattr(assets, "_alert_run", lambda settings: outcomes.pop(0)(settings))
    monkeypatch.setattr(assets, "GIVEN_UP_RETRY_DELAYS_SECONDS", (0, 0, 0, 0))
    with environment(run_env(database, csv_dir)):
        result = materialize([assets.balance_alerts], instance=instance, raise_on_error=False)
    assert outcomes == [] and not result.success
    failure = result.failure_data_for_node("balance_alerts")
    assert failure.user_failure_data.description == (
        f"{pipeline.AlertRun.GIVEN_UP.value}; the alert run said:\n{said[0]}\n"
        f"{assets.EARLIER_ATTEMPT_ENDED}\nthis attempt delivered the run's other alerts"
    )
    run = instance.get_run_by_id(result.run_id)
    text = failure_alerts.failure_message(instance, run, "http://dagster.test").text()
    assert text.count("check the channel they go to") == 1, text


def test_the_alert_step_waits_for_a_pipeline_run_like_the_other_steps(daily_run):
    # init.sh alerts under the lock; a pipeline run may be rebuilding the marts the alerter reads
    from dagster import Failure, build_asset_context

    from data_platform.orchestration.assets import balance_alerts

    database, csv_dir, _ = daily_run
    with (
        environment(run_env(database, csv_dir, PIPELINE_LOCK_TIMEOUT="1")),
        pipeline.PipelineLock(timeout=0),
        pytest.raises(Failure, match="another pipeline run holds the lock"),
    ):
        balance_alerts(build_asset_context())


def test_a_run_not_started_by_the_sensor_leaves_a_folder_dated_after_today_for_its_day(
    defs, make_database, tmp_path
):
    # named in a time zone ahead of UTC, a day's export lands before its day: the sensor waits for it, and
    # the schedule's run, or one started by hand, must not fail on it (the loader refuses it today)
    from dagster import materialize

    from data_platform.load_errors import utc_today
    from data_platform.orchestration.assets import raw_tables

    database = make_database()
    csv_dir = write_fixture(tmp_path / "csv")
    tomorrow = csv_dir / "exports" / (utc_today() + dt.timedelta(days=1)).isoformat()
    tomorrow.mkdir(parents=True)
    (tomorrow / "invoices.csv").write_text(f"{HEADER}\n{INVOICE_ROWS[0].replace(',open,', ',paid,')}\n")
    with environment(run_env(database, csv_dir)):
        result = materialize([raw_tables], raise_on_error=False)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    loaded = database.query("select export_date::text from raw.load_log order by export_date")
    assert [day for (day,) in loaded] == ["2023-01-06"]


def test_a_run_of_the_export_sensor_loads_only_the_exports_it_judged_complete(defs, make_database, tmp_path):
    # a folder that lands while the sensor's run waits in the queue may still be being copied: it is left
    # for the run the sensor starts for it
    from dagster import materialize

    from data_platform.orchestration.assets import raw_tables
    from data_platform.orchestration.sensors import EXPORT_DAY_TAG

    database = make_database()
    csv_dir = write_fixture(tmp_path / "csv")
    complete = csv_dir / "exports" / "2023-01-07"
    complete.mkdir(parents=True)
    (complete / "invoices.csv").write_text(f"{HEADER}\n{INVOICE_ROWS[0].replace(',open,', ',paid,')}\n")
    (csv_dir / "exports" / "2023-01-08").mkdir()  # being copied: no invoices.csv yet
    with environment(run_env(database, csv_dir)):
        result = materialize([raw_tables], tags={EXPORT_DAY_TAG: "2023-01-07"}, raise_on_error=False)
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        loaded = database.query("select export_date::text from raw.load_log order by export_date")
        assert [day for (day,) in loaded] == ["2023-01-06", "2023-01-07"]
        # a run without the tag (the schedule, by hand) loads every folder: this one is not ready
        assert not materialize([raw_tables], raise_on_error=False).success


def test_a_run_that_gave_up_waiting_for_the_database_says_to_run_the_job_again(daily_instance, tmp_path):
    """Not retried by Dagster (a step's own error), and the sensor has asked for its export day already:
    nothing starts a run before the next export or schedule, and its alert said only to check the
    settings."""
    from data_platform.orchestration.assets import RAW_TABLE_KEYS
    from data_platform.orchestration.failure_alerts import CATCH_UP, failure_message

    defs = load_definitions()
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "csv" / "exports").mkdir(parents=True)
    env = dagster_env(
        PGHOST="127.0.0.1", PGPORT=str(port), DB_WAIT_SECONDS="1", CSV_DIR=str(tmp_path / "csv")
    )
    with environment(env):
        result = defs.resolve_job_def("daily_pipeline").execute_in_process(
            instance=daily_instance, asset_selection=list(RAW_TABLE_KEYS.values()), raise_on_error=False
        )
    assert not result.success
    message = failure_message(daily_instance, daily_instance.get_run_by_id(result.run_id), "http://d")
    text = "\n".join(message.details)
    assert "did not accept connections" in text
    assert text.endswith(CATCH_UP), text
