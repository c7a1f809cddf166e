"""data_platform.engines.build's settings (its builds are compared with Postgres's in test_engines_equal)."""

from __future__ import annotations

from conftest import PROJECT_ROOT

from data_platform.engines import build


def test_an_engine_build_writes_dbt_output_beside_the_postgres_builds(monkeypatch):
    # dbt/target is the Postgres build's: its manifest and the docs site the pipeline serves
    monkeypatch.delenv("DBT_TARGET_PATH", raising=False)
    for engine in build.ENGINES:
        assert build.environment(engine)["DBT_TARGET_PATH"] == str(PROJECT_ROOT / "dbt" / f"target-{engine}")
    monkeypatch.setenv("DBT_TARGET_PATH", "/elsewhere")
    assert build.environment("duckdb")["DBT_TARGET_PATH"] == "/elsewhere"
