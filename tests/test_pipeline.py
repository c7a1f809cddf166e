"""The whole pipeline (init.sh: load -> seed -> build + tests -> docs -> alerts) on a real Postgres.

The hand-made fixture below is small enough to compute every balance by hand; the expected
rows are written out literally, not computed by the code under test. It is one export (the single-file
layout): the ledger then gives exactly the balances of the invoices as they are in the file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import psutil
import psycopg
import pytest
import yaml
from conftest import (
    PROJECT_ROOT,
    copy_project,
    hold_the_loaders_lock,
    lines_until,
    pipeline_env,
    role_setting,
    run_pipeline,
    sessions_blocked_by,
    start_pipeline,
    wait_until,
)
from process_support import KILLED_AT_START, fake_python, kill_group, read_log
from psycopg import sql
from slack_stub import SlackStub, server_error

pytestmark = pytest.mark.slow

ORGANIZATIONS_CSV = """\
ORGANIZATION_ID,FIRST_PAYMENT_DATE,LAST_PAYMENT_DATE,LEGAL_ENTITY_COUNTRY_CODE,COUNT_TOTAL_CONTRACTS_ACTIVE,CREATED_DATE
1,2023-01-02,2023-01-05,-5000000000000000001,3,2021-03-08T17:35:39Z
2,,,12345,1,2021-03-08T17:35:39.4Z
"""

# org 1 and org 2 are known; 9223372036854775807 (max int64) is missing from organizations.csv.
# Invoice 9007199254740993 is 2^53 + 1: it would change if it ever went through a float.
HEADER = (
    "INVOICE_ID,PARENT_INVOICE_ID,TRANSACTION_ID,ORGANIZATION_ID,TYPE,STATUS,CURRENCY,"
    "PAYMENT_CURRENCY,PAYMENT_METHOD,AMOUNT,PAYMENT_AMOUNT,FX_RATE,FX_RATE_PAYMENT,CREATED_AT"
)
SENTINEL = "8817975702393619368"
INVOICE_ROWS = [
    # org 1: 01-01 open 100 USD (+100) and paid 50 EUR at 0.5 with payment (+100 - 100)
    f"101,{SENTINEL},{SENTINEL},1,-7,open,USD,,,100.00,,1.00000000,,2023-01-01T08:00:00.000Z",
    "9007199254740993,101,555,1,-7,paid,EUR,EUR,card,50.00,50,0.50000000,0.50000000,2023-01-01T09:00:00Z",
    # org 1: 01-03 credited 20 (-20) and paid 30 with no payment amount (+30), last ms of the day
    f"103,{SENTINEL},555,1,-7,credited,USD,,,20.00,,1.00000000,,2023-01-03T10:00:00.000Z",
    f"104,{SENTINEL},{SENTINEL},1,-7,paid,USD,,,30.00,,1.00000000,,2023-01-03T23:59:59.999Z",
    # org 1: 01-05 pending 165 (+165)
    f"105,{SENTINEL},{SENTINEL},1,-7,pending,USD,,,165.00,,1.00000000,,2023-01-05T00:00:00.000Z",
    # org 2: 01-02 cancelled (0); 01-04 refunded (0) + failed 40 USDC (+40)
    f"201,{SENTINEL},{SENTINEL},2,-7,cancelled,GBP,,,500.00,,0.80000000,,2023-01-02T12:00:00.000Z",
    f"202,{SENTINEL},{SENTINEL},2,-7,refunded,USD,,,10.00,,1.00000000,,2023-01-04T12:00:00.000Z",
    f"203,{SENTINEL},{SENTINEL},2,-7,failed,USDC,,,40.00,,1.00000000,,2023-01-04T13:00:00.000Z",
    # org 2: 01-05 processing 10 paid 10 (0) + credited 100 (-100); 01-06 open 30 (+30)
    f"204,{SENTINEL},{SENTINEL},2,-7,processing,USD,USD,card,10.00,10.0,1.00000000,1.00000000,2023-01-05T01:00:00Z",
    f"205,{SENTINEL},{SENTINEL},2,-7,credited,USD,,,100.00,,1.00000000,,2023-01-05T02:00:00.000Z",
    f"206,{SENTINEL},{SENTINEL},2,-7,open,USD,,,30.00,,1.00000000,,2023-01-06T02:00:00.000Z",
    # orphan org: 01-06 unpayable 1234.56 JPY at 123.456 per USD (+10)
    f"301,{SENTINEL},{SENTINEL},9223372036854775807,-7,unpayable,JPY,,,1234.56,,123.45600000,,"
    "2023-01-06T03:00:00.000Z",
]

D = Decimal
# (organization_id, date, invoice_count, invoiced, paid, change, balance, previous, ratio)
EXPECTED_FACT = [
    (1, "2023-01-01", 2, D(200), D(100), D(100), D(100), D(0), None),
    (1, "2023-01-03", 2, D(10), D(0), D(10), D(110), D(100), D("0.1")),
    (1, "2023-01-05", 1, D(165), D(0), D(165), D(275), D(110), D("1.5")),
    (2, "2023-01-02", 1, D(0), D(0), D(0), D(0), D(0), None),
    (2, "2023-01-04", 2, D(40), D(0), D(40), D(40), D(0), None),
    (2, "2023-01-05", 2, D(-90), D(10), D(-100), D(-60), D(40), D("-2.5")),
    (2, "2023-01-06", 1, D(30), D(0), D(30), D(-30), D(-60), D("0.5")),
    (9223372036854775807, "2023-01-06", 1, D(10), D(0), D(10), D(10), D(0), None),
]


def write_fixture(directory: Path, invoice_rows: list[str] = INVOICE_ROWS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "organizations.csv").write_text(ORGANIZATIONS_CSV)
    (directory / "invoices.csv").write_text("\n".join([HEADER, *invoice_rows]) + "\n")
    return directory


def assert_succeeded(result) -> None:
    assert result.returncode == 0, f"init.sh failed\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def rounded(value, places: int = 6):
    return None if value is None else round(D(value), places)


def fact_rows(database) -> list[tuple]:
    rows = database.query(
        """
        select organization_id, balance_date::text, invoice_count, invoiced_amount_usd, paid_amount_usd,
               balance_change_usd, balance_usd, previous_balance_usd, balance_change_ratio
        from marts.fct_organization_daily_financials
        order by organization_id, balance_date
        """
    )
    return [(*row[:3], *(rounded(v) for v in row[3:])) for row in rows]


@pytest.fixture(scope="module")
def fixture_pipeline(make_database, tmp_path_factory):
    """One database built from the fixture. Tests that change it come last in this file."""
    database = make_database()
    target = tmp_path_factory.mktemp("fixture_dbt") / "target"
    # the fixture's moves are tens of dollars: no floor on the alerted change
    result = run_pipeline(
        database,
        write_fixture(tmp_path_factory.mktemp("fixture_csv")),
        DBT_TARGET_PATH=str(target),
        ALERT_MIN_CHANGE_USD="0",
    )
    return database, result, target


def test_fixture_pipeline_succeeds(fixture_pipeline):
    assert_succeeded(fixture_pipeline[1])


def test_daily_financials_match_hand_computed_balances(fixture_pipeline):
    database, _, _ = fixture_pipeline
    assert fact_rows(database) == EXPECTED_FACT


def test_balances_book_on_the_utc_day_whatever_the_server_s_time_zone(make_database, tmp_path):
    """Invoice 105 is created at 2023-01-05T00:00Z, still Jan 4 in New York: a server whose time zone is
    not UTC must not move it (or any invoice) to another day."""
    database = make_database()
    with database.connect("admin", autocommit=True) as conn:
        conn.execute(
            sql.SQL("alter database {} set timezone to 'America/New_York'").format(
                sql.Identifier(database.name)
            )
        )
    assert database.query("show timezone", role="transformer") == [("America/New_York",)]
    assert_succeeded(run_pipeline(database, write_fixture(tmp_path / "csv"), RUN_ALERTS="false"))
    assert fact_rows(database) == EXPECTED_FACT


def test_the_pipeline_and_its_alerts_take_no_session_setting_from_the_database(make_database, tmp_path):
    """What a DBA may set for a database or a role: a date style psycopg cannot read, idle sessions ended
    (a lock is held by an idle session), commits that a server crash may lose (an alert recorded as gone)."""
    database = make_database()
    settings = {"datestyle": "SQL, DMY", "idle_session_timeout": "3s", "synchronous_commit": "off"}
    with database.connect("admin", autocommit=True) as conn:
        for name, value in settings.items():
            conn.execute(
                sql.SQL("alter database {} set {} to {}").format(
                    sql.Identifier(database.name), sql.Identifier(name), sql.Literal(value)
                )
            )
    assert database.query("show datestyle", role="alerter") == [("SQL, DMY",)]
    result = run_pipeline(database, write_fixture(tmp_path / "csv"), ALERT_MIN_CHANGE_USD="0")
    assert_succeeded(result)
    with database.connect("admin", autocommit=True) as conn:  # this test's own sessions read ISO dates
        conn.execute(sql.SQL("alter database {} reset all").format(sql.Identifier(database.name)))
    assert fact_rows(database) == EXPECTED_FACT
    assert "1 alert sent, 0 failed" in result.stdout  # its first run alerts its latest day


def test_a_query_of_the_pipeline_s_own_the_database_refuses_ends_the_run_in_words(make_database, tmp_path):
    """The plan's and the record's queries raised a psycopg traceback."""
    database = make_database()
    csv_dir = write_fixture(tmp_path / "csv")
    assert_succeeded(run_pipeline(database, csv_dir, RUN_ALERTS="false"))
    with database.connect("admin", autocommit=True) as conn:
        conn.execute("revoke select on raw.build_state from transformer")
    result = run_pipeline(database, csv_dir, RUN_ALERTS="false")
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == (
        "pipeline: the database stopped the run: permission denied for table build_state; the warehouse "
        "keeps its last committed state."
    )


def test_fct_invoices_keeps_ids_exact_and_nulls_the_sentinel(fixture_pipeline):
    database, _, _ = fixture_pipeline
    row = database.query(
        """
        select invoice_id, parent_invoice_id, transaction_id, amount_usd, payment_amount_usd,
               balance_contribution_usd
        from marts.fct_invoices where invoice_id = 9007199254740993
        """
    )
    assert row == [(9007199254740993, 101, 555, D(100), D(100), D(0))]
    sentinel_rows = database.query(
        "select parent_invoice_id, transaction_id from marts.fct_invoices where invoice_id = 101"
    )
    assert sentinel_rows == [(None, None)]
    assert database.query("select count(*) from marts.fct_invoices")[0][0] == len(INVOICE_ROWS)


def lookup_plan(database, query: str) -> str:
    """The query's plan with hash joins, merge joins and sequential scans off: only a lookup by key can
    serve its join, if the views let a join condition reach the key."""
    with database.connect("transformer") as conn:
        conn.execute("set enable_hashjoin to off")
        conn.execute("set enable_mergejoin to off")
        conn.execute("set enable_seqscan to off")
        return "\n".join(row[0] for row in conn.execute(f"explain {query}"))


def test_a_join_looks_a_version_up_by_key_through_the_staging_view(fixture_pipeline):
    """The predecessor lookup of int_invoice_versions_enriched: at 12.7M invoices it must probe the
    versions' primary key (seen_on, invoice_id) with a changed version's previous_seen_on and invoice_id,
    not scan every version. Postgres plans a view with a WITH clause apart from its reader (a subquery
    scan that no join condition reaches), so the staging view must stay one plain select. Hash and merge
    joins are off here so that only a lookup by key can serve the join; the changed versions are a
    VALUES list, so that the view can only be the probed side."""
    plan = lookup_plan(
        fixture_pipeline[0],
        """
        select later.invoice_id, earlier.status
        from (values (date '2024-01-01', 1::bigint), (date '2024-01-02', 2::bigint))
            as later (previous_seen_on, invoice_id)
        inner join staging.stg_payments__invoice_versions as earlier
            on later.previous_seen_on = earlier.seen_on and later.invoice_id = earlier.invoice_id
        """,
    )
    assert "Subquery Scan" not in plan, plan
    probe = r"Index Cond: \(\(seen_on = \S+\.column1\) AND \(invoice_id = \S+\.column2\)\)"
    assert re.search(probe, plan), plan


def test_a_join_looks_a_current_invoice_up_by_key_through_the_staging_view(fixture_pipeline):
    """fct_invoices' incremental join: a day's versions look their current rows up by the current state's
    primary key. With a WITH clause in stg_payments__invoices the join scanned all 12.7M current rows for
    a day's 30,000 versions (5.8 s). Hash and merge joins are off so that only a lookup can serve it."""
    plan = lookup_plan(
        fixture_pipeline[0],
        """
        select versions.invoice_id, current_versions.first_seen_on
        from intermediate.int_invoice_versions_enriched as versions
        inner join staging.stg_payments__invoices as current_versions
            on
                versions.invoice_id = current_versions.invoice_id
                and versions.version = current_versions.current_version
        where versions.seen_on >= '2024-01-01'
        """,
    )
    assert "Subquery Scan" not in plan, plan
    assert re.search(
        r"Index Scan using invoices_pkey on invoices\s.*\n\s+Index Cond: \(invoice_id = ", plan
    ), plan


