"""The docs site, end to end: init.sh with SERVE_DOCS on (as in the container) and the no-Docker demo
command, each checked in headless Chromium.

The rendered page is read back from Chromium (the dbt docs site is a JavaScript app, so the served
HTML alone proves nothing) and a screenshot is kept in test-artifacts/ for people to look at.
"""

from __future__ import annotations

import contextlib
import functools
import html
import http.server
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from conftest import PROJECT_ROOT, pipeline_env
from test_pipeline import write_fixture

from data_platform import docs_server

ARTIFACTS = PROJECT_ROOT / "test-artifacts"
FACT = "fct_organization_daily_financials"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

chromium = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    chromium is None and not os.environ.get("CI"), reason="chromium is not installed (.ci/run installs it)"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Served:
    url: str
    returncode: int | None = None  # once stopped


@contextlib.contextmanager
def serving(
    command: list[str],
    env: dict[str, str],
    port: int,
    timeout: float = 600,
    cwd: Path = PROJECT_ROOT,
    stop_signal: int = signal.SIGTERM,
) -> Iterator[Served]:
    """Start `command`, wait until http://127.0.0.1:port answers, yield it, then stop it with `stop_signal`
    (its output: server_log(port), its exit code: the Served's returncode)."""
    log = server_log(port)
    ARTIFACTS.mkdir(exist_ok=True)
    with log.open("w") as output:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        served = Served(f"http://127.0.0.1:{port}/")
        url = served.url
        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    pytest.fail(f"exited with {process.returncode} before serving docs:\n{log.read_text()}")
                with contextlib.suppress(OSError):
                    urllib.request.urlopen(url, timeout=2).close()
                    break
                if time.monotonic() > deadline:
                    pytest.fail(f"docs did not answer within {timeout}s:\n{log.read_text()}")
                time.sleep(1)
            yield served
        finally:
            os.killpg(process.pid, stop_signal)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            served.returncode = process.returncode


def server_log(port: int) -> Path:
    return ARTIFACTS / f"server-{port}.log"


def run_chromium(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    assert chromium, "chromium is required for this test"
    profile = tmp_path / "chromium-profile"
    return subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=20000", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


def png_distinct_bytes(path: Path) -> int:
    """How many distinct byte values the decompressed image data holds (a blank page has very few)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, compressed = 8, b""
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        if kind == b"IDAT":
            compressed += data[position + 8 : position + 8 + length]
        position += 12 + length
    return len(set(zlib.decompress(compressed)))


def documented_fact_columns(target_path: Path) -> dict[str, str]:
    """The fact's columns and their rendered descriptions, from the manifest the docs site serves."""
    manifest = json.loads((target_path / "manifest.json").read_text())
    fact = manifest["nodes"][f"model.data_platform.{FACT}"]
    return {name: column["description"] for name, column in fact["columns"].items()}


def first_words(description: str, count: int = 4) -> str:
    """The description's first words, as plain text (the page renders its markdown)."""
    return " ".join(description.replace("`", " ").split()[:count])


def assert_docs_render_the_fact(url: str, tmp_path: Path, screenshot_name: str, target_path: Path) -> None:
    page = f"{url}#!/model/model.data_platform.{FACT}"
    dom = run_chromium("--dump-dom", page, tmp_path=tmp_path)
    assert dom.returncode == 0, dom.stderr
    text = " ".join(re.sub(r"<[^>]+>", " ", html.unescape(dom.stdout)).split())
    assert FACT in text
    columns = documented_fact_columns(target_path)
    assert len(columns) >= 9
    for column, description in columns.items():
        assert description, f"column {column} has no description"
        assert first_words(description) in text, f"the description of {column} is not on the page"

    screenshot = ARTIFACTS / screenshot_name
    screenshot.unlink(missing_ok=True)
    shot = run_chromium(f"--screenshot={screenshot}", "--window-size=1400,1000", page, tmp_path=tmp_path)
    assert shot.returncode == 0, shot.stderr
    assert screenshot.exists() and screenshot.stat().st_size > 10_000
    assert png_distinct_bytes(screenshot) > 32, "the docs screenshot is blank"


def test_blank_png_detection_can_fail(tmp_path):
    # proves the non-blank check has teeth: a one-colour image fails it
    raw = b"".join(b"\x00" + b"\xff\xff\xff" * 20 for _ in range(20))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    blank = tmp_path / "blank.png"
    header = struct.pack(">IIBBBBB", 20, 20, 8, 2, 0, 0, 0)
    blank.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    assert png_distinct_bytes(blank) <= 32


@pytest.mark.slow
@needs_chromium
def test_init_sh_serves_docs_that_render_the_fact(make_database, tmp_path):
    database = make_database()
    port = free_port()
    env = pipeline_env(
        database,
        write_fixture(tmp_path / "csv"),
        SERVE_DOCS="true",
        DOCS_HOST="127.0.0.1",
        DOCS_PORT=str(port),
    )
    with serving(["bash", "init.sh"], env, port) as served:
        assert_docs_render_the_fact(served.url, tmp_path, "docs-init-sh.png", Path(env["DBT_TARGET_PATH"]))


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "docker-stop"])
def test_the_docs_server_logs_only_failed_requests_and_stops_in_words_with_128_plus_the_signal(
    make_database, tmp_path, stop
):
    port = free_port()
    env = pipeline_env(
        make_database(), write_fixture(tmp_path / "csv"), SERVE_DOCS="true", DOCS_PORT=str(port)
    )
    env["RUN_ALERTS"] = "false"
    with serving(["bash", "init.sh"], env, port, stop_signal=stop) as served:
        # with no DOCS_HOST, this machine only: the site shows every compiled model (the container sets
        # 0.0.0.0 and publishes the port on 127.0.0.1)
        listening = {c.laddr.ip for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port}
        assert listening == {"127.0.0.1"}
        page = urllib.request.urlopen(served.url, timeout=10)
        assert b"dbt" in page.read()
        page.close()
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(served.url + "no-such-page", timeout=10)
        # the run's own results lie in the folder dbt serves, not on the site
        assert (Path(env["DBT_TARGET_PATH"]) / "run_results.json").exists()
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(served.url + "run_results.json", timeout=10)
        urllib.request.urlopen(served.url + "manifest.json", timeout=10).close()
    output = server_log(port).read_text()
    # the container's health check asks for the page every 10 s: those lines would bury the alerts'
    assert '"GET / HTTP/1.1" 200' not in output
    assert '"GET /no-such-page HTTP/1.1" 404' in output
    assert f"pipeline: the docs server stopped ({signal.Signals(stop).name})." in output
    # (a traceback of a request whose client hung up, such as the readiness probe's, is the server's own)
    assert "KeyboardInterrupt" not in output and "Encountered an error" not in output
    assert served.returncode == 128 + stop


