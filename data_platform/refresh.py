"""Does the next dbt build rebuild everything, or only the days of the exports not built yet?

The ledger books an export's entries on days after the previous export (changes on the export's own
day, new invoices on their created day, late ones on the export's day), so once a build has covered an
export, every day up to it is final. An incremental build therefore recomputes only the days after the
newest export the last successful build covered: the LEDGER_WINDOW_START environment variable that dbt
reads (dbt/macros/engines/incremental_window.sql).

That holds only while nothing the stored days were computed from has changed since that build:

- the balance rules (dbt/seeds/invoice_enrichment.csv, which `dbt build` seeds first);
- the dbt project's SQL and settings (models, macros, dbt_project.yml, and what the YAML beside the models
  and seeds says about building them: configs, sources, the seeds' column types; not descriptions or tests);
- the exports that build covered (`raw.load_log`: a reset or reloaded warehouse).

`raw.build_state` records them, written only after a `dbt build` succeeded. A failed, stopped or killed
build leaves the previous record, so the next run sees the difference and rebuilds from scratch: a rules
change can never be half applied. A full rebuild also marks the record before it starts, and only its
success clears the mark: one that did not finish may have replaced tables with other rules' or SQL's
numbers, so the next build is full even when the files are back as the record says (an edit undone after
a stopped run). The files are fingerprinted before dbt reads them and again after the build: a build
during which they changed may have run either version, so it is not recorded and marks the record
instead. A failed incremental build needs no mark: it changed only days its retry recomputes (or, in the
status totals, summed with the same rules and exports). A `dbt run` or `dbt build` by hand of an
incremental model sets the mark itself, whatever its window (the project's on-run-start hook,
dbt/macros/build_state.sql): it records nothing, and may have run other rules, SQL or settings.

The alerter reads the same record (BUILD_STATUS_SQL): an alert run, even one started by hand during a
build or after a failed one, looks only at days up to the newest export the last successful build
covered, and at none while a full rebuild is marked. The record is created, and granted to the alerter,
before the first build starts, so a warehouse without it was never built by the pipeline.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg
import yaml
from psycopg import sql

from data_platform import db, ledger
from data_platform.paths import DBT_PROJECT_DIR, dbt_models_schema, dbt_project_var
from data_platform.raw_tables import RAW_SCHEMA

# Names dbt's macros use too, written once in dbt_project.yml's vars.
BUILD_STATE = dbt_project_var("build_record")
WINDOW_VARIABLE = dbt_project_var("ledger_window_variable")
MARTS_SCHEMA = dbt_models_schema("marts")  # what the alerts read
# Set for the pipeline's own builds: it marks and records them itself, so dbt's on-run-start hook, which marks
# the record for a build by hand (dbt/macros/build_state.sql), leaves them alone.
PIPELINE_BUILD_VARIABLE = dbt_project_var("pipeline_build_variable")
# Unit tests check the SQL, not the data: they run in the test suite (CI), not in every daily build (nor
# in another engine's build that should do the pipeline's work, such as a benchmark's)
UNIT_TESTS_EXCLUDED = ("--exclude-resource-type", "unit_test")
LOAD_LOG = f"{RAW_SCHEMA}.load_log"
# What the stored days are computed by: a change here changes history, so it forces a full rebuild.
PROJECT_FILES = ("models/**/*.sql", "macros/**/*.sql", "dbt_project.yml")
# The YAML beside the models and seeds says how they are built and read as well (configs, a source's schema,
# the seeds' column types); only what documents or tests them is left out, so that a description edit, or a
# new data test, does not rebuild every day.
PROPERTY_FILES = ("models/**/*.yml", "models/**/*.yaml", "seeds/**/*.yml", "seeds/**/*.yaml")
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, when PyYAML was built with it
NOT_BUILT_FROM = frozenset({"description", "docs", "data_tests", "tests", "unit_tests", "exposures"})
KEPT_WHOLE = frozenset({"config", "meta"})
RULES_FILES = ("seeds/invoice_enrichment.csv",)

CREATE_BUILD_STATE = f"""
    create table if not exists {BUILD_STATE} (
        singleton boolean primary key default true check (singleton),
        rules_fingerprint text not null,
        project_fingerprint text not null,
        exports_fingerprint text not null,
        last_export_date date,
        built_at timestamptz not null default now(),
        full_build_started_at timestamptz
    )
