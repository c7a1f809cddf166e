"""Logins whose password Postgres really checks, and a check of a role's stored password.

The embedded test server (pgserver) trusts every local login, so a wrong password passes there. Tests
of password handling use the test server when it checks passwords (Docker, TEST_DATABASE_URL), else a
private embedded server configured to check them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

# roles are cluster-wide: xdist workers sharing one server (TEST_DATABASE_URL) each create their own
PROBE_ROLE = "_".join(filter(None, ["dp_password_probe", os.environ.get("PYTEST_XDIST_WORKER")]))
PROBE_PASSWORD = "the-right-password"


def scram_password_matches(verifier: str, password: str) -> bool:
    """Whether a SCRAM-SHA-256 verifier (pg_authid.rolpassword) was made from `password` (RFC 5802)."""
    method, iterations_and_salt, keys = verifier.split("$")
    assert method == "SCRAM-SHA-256", f"not a SCRAM verifier: {method}"
    iterations, salt = iterations_and_salt.split(":")
    stored_key = keys.split(":")[0]
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return hmac.compare_digest(hashlib.sha256(client_key).digest(), base64.b64decode(stored_key))


def _create_probe_role(admin_conninfo: str) -> None:
    with psycopg.connect(admin_conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(PROBE_ROLE)))
        conn.execute(
            sql.SQL("create role {} login password {}").format(
                sql.Identifier(PROBE_ROLE), sql.Literal(PROBE_PASSWORD)
            )
        )


def _probe_conninfo(admin_conninfo: str, password: str) -> str:
    params = conninfo_to_dict(admin_conninfo)
    params.update(user=PROBE_ROLE, password=password, dbname="postgres")
    return make_conninfo(**params)


def _rejects_wrong_password(admin_conninfo: str) -> bool:
    try:
        psycopg.connect(_probe_conninfo(admin_conninfo, "wrong"), connect_timeout=5).close()
    except psycopg.OperationalError as error:
        assert "password authentication failed" in str(error), error
        return True
    return False


def _libpq_variables(admin_conninfo: str) -> dict[str, str]:
    params = conninfo_to_dict(admin_conninfo)
    return {
        "PGHOST": str(params.get("host", "localhost")),
        "PGPORT": str(params.get("port", "5432")),
        "PGUSER": PROBE_ROLE,
        "PGDATABASE": "postgres",
    }


@contextmanager
def password_checked_login(admin_conninfo: str) -> Iterator[dict[str, str]]:
    """PG* variables (no PGPASSWORD) for PROBE_ROLE, whose password PROBE_PASSWORD the server checks."""
    _create_probe_role(admin_conninfo)
    if _rejects_wrong_password(admin_conninfo):
        try:
            yield _libpq_variables(admin_conninfo)
        finally:
            with psycopg.connect(admin_conninfo, autocommit=True) as conn:
                conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(PROBE_ROLE)))
        return

    import pgserver

    data_dir = Path(tempfile.mkdtemp(prefix="data_platform_pg_auth_"))
    server = pgserver.get_server(data_dir, cleanup_mode="delete")
    try:
        private_admin = server.get_uri()
        _create_probe_role(private_admin)
        # the superuser keeps its trusted login (pgserver manages the server through it)
        (data_dir / "pg_hba.conf").write_text(
            "local all postgres trust\nlocal all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n"
        )
        with psycopg.connect(private_admin, autocommit=True) as conn:
            conn.execute("select pg_reload_conf()")
        # the postmaster rereads pg_hba.conf on the signal, a moment later
        for _ in range(100):
            if _rejects_wrong_password(private_admin):
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the private test server still accepts a wrong password")
        yield _libpq_variables(private_admin)
    finally:
        server.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)
