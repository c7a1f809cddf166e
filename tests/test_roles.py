"""init.sql: least-privilege roles, proven against a real Postgres."""

import psycopg
import pytest


@pytest.fixture(scope="module")
def database(make_database):
    db = make_database()
    with db.connect("transformer", autocommit=True) as conn:
        conn.execute("create table raw.secret (id int)")
        conn.execute("create table marts.report (id int)")
        conn.execute("insert into marts.report values (1)")
    return db


def test_init_sql_is_idempotent(database):
    from conftest import apply_init_sql

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