"""
# Every successful build, kept (the record above holds only the last): what it rebuilt, why, and the rules
# it applied, so that a day's numbers can be traced to the rules of the build that computed them.
BUILD_LOG = f"{RAW_SCHEMA}.build_log"
CREATE_BUILD_LOG = f"""
    create table if not exists {BUILD_LOG} (
        build_id bigint generated always as identity primary key,
        built_at timestamptz not null default now(),
        full_refresh boolean not null,
        reason text not null,
        window_start date,
        last_export_date date,
        rules_fingerprint text not null,
        rules text not null
    )
"""
# a record written before that column existed
ADD_FULL_BUILD_MARK = f"alter table {BUILD_STATE} add column if not exists full_build_started_at timestamptz"

# What a reader needs: one row per successful build record, or none before the first success. Read
# through to_jsonb: a record written before full_build_started_at existed has no such column.
BUILD_STATUS_SQL = f"""
    select
        (to_jsonb(state) ->> 'last_export_date')::date as last_export_date,
        (to_jsonb(state) ->> 'full_build_started_at')::timestamptz as full_build_started_at
    from {BUILD_STATE} state
"""

# The exports up to a date, in order, with their checksums: any reload or reset changes it.
EXPORTS_FINGERPRINT_SQL = f"""
    select md5(coalesce(string_agg(
        concat_ws(':', export_date, invoices_sha256, organizations_sha256), '|' order by export_date
    ), ''))
    from {LOAD_LOG}
    where export_date <= %(up_to)s
"""


@dataclass(frozen=True)
class BuildState:
    """What a build was computed from."""

    rules_fingerprint: str
    project_fingerprint: str
    exports_fingerprint: str
    last_export_date: dt.date | None


REBUILT_FROM_SCRATCH = "the next run rebuilds from scratch"


@dataclass(frozen=True)
class BuildPlan:
    """The next build: full, or incremental from `window_start`; `current` is recorded after success."""

    full_refresh: bool
    reason: str
    window_start: dt.date | None
    current: BuildState
    project_dir: Path = DBT_PROJECT_DIR  # the files `current` was taken from

    def dbt_args(self) -> list[str]:
        """`dbt build`'s arguments."""
        return [*UNIT_TESTS_EXCLUDED, *(["--full-refresh"] if self.full_refresh else [])]

    def after_failure(self) -> str:
        """What the next run does when this build fails, as planned (pipeline.after_failure reads the record
        too)."""
        if self.full_refresh:
            return REBUILT_FROM_SCRATCH
        return f"the next run builds the days from {self.window_start} again"

    def dbt_environment(self) -> dict[str, str]:
        """os.environ for dbt: LEDGER_WINDOW_START set for an incremental build, unset for a full one, and
        the server's dead-client check on its sessions (a dbt killed outright leaves no statement behind)."""
        env = {name: value for name, value in os.environ.items() if name != WINDOW_VARIABLE}
        env[PIPELINE_BUILD_VARIABLE] = "true"
        env["PGOPTIONS"] = db.with_dead_client_check(env.get("PGOPTIONS"))
        if not self.full_refresh:
            env[WINDOW_VARIABLE] = self.window_start.isoformat()
        return env


def files_fingerprint(
    project_dir: Path, patterns: tuple[str, ...], content: Callable[[Path], bytes] = Path.read_bytes
) -> str:
    """sha256 over the `content` of the files matching `patterns` under the dbt project, by relative path."""
    digest = hashlib.sha256()
    paths = sorted({path for pattern in patterns for path in project_dir.glob(pattern) if path.is_file()})
    for path in paths:
        digest.update(str(path.relative_to(project_dir)).encode() + b"\0" + content(path) + b"\0")
    return digest.hexdigest()


