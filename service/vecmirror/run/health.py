"""The small HTTP server of `vecmirror run`: /metrics, /healthz and /readyz, in a thread of its own.

The event loop never waits on a scrape or a probe. A probe asks the loop instead: /healthz passes
when the loop runs a no-op within `LOOP_TIMEOUT` (a blocked or dead loop fails it); /readyz runs the
readiness check on the loop (Postgres and Redis answer, models loaded, indexes present), each check
with a short timeout, and caches the answer for `READY_CACHE` seconds so probes from several
places cost one check.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import structlog
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

log = structlog.get_logger(__name__)
LOOP_TIMEOUT = 5.0  # seconds the event loop may take to run a no-op before /healthz fails
READY_CACHE = 1.0  # seconds a readiness answer is reused
READY_TIMEOUT = 5.0  # seconds a readiness check may take in all (each server check has its own)
# Problems (an empty list: ready). Runs on the event loop.
ReadyCheck = Callable[[], Awaitable[list[str]]]
StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class Probes:
    """Liveness and readiness, asked from the server's threads, answered by the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._check: ReadyCheck | None = None
        self._lock = threading.Lock()
        self._cached: tuple[float, list[str]] | None = None
        self._was_ready: bool | None = None

    def set_ready_check(self, check: ReadyCheck) -> None:
        """Until this is called the process is starting: loading models, checking the servers."""
        self._check = check
        self._cached = None

    def live(self) -> list[str]:
        try:
            self._on_loop(lambda: asyncio.sleep(0), LOOP_TIMEOUT)
        except (FutureTimeout, RuntimeError):  # RuntimeError: the loop is closed
            return [f"the event loop did not answer within {LOOP_TIMEOUT} s"]
        return []

    def ready(self) -> list[str]:
        with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < READY_CACHE:
                return self._cached[1]
            problems = self._check_now()
            self._cached = (time.monotonic(), problems)
            self._log_change(problems)
            return problems

    def _check_now(self) -> list[str]:
        if self._check is None:
            return ["starting: loading the models and checking the servers"]
        try:
            problems: list[str] = self._on_loop(self._check, READY_TIMEOUT)
        except (FutureTimeout, RuntimeError):
            return [f"the readiness check did not finish within {READY_TIMEOUT} s"]
        except Exception as exc:  # a bug in a check must still give an answer, and be seen
            log.exception("readiness_check_failed", error_type=type(exc).__name__)
            return [f"the readiness check failed: {type(exc).__name__}"]
        return problems

    def _on_loop(self, make: Callable[[], Awaitable[Any]], timeout: float) -> Any:
        """Runs `make()` on the event loop and waits for its result in this thread."""
        coroutine = _awaited(make)
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        except RuntimeError:  # the loop is closed
            coroutine.close()
            raise
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise

    def _log_change(self, problems: list[str]) -> None:
        ready = not problems
        if ready != self._was_ready and self._check is not None:
            log.info("readiness_changed", ready=ready, problems=problems)
            self._was_ready = ready


async def _awaited(make: Callable[[], Awaitable[Any]]) -> Any:
    return await make()


class HealthApp:
    """The WSGI app: /metrics from the registry, /healthz and /readyz as JSON."""

    def __init__(self, registry: CollectorRegistry, probes: Probes) -> None:
        self._metrics = make_wsgi_app(registry)
        self._probes = probes

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            result: Iterable[bytes] = self._metrics(environ, start_response)
            return result
        if path == "/healthz":
            return _answer(start_response, self._probes.live())
        if path == "/readyz":
            return _answer(start_response, self._probes.ready())
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics, /healthz or /readyz\n"]


def _answer(start_response: StartResponse, problems: list[str]) -> list[bytes]:
    body = {"status": "ok"} if not problems else {"status": "unavailable", "problems": problems}
    status = "200 OK" if not problems else "503 Service Unavailable"
    start_response(status, [("Content-Type", "application/json")])
    return [json.dumps(body).encode() + b"\n"]


class _QuietHandler(WSGIRequestHandler):
    """No access log: probes every few seconds would drown the worker's own events."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingWSGIServer):
    def handle_error(self, *_: Any) -> None:
        """A failed request (a client that hung up) is logged as an event, not printed raw."""
        log.warning("http_request_failed", exc_info=True)


class HealthServer:
    def __init__(self, app: HealthApp, host: str, port: int) -> None:
        self._server = make_server(host, port, app, _Server, handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="vecmirror-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def start(self) -> None:
        self._thread.start()
        log.info("http_server_started", port=self.port, paths=["/metrics", "/healthz", "/readyz"])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
