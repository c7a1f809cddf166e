"""init.sql: least-privilege roles, proven against a real Postgres."""

import os
import subprocess

import psycopg
import pytest
from conftest import ROLE_PASSWORD_ENV, ROLE_PASSWORDS, apply_init_sql
from pg_auth import scram_password_matches
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from data_platform import bootstrap, secrets
from data_platform.pipeline_settings import Settings


@pytest.fixture(scope="module")
def database(make_database):
    db = make_database()
    with db.connect("transformer", autocommit=True) as conn:
        conn.execute("create table raw.secret (id int)")
        conn.execute("create table marts.report (id int)")
        conn.execute("insert into marts.report values (1)")
    return db


SCHEMA_OWNERS = {
    "raw": "transformer",
    "seeds": "transformer",
    "staging": "transformer",
    "intermediate": "transformer",
    "marts": "transformer",
    "ops": "alerter",
}
# owners and privileges that init.sql sets: schemas, default privileges, the database
PRIVILEGES = r"""
    select format('schema %s', nspname), pg_get_userbyid(nspowner), coalesce(nspacl::text, '')
    from pg_namespace where nspname !~ '^(pg_|information_schema)'
    union all
    select format('default %s in %s', defaclobjtype, defaclnamespace::regnamespace),
           pg_get_userbyid(defaclrole), defaclacl::text
    from pg_default_acl
    union all
    select 'database', pg_get_userbyid(datdba), coalesce(datacl::text, '')
    from pg_database where datname = current_database()
"""


def privileges(database) -> dict[str, tuple[str, str]]:
    return {name: (owner, acl) for name, owner, acl in database.query(PRIVILEGES)}


def test_init_sql_is_idempotent(database):
    before = privileges(database)
    assert {name: before[f"schema {name}"][0] for name in SCHEMA_OWNERS} == SCHEMA_OWNERS
    apply_init_sql(database.conninfo("admin"))
    assert privileges(database) == before
    # the data already built survives
    assert database.query("select id from marts.report", role="transformer") == [(1,)]


def test_alerter_reads_no_marts_table_it_is_not_granted(database):
    # dbt grants it the marts the alerts read (dbt/dbt_project.yml); no default privilege grants it the rest
    assert not any(name.startswith("default ") for name in privileges(database))
    with database.connect("alerter") as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("select id from marts.report")


def test_reapplying_init_sql_removes_the_default_privilege_an_older_one_made(database):
    # an older init.sql let the alerter read every table the transformer created in the marts
    older = "alter default privileges for role transformer in schema marts grant select on tables to alerter"
    with database.connect("admin", autocommit=True) as conn:
        conn.execute(older)
    assert "alerter=r/transformer" in privileges(database)["default r in marts"][1]
    apply_init_sql(database.conninfo("admin"))
    assert "default r in marts" not in privileges(database)


def test_alerter_cannot_read_raw(database):
    with database.connect("alerter") as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("select * from raw.secret")


def test_alerter_cannot_write_marts(database):
    with database.connect("alerter") as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("insert into marts.report values (2)")


def test_alerter_owns_ops(database):
    with database.connect("alerter", autocommit=True) as conn:
        conn.execute("create table ops.scratch (id int)")
        conn.execute("drop table ops.scratch")


def test_transformer_cannot_touch_ops(database):
    with database.connect("transformer") as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("create table ops.intruder (id int)")


@pytest.mark.parametrize("schema", ["raw", "seeds", "staging", "intermediate"])
def test_alerter_sees_nothing_upstream_of_the_marts(database, schema):
    with database.connect("transformer", autocommit=True) as conn:
        conn.execute(f"create table if not exists {schema}.probe (id int)")
    with database.connect("alerter") as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(f"select * from {schema}.probe")


def test_alerter_cannot_create_in_marts(database):
    with database.connect("alerter") as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("create table marts.intruder (id int)")


def test_other_roles_cannot_connect(database):
    with database.connect("admin", autocommit=True) as conn:
        conn.execute("drop role if exists stranger")
        conn.execute("create role stranger login")
    params = conninfo_to_dict(database.conninfo("admin"))
    params["user"] = "stranger"
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        psycopg.connect(make_conninfo(**params)).close()


def test_init_sql_run_as_a_role_that_is_no_superuser_says_which_and_what_to_unset(database):
    # the demo run again from a shell that still holds the alert commands' PGUSER=alerter: psql's bare
    # "permission denied" did not say that the demo took the variables for the user's own server
    shell = {name: value for name, value in os.environ.items() if not name.startswith("PG")}
    as_the_demo_runs_it = ("", {**shell, **database.env("alerter"), **ROLE_PASSWORD_ENV})
    given_a_connection = (database.conninfo("alerter"), {**os.environ, **ROLE_PASSWORD_ENV})
    for conninfo, env in (as_the_demo_runs_it, given_a_connection):
        with pytest.raises(RuntimeError) as failed:
            bootstrap.apply_init_sql(conninfo, env)
        said = str(failed.value)
        assert "it needs a superuser connection, and alerter is not one; PG* variables left set" in said
        assert "`unset PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE`" in said
        assert "permission denied" in said  # psql's own reason follows


# server_wide: these run init.sql with other passwords, or none, on the cluster-wide roles
@pytest.mark.server_wide
def test_reapplying_without_passwords_keeps_existing_ones(database):
    # compare the stored password hash: the test server may trust local connections
    password_hash = "select rolpassword from pg_authid where rolname = 'alerter'"
    with database.connect("admin", autocommit=True) as conn:
        conn.execute("alter role alerter password 'rotated'")
    before = database.query(password_hash)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_PASSWORD")}
    try:
        bootstrap.apply_init_sql(database.conninfo("admin"), env)
        assert database.query(password_hash) == before
        apply_init_sql(database.conninfo("admin"))  # with ALERTER_PASSWORD set: applied again
        assert database.query(password_hash) != before
    finally:
        with database.connect("admin", autocommit=True) as conn:
            conn.execute("alter role alerter password 'alerter'")