def test_dim_organizations_covers_both_files(fixture_pipeline):
    database, _, _ = fixture_pipeline
    rows = database.query(
        """
        select organization_id, is_missing_from_organizations_file, invoice_count, balance_usd,
               first_invoice_date::text, last_invoice_date::text, legal_entity_country_code,
               count_total_contracts_active, (invoice_count_by_status ->> 'paid')::int
        from marts.dim_organizations order by organization_id
        """
    )
    assert [(*r[:3], rounded(r[3]), *r[4:]) for r in rows] == [
        (1, False, 5, D(275), "2023-01-01", "2023-01-05", -5000000000000000001, 3, 2),
        (2, False, 6, D(-30), "2023-01-02", "2023-01-06", 12345, 1, None),
        (9223372036854775807, True, 1, D(10), "2023-01-06", "2023-01-06", None, None, None),
    ]


def test_pipeline_alerts_on_the_latest_day(fixture_pipeline):
    # latest day 2023-01-06: org 2 moved exactly +50% (-60 -> -30); the orphan moved from zero (skipped)
    _, result, _ = fixture_pipeline
    alerts = [line for line in result.stdout.splitlines() if line.startswith("[balance alert]")]
    assert alerts == [
        "[balance alert] 2023-01-06 organization 2: -$60.00 -> -$30.00 (+50.00%), warning; "
        "1 active contract, first payment none, last payment none; "
        "why: 1 new invoice +$30.00; top invoices: 206 open +$30.00"
    ]
    assert "1 skipped-from-zero" in result.stdout


def test_rerunning_the_pipeline_is_safe(fixture_pipeline, tmp_path):
    database, _, _ = fixture_pipeline
    assert_succeeded(run_pipeline(database, write_fixture(tmp_path / "again")))
    assert fact_rows(database) == EXPECTED_FACT


def project_with_zero_rule(destination: Path, status: str) -> Path:
    """A copy of the project whose rules seed sets `status` to 0,0 (it no longer counts)."""
    project = copy_project(destination)
    seed = project / "dbt" / "seeds" / "invoice_enrichment.csv"
    lines = seed.read_text().splitlines()
    edited = [
        ",".join([*line.split(",")[:-2], "0", "0"]) if line.startswith(f"{status},") else line
        for line in lines
    ]
    assert edited != lines, f"no rule for {status} in the seed"
    seed.write_text("\n".join(edited) + "\n")
    return project


def test_undelivered_alerts_let_the_pipeline_finish_but_a_broken_alert_setup_stops_it(
    fixture_pipeline, tmp_path
):
    database, _, _ = fixture_pipeline
    csv_dir = write_fixture(tmp_path / "csv")
    with SlackStub() as slack:
        slack.always(server_error(500))
        undelivered = run_pipeline(
            database, csv_dir, SLACK_WEBHOOK_URL=slack.url, ALERT_HTTP_RETRIES="0", ALERT_MIN_CHANGE_USD="0"
        )
    # exit 1 from the alert run: the alerts are kept for the next run, the warehouse is fine, but the
    # run does not end green: a run from cron must say that alerts wait
    assert undelivered.returncode == 4, undelivered.stderr
    assert len(slack.requests) == 1
    still_undelivered = "pipeline: some alerts are still undelivered (the alert run said which, and why"
    assert still_undelivered in undelivered.stderr
    assert "pipeline finished" in undelivered.stdout
    assert database.query("select count(*) from ops.alert_history where status = 'failed'") != [(0,)]

    # a configuration error of the alert run: the pipeline stops with it (2), before the load
    broken = run_pipeline(database, csv_dir, SLACK_WEBHOOK_URL="https://[hooks.example/x")
    assert broken.returncode == 2
    assert (
        "the alert run's settings: SLACK_WEBHOOK_URL is set but is not a valid webhook URL" in broken.stderr
    )
    assert "loading the exports" not in broken.stdout


def test_a_log_on_a_full_disk_neither_fails_the_load_nor_holds_back_the_alerts(make_database, tmp_path):
    """The run's output on a full disk: the loader died printing its line after its export had committed
    (exit 1, which the pipeline took for a refused export), and the pipeline died printing a heading after
    its build was recorded, so its alerts waited for the next run."""
    database = make_database()
    csv_dir = write_fixture(tmp_path / "csv")
    env = pipeline_env(database, csv_dir, ALERT_MIN_CHANGE_USD="0")
    with SlackStub() as slack, open("/dev/full", "w") as full:
        env["SLACK_WEBHOOK_URL"] = slack.url
        ran = subprocess.run(
            ["bash", "init.sh"], cwd=PROJECT_ROOT, env=env, stdout=full, stderr=subprocess.PIPE, text=True
        )
    assert ran.returncode == 0, ran.stderr
    assert slack.delivered
    assert database.query("select count(*) from raw.load_log") == [(1,)]
    assert database.query("select count(*) from ops.alert_history where status <> 'sent'") == [(0,)]
    # said once by each of the pipeline and its loader (the alert run says it its own way)
    lost = "warning: this run's output could not be written ([Errno 28] No space left on device): it goes on"
    assert ran.stderr.count(lost) == 2, ran.stderr
    assert "Traceback" not in ran.stderr


def test_a_failed_build_with_its_log_on_a_full_disk_still_says_the_build_failed(make_database, tmp_path):
    """Its failed tests could not be printed: the run ended in a traceback about the disk, exit 1, and
    nothing said that the build had failed."""
    database = make_database()
    csv_dir = write_fixture(tmp_path / "csv")
    assert run_pipeline(database, csv_dir, RUN_ALERTS="false").returncode == 0
    # a value a staging test refuses, as a hand edit of the raw tables would leave
    database.query("update raw.invoice_versions set payment_currency = 'US' returning 1")
    env = pipeline_env(database, csv_dir, RUN_ALERTS="false", FULL_REFRESH="true")
    with open("/dev/full", "w") as full:
        ran = subprocess.run(
            ["bash", "init.sh"], cwd=PROJECT_ROOT, env=env, stdout=full, stderr=subprocess.PIPE, text=True
        )
    assert ran.returncode == 1, ran.stderr
    assert "pipeline: dbt build failed; the next run rebuilds from scratch" in ran.stderr
    assert "Traceback" not in ran.stderr


