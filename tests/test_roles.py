"""init.sql: least-privilege roles, proven against a real Postgres."""

import os

import psycopg
import pytest
from conftest import apply_init_sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from data_platform import bootstrap


@pytest.fixture(scope="module")
def database(make_database):
    db = make_database()
    with db.connect("transformer", autocommit=True) as conn:
        conn.execute("create table raw.secret (id int)")
        conn.execute("create table marts.report (id int)")
        conn.execute("insert into marts.report values (1)")
    return db


def test_init_sql_is_idempotent(database):
    apply_init_sql(database.conninfo("admin"))
    schemas = {r[0] for r in database.query("select nspname from pg_namespace")}
    assert {"raw", "seeds", "staging", "intermediate", "marts", "ops"} <= schemas


def test_alerter_reads_marts_created_after_bootstrap(database):
    with database.connect("alerter") as conn:
        assert conn.execute("select id from marts.report").fetchall() == [(1,)]


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
