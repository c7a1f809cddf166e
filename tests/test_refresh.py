"""The rebuild decision (data_platform/refresh.py) from the warehouse's build record, without dbt: which
changes force a full rebuild and which leave the next build incremental. The pipeline tests run the same
decisions through real builds (test_ledger.py, test_pipeline.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import psycopg
import pytest
from loader_files import BASE_DATE, invoice, write_dir, write_export

from data_platform import refresh
from data_platform.loader import load_exports
from data_platform.paths import DBT_PROJECT_DIR

READER = "alerter"


@pytest.fixture
def loaded(conn: psycopg.Connection, tmp_path: Path) -> Path:
    """The base export loaded, and no build recorded yet."""
    conn.execute(f"drop table if exists {refresh.BUILD_STATE}")
    directory = write_dir(tmp_path / "csv")
    load_exports(conn, directory)
    return directory


def build(conn: psycopg.Connection) -> refresh.BuildPlan:
    """Plan a build and record it as successful, as the pipeline does after dbt succeeded."""
    plan = refresh.plan_build(conn)
    refresh.record_build(conn, plan, reader=READER)
    return plan


def test_exports_after_the_last_build_are_built_incrementally_and_a_changed_covered_one_in_full(conn, loaded):
    assert build(conn).reason == "no successful build is recorded yet"
    write_export(loaded, "2024-01-02", [invoice(1)])
    load_exports(conn, loaded)
    plan = refresh.plan_build(conn)
    day_after_base = date.fromisoformat(BASE_DATE) + timedelta(days=1)
    assert (plan.full_refresh, plan.window_start) == (False, day_after_base)

    build(conn)
    # the newest export the build covered, reloaded from other files (a reset warehouse, say)
    conn.execute(
        "update raw.load_log set invoices_sha256 = md5(invoices_sha256) where export_date = '2024-01-02'"
    )
    plan = refresh.plan_build(conn)
    assert (plan.full_refresh, plan.reason) == (
        True,
        "the exports the last successful build covered were reloaded or changed",
    )


def test_a_build_recorded_before_any_export_was_loaded_leaves_the_next_build_full(conn):
    """A build can succeed on an empty raw layer (the build step materialized alone after a reset): its
    record covers no export, so there is no window to resume from and the next build is a full one."""
    conn.execute(f"drop table if exists {refresh.BUILD_STATE}")
    assert refresh.latest_export(conn) is None
    build(conn)
    assert refresh.recorded_state(conn).last_export_date is None
    plan = refresh.plan_build(conn)
    assert (plan.full_refresh, plan.reason) == (True, "no successful build is recorded yet")


def test_a_covered_exports_organizations_file_reloaded_from_another_forces_a_full_build(conn, loaded):
    """Organizations reloaded from other files change the organizations every stored day was computed
    with: an incremental build would keep those days as the earlier files had them."""
    build(conn)
    assert not refresh.plan_build(conn).full_refresh
    conn.execute("update raw.load_log set organizations_sha256 = md5(organizations_sha256)")
    plan = refresh.plan_build(conn)
    assert (plan.full_refresh, plan.reason) == (
        True,
        "the exports the last successful build covered were reloaded or changed",
    )


def test_a_window_left_in_the_environment_is_dropped_for_a_full_build_and_replaced_for_an_incremental_one(
    conn, loaded, monkeypatch
):
    """LEDGER_WINDOW_START left in the pipeline's environment (from a dbt run by hand) would reach a full
    rebuild, whose data tests would then check only the days from it: none, and a wrong build passes."""
    monkeypatch.setenv(refresh.WINDOW_VARIABLE, "2030-01-01")
    full = build(conn)
    assert full.full_refresh
    assert refresh.WINDOW_VARIABLE not in full.dbt_environment()
    write_export(loaded, "2024-01-02", [invoice(1)])
    load_exports(conn, loaded)
    incremental = refresh.plan_build(conn)
    assert not incremental.full_refresh
    assert incremental.dbt_environment()[refresh.WINDOW_VARIABLE] == incremental.window_start.isoformat()


def test_dbt_gets_the_dead_client_check_and_the_server_options_it_was_given_win(
    database, conn, loaded, monkeypatch
):
    """PGOPTIONS set for the pipeline still reaches dbt, as given (a trailing escaped space is part of its
    last value), after the check: the server takes the last -c, so `=0` there turns the check off."""
    assert build(conn).dbt_environment()["PGOPTIONS"] == "-c client_connection_check_interval=2s"
    given = "-c client_connection_check_interval=0 -c DateStyle=ISO,\\ DMY\\ "
    monkeypatch.setenv("PGOPTIONS", given)
    options = build(conn).dbt_environment()["PGOPTIONS"]
    assert options == f"-c client_connection_check_interval=2s {given}"
    with database.connect("transformer", options=options) as dbt_session:
        assert dbt_session.execute("show client_connection_check_interval").fetchone() == ("0",)
        assert dbt_session.execute("show DateStyle").fetchone() == ("ISO, DMY",)


def test_a_full_build_recreates_the_incremental_models_and_an_incremental_one_keeps_them(conn, loaded):
    """Without --full-refresh a "full" build only widens the window to every day: the incremental models
    keep their tables, so a SQL change to their columns fails the build (on_schema_change: fail) instead
    of being rebuilt from scratch. The unit tests stay out of both."""
    full = build(conn)
    assert full.full_refresh
    assert full.dbt_args() == [*refresh.UNIT_TESTS_EXCLUDED, "--full-refresh"]
    incremental = refresh.plan_build(conn)
    assert not incremental.full_refresh
    assert incremental.dbt_args() == list(refresh.UNIT_TESTS_EXCLUDED)


def copy_project(target: Path) -> Path:
    for folder in ("models", "macros", "seeds"):
        shutil.copytree(DBT_PROJECT_DIR / folder, target / folder)
    shutil.copy(DBT_PROJECT_DIR / "dbt_project.yml", target / "dbt_project.yml")
    return target


def test_a_macro_edit_or_a_renamed_model_changes_the_project_fingerprint(tmp_path):
    project = copy_project(tmp_path / "dbt")
    before = refresh.project_fingerprint(project)
    macro = project / "macros" / "balance_rules.sql"
    assert "- {{ rules }}.paid" in macro.read_text()
    macro.write_text(macro.read_text().replace("- {{ rules }}.paid", "+ {{ rules }}.paid"))
    edited = refresh.project_fingerprint(project)
    assert edited != before
    model = project / "models" / "marts" / "fct_invoices.sql"
    model.rename(model.with_name("fct_invoices_v2.sql"))
    assert refresh.project_fingerprint(project) != edited


def test_an_edit_of_a_macro_in_a_subfolder_changes_the_project_fingerprint(tmp_path):
    """The ledger window and the engines' SQL live in macros/engines/: an edit there changes how every
    incremental model computes its days, as an edit of a top-level macro does."""
    project = copy_project(tmp_path / "dbt")
    before = refresh.project_fingerprint(project)
    macro = project / "macros" / "engines" / "incremental_window.sql"
    macro.write_text(macro.read_text() + "\n{# edited #}\n")
    assert refresh.project_fingerprint(project) != before


def test_an_edit_of_dbt_project_yml_changes_the_project_fingerprint(tmp_path):
    """dbt_project.yml sets how the models are built (materializations, variables): an edit there left
    unseen would keep the stored days as the earlier settings computed them, under an incremental build."""
    project = copy_project(tmp_path / "dbt")
    before = refresh.project_fingerprint(project)
    settings = project / "dbt_project.yml"
    settings.write_text(settings.read_text() + "# edited\n")
    assert refresh.project_fingerprint(project) != before


def edit(file: Path, old: str, new: str) -> None:
    assert file.read_text().count(old) == 1, old
    file.write_text(file.read_text().replace(old, new))


# What the YAML beside the models and seeds says about building them: how a model is materialized, which
# schema a source is read from, the type a seed column is loaded as.
BUILD_SETTINGS_EDITS = {
    "a model's config": (
        "models/marts/_marts__models.yml",
        "  - name: fct_invoices\n",
        "  - name: fct_invoices\n    config:\n      materialized: view\n",
    ),
    "a source's schema": (
        "models/staging/payments/_payments__sources.yml",
        "schema: raw\n",
        "schema: raw_v2\n",
    ),
    "a seed's column type": (
        "seeds/_seeds.yml",
        "invoiced_coefficient: \"{{ 'decimal(10,4)' if target.type == 'spark' else 'numeric' }}\"",
        "invoiced_coefficient: \"{{ 'decimal(10,4)' if target.type == 'spark' else 'integer' }}\"",
    ),
    # a column named like a documentation key
    "the type of a seed's column called description": (
        "seeds/_seeds.yml",
        "description: \"{{ 'string' if target.type == 'spark' else 'text' }}\"",
        "description: \"{{ 'string' if target.type == 'spark' else 'varchar(5)' }}\"",
    ),
}


@pytest.mark.parametrize("setting", BUILD_SETTINGS_EDITS)
def test_an_edit_of_how_the_yaml_builds_a_model_forces_a_full_build(conn, loaded, tmp_path, setting):
    """Such an edit changes what the next build computes as surely as one of the SQL: left unseen, the days
    before the next export would keep what the earlier settings computed under an incremental build."""
    project = copy_project(tmp_path / "dbt")
    refresh.record_build(conn, refresh.plan_build(conn, project_dir=project), reader=READER)
    assert not refresh.plan_build(conn, project_dir=project).full_refresh
    edit(project / BUILD_SETTINGS_EDITS[setting][0], *BUILD_SETTINGS_EDITS[setting][1:])
    after = refresh.plan_build(conn, project_dir=project)
    assert (after.full_refresh, after.reason) == (
        True,
        "the dbt project's SQL or settings changed since the last successful build",
    )


def test_descriptions_and_data_tests_in_the_yaml_leave_the_project_fingerprint_alone(tmp_path):
    """They change no stored number: a documentation edit must not cost a full rebuild (minutes at 12.7M
    invoices)."""
    project = copy_project(tmp_path / "dbt")
    before = refresh.project_fingerprint(project)
    models = project / "models" / "marts" / "_marts__models.yml"
    edit(
        models,
        "  - name: fct_invoices\n    description: >\n",
        "  - name: fct_invoices\n    description: >\n      Edited.\n",
    )
    edit(  # a test's filter
        project / "models" / "staging" / "payments" / "_payments__models.yml",
        "severity: warn\n",
        "severity: error\n",
    )
    edit(  # a column documented that was not, with a test
        models,
        "    columns:\n      - name: invoice_id\n",
        "    columns:\n      - name: undocumented\n        description: Now it is.\n"
        "        data_tests: [not_null]\n      - name: invoice_id\n",
    )
    edit(project / "seeds" / "_seeds.yml", "The balance rules:", "The balance rules, edited:")
    assert refresh.project_fingerprint(project) == before


def test_odd_yaml_gives_one_fingerprint_in_every_process_and_never_stops_the_plan(tmp_path):
    """A set's order depends on the process's hash seed: a fingerprint that followed it would differ from
    run to run, and every build be a full one. An anchor that holds itself cannot be walked: the file
    counts as its bytes, as one that is not YAML does."""
    project = copy_project(tmp_path / "dbt")
    odd = project / "models" / "odd.yml"
    odd.write_text("models:\n  - name: odd\n    config:\n      tags: !!set {a, b, c, d, e, f, g, h}\n")
    script = (
        "import sys, pathlib; from data_platform import refresh; "
        "print(refresh.project_fingerprint(pathlib.Path(sys.argv[1])))"
    )

    def fingerprint(seed: str) -> str:
        run = [sys.executable, "-c", script, str(project)]
        env = {**os.environ, "PYTHONHASHSEED": seed}
        return subprocess.run(run, env=env, capture_output=True, text=True, check=True).stdout

    assert len({fingerprint(seed) for seed in ("1", "2", "3", "4")}) == 1
    odd.write_text("models: &models\n  - *models\n")
    assert refresh.project_fingerprint(project)


def test_each_successful_build_replaces_every_field_of_the_record(conn, loaded, tmp_path):
    """The record is one row that every later build updates: a field left as the first build wrote it would
    make every build after a rules or SQL change, or after a new export, rebuild in full, or resume from
    an old window."""
    project = copy_project(tmp_path / "dbt")
    refresh.record_build(conn, refresh.plan_build(conn, project_dir=project), reader=READER)
    write_export(loaded, "2024-01-02", [invoice(1)])
    load_exports(conn, loaded)
    for edited in ("seeds/invoice_enrichment.csv", "models/marts/fct_invoices.sql"):
        (project / edited).write_text((project / edited).read_text() + "\n")
    changed = refresh.plan_build(conn, project_dir=project)
    assert changed.full_refresh
    refresh.record_build(conn, changed, reader=READER)
    after = refresh.plan_build(conn, project_dir=project)
    assert (after.full_refresh, after.window_start) == (False, date(2024, 1, 3)), after.reason


def test_every_recorded_build_is_logged_with_what_it_rebuilt_why_and_the_rules_it_applied(
    conn, loaded, tmp_path
):
    """The record keeps the last build only: which builds were full and why, and the rules that computed
    the days an alert was sent for, were in the pipeline's output and nowhere in the warehouse."""
    conn.execute(f"drop table if exists {refresh.BUILD_LOG}")
    project = copy_project(tmp_path / "dbt")
    rules = project / "seeds" / "invoice_enrichment.csv"
    shipped = rules.read_text()
    refresh.record_build(conn, refresh.plan_build(conn, project_dir=project), reader=READER)
    write_export(loaded, "2024-01-02", [invoice(1)])
    load_exports(conn, loaded)
    refresh.record_build(conn, refresh.plan_build(conn, project_dir=project), reader=READER)
    open_owed = "open,Issued and not yet paid: the full amount is owed,false,1,0"
    open_nothing = open_owed.replace(",1,0", ",0,0")
    edit(rules, open_owed, open_nothing)
    refresh.record_build(conn, refresh.plan_build(conn, project_dir=project), reader=READER)

    logged = conn.execute(
        "select full_refresh, reason, window_start, last_export_date, rules from raw.build_log "
        "order by build_id"
    ).fetchall()
    base_date = date.fromisoformat(BASE_DATE)
    assert logged == [
        (True, "no successful build is recorded yet", None, base_date, shipped),
        (False, f"exports after {BASE_DATE}", base_date + timedelta(days=1), date(2024, 1, 2), shipped),
        (
            True,
            "the balance rules changed since the last successful build",
            None,
            date(2024, 1, 2),
            shipped.replace(open_owed, open_nothing),
        ),
    ]