@pytest.mark.parametrize(
    ("alerts", "code"), [(None, 0), ("DELIVERED", 0), ("UNDELIVERED", 4), ("GIVEN_UP", 5)]
)
def test_a_finished_run_exits_with_how_its_alert_run_left_the_alerts(monkeypatch, alerts, code):
    """The alert run's outcome is the exit code of a run that built the warehouse (the steps are the
    integration tests' business: here the run is replaced by its outcome)."""
    from data_platform import pipeline

    monkeypatch.setenv("SERVE_DOCS", "false")
    monkeypatch.setattr(pipeline.signal, "signal", lambda signum, handler: None)  # keep pytest's handlers
    monkeypatch.setattr(
        pipeline, "run", lambda settings: alerts and pipeline.AlertRunEnd(pipeline.AlertRun[alerts])
    )
    assert pipeline.main([]) == code


def test_editing_the_rules_seed_changes_balances(make_database, tmp_path):
    project = project_with_zero_rule(tmp_path / "project", "open")
    database = make_database()
    assert_succeeded(run_pipeline(database, write_fixture(tmp_path / "csv"), project_root=project))
    balances = dict(database.query("select organization_id, balance_usd from marts.dim_organizations"))
    # open invoices no longer count: org 1 loses 100, org 2 loses 30
    assert rounded(balances[1]) == D(175)
    assert rounded(balances[2]) == D(-60)
    assert rounded(balances[9223372036854775807]) == D(10)


def test_every_model_and_column_in_the_catalog_is_documented(fixture_pipeline):
    _, _, target = fixture_pipeline
    catalog = json.loads((target / "catalog.json").read_text())
    manifest = json.loads((target / "manifest.json").read_text())
    documented = {**manifest["nodes"], **manifest["sources"]}
    built = {**catalog["nodes"], **catalog["sources"]}
    assert {key.split(".")[-1] for key in built} >= {"fct_organization_daily_financials", "invoice_versions"}
    missing = []
    for key, entry in built.items():
        node = documented[key]
        if node["resource_type"] not in ("model", "source", "seed"):
            continue
        if not node["description"].strip():
            missing.append(key)
        described = {name.lower(): column["description"] for name, column in node["columns"].items()}
        missing += [
            f"{key}.{name}" for name in entry["columns"] if not described.get(name.lower(), "").strip()
        ]
    assert missing == []


def test_every_macro_is_documented():
    """dbt's docs site lists the project's macros with their descriptions from macros/_macros.yml: those of
    macros/, the materializations and the generic tests (dbt names them materialization_<name>_<adapter>
    and test_<name>); an engine's version (postgres__...) is documented by its dispatching macro."""
    dbt_dir = PROJECT_ROOT / "dbt"
    texts = [path.read_text() for folder in ("macros", "tests") for path in (dbt_dir / folder).rglob("*.sql")]
    defined = {
        name for text in texts for name in re.findall(r"{%-?\s*macro\s+(\w+)", text) if "__" not in name
    }
    defined |= {f"test_{name}" for text in texts for name in re.findall(r"{%-?\s*test\s+(\w+)", text)}
    defined |= {
        f"materialization_{name}_{adapter}"
        for text in texts
        for name, adapter in re.findall(r"{%-?\s*materialization\s+(\w+),\s*adapter\s*=\s*'(\w+)'", text)
    }
    macros = dbt_dir / "macros"
    documented = {entry["name"] for entry in yaml.safe_load((macros / "_macros.yml").read_text())["macros"]}
    assert defined - documented == set()
    assert documented - defined == set()


def test_every_singular_data_test_is_documented(fixture_pipeline):
    """The docs site showed "This test is not currently documented" for each (dbt/tests/_tests.yml)."""
    _, _, target = fixture_pipeline
    nodes = json.loads((target / "manifest.json").read_text())["nodes"]
    singular = {
        key: node["description"]
        for key, node in nodes.items()
        if node["resource_type"] == "test" and not node.get("test_metadata")
    }
    assert len(singular) == len(list((PROJECT_ROOT / "dbt" / "tests").glob("*.sql")))
    assert [key for key, description in singular.items() if not description.strip()] == []


def test_every_generic_test_on_an_incremental_model_checks_only_the_ledger_window(fixture_pipeline):
    """A test over the whole history of an incremental table reads every day on every next day: at 12.7M
    invoices that is most of a day's build. Generic tests on incremental models say `where:` with the
    window (their full-history version runs on a full refresh, when the window is unset)."""
    _, _, target = fixture_pipeline
    manifest = json.loads((target / "manifest.json").read_text())
    nodes = manifest["nodes"]
    incremental = {key for key, node in nodes.items() if node["config"].get("materialized") == "incremental"}
    names = {key.split(".")[-1] for key in incremental}
    assert names >= {"fct_organization_daily_financials", "fct_invoices"}
    unwindowed = [
        key.split(".")[2]
        for key, node in nodes.items()
        if node["resource_type"] == "test"
        and node.get("test_metadata")  # generic: the singular ones filter by the window themselves
        and node.get("attached_node") in incremental
        and "__ledger_window_start__" not in (node["config"].get("where") or "")
    ]
    assert unwindowed == []


def test_the_daily_amounts_are_documented_as_net_changes_of_the_day_s_entries(fixture_pipeline):
    """A day's invoiced and paid amounts are bookings minus reversals, not sums over invoices: an invoice
    that moved away or was reopened makes them negative (tests/test_ledger.py shows one)."""
    _, _, target = fixture_pipeline
    nodes = json.loads((target / "manifest.json").read_text())["nodes"]
    for model in ("fct_organization_daily_financials", "int_organization_daily_status_totals"):
        columns = nodes[f"model.data_platform.{model}"]["columns"]
        for column in ("invoiced_amount_usd", "paid_amount_usd"):
            description = columns[column]["description"]
            assert "net of the row's ledger entries" in description, (model, column, description)
            assert "summed over the row's invoices" not in description, (model, column)


def test_no_data_test_checks_what_its_model_makes_true_by_itself(fixture_pipeline):
    """A test that cannot fail reads as coverage: a not_null on a coalesce, unique on a key no join can
    repeat, accepted_values on a CASE's own literals, a sum compared with the window sum that made it.
    The checks that can fail sit where the fault would appear (tests/test_ledger.py makes each fail)."""
    _, _, target = fixture_pipeline
    nodes = json.loads((target / "manifest.json").read_text())["nodes"]
    tests = {
        (node["test_metadata"]["name"], node["attached_node"].split(".")[-1], node.get("column_name"))
        for node in nodes.values()
        if node["resource_type"] == "test" and node.get("test_metadata")
    }
    restating = {
        ("usd_amounts_agree", "fct_organization_daily_financials", None),
        ("not_null", "fct_organization_daily_financials", "previous_balance_usd"),
        ("accepted_values", "fct_organization_daily_drivers", "driver_kind"),
        # on not-null raw columns, or (balance_date) filtered by a window on itself
        ("not_null", "fct_organization_daily_financials", "organization_id"),
        ("not_null", "fct_organization_daily_financials", "balance_date"),
        ("not_null", "fct_invoices", "organization_id"),
        # dim_organizations holds every organization the invoices name
        ("relationships", "fct_invoices", "organization_id"),
    }
    # dim_organizations: its key and counts come from primary keys, unique indexes and coalesces
    cannot_fail = [test for test in tests if test in restating or test[1] == "dim_organizations"]
    assert cannot_fail == []
    assert ("not_null", "int_organization_status_totals", "balance_usd") in tests
    singular = {node["name"] for node in nodes.values() if node["resource_type"] == "test"}
    assert "assert_drivers_sum_to_daily_balance_change" in singular