def _what_builds(properties: object) -> object:
    """A YAML document without what documents or tests; a column that then says nothing but its name goes.
    A `config` or `meta` block is kept whole: its keys are settings and names (a seed's column called
    `description` has its type under `column_types`), not documentation."""
    if isinstance(properties, dict):
        # keys as text: YAML reads `on:` or `1:` as other types, which json cannot sort among strings
        kept = {
            str(key): value if key in KEPT_WHOLE else _what_builds(value)
            for key, value in properties.items()
            if key not in NOT_BUILT_FROM
        }
        if "columns" in kept and isinstance(kept["columns"], list):
            kept["columns"] = [column for column in kept["columns"] if not _names_only(column)]
        return kept
    if isinstance(properties, list):
        return [_what_builds(item) for item in properties]
    return properties


def _names_only(column: object) -> bool:
    return isinstance(column, dict) and set(column) <= {"name"}


def _as_json(value: object) -> object:
    # YAML's other types: a set in a stable order (its own depends on the process's hash seed), dates as text
    return sorted(map(str, value)) if isinstance(value, set | frozenset) else str(value)


def _build_settings(path: Path) -> bytes:
    """What a YAML file beside the models or seeds says about building them, as canonical JSON; a file that
    is not valid YAML counts as its bytes (dbt refuses it anyway)."""
    text = path.read_bytes()
    try:
        document = yaml.load(text, Loader=SAFE_LOADER)
        return json.dumps(_what_builds(document), sort_keys=True, default=_as_json).encode()
    except (yaml.YAMLError, RecursionError, TypeError):  # RecursionError: an anchor that holds itself
        return text


def _exists(conn: psycopg.Connection, table: str) -> bool:
    return conn.execute("select to_regclass(%s)", (table,)).fetchone()[0] is not None


def _exports(conn: psycopg.Connection, up_to: dt.date | None) -> str:
    if up_to is None or not _exists(conn, LOAD_LOG):
        return "none"
    return conn.execute(EXPORTS_FINGERPRINT_SQL, {"up_to": up_to}).fetchone()[0]


def latest_export(conn: psycopg.Connection) -> dt.date | None:
    return ledger.latest_export(conn) if _exists(conn, LOAD_LOG) else None


def project_fingerprint(project_dir: Path = DBT_PROJECT_DIR) -> str:
    """The fingerprint of the project's SQL and settings; take it before dbt parses, so that a file edited in
    between makes the next run rebuild (the other order would record SQL the build never ran)."""
    return hashlib.sha256(
        f"{files_fingerprint(project_dir, PROJECT_FILES)} "
        f"{files_fingerprint(project_dir, PROPERTY_FILES, _build_settings)}".encode()
    ).hexdigest()


def current_state(
    conn: psycopg.Connection, project_dir: Path = DBT_PROJECT_DIR, project: str | None = None
) -> BuildState:
    """The state a build now would be computed from; `project`: the project's fingerprint taken before
    dbt parsed it, when the parse came first (default: the files now)."""
    last_export = latest_export(conn)
    return BuildState(
        rules_fingerprint=files_fingerprint(project_dir, RULES_FILES),
        project_fingerprint=project or project_fingerprint(project_dir),
        exports_fingerprint=_exports(conn, last_export),
        last_export_date=last_export,
    )


def recorded_state(conn: psycopg.Connection) -> BuildState | None:
    """The state of the last successful build, or None when there was none."""
    if not _exists(conn, BUILD_STATE):
        return None
    row = conn.execute(
        f"select rules_fingerprint, project_fingerprint, exports_fingerprint, last_export_date "
        f"from {BUILD_STATE}"
    ).fetchone()
    return BuildState(*row) if row else None


def full_build_unfinished(conn: psycopg.Connection) -> bool:
    """Whether a full rebuild started after the last successful build and did not succeed."""
    if not _exists(conn, BUILD_STATE):
        return False
    row = conn.execute(BUILD_STATUS_SQL).fetchone()
    return row is not None and row[1] is not None