def test_a_rules_file_that_is_not_utf8_is_logged_as_it_reads_and_the_build_still_recorded(
    conn, loaded, tmp_path
):
    project = copy_project(tmp_path / "dbt")
    rules = project / "seeds" / "invoice_enrichment.csv"
    rules.write_bytes(rules.read_bytes().replace(b"Issued and not yet paid", b"Emis, non pay\xe9"))
    plan = refresh.plan_build(conn, project_dir=project)
    refresh.record_build(conn, plan, reader=READER)
    assert refresh.recorded_state(conn) == plan.current
    [(logged,)] = conn.execute("select rules from raw.build_log order by build_id desc limit 1").fetchall()
    assert "Emis, non pay\ufffd" in logged


def test_a_builds_success_clears_its_own_mark_only(conn, loaded):
    """A build by hand (or a run that lost the pipeline lock) marks the record while the pipeline's build
    runs: that build may not cover what it changed, so its success must not clear the mark."""
    build(conn)
    full = refresh.plan_build(conn, force_full=True)
    own_mark = refresh.mark_build_started(conn, full, reader=READER)
    refresh.record_build(conn, full, reader=READER, own_mark=own_mark)
    assert not refresh.full_build_unfinished(conn)

    def mark_meanwhile() -> None:
        conn.execute(f"update {refresh.BUILD_STATE} set full_build_started_at = clock_timestamp()")

    own_mark = refresh.mark_build_started(conn, full, reader=READER)
    mark_meanwhile()
    refresh.record_build(conn, full, reader=READER, own_mark=own_mark)
    assert refresh.full_build_unfinished(conn)
    refresh.record_build(conn, full, reader=READER)  # a mark of its own or not: none to clear
    assert refresh.full_build_unfinished(conn)

    conn.execute(f"update {refresh.BUILD_STATE} set full_build_started_at = null")
    incremental = refresh.plan_build(conn)
    assert refresh.mark_build_started(conn, incremental, reader=READER) is None  # it sets none
    mark_meanwhile()
    refresh.record_build(conn, incremental, reader=READER)
    assert refresh.plan_build(conn).full_refresh