def dbt_test(fixture_pipeline, select: str) -> subprocess.CompletedProcess:
    database, _, target = fixture_pipeline
    env = pipeline_env(database, PROJECT_ROOT / "csv_data", DBT_TARGET_PATH=str(target))
    return subprocess.run(
        ["dbt", "test", "--select", select, "--project-dir", "dbt", "--profiles-dir", ".dbt"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_dbt_unit_tests_pass(fixture_pipeline):
    # the pipeline's builds leave them out (they test the SQL, not the data): they run here
    declared = sum(
        len(yaml.safe_load(path.read_text()).get("unit_tests", []))
        for path in (PROJECT_ROOT / "dbt" / "models").rglob("*.yml")
    )
    result = dbt_test(fixture_pipeline, "test_type:unit")
    assert result.returncode == 0, result.stdout
    assert declared >= 7
    # the project's on-run-start hooks are results too
    results = json.loads((fixture_pipeline[2] / "run_results.json").read_text())["results"]
    unit = [r["status"] for r in results if r["unique_id"].startswith("unit_test.")]
    assert unit == ["pass"] * declared, result.stdout[-2000:]
    assert re.search(r"Done\. PASS=\d+ WARN=0 ERROR=0 SKIP=0", result.stdout), result.stdout[-2000:]
    assert "unit_test" not in fixture_pipeline[1].stdout


def test_the_positive_test_fails_on_a_zero_or_nan_amount(fixture_pipeline):
    database, _, _ = fixture_pipeline
    # and on a NaN, which is greater than every number in Postgres (the loader refuses one; raw written
    # by other means may hold it)
    for invoice_id, amount in ((105, "0"), (104, "NaN")):
        database.query(
            "update raw.invoice_versions set amount = %s where invoice_id = %s returning 1",
            (amount, invoice_id),
            role="transformer",
        )
    try:
        result = dbt_test(fixture_pipeline, "test_name:positive,stg_payments__invoice_versions")
    finally:
        for invoice_id, amount in ((105, 165), (104, 30)):
            database.query(
                "update raw.invoice_versions set amount = %s where invoice_id = %s returning 1",
                (amount, invoice_id),
                role="transformer",
            )
    assert result.returncode == 1, result.stdout
    assert re.search(r"FAIL 2 positive_stg_payments__invoice_versions_amount", result.stdout), result.stdout
    assert "PASS positive_stg_payments__invoice_versions_fx_rate" in result.stdout


def test_the_accepted_values_test_fails_on_a_fractional_rule(fixture_pipeline):
    database, _, _ = fixture_pipeline
    set_open = (
        "update seeds.invoice_enrichment set invoiced_coefficient = %s where status = 'open' returning 1"
    )
    database.query(set_open, (D("0.5"),), role="transformer")
    try:
        result = dbt_test(fixture_pipeline, "test_name:accepted_values,invoice_enrichment")
    finally:
        database.query(set_open, (1,), role="transformer")
    assert result.returncode == 1, result.stdout
    assert "FAIL 1 accepted_values_invoice_enrichment_invoiced_coefficient" in result.stdout, result.stdout


def test_unknown_status_fails_the_build_and_names_it(fixture_pipeline, tmp_path):
    database, _, _ = fixture_pipeline
    before = fact_rows(database)
    recorded = "select rules_fingerprint, project_fingerprint, exports_fingerprint, last_export_date::text"
    recorded += " from raw.build_state"
    built = database.query(recorded)
    unknown = f"999,{SENTINEL},{SENTINEL},1,-7,disputed,USD,,,5.00,,1.00000000,,2023-01-07T10:00:00.000Z"
    result = run_pipeline(database, write_fixture(tmp_path, [*INVOICE_ROWS, unknown]))
    assert result.returncode == 1
    output = result.stdout + result.stderr
    # the failing test, and the offending value read back from its stored failures
    assert (
        "failed test relationships_stg_payments__invoice_versions_status__status__ref_invoice_enrichment_"
        in output
    )
    assert "from_field='disputed'" in output
    assert "add its row to dbt/seeds/invoice_enrichment.csv" in output  # no run ends the failure alone
    assert "pipeline finished" not in result.stdout
    # the marts still hold the last good build, and the record still says so: the next run builds the
    # failed build's days again
    assert fact_rows(database) == before
    assert database.query(recorded) == built
    assert built[0][3] == "2023-01-06"


def test_a_second_run_waits_for_the_first_then_says_why_it_stops(make_database, tmp_path):
    database = make_database()
    with database.connect("transformer", autocommit=True) as holder:
        holder.execute("select pg_advisory_lock(hashtext('data_platform.pipeline'))")
        result = run_pipeline(database, write_fixture(tmp_path), PIPELINE_LOCK_TIMEOUT="1")
    assert result.returncode == 3  # busy, as with a loader run by hand: not a setting to fix
    assert "another pipeline run is in progress: waiting up to 1s" in result.stdout
    assert "another pipeline run holds the lock" in result.stderr
    assert "loading the exports" not in result.stdout
    with pytest.raises(psycopg.errors.UndefinedTable):
        database.query("select 1 from raw.invoices")


def test_a_loader_run_by_hand_is_waited_for_then_named(make_database, tmp_path):
    database = make_database()
    with database.connect("transformer", autocommit=True) as by_hand:
        hold_the_loaders_lock(by_hand)
        result = run_pipeline(database, write_fixture(tmp_path), PIPELINE_LOCK_TIMEOUT="1")
    assert result.returncode == 3
    assert "another loader run is in progress: waiting up to 1s" in result.stderr
    assert "the load could not start: another loader run is in progress on this database" in result.stderr
    assert "fix or remove" not in result.stderr  # the export is fine
    assert "==> dbt build" not in result.stdout


def test_an_alert_run_by_hand_is_waited_for_as_another_pipeline_run_is(make_database, tmp_path):
    """A cron alert run still sending when the pipeline reached its alerts made the pipeline fail after
    ALERT_LOCK_TIMEOUT (30 s), and the day's alerts waited for the next run."""
    from data_platform.alerts.store import LOCK_KEY

    database = make_database()
    env = pipeline_env(
        database,
        write_fixture(tmp_path / "csv"),
        ALERT_LOCK_TIMEOUT="1",
        PIPELINE_LOCK_TIMEOUT="60",
        ALERT_MIN_CHANGE_USD="0",
    )
    with database.connect("transformer", autocommit=True) as by_hand:
        by_hand.execute("select pg_advisory_lock(%s)", (LOCK_KEY,))
        run = start_pipeline(env, stderr=subprocess.PIPE)
        output = lines_until(run, "==> alerts")
        time.sleep(3)  # longer than ALERT_LOCK_TIMEOUT
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, "".join(output) + stdout + stderr
    assert "[balance alert] 2023-01-06 organization 2: " in stdout


def test_a_pipeline_lock_timeout_beyond_a_day_gives_the_alert_run_a_wait_it_accepts(monkeypatch):
    # the alert run refuses ALERT_LOCK_TIMEOUT above a day, while PIPELINE_LOCK_TIMEOUT takes any wait:
    # passed on as it is, every run's alert step would fail on its setting
    from data_platform import pipeline
    from data_platform.alerts import config as alert_config
    from data_platform.alerts import exit_codes as alert_exit_codes

    passed: dict[str, str] = {}

    def alert_run(argv, keep, mark, env):
        passed.update(env)
        return alert_exit_codes.OK, []

    monkeypatch.setattr(pipeline, "run_child_quoting_stderr", alert_run)
    settings = pipeline.Settings(lock_timeout_seconds=alert_config.LOCK_TIMEOUT_MAX * 2)
    assert pipeline.run_alerts(settings) == pipeline.AlertRunEnd(pipeline.AlertRun.DELIVERED)
    assert alert_config.load([], passed).lock_timeout == alert_config.LOCK_TIMEOUT_MAX


def test_an_alert_run_by_hand_still_running_after_the_wait_ends_the_pipeline_busy(make_database, tmp_path):
    # busy (3), as another pipeline run or a loader run by hand is: not 2, a setting to fix
    from data_platform.alerts.store import LOCK_KEY

    database = make_database()
    with database.connect("transformer", autocommit=True) as by_hand:
        by_hand.execute("select pg_advisory_lock(%s)", (LOCK_KEY,))
        result = run_pipeline(database, write_fixture(tmp_path), PIPELINE_LOCK_TIMEOUT="1")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "another alert run still holds the lock after 1 s; nothing was sent" in result.stderr
    assert (
        "pipeline: the alert run found another alert run still running; the build is recorded"
        in result.stderr
    )
    assert database.query("select last_export_date::text from raw.build_state") == [("2023-01-06",)]


def test_failed_docs_do_not_hold_back_the_alerts(make_database, tmp_path):
    """The docs are generated after the build is recorded: their failure (a full disk, say) skipped the
    alert run, and the day's alerts waited for the next run."""
    database, csv_dir = make_database(), write_fixture(tmp_path / "csv")
    catalog = Path(pipeline_env(database, csv_dir)["DBT_TARGET_PATH"]) / "catalog.json"
    catalog.mkdir(parents=True)  # dbt docs generate cannot write it
    try:
        result = run_pipeline(database, csv_dir, ALERT_MIN_CHANGE_USD="0")
    finally:
        catalog.rmdir()
    assert result.returncode == 2, result.stdout + result.stderr
    assert "pipeline: dbt docs generate failed" in result.stderr
    assert "[balance alert] 2023-01-06 organization 2: " in result.stdout
    assert "pipeline finished" not in result.stdout


def write_bad_export(csv_dir: Path) -> str:
    """A dated export after the fixture whose second invoice's AMOUNT has 3 places; the loader's error."""
    rows = [
        f"106,{SENTINEL},{SENTINEL},1,-7,open,USD,,,10.00,,1.00000000,,2023-01-07T08:00:00.000Z",
        f"107,{SENTINEL},{SENTINEL},1,-7,open,USD,,,175.505,,1.00000000,,2023-01-07T09:00:00.000Z",
    ]
    invoices = csv_dir / "exports" / "2023-01-07" / "invoices.csv"
    invoices.parent.mkdir(parents=True)
    invoices.write_text("\n".join([HEADER, *rows]) + "\n")
    return (
        f'{invoices}, line 3, column AMOUNT, value "175.505": not in the export\'s format: expected a '
        "decimal over 0 with exactly 2 places such as 12.50, at most 16 digits before the point"
    )


def test_bad_input_stops_the_pipeline_before_dbt_and_its_error_quotes_the_loader(make_database, tmp_path):
    csv_dir = write_fixture(tmp_path)
    loader_error = write_bad_export(csv_dir)
    database = make_database()
    result = run_pipeline(database, csv_dir)
    assert result.returncode == 1  # the loader's exit code for an export it refused, passed on
    assert "==> dbt build" not in result.stdout
    # the pipeline's own error (what a Dagster step's failure alert quotes) says what is wrong, not only
    # the loader's output before it
    error = result.stderr[result.stderr.rindex("pipeline: ") :]
    assert error.startswith(f"pipeline: the load failed: {loader_error}\n"), result.stderr
    # exports before a failing one commit on their own: the warehouse need not be unchanged
    assert "nothing was built" in error and "unchanged" not in error
    loaded = database.query("select export_date::text from raw.load_log")
    assert loaded == [("2023-01-06",)]


def test_demo_data_builds_every_model(make_database):
    database = make_database()
    result = run_pipeline(database, PROJECT_ROOT / "csv_data")
    assert_succeeded(result)
    counts = dict(
        database.query(
            """
            select 'fct_invoices', count(*) from marts.fct_invoices
            union all select 'raw_invoices', count(*) from raw.invoices
            union all select 'dim_organizations', count(*) from marts.dim_organizations
            union all select 'fct', count(*) from marts.fct_organization_daily_financials
            """
        )
    )
    assert counts["fct_invoices"] == counts["raw_invoices"] > 1000
    assert counts["dim_organizations"] > 100 and counts["fct"] > 1000
    # every fact row reconciles: balance = previous + change
    mismatches = database.query(
        """
        select count(*) from marts.fct_organization_daily_financials
        where round(balance_usd - previous_balance_usd - balance_change_usd, 6) <> 0
        """
    )
    assert mismatches == [(0,)]
    # the build: every error-severity test passes; the one warning is the orphan-organizations check
    assert re.search(r"Done\. PASS=\d+ WARN=1 ERROR=0 SKIP=0", result.stdout), result.stdout[-3000:]
    # both exports were loaded, the next day's only as a difference
    assert "export 2024-06-28 (" in result.stdout
    assert "73 invoices (23 new, 50 changed, 0 unchanged)" in result.stdout
    # the demo's latest day, 2024-06-29, is engineered (csv_data/README.md): 4 organizations move by >= 50%,
    # each only because older invoices were paid or cancelled, and 1 moves from a zero balance by less than
    # the USD floor
    alerts = [line.split(":")[0] for line in result.stdout.splitlines() if line.startswith("[balance alert]")]
    assert alerts == [
        "[balance alert] 2024-06-29 organization -9212363505880321737",
        "[balance alert] 2024-06-29 organization 1119745032997059256",
        "[balance alert] 2024-06-29 organization 3559126079453424785",
        "[balance alert] 2024-06-29 organization 7712602226129735873",
    ]
    assert "4 alerts sent, 0 failed, 0 skipped-from-zero, 1 below --min-change-usd" in result.stdout
    paid_only = database.query(
        """
        select count(*) from marts.fct_organization_daily_financials
        where balance_date = '2024-06-29' and abs(balance_change_ratio) >= 0.5
          and invoice_count = 0 and changed_invoice_count > 0 and balance_change_usd = status_change_usd
        """
    )
    assert paid_only == [(4,)]


def test_a_load_that_cannot_reach_the_database_says_so_not_to_fix_an_export(tmp_path, monkeypatch):
    from data_platform import pipeline

    csv_dir = write_fixture(tmp_path)
    monkeypatch.setenv("PGHOST", "127.0.0.1")
    monkeypatch.setenv("PGPORT", "1")  # nothing listens there: refused at once
    settings = pipeline.Settings(csv_dir=csv_dir, lock_timeout_seconds=0)
    with pytest.raises(pipeline.PipelineError) as failed:
        pipeline.load_exports(settings)
    assert failed.value.exit_code == 2
    message = str(failed.value)
    assert message.startswith("the load could not start: cannot connect to "), message
    assert message.endswith(
        "Check PGHOST, PGPORT, PGUSER, PGPASSWORD and PGDATABASE.\nnothing was loaded or built"
    )
    assert "fix or remove" not in message


def test_a_load_the_database_failed_says_to_run_again_not_to_remove_the_export(
    make_database, tmp_path, monkeypatch
):
    """The database failing under the load (a lost connection, a full disk; here the transformer's
    transactions read-only) was taken for a bad export: "fix or remove it". Removed, the sound export was
    lost: the next run loaded the later ones and refused it for ever as older than the latest loaded."""
    from data_platform import pipeline

    csv_dir = write_fixture(tmp_path / "csv")
    database = make_database()
    for name, value in database.env("transformer").items():
        monkeypatch.setenv(name, value)
    with (
        role_setting(database, "transformer", "default_transaction_read_only", "on"),
        pytest.raises(pipeline.PipelineError) as failed,
    ):
        pipeline.load_exports(pipeline.Settings(csv_dir=csv_dir, lock_timeout_seconds=0))
    assert failed.value.exit_code == 6
    assert str(failed.value) == (
        f"the load failed: the database failed while loading export (dated by its content) ({csv_dir}): "
        "cannot execute CREATE TABLE in a read-only transaction\n"
        "nothing of that export or the later ones was loaded (it rolled back); the export is not at fault: "
        "do not remove it; run again once the database is back or fixed\n"
        "nothing was built: exports the loader reported loaded stay loaded"
    )
    # run again: it loads
    pipeline.load_exports(pipeline.Settings(csv_dir=csv_dir, lock_timeout_seconds=0))


@pytest.mark.parametrize("step", ["load_exports", "run_alerts"])
def test_a_step_killed_by_a_signal_is_said_so_and_exits_as_a_shell_would(step, tmp_path, monkeypatch):
    """The OOM killer's SIGKILL: the load's error said to fix or remove a sound export, and the run exited
    with Popen's -9, which the shell turns into 247."""
    from data_platform import pipeline

    monkeypatch.setattr(pipeline.sys, "executable", fake_python(tmp_path, KILLED_AT_START))
    settings = pipeline.Settings(csv_dir=write_fixture(tmp_path / "csv"), lock_timeout_seconds=0)
    with pytest.raises(pipeline.PipelineError) as failed:
        getattr(pipeline, step)(settings)
    assert failed.value.exit_code == 128 + signal.SIGKILL
    message = str(failed.value)
    # SIGKILL is what the OOM killer sends: the message points at memory first
    assert "was killed by SIGKILL (out of memory?)" in message, message
    assert "fix or remove" not in message


def test_an_alert_run_stopped_by_a_signal_sent_to_it_says_so(tmp_path, monkeypatch):
    """`kill <the alert run>`: it exits 143 having kept what it committed; the run said it "failed"."""
    from data_platform import pipeline

    monkeypatch.setattr(pipeline.sys, "executable", fake_python(tmp_path, "exit 143"))
    with pytest.raises(pipeline.PipelineError) as failed:
        pipeline.run_alerts(pipeline.Settings(csv_dir=tmp_path))
    assert failed.value.exit_code == 143
    assert str(failed.value).startswith("the alert run was stopped by SIGTERM; the build is recorded")


@pytest.mark.parametrize(("exit_code", "outcome"), [(0, "DELIVERED"), (1, "UNDELIVERED"), (3, "GIVEN_UP")])
def test_the_alert_runs_exit_code_is_how_it_left_the_alerts(exit_code, outcome, tmp_path, monkeypatch):
    """alert_script.py's exit code read as its outcome: a give-up (3) read as undelivered would end the run
    with 4, whose retry finds nothing left to send, and nobody is told to check the channel."""
    from data_platform import pipeline

    monkeypatch.setattr(pipeline.sys, "executable", fake_python(tmp_path, f"exit {exit_code}"))
    assert pipeline.run_alerts(pipeline.Settings(csv_dir=tmp_path)).outcome is pipeline.AlertRun[outcome]


def test_a_build_whose_dbt_is_killed_outright_leaves_no_statement_running(make_database, tmp_path):
    """A dbt killed outright (the OOM killer; Dagster's Terminate ends a step's process, which kills its dbt)
    cannot cancel its statement: the server went on running it, holding its locks, beside the next run."""
    database = make_database()
    csv_dir = write_fixture(tmp_path / "csv")
    assert_succeeded(run_pipeline(database, csv_dir))
    log = tmp_path / "run.log"
    with database.connect("admin") as holder:
        # the full rebuild waits for this lock: dbt is then killed in the middle of a statement
        holder.execute("lock table marts.dim_organizations in access exclusive mode")
        with log.open("w") as out:
            run = subprocess.Popen(
                ["bash", str(PROJECT_ROOT / "init.sh")],
                cwd=PROJECT_ROOT,
                env=pipeline_env(database, csv_dir, FULL_REFRESH="true"),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 120
            while not sessions_blocked_by(database, holder):
                assert run.poll() is None, read_log(log)
                assert time.monotonic() < deadline, "the build never waited for the lock"
                time.sleep(0.2)
            assert set(sessions_blocked_by(database, holder)) == {"dbt"}
            dbt = [
                process
                for process in psutil.Process(run.pid).children(recursive=True)
                if "data_platform.warm_dbt" in process.cmdline()
            ]
            assert len(dbt) == 1, dbt
            dbt[0].kill()
            assert run.wait(timeout=120) != 0
            wait_until(lambda: not sessions_blocked_by(database, holder), "the killed dbt's statement to end")
        finally:
            kill_group(run)


def _as_transformer(database, monkeypatch):
    """`database`, its transformer's connection settings in the environment (as the build step has them)."""
    for name, value in database.env("transformer").items():
        monkeypatch.setenv(name, value)
    return database


def _write_build_results(target: Path, results: list[dict], nodes: dict | None = None) -> None:
    """What dbt leaves in its target folder for build_failures to read: the results and the manifest."""
    (target / "run_results.json").write_text(json.dumps({"results": results}))
    (target / "manifest.json").write_text(json.dumps({"nodes": nodes or {}}))


def test_a_build_that_dies_shows_no_failed_test_of_an_earlier_build(
    make_database, tmp_path, monkeypatch, capsys
):
    """A dbt that dies writes no run results: the previous build's were shown as its failed tests, so the
    fix of a failing test looked as if it had not worked."""
    from data_platform import pipeline

    _as_transformer(make_database(), monkeypatch)
    target = tmp_path / "target"
    target.mkdir()
    monkeypatch.setenv("DBT_TARGET_PATH", str(target))
    earlier = {
        "unique_id": "test.data_platform.an_earlier_failure",
        "status": "fail",
        "message": "Got 1 result",
    }
    (target / "run_results.json").write_text(json.dumps({"results": [earlier]}))
    monkeypatch.setattr(pipeline.sys, "executable", fake_python(tmp_path, KILLED_AT_START))
    settings = pipeline.Settings(csv_dir=tmp_path, lock_timeout_seconds=0)
    with (
        pipeline.PipelineLock(timeout=0) as lock,
        pipeline.WarmDbt() as warm,
        pytest.raises(pipeline.PipelineError) as failed,
    ):
        pipeline.build(pipeline.plan(settings), warm, settings, lock)
    assert str(failed.value).startswith("dbt build was killed by SIGKILL"), failed.value
    assert "an_earlier_failure" not in capsys.readouterr().out


def test_a_failing_rows_long_value_is_shown_shortened(make_database, tmp_path, monkeypatch):
    # a 500,000-character status in an export fails the staged status's test: its row was printed whole
    from data_platform import build_failures

    database = _as_transformer(make_database(), monkeypatch)
    with database.connect("transformer", autocommit=True) as conn:
        conn.execute("create view audit.long_status as select repeat('x', 500000) as from_field, 7 as n")
    results = [{"unique_id": "test.data_platform.t", "status": "fail", "message": "Got 1 result"}]
    results[0]["relation_name"] = '"audit"."long_status"'
    _write_build_results(tmp_path, results)

    *_, row = build_failures.report(tmp_path)

    assert row == "  from_field='" + "x" * 196 + "..., n=7"


def test_a_failed_tests_rows_that_cannot_be_read_do_not_hide_the_next_tests(
    make_database, tmp_path, monkeypatch
):
    # the failed read aborts the session's transaction: every later test's rows would say so instead
    from data_platform import build_failures

    database = _as_transformer(make_database(), monkeypatch)
    with database.connect("transformer", autocommit=True) as conn:
        conn.execute("create view audit.second_test as select 7 as n")
    results = [
        # its audit view dropped since (a build in between, say)
        {"unique_id": "test.data_platform.first_test", "status": "fail", "relation_name": '"audit"."gone"'},
        {
            "unique_id": "test.data_platform.second_test",
            "status": "fail",
            "relation_name": '"audit"."second_test"',
        },
    ]
    _write_build_results(tmp_path, results)

    first, unread, second, heading, row = build_failures.report(tmp_path)

    assert (first, second) == ("failed test first_test: fail", "failed test second_test: fail")
    assert unread.startswith('  (its failing rows could not be read: relation "audit.gone" does not exist')
    assert (heading, row) == (
        '  first failing rows (all of them: select * from "audit"."second_test"):',
        "  n=7",
    )


def test_every_failed_node_is_reported_with_dbt_s_message(make_database, tmp_path, monkeypatch):
    """A data test whose query errors (a column renamed under it, its session ended) fails the build too,
    said to have not run (no failing rows: an audit view of its name is an earlier build's), and a model
    that errors (a grant to a role that does not exist) fails it too: the build's error, and a
    Dagster step's failure alert, must name each, with dbt's message (a model's first lines, where the
    database's reason is). A test whose YAML gives a hint (a status without a rule: no run ends that failure
    alone) has it printed under it. A generic test's id ends in a hash, which its name leaves out."""
    from data_platform import build_failures

    _as_transformer(make_database(), monkeypatch)
    model_error = (
        "Database Error in model dim_organizations (models/marts/dim_organizations.sql)\n"
        '  role "nobody" does not exist\n\n'
        "  compiled code at target/run/dim_organizations.sql\n  more\n  and more"
    )
    status_test = "relationships_stg_payments__invoice_versions_status__status__ref_invoice_enrichment_"
    results = [
        {"unique_id": "model.data_platform.dim_organizations", "status": "error", "message": model_error},
        {"unique_id": "model.data_platform.fct_x", "status": "success", "message": "SELECT 1"},
        {"unique_id": "test.data_platform.a_failing_test", "status": "fail", "message": "Got 1 result"},
        # its query failed: no failing rows to show, even where a relation of its name holds rows (an
        # earlier build's audit view)
        {
            "unique_id": "test.data_platform.an_erroring_test",
            "status": "error",
            "message": "Database Error in test an_erroring_test\n  no column x\n",
            "relation_name": "pg_catalog.pg_am",
        },
        {"unique_id": "test.data_platform.a_passing_test", "status": "pass", "message": None},
        {
            "unique_id": f"test.data_platform.{status_test}.2a41a0dc42",
            "status": "fail",
            "message": "Got 1 result",
        },
    ]
    hint = (
        "a status without a balance rule: add its row to dbt/seeds/invoice_enrichment.csv; the next run "
        "then rebuilds in full (the rules changed)"
    )
    nodes = {
        f"test.data_platform.{status_test}.2a41a0dc42": {"config": {"meta": {"hint": hint}}},
        "test.data_platform.a_failing_test": {"config": {"meta": {}}},
    }
    _write_build_results(tmp_path, results, nodes)
    assert build_failures.report(tmp_path) == [
        "failed model dim_organizations: Database Error in model dim_organizations "
        '(models/marts/dim_organizations.sql) / role "nobody" does not exist / '
        "compiled code at target/run/dim_organizations.sql / more",
        "test an_erroring_test could not run: Database Error in test an_erroring_test / no column x",
        "failed test a_failing_test: Got 1 result",
        f"failed test {status_test}: Got 1 result",
        "  a status without a balance rule: add its row to dbt/seeds/invoice_enrichment.csv; the next run "
        "then rebuilds in full (the rules changed)",
    ]


def test_a_loader_stopped_by_a_signal_sent_to_it_is_not_taken_for_a_bad_export(tmp_path, monkeypatch):
    """`kill <the loader>` by hand: its error said to fix or remove a sound export."""
    from data_platform import pipeline

    stopped = "echo 'interrupted: the export being loaded was rolled back' >&2; exit 143"
    monkeypatch.setattr(pipeline.sys, "executable", fake_python(tmp_path, stopped))
    settings = pipeline.Settings(csv_dir=write_fixture(tmp_path / "csv"), lock_timeout_seconds=0)
    with pytest.raises(pipeline.PipelineError) as failed:
        pipeline.load_exports(settings)
    assert failed.value.exit_code == 143
    assert str(failed.value).startswith("the loader was stopped by SIGTERM: the export it was loading")


def test_warm_dbt_runs_its_command_in_the_environment_sent_after_it_parsed(make_database, tmp_path, capfd):
    """The build's window is known only after the load, while dbt parsed the project during it."""
    from data_platform import pipeline

    env = pipeline_env(make_database(), tmp_path)
    env.pop("LEDGER_WINDOW_START", None)
    with pipeline.WarmDbt(env) as warm:
        code = warm.run(
            "compile",
            "--select",
            "assert_ledger_matches_current_invoices",
            env={**env, "LEDGER_WINDOW_START": "2030-01-02"},
        )
    assert code == 0
    assert "'2030-01-02'::date" in capfd.readouterr().out


def dbt_output_in(directory: Path) -> dict[str, str]:
    return {**os.environ, "DBT_TARGET_PATH": str(directory), "DBT_LOG_PATH": str(directory / "logs")}


def test_warm_dbt_exits_with_the_dbt_command_lines_code(tmp_path):
    from data_platform import pipeline

    with pipeline.WarmDbt(dbt_output_in(tmp_path)) as warm:
        assert warm.run("compile", "--no-such-option", env=dict(os.environ)) == 2


def test_dbt_log_lines_lost_to_a_full_disk_are_said_once_not_a_traceback_each(tmp_path):
    """A console (or log folder) whose disk filled during a run: each of dbt's log lines printed a
    traceback of its own, thousands in a build, burying the run's lines."""
    from data_platform import warm_dbt
    from data_platform.paths import DBT_ARGS, PROJECT_ROOT

    env = dbt_output_in(tmp_path)
    with open("/dev/full", "w") as full:
        ran = subprocess.run(
            warm_dbt.command(list(DBT_ARGS)),
            cwd=PROJECT_ROOT,
            env=env,
            input=json.dumps({"args": ["parse", *DBT_ARGS], "env": env}) + "\n",
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "Logging error" not in ran.stderr
    assert ran.stderr.splitlines() == [
        "warm_dbt: dbt's log lines cannot be written ([Errno 28] No space left on device): they are dropped"
    ]


def test_warm_dbt_left_without_a_command_exits_having_run_nothing(tmp_path):
    """Stdin closed without a command: the process parses, then exits without running dbt."""
    from data_platform import pipeline

    with pipeline.WarmDbt(dbt_output_in(tmp_path)) as warm:
        pass
    assert warm.child.returncode == 0
    assert (tmp_path / "manifest.json").exists() and not (tmp_path / "run_results.json").exists()


def test_warm_dbt_left_by_a_failed_load_or_a_stop_request_stops_parsing(tmp_path):
    """Nothing will be built, so the parse is not waited for (a stop request has seconds, not minutes),
    whenever the stop comes: the process's first milliseconds, in Python's start-up, included."""
    from data_platform import pipeline, steps

    for attempt, delay in enumerate(i * 0.0025 for i in range(20)):
        output = tmp_path / f"attempt-{attempt}"
        with pytest.raises(steps.Stopped), pipeline.WarmDbt(dbt_output_in(output)) as warm:
            time.sleep(delay)
            raise steps.Stopped(signal.SIGTERM)
        assert warm.child.returncode == -signal.SIGTERM, f"after {delay * 1000:g} ms"
        assert not (output / "manifest.json").exists(), f"the parse ended (stop at {delay * 1000:g} ms)"


def test_warm_dbt_stopped_while_parsing_does_not_run_the_command_it_was_sent(tmp_path):
    """dbt's runner returns Ctrl-C during the parse as a failed parse; the command sent meanwhile must
    not run after it (a build started by a stop request would be killed mid-statement)."""
    from data_platform import pipeline

    # The SIGINT races the parse: on a busy machine dbt's log may show the parse's start only after its
    # end. Only an attempt whose parse was cut short tests anything; one in three must be.
    for attempt in range(3):
        output = tmp_path / f"attempt-{attempt}"
        with pipeline.WarmDbt(dbt_output_in(output)) as warm:
            # a command that exits 2 at once if it runs
            request = {"args": ["compile", "--no-such-option", *pipeline.DBT_ARGS], "env": dict(os.environ)}
            warm.child.stdin.write(json.dumps(request) + "\n")
            warm.child.stdin.flush()
            log = output / "logs" / "dbt.log"
            deadline = time.monotonic() + 60
            while not (log.exists() and "Running with dbt" in log.read_text()):  # the parse has begun
                assert time.monotonic() < deadline and warm.child.poll() is None, "the parse did not start"
                time.sleep(0.05)
            warm.child.send_signal(signal.SIGINT)
            assert warm.child.wait(timeout=60) == 130
        if not (output / "manifest.json").exists():  # stopped mid-parse, and the command was not run
            return
    pytest.fail("in each of 3 attempts the parse ended before the SIGINT: nothing was tested")


@pytest.mark.parametrize("command", ["sent to warm_dbt", "pipeline.dbt"], ids=["build", "docs"])
def test_a_dbt_command_stopped_by_ctrl_c_ends_without_dbt_s_traceback(make_database, tmp_path, command):
    """dbt reports a KeyboardInterrupt out of its command as "Encountered an error:" and its stack trace:
    after a stop request (Ctrl-C, docker compose stop), which the pipeline reports in words, that reads
    as a crash. The build's command and the docs' (pipeline.dbt) alike; dbt's log file keeps them."""
    from data_platform import pipeline, warm_dbt

    database = make_database()
    env = {**dbt_output_in(tmp_path), **database.env("transformer")}
    query = ["show", "--inline", "select pg_sleep(60) as slept"]
    if command == "pipeline.dbt":
        argv = [
            sys.executable,
            "-c",
            "import sys; from data_platform import pipeline\n"
            f"try: sys.exit(pipeline.dbt(*{query!r}))\nexcept KeyboardInterrupt: sys.exit(130)",
        ]
    else:
        argv = warm_dbt.command(list(pipeline.DBT_ARGS))
    child = subprocess.Popen(
        argv,
        cwd=PROJECT_ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if command != "pipeline.dbt":
        child.stdin.write(json.dumps({"args": [*query, *pipeline.DBT_ARGS], "env": env}) + "\n")
    child.stdin.close()
    # dbt's query running, not this check: a backend of an earlier check, still exiting, lists its text too
    running = (
        "select count(*) from pg_stat_activity where state = 'active' and pid <> pg_backend_pid()"
        " and query like '%%pg_sleep(60) as slept%%'"
    )
    wait_until(lambda: database.query(running) == [(1,)], "the query", timeout=120)

    child.send_signal(signal.SIGINT)
    output = child.stdout.read()

    assert child.wait(timeout=60) == 130, output
    assert "Exited because of keyboard interrupt" in output
    assert "Encountered an error" not in output and "Traceback" not in output, output
    log = (tmp_path / "logs" / "dbt.log").read_text()
    assert "Encountered an error" in log and "KeyboardInterrupt" in log


def test_warm_dbt_sent_a_command_and_a_stop_at_once_never_runs_the_command(tmp_path):
    """dbt docs generate starts warm_dbt and sends its command at once: a stop request in the child's first
    milliseconds, before it handles SIGINT, was swallowed by Python's start-up (site's .pth files), and the
    command then ran to its end while the stop waited."""
    from data_platform import pipeline

    request = {"args": ["compile", "--no-such-option", *pipeline.DBT_ARGS], "env": dict(os.environ)}
    codes = []
    for attempt, delay in enumerate(i * 0.0015 for i in range(16)):
        with pipeline.WarmDbt(dbt_output_in(tmp_path / f"attempt-{attempt}")) as warm:
            warm.child.stdin.write(json.dumps(request) + "\n")
            warm.child.stdin.close()
            time.sleep(delay)
            warm.child.send_signal(signal.SIGINT)
            codes.append(warm.child.wait(timeout=60))  # 2: the command ran
    assert codes == [130] * len(codes)


def test_a_model_edited_during_the_load_makes_the_next_run_rebuild(make_database, tmp_path):
    """dbt parses the project while the loader runs: the plan must name the files as they were before the
    parse, or an edit during the load would be recorded as built and never rebuilt. Either version may
    have been parsed: the run is not recorded, and the next one rebuilds."""
    project = copy_project(tmp_path / "project")
    model = project / "dbt" / "models" / "marts" / "dim_organizations.sql"
    edited_once = tmp_path / "edited"
    loader = project / "data_platform" / "loader.py"
    # this copy's loader edits the model once, as its command starts (a comment: the SQL stays the same)
    main = "\ndef main(argv: list[str] | None = None) -> int:\n"
    edit_once = f"""
def _edit_the_model_once():
    import pathlib
    marker = pathlib.Path({str(edited_once)!r})
    if not marker.exists():
        marker.touch()
        model = pathlib.Path({str(model)!r})
        model.write_text(model.read_text() + "\\n-- edited during the load\\n")

{main}    _edit_the_model_once()
"""
    assert main in loader.read_text()
    loader.write_text(loader.read_text().replace(main, edit_once, 1))
    database, csv_dir = make_database(), write_fixture(tmp_path / "csv")
    first = run_pipeline(database, csv_dir, project_root=project)
    assert edited_once.exists() and "edited during the load" in model.read_text()
    assert first.returncode == 1, first.stdout + first.stderr
    assert (
        "pipeline: the dbt project's SQL or settings changed while dbt built, so which version it built is "
        "unknown; its build is not recorded, and the next run rebuilds from scratch"
    ) in first.stderr
    second = run_pipeline(database, csv_dir, project_root=project)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "rebuilt from scratch" in second.stdout


VIEWS = ("staging.stg_payments__exports", "intermediate.int_invoice_ledger_entries")


def view_oids(database) -> dict[str, int]:
    return {view: database.query("select %s::regclass::oid", (view,))[0][0] for view in VIEWS}


def test_a_rebuilt_view_keeps_the_views_built_on_it_and_a_reordered_one_still_builds(make_database, tmp_path):
    """dbt's default view materialization renames the old view away and drops it with cascade, taking the
    views built on it along (int_invoice_ledger_entries, on stg_payments__exports) until the build reaches
    them, and for good when it stops before. The daily build replaces both views in place; a view whose
    columns changed type modifier or order, which Postgres cannot replace in place, still builds."""
    database, csv_dir = make_database(), write_fixture(tmp_path / "csv")
    assert_succeeded(run_pipeline(database, csv_dir))
    before = view_oids(database)
    second = run_pipeline(database, csv_dir)
    assert_succeeded(second)
    assert "==> dbt build: rules, models and tests, days from " in second.stdout, second.stdout
    assert view_oids(database) == before
    project = copy_project(tmp_path / "project")
    model = project / "dbt" / "models" / "staging" / "payments" / "stg_payments__exports.sql"
    # a column added at the end is what Postgres replaces in place
    extended = model.read_text().replace("        loaded_at\n", "        loaded_at,\n        1 as added\n")
    assert extended != model.read_text()
    model.write_text(extended)
    assert_succeeded(run_pipeline(database, csv_dir, project_root=project))
    exports_view = "staging.stg_payments__exports"
    assert view_oids(database)[exports_view] == before[exports_view]
    # only the type modifier changes, which information_schema's type name does not show: Postgres
    # refuses to replace that in place
    retyped = model.read_text().replace(
        "        loaded_at,\n", "        loaded_at::timestamptz(0) as loaded_at,\n"
    )
    assert retyped != model.read_text()
    model.write_text(retyped)
    assert_succeeded(run_pipeline(database, csv_dir, project_root=project))
    swapped = model.read_text().replace(
        "        invoice_rows,\n        invoices_new,\n", "        invoices_new,\n        invoice_rows,\n"
    )
    assert swapped != model.read_text()
    model.write_text(swapped)
    assert_succeeded(run_pipeline(database, csv_dir, project_root=project))
    columns = database.query(
        "select column_name from information_schema.columns"
        " where table_schema = 'staging' and table_name = 'stg_payments__exports' order by ordinal_position"
    )
    assert [name for (name,) in columns][3:5] == ["invoices_new", "invoice_rows"]
    assert database.query("select count(*) > 0 from intermediate.int_invoice_ledger_entries") == [(True,)]


def test_a_build_drops_the_table_a_renamed_model_left_behind_but_not_what_others_built_on_it(
    make_database, tmp_path
):
    """fct_invoices was dim_invoices: dbt leaves a renamed model's old table as it was, and whoever still
    read it would get numbers that are no longer updated. The next build drops it, so that they fail,
    unless others built on it (a view, a function: someone's work; the build warns, naming them, and leaves
    it) or a session holds it (the next build tries again); a view of the old name (a compatibility view)
    is not the old table."""
    database, csv_dir = make_database(), write_fixture(tmp_path / "csv")
    assert_succeeded(run_pipeline(database, csv_dir))
    # the table as an older version of the project built it, and a reader's view on it
    with database.connect("transformer", autocommit=True) as conn:
        conn.execute("create table marts.dim_invoices as select * from marts.fct_invoices")
        conn.execute("create view marts.readers_view as select * from marts.dim_invoices where amount > 0")
        conn.execute(
            "create function marts.open_invoices() returns setof marts.dim_invoices language sql"
            " as $$ select * from marts.dim_invoices where status = 'open' $$"
        )
        # the stored failures of a test the old model had: dbt never drops a test's view once the test is gone
        conn.execute(
            "create view audit.not_null_dim_invoices_organization_id as"
            " select * from marts.dim_invoices where organization_id is null"
        )

    def present() -> tuple:
        return database.query(
            "select to_regclass('marts.dim_invoices'), to_regclass('marts.readers_view'),"
            " to_regclass('audit.not_null_dim_invoices_organization_id')"
        )[0]

    read = run_pipeline(database, csv_dir)
    assert_succeeded(read)
    assert present() == (
        "marts.dim_invoices",
        "marts.readers_view",
        "audit.not_null_dim_invoices_organization_id",
    )
    said = " ".join(read.stdout.split())
    assert "is no longer updated (its model is now fct_invoices) and is not dropped: " in said, read.stdout
    assert "view marts.readers_view depends on table marts.dim_invoices" in said, read.stdout
    assert "function marts.open_invoices() depends on type marts.dim_invoices" in said, read.stdout
    with database.connect("transformer", autocommit=True) as conn:
        conn.execute("drop view marts.readers_view")
        conn.execute("drop function marts.open_invoices()")
    with database.connect("admin") as holder:
        holder.execute("select count(*) from marts.dim_invoices")  # its transaction holds the table
        held = run_pipeline(database, csv_dir)
        assert_succeeded(held)
        assert present()[0] == "marts.dim_invoices"
        assert "a session holds it. The next run tries again." in " ".join(held.stdout.split()), held.stdout
    dropped = run_pipeline(database, csv_dir)
    assert_succeeded(dropped)
    assert present() == (None, None, None)
    assert "depends on" not in dropped.stdout
    assert database.query("select to_regclass('marts.fct_invoices') is not null") == [(True,)]
    # a view of the old name is left alone
    with database.connect("transformer", autocommit=True) as conn:
        conn.execute("create view marts.dim_invoices as select * from marts.fct_invoices")
    assert_succeeded(run_pipeline(database, csv_dir))
    assert present()[0] == "marts.dim_invoices"


def test_an_alerter_user_that_is_not_a_role_stops_the_run_before_the_load(make_database, tmp_path):
    """The build grants ALERTER_USER the marts and the alert run logs in as it: a role that does not exist
    is a setting to fix (2), said before the load, not a failed model (1) found after it."""
    database = make_database()
    result = run_pipeline(database, write_fixture(tmp_path / "csv"), ALERTER_USER="no_such_alerter")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "ALERTER_USER=no_such_alerter is not a role on " in result.stderr
    assert "loading the exports" not in result.stdout
    assert database.query("select to_regclass('raw.load_log')") == [(None,)], "an export was loaded"


def test_an_unusable_alert_setting_stops_the_run_before_the_load(make_database, tmp_path):
    """The alert run reads its settings at the run's end: one it refuses is a setting to fix (2), said
    before the load and the build, not after them."""
    database = make_database()
    result = run_pipeline(database, write_fixture(tmp_path / "csv"), ALERT_CRITICAL_USD="1,5")
    assert result.returncode == 2, result.stdout + result.stderr
    assert (
        "ALERT_CRITICAL_USD: expected an amount in USD such as 1000 or 1,000.50, got '1,5'" in result.stderr
    )
    assert "loading the exports" not in result.stdout
    assert database.query("select to_regclass('raw.load_log')") == [(None,)], "an export was loaded"
    # the alert run skipped: its settings are not read
    assert_succeeded(
        run_pipeline(database, write_fixture(tmp_path / "csv"), ALERT_CRITICAL_USD="1,5", RUN_ALERTS="0")
    )


def test_a_project_that_does_not_parse_fails_the_build_with_dbts_error_once(make_database, tmp_path):
    """dbt parses while the loader runs, silently: the error is the build's, reported after the load."""
    project = copy_project(tmp_path / "project")
    model = project / "dbt" / "models" / "marts" / "dim_organizations.sql"
    model.write_text(model.read_text() + "\n{{ ref('no_such_model') }}\n")
    result = run_pipeline(make_database(), write_fixture(tmp_path / "csv"), project_root=project)
    assert result.returncode == 2, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert output.count("no_such_model") == 1, output
    assert output.index("==> dbt build") < output.index("no_such_model")
    assert "export 2023-01-06" in result.stdout  # the load ran first and committed


def test_a_refused_export_with_later_ones_waiting_is_never_advised_removed(
    make_database, tmp_path, monkeypatch
):
    """The load failure said "fix or remove it, and the next run loads and builds the rest". Removed, the
    next run loaded the later exports and the removed day could never load (older than the latest loaded
    export): its invoices and changes were lost while every run ended green."""
    from data_platform import pipeline

    database = make_database()  # it loads: not the module's
    for name, value in database.env("transformer").items():
        monkeypatch.setenv(name, value)
    csv = write_fixture(tmp_path / "csv")
    bad = csv / "exports" / "2023-01-07"
    bad.mkdir(parents=True)
    (bad / "invoices.csv").write_text(f"{HEADER}\n{INVOICE_ROWS[0].replace(',100.00,', ',100.0x,')}\n")
    later = csv / "exports" / "2023-01-08"
    later.mkdir()
    (later / "invoices.csv").write_text(f"{HEADER}\n{INVOICE_ROWS[0].replace('open', 'paid')}\n")
    with pytest.raises(pipeline.PipelineError) as failed:
        pipeline.load_exports(pipeline.Settings(csv_dir=csv, lock_timeout_seconds=0))
    advice = str(failed.value).splitlines()[-1]
    assert "do what its error says, or fix what it names, and the next run loads and builds the" in advice
    assert "never remove a dated export to get past it unless its error says so" in advice, advice
    assert "or remove it" not in advice


@pytest.mark.parametrize("variable", ["DBT_TARGET_PATH", "DBT_LOG_PATH"])
def test_a_dbt_folder_that_cannot_be_made_stops_the_run_before_the_load(make_database, tmp_path, variable):
    """A read-only checkout (or a folder a file blocks) failed only once the exports had loaded, with a
    traceback, or with dbt's own error after it."""
    database = make_database()  # nothing loaded in it yet
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_pipeline(database, write_fixture(tmp_path / "csv"), **{variable: str(blocker / "dbt")})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"pipeline: dbt cannot write to {blocker / 'dbt'} ({variable}): Not a directory; set {variable} "
        "to a folder this user may write to"
    ]
    assert database.query("select to_regclass('raw.load_log') is null") == [(True,)]


def test_a_dbt_folder_on_a_nearly_full_disk_stops_the_run_before_it_starts(monkeypatch, tmp_path):
    """On a full disk, dbt's target folder failed the build after the load (leaving a manifest cut short
    that the docs site served), and its log folder made a green run print thousands of tracebacks."""
    from data_platform import pipeline

    for name in ("DBT_TARGET_PATH", "DBT_LOG_PATH"):
        monkeypatch.setenv(name, str(tmp_path / name))
    pipeline.check_dbt_folders()  # this disk has room
    stats = os.statvfs(tmp_path)
    monkeypatch.setattr(pipeline, "DBT_FOLDER_MIN_FREE_BYTES", stats.f_bavail * stats.f_frsize + 2**30)
    with pytest.raises(pipeline.PipelineError) as refused:
        pipeline.check_dbt_folders()
    said = str(refused.value)
    assert said.startswith(f"the disk of {tmp_path / 'DBT_TARGET_PATH'} (DBT_TARGET_PATH) has "), said
    assert said.endswith("free space on it, or set DBT_TARGET_PATH to a folder on another disk"), said
    assert refused.value.exit_code == 2


def test_a_relative_dbt_target_path_is_read_where_dbt_writes_it(tmp_path):
    """dbt puts a relative DBT_TARGET_PATH under its project folder: the pipeline read its run results (the
    failed tests it shows) and checked the folder under its own working folder."""
    from data_platform.paths import DBT_DIR_ARGS, DBT_PROJECT_DIR, dbt_target_dir

    relative = f"target-relative-{tmp_path.name}"
    env = {**os.environ, "DBT_TARGET_PATH": relative, "DBT_LOG_PATH": str(tmp_path / "logs")}
    dbt_cli = Path(sys.executable).parent / "dbt"
    try:
        parsed = subprocess.run(
            [str(dbt_cli), "parse", *DBT_DIR_ARGS], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True
        )
        assert parsed.returncode == 0, parsed.stdout[-2000:]
        assert (dbt_target_dir(env) / "manifest.json").exists()
    finally:
        shutil.rmtree(DBT_PROJECT_DIR / relative, ignore_errors=True)