def plan_build(
    conn: psycopg.Connection,
    *,
    force_full: bool = False,
    project_dir: Path = DBT_PROJECT_DIR,
    project: str | None = None,
) -> BuildPlan:
    """Decide the next build from the project's files and the warehouse's state (`project`: as in
    current_state)."""
    current = current_state(conn, project_dir, project)
    last = recorded_state(conn)

    def full(reason: str) -> BuildPlan:
        return BuildPlan(True, reason, None, current, project_dir)

    if force_full:
        return full("FULL_REFRESH is on")
    if last is None or last.last_export_date is None:
        return full("no successful build is recorded yet")
    differing = _differing_files(last, current)
    if differing:
        return full(f"{differing[0]} changed since the last successful build")
    if full_build_unfinished(conn):
        return full(
            "the last full rebuild did not finish, a build by hand recomputed built days, or the rules, SQL "
            "or settings changed during a build: any of these may have left tables computed otherwise"
        )
    if _exports(conn, last.last_export_date) != last.exports_fingerprint:
        return full("the exports the last successful build covered were reloaded or changed")
    window_start = last.last_export_date + dt.timedelta(days=1)
    return BuildPlan(False, f"exports after {last.last_export_date}", window_start, current, project_dir)


def _differing_files(then: BuildState, now: BuildState) -> list[str]:
    """Which of the files a build is computed from differ between two states, in words."""
    differing = {
        "the balance rules": then.rules_fingerprint != now.rules_fingerprint,
        "the dbt project's SQL or settings": then.project_fingerprint != now.project_fingerprint,
    }
    return [files for files, differs in differing.items() if differs]


def changed_since_plan(plan: BuildPlan) -> str | None:
    """Which of the files the plan's state was taken from differ now (None: neither). dbt reads them after
    the plan, so a build during which they changed may have run either version."""
    now = replace(
        plan.current,
        rules_fingerprint=files_fingerprint(plan.project_dir, RULES_FILES),
        project_fingerprint=project_fingerprint(plan.project_dir),
    )
    return " and ".join(_differing_files(plan.current, now)) or None


def _ensure_readable_by(conn: psycopg.Connection, reader: str) -> None:
    """The record's table, readable by `reader` (the alerter's role, when it exists), and the marts'
    schema once a build has made it: dbt grants select on the marts' tables, not usage on their schema,
    which init.sql grants only the alerter it creates (another ALERTER_USER could read no mart)."""
    conn.execute(CREATE_BUILD_STATE)
    conn.execute(ADD_FULL_BUILD_MARK)
    granted = conn.execute(
        "select has_schema_privilege(rolname, %(raw)s, 'usage') and has_table_privilege(rolname, %(record)s, "
        "'select'), to_regnamespace(%(marts)s) is null or has_schema_privilege(rolname, %(marts)s, 'usage') "
        "from pg_roles where rolname = %(reader)s",
        {"raw": RAW_SCHEMA, "record": BUILD_STATE, "marts": MARTS_SCHEMA, "reader": reader},
    ).fetchone()
    if granted is None:  # no such role (nothing to do otherwise: a grant writes the catalog)
        return
    role = sql.Identifier(reader)
    if not granted[0]:
        conn.execute(sql.SQL("grant usage on schema {} to {}").format(sql.Identifier(RAW_SCHEMA), role))
        conn.execute(sql.SQL("grant select on {} to {}").format(sql.SQL(BUILD_STATE), role))
    if not granted[1]:
        conn.execute(sql.SQL("grant usage on schema {} to {}").format(sql.Identifier(MARTS_SCHEMA), role))


# Whom the builder's default privileges give select on the tables it creates in the marts (public: everyone)
DEFAULT_MARTS_READERS_SQL = """
    select distinct coalesce(grantee.rolname, 'public')
    from pg_default_acl defaults
    cross join lateral aclexplode(defaults.defaclacl) as granted
    left join pg_roles grantee on grantee.oid = granted.grantee
    where defaults.defaclrole = (select oid from pg_roles where rolname = current_user)
        and defaults.defaclnamespace = to_regnamespace(%s)
        and defaults.defaclobjtype = 'r'
        and granted.privilege_type = 'SELECT'
"""