def test_a_build_lets_another_alerter_role_use_the_marts_schema(conn, loaded, database):
    """dbt grants ALERTER_USER select on the marts' tables; only init.sql's alerter could use their schema,
    so an alert run as another role failed on every build with advice to rebuild."""
    role = f"alerter_{database.name}"
    with database.connect("admin", autocommit=True) as admin:
        admin.execute(f"create role {role}")
    try:
        uses = f"select has_schema_privilege('{role}', '{refresh.MARTS_SCHEMA}', 'usage')"
        assert database.query(uses) == [(False,)]
        refresh.record_build(conn, refresh.plan_build(conn), reader=role)
        assert database.query(uses) == [(True,)]
    finally:
        with database.connect("admin", autocommit=True) as admin:
            admin.execute(f"drop owned by {role}")
            admin.execute(f"drop role {role}")


def test_a_build_leaves_no_default_privilege_that_lets_anyone_read_the_marts(conn, loaded, database):
    """Who reads which mart is dbt's grants config alone: a default privilege (an older init.sql gave the
    alerter one) would let its grantee read every table a full build recreates, fct_invoices included."""
    readers = (
        "select granted.grantee from pg_default_acl cross join lateral aclexplode(defaclacl) as granted "
        f"where defaclnamespace = '{refresh.MARTS_SCHEMA}'::regnamespace"
    )
    for grantee in ("alerter", "public"):
        conn.execute(
            f"alter default privileges in schema {refresh.MARTS_SCHEMA} grant select on tables to {grantee}"
        )
    assert len(database.query(readers)) == 2
    full = refresh.plan_build(conn, force_full=True)
    refresh.mark_build_started(conn, full, reader=READER)  # before a full build creates the marts' tables
    assert database.query(readers) == []
    conn.execute(
        f"alter default privileges in schema {refresh.MARTS_SCHEMA} grant select on tables to alerter"
    )
    refresh.record_build(conn, full, reader=READER)  # after any build
    assert database.query(readers) == []
