"""Every third-party module the package imports comes from a distribution pyproject.toml declares.

A module that arrives only as another package's dependency (yaml through dbt) breaks the day that
package stops needing it. Module-level imports need a runtime dependency (the image installs only
those, from requirements.lock); imports inside a function, used by optional paths such as the embedded
Postgres, may come from an optional dependency instead; so may the imports of data_platform/orchestration,
which only the daily image (the `daily` group, requirements-daily.lock) loads.
"""

from __future__ import annotations

import ast
import multiprocessing
import re
import sys
import tomllib
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import packages_distributions

from conftest import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "data_platform"
OPTIONAL_PACKAGE = PACKAGE / "orchestration"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalize(re.match(r"[A-Za-z0-9._-]+", requirement).group())


def declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    runtime = {requirement_name(r) for r in project["dependencies"]}
    optional = {requirement_name(r) for group in project["optional-dependencies"].values() for r in group}
    return runtime, optional


def third_party_imports() -> dict[str, list[tuple[str, bool]]]:
    """{top-level module: [(file:line, imported inside a function)]} for every non-stdlib import.

    Parsed in a fresh interpreter: in a test worker that has run other tests, CPython 3.11's ast.parse
    can fail with "AST constructor recursion depth mismatch" (its recursion counter left off by earlier
    code), which says nothing about the files."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_third_party_imports).result(timeout=120)


def _third_party_imports() -> dict[str, list[tuple[str, bool]]]:
    found: dict[str, list[tuple[str, bool]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        in_functions = {
            id(node)
            for function in ast.walk(tree)
            if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
            for node in ast.walk(function)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top == "data_platform":
                    continue
                where = f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}"
                optional_path = id(node) in in_functions or path.is_relative_to(OPTIONAL_PACKAGE)
                found.setdefault(top, []).append((where, optional_path))
    return found


def test_the_walk_finds_the_package_imports():
    # guards the test below against a walk that finds nothing
    imports = third_party_imports()
    assert {"psycopg", "sqlalchemy", "slack_sdk"} <= set(imports)
    assert all(lazy for _, lazy in imports["pgserver"])


def test_every_imported_module_comes_from_a_declared_distribution():
    runtime, optional = declared()
    providers = packages_distributions()
    problems = []
    for module, places in sorted(third_party_imports().items()):
        distributions = {normalize(name) for name in providers.get(module, [])}
        if not distributions:
            problems.append(f"{module} (imported at {places[0][0]}) is not installed")
            continue
        needed = runtime if not all(lazy for _, lazy in places) else runtime | optional
        if not distributions & needed:
            kind = "dependencies" if needed is runtime else "dependencies or optional-dependencies"
            where = ", ".join(place for place, _ in places)
            problems.append(f"{module} ({where}) comes from {sorted(distributions)}: not in {kind}")
    assert problems == []


def test_the_image_lock_pins_every_runtime_dependency():
    runtime, _ = declared()
    lock = (PROJECT_ROOT / "requirements.lock").read_text()
    pinned = {normalize(line.split("==")[0]) for line in lock.splitlines() if "==" in line}
    assert runtime - pinned == set()
