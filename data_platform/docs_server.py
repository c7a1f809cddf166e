"""The docs site: `dbt docs serve` on DOCS_HOST:DOCS_PORT, in the pipeline's process, after its run."""

from __future__ import annotations

import errno
import os
import signal
import socketserver
import sys
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler
from typing import BinaryIO
from urllib.parse import urlsplit

from data_platform.paths import DBT_ARGS
from data_platform.pipeline_errors import EXIT_CONFIG, PipelineError
from data_platform.pipeline_settings import Settings
from data_platform.steps import step


def check_docs_address(settings: Settings) -> None:
    """Bind DOCS_HOST and DOCS_PORT as `dbt docs serve` does, and let go: a port in use (or a host that
    is not this machine's) is a PipelineError naming them, not dbt's traceback.

    On Linux, both binds may take a port whose last server stopped moments ago (a demo run again right
    after its Ctrl-C: the old connections linger in TIME_WAIT for a minute), as http.server's own server
    may; dbt binds with socketserver's class default, which refuses it. A port a server listens on stays
    refused there; not on macOS or Windows, where the same flag lets a bind share a port in use.
    """
    if sys.platform == "linux":
        socketserver.TCPServer.allow_reuse_address = True
    try:
        with socketserver.TCPServer(
            (settings.docs_host, settings.docs_port), socketserver.BaseRequestHandler
        ):
            pass
    except OSError as error:
        raise _unservable(settings, error) from None


def _unservable(settings: Settings, error: OSError) -> PipelineError:
    return PipelineError(
        f"the docs cannot be served on DOCS_HOST={settings.docs_host} DOCS_PORT={settings.docs_port}: "
        f"{error.strerror or error}",
        EXIT_CONFIG,
    )


def serve_docs(settings: Settings) -> None:
    """Serve the docs in this process until SIGINT or SIGTERM (the container's signals) ends it."""
    # again: the port may have been taken while the pipeline ran (dbt binds it a moment after this check)
    check_docs_address(settings)
    step(f"serving the dbt docs on http://{settings.docs_host}:{settings.docs_port}")
    # dbt turns Ctrl-C into a traceback and exit 2: stopping the server is its normal end, said in words
    # (set before dbt's import, which takes seconds)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop_serving)
    import dbt.task.docs.serve
    from dbt.cli.main import dbtRunner

    dbt.task.docs.serve.SimpleHTTPRequestHandler = DocsSiteHandler
    args = ["docs", "serve", *DBT_ARGS, "--host", settings.docs_host, "--port", str(settings.docs_port)]
    error = dbtRunner().invoke([*args, "--no-browser"]).exception
    if isinstance(error, OSError) and error.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
        raise _unservable(settings, error)  # taken between the check and dbt's bind
    raise PipelineError(f"dbt docs serve ended: {error or 'see its output above'}")


# what the docs page loads; dbt serves its whole target folder, which holds more than the site shows: the
# run results with their error messages, the SQL each run ran, dbt's parse cache
SITE_PATHS = frozenset({"/", "/index.html", "/manifest.json", "/catalog.json"})


class DocsSiteHandler(SimpleHTTPRequestHandler):
    """The standard library's handler that dbt serves with, answering only the site's own files, and
    logging a request only when it failed: the container's health check asks for the page every 10 s, and
    a line each would bury the alert lines in `docker compose logs dbt`."""

    def send_head(self) -> BinaryIO | None:
        if urlsplit(self.path).path not in SITE_PATHS:
            self.send_error(HTTPStatus.NOT_FOUND)
            return None
        return super().send_head()

    def list_directory(self, path: str) -> None:  # "/" without an index.html: the folder's names
        self.send_error(HTTPStatus.NOT_FOUND)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if isinstance(code, int) and code < HTTPStatus.BAD_REQUEST:
            return
        super().log_request(code, size)


def _stop_serving(signum: int, _frame: object) -> None:
    # os.write, not print: a print interrupted here, or to a closed pipe, would raise and keep it serving
    try:
        os.write(2, f"pipeline: the docs server stopped ({signal.Signals(signum).name}).\n".encode())
    except OSError:
        pass
    finally:
        os._exit(128 + signum)  # nothing to clean up: the run's work is committed, the server keeps no state