def _remove_default_marts_readers(conn: psycopg.Connection) -> None:
    """No default privilege of the builder's lets anyone read a mart: who reads which is dbt's grants config
    alone (dbt/dbt_project.yml). Here as well as in init.sql, which an existing warehouse may never apply
    again: init.sql once gave the alerter select on every table the transformer creates in the marts, and a
    table a full build recreates gets the default privileges, not the old table's grants, which dbt revokes
    on an incremental build only. So this runs before a full build, and after every successful one."""
    readers = conn.execute(DEFAULT_MARTS_READERS_SQL, (MARTS_SCHEMA,)).fetchall()
    for (reader,) in readers:  # none, normally: a revoke writes the catalog
        grantee = sql.SQL("public") if reader == "public" else sql.Identifier(reader)
        conn.execute(
            sql.SQL("alter default privileges in schema {} revoke select on tables from {}").format(
                sql.Identifier(MARTS_SCHEMA), grantee
            )
        )


def mark_build_started(conn: psycopg.Connection, plan: BuildPlan, reader: str) -> dt.datetime | None:
    """Just before a build: a full rebuild marks the record; the build's own mark (None: it set none), which
    its success clears (record_build). Before the first build there is no record: the table is created
    empty, which readers take as "no build has succeeded yet"."""
    if not plan.full_refresh:
        return None
    _ensure_readable_by(conn, reader)
    _remove_default_marts_readers(conn)
    return _mark(conn)


def mark_rebuild_needed(conn: psycopg.Connection) -> None:
    """A build that may have run beside another one (it lost the pipeline lock): the next build is full."""
    if _exists(conn, BUILD_STATE):
        _mark(conn)


def _mark(conn: psycopg.Connection) -> dt.datetime | None:
    """Mark the record as a full rebuild that has not succeeded; the mark (None: no build recorded yet)."""
    row = conn.execute(
        f"update {BUILD_STATE} set full_build_started_at = now() returning full_build_started_at"
    ).fetchone()
    return row[0] if row else None


def record_build(
    conn: psycopg.Connection, plan: BuildPlan, reader: str, own_mark: dt.datetime | None = None
) -> None:
    """Remember what a successful build was computed from (the plan's state, taken before the build), and
    log it (raw.build_log: full or from which day, why, and its rules, which its files still hold: a build
    during which they changed is not recorded); `reader`: the role that reads the record (the alerter);
    `own_mark`: the mark the build set itself (mark_build_started), which it clears. A mark set since (a
    build by hand meanwhile, a run that lost the pipeline lock) stays: this build may not have covered what
    that one changed."""
    state = plan.current
    _ensure_readable_by(conn, reader)
    _remove_default_marts_readers(conn)
    conn.execute(CREATE_BUILD_LOG)
    conn.execute(
        f"""
        insert into {BUILD_LOG}
            (full_refresh, reason, window_start, last_export_date, rules_fingerprint, rules)
        values (%s, %s, %s, %s, %s, %s)
        """,
        (
            plan.full_refresh,
            plan.reason,
            plan.window_start,
            state.last_export_date,
            state.rules_fingerprint,
            # what a person reads: bytes that are not UTF-8 are shown, never a reason to lose the record
            "".join((plan.project_dir / name).read_text("utf-8", errors="replace") for name in RULES_FILES),
        ),
    )
    conn.execute(
        f"""
        insert into {BUILD_STATE} as state
            (rules_fingerprint, project_fingerprint, exports_fingerprint, last_export_date)
        values (%s, %s, %s, %s)
        on conflict (singleton) do update set
            rules_fingerprint = excluded.rules_fingerprint,
            project_fingerprint = excluded.project_fingerprint,
            exports_fingerprint = excluded.exports_fingerprint,
            last_export_date = excluded.last_export_date,
            built_at = now(),
            full_build_started_at = case
                when state.full_build_started_at <= %s then null else state.full_build_started_at
            end
        """,
        (
            state.rules_fingerprint,
            state.project_fingerprint,
            state.exports_fingerprint,
            state.last_export_date,
            own_mark,
        ),
    )