def test_the_docs_server_answers_only_the_files_of_the_site(tmp_path):
    """dbt serves its whole target folder: beside the site's page, manifest and catalog lie the run
    results (with error messages quoting rows), the SQL each run ran and dbt's parse cache."""
    target = tmp_path / "target"
    (target / "compiled" / "data_platform").mkdir(parents=True)
    site = {"index.html": b"<html>dbt</html>", "manifest.json": b"{}", "catalog.json": b"{}"}
    other = ["run_results.json", "partial_parse.msgpack", "compiled/data_platform/fct.sql", "graph.gpickle"]
    for name, body in site.items():
        (target / name).write_bytes(body)
    for name in other:
        (target / name).write_bytes(b"not for the site")
    handler = functools.partial(docs_server.DocsSiteHandler, directory=str(target))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        try:
            # the page asks for its data with a cache-busting query
            for path, body in [
                ("", site["index.html"]),
                ("manifest.json?cb=1", b"{}"),
                ("catalog.json", b"{}"),
            ]:
                with urllib.request.urlopen(base + path, timeout=10) as answer:
                    assert answer.read() == body, path
            for path in [
                *other,
                "compiled/",
                "compiled/data_platform/",
                "./run_results.json",
                "%72un_results.json",
            ]:
                with pytest.raises(urllib.error.HTTPError) as refused:
                    urllib.request.urlopen(base + path, timeout=10)
                assert refused.value.code == 404, path
            # nor, without the page, the folder's names
            (target / "index.html").unlink()
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(base, timeout=10)
            assert refused.value.code == 404
        finally:
            server.shutdown()


@pytest.mark.slow
@needs_chromium
def test_demo_command_starts_an_embedded_database_and_serves_the_docs(tmp_path):
    port = free_port()
    # run as root, pgserver's server runs as a user of its own: its folder is not under pytest's, which
    # another pytest session on the machine makes root's only again (as conftest's servers)
    workdir = Path(tempfile.mkdtemp(prefix="data_platform_demo_"))
    data_dir = workdir / "pgdata"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        DEMO_PGDATA="pgdata",  # relative: the caller's folder, as for `bootstrap stop --data-dir` below
        DOCS_PORT=str(port),
        DBT_TARGET_PATH=str(tmp_path / "target"),
        DBT_LOG_PATH=str(tmp_path / "logs"),
    )
    try:
        with serving(["bash", str(PROJECT_ROOT / "scripts" / "demo.sh")], env, port, cwd=workdir) as served:
            assert_docs_render_the_fact(served.url, tmp_path, "docs-demo.png", tmp_path / "target")
    finally:
        # the demo leaves its server running on purpose; the README's command stops it
        stop = [sys.executable, "-m", "data_platform.bootstrap", "stop", "--data-dir", "pgdata"]
        stopped = subprocess.run(stop, capture_output=True, text=True, timeout=60, cwd=workdir)
        server_left = (data_dir / "postmaster.pid").exists()
        if not server_left:  # else kept, to look at
            shutil.rmtree(workdir)
    assert stopped.stdout.strip() == "stopped pgdata", stopped.stderr
    assert not server_left
    assert not [
        p for p in psutil.process_iter(["cmdline"]) if str(data_dir) in " ".join(p.info["cmdline"] or [])
    ]