def test_a_new_alerter_role_gets_the_password_the_pipeline_uses_by_default(database, tmp_path):
    # the no-Docker demo sets no ALERTER_PASSWORD: init.sql's demo default and the pipeline's must agree,
    # or its alert run cannot log in. Only init.sql's choice of passwords runs (the roles exist already).
    choice, marker, _ = bootstrap.INIT_SQL.read_text().partition("-- roles are cluster-wide")
    assert marker, "init.sql's role creation moved"
    (tmp_path / "choice.sql").write_text(choice + "\\echo :alerter_password\n")
    env = {k: v for k, v in os.environ.items() if "_PASSWORD" not in k}
    result = subprocess.run(
        [
            bootstrap.psql_binary(),
            "--no-psqlrc",
            "-d",
            database.conninfo("admin"),
            "-f",
            tmp_path / "choice.sql",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == Settings().alerter_password


def role_password_matches(database, role: str, password: str) -> bool:
    (verifier,) = database.query("select rolpassword from pg_authid where rolname = %s", (role,))[0]
    return scram_password_matches(verifier, password)


def init_sql_env(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "_PASSWORD" not in k}
    return {**env, **ROLE_PASSWORD_ENV, **variables}


@pytest.mark.server_wide
def test_passwords_can_come_from_files(database, tmp_path):
    # Docker secrets: one trailing line end removed, an empty plain variable gives way to the file
    (tmp_path / "transformer").write_text("from-a-file\n")
    (tmp_path / "alerter").write_text("alerter-file")
    env = init_sql_env(
        TRANSFORMER_PASSWORD="",
        TRANSFORMER_PASSWORD_FILE=str(tmp_path / "transformer"),
        ALERTER_PASSWORD="",
        ALERTER_PASSWORD_FILE=str(tmp_path / "alerter"),
    )
    try:
        bootstrap.apply_init_sql(database.conninfo("admin"), env)
        assert role_password_matches(database, "transformer", "from-a-file")
        assert role_password_matches(database, "alerter", "alerter-file")
    finally:
        apply_init_sql(database.conninfo("admin"))
    assert role_password_matches(database, "transformer", ROLE_PASSWORDS["transformer"])


@pytest.mark.server_wide
@pytest.mark.parametrize(
    "content",
    [b"s3cret\r\n", b"s3cret\n\n", b"s3cret\r", b"s3cret\r\n\r\n", b"two\r\nlines\r\n"],
    ids=["crlf", "two-newlines", "lone-cr", "two-crlf", "crlf-lines"],
)
def test_init_sql_sets_the_password_the_pipeline_logs_in_with(database, tmp_path, content):
    # the same secret file is the role's password (init.sql) and the pipeline's login (secrets.py)
    (tmp_path / "alerter").write_bytes(content)
    env = init_sql_env(ALERTER_PASSWORD="", ALERTER_PASSWORD_FILE=str(tmp_path / "alerter"))
    login = secrets.read_secret_file("ALERTER_PASSWORD", str(tmp_path / "alerter"))
    try:
        bootstrap.apply_init_sql(database.conninfo("admin"), env)
        assert role_password_matches(database, "alerter", login)
    finally:
        apply_init_sql(database.conninfo("admin"))


@pytest.mark.server_wide
def test_a_password_and_its_file_together_are_refused(database, tmp_path):
    (tmp_path / "secret").write_text("file-content\n")
    env = init_sql_env(TRANSFORMER_PASSWORD_FILE=str(tmp_path / "secret"))  # TRANSFORMER_PASSWORD is set too
    with pytest.raises(RuntimeError) as raised:
        bootstrap.apply_init_sql(database.conninfo("admin"), env)
    message = str(raised.value)
    assert "TRANSFORMER_PASSWORD and TRANSFORMER_PASSWORD_FILE are both set: set only one" in message
    assert "file-content" not in message and ROLE_PASSWORDS["transformer"] not in message
    assert role_password_matches(database, "transformer", ROLE_PASSWORDS["transformer"])


@pytest.mark.server_wide
def test_an_unreadable_password_file_is_refused_by_name(database, tmp_path):
    missing = tmp_path / "missing"
    env = init_sql_env(ALERTER_PASSWORD="", ALERTER_PASSWORD_FILE=str(missing))
    with pytest.raises(RuntimeError) as raised:
        bootstrap.apply_init_sql(database.conninfo("admin"), env)
    message = str(raised.value)
    assert f"{missing}: No such file or directory" in message
    assert "ALERTER_PASSWORD_FILE: cannot read the file" in message
    assert role_password_matches(database, "alerter", ROLE_PASSWORDS["alerter"])


@pytest.mark.server_wide
@pytest.mark.parametrize("content", ["", "\n", "  \n"])
def test_an_empty_password_file_is_refused_by_name(database, tmp_path, content):
    # psql would take it as the password '' and clear the role's password
    (tmp_path / "empty").write_text(content)
    env = init_sql_env(ALERTER_PASSWORD="", ALERTER_PASSWORD_FILE=str(tmp_path / "empty"))
    with pytest.raises(RuntimeError) as raised:
        bootstrap.apply_init_sql(database.conninfo("admin"), env)
    assert "ALERTER_PASSWORD_FILE: the file is empty; put the password in it or unset the variable" in str(
        raised.value
    )
    assert role_password_matches(database, "alerter", ROLE_PASSWORDS["alerter"])
