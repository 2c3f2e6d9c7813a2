"""`vecmirror run` without --once: the worker, its HTTP server (/metrics, /healthz, /readyz) and the
sampler of queue and index gauges, supervised together.

The HTTP server starts first, so probes answer (not ready: starting) while the model loads. The
worker and its side tasks are named; if a side task dies, the worker is stopped and `run` fails
loudly instead of running on without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
from collections.abc import AsyncIterator, Container, Coroutine, Sequence
from typing import Any

import structlog

from vecmirror.app import App, open_app
from vecmirror.config import Config
from vecmirror.errors import VecmirrorError
from vecmirror.index.manage import index_info
from vecmirror.logging import redact
from vecmirror.ops.metrics import Metrics
from vecmirror.pipeline.embedder import EmbedderFactory
from vecmirror.run.health import HealthApp, HealthServer, Probes
from vecmirror.run.worker import TRANSIENT_ERRORS, Worker
from vecmirror.settings import Settings
from vecmirror.sink.observe import index_state
from vecmirror.source import pooled
from vecmirror.source.listener import ChangeListener
from vecmirror.source.observe import queue_state

log = structlog.get_logger(__name__)
SERVER_CHECK_TIMEOUT = 2.0  # seconds each server has to answer a readiness check


class SideTaskError(VecmirrorError):
    """A background task of the worker died; the worker was stopped."""


async def serve(
    settings: Settings,
    config: Config,
    *,
    stop_signals: Sequence[signal.Signals] = (),
    embedder_factory: EmbedderFactory | None = None,
) -> None:
    metrics = Metrics.for_process()
    probes = Probes(asyncio.get_running_loop())
    async with (
        http_server(settings, HealthApp(metrics.registry, probes)),
        open_app(settings, config, embedder_factory) as app,
    ):
        stop = asyncio.Event()
        worker = app.worker(metrics=metrics)
        probes.set_ready_check(functools.partial(readiness, app, stop, worker.pauses))
        await _run_supervised(app, worker, stop, stop_signals)


@contextlib.asynccontextmanager
async def http_server(settings: Settings, app: HealthApp) -> AsyncIterator[HealthServer | None]:
    """None when VECMIRROR_HTTP_PORT is 0, or when the port is taken: the worker still syncs (its
    probes then fail, which is how an orchestrator hears of it), and the error says why."""
    if settings.http_port == 0:
        yield None
        return
    try:
        server = HealthServer(app, settings.http_host, settings.http_port)
    except OSError as exc:
        log.error("http_server_unavailable", host=settings.http_host, port=settings.http_port, error=str(exc))
        yield None
        return
    server.start()
    try:
        yield server
    finally:
        await asyncio.to_thread(server.close)


async def _run_supervised(
    app: App, worker: Worker, stop: asyncio.Event, stop_signals: Sequence[signal.Signals]
) -> None:
    settings = app.settings
    listener = ChangeListener(settings.require_database_url())
    task = asyncio.create_task(
        worker.run_forever(listener, stop, settings.poll_interval, settings.check_interval),
        name="vecmirror-worker",
    )
    side_tasks = SideTasks(task)
    side_tasks.start(sample_forever(app, worker.metrics, stop), "vecmirror-metrics")
    shutdown = GracefulShutdown(stop, task, settings.shutdown_grace)
    for signum in stop_signals:
        asyncio.get_running_loop().add_signal_handler(signum, shutdown.request)
    try:
        await shutdown.wait()
    finally:
        await side_tasks.close()


class SideTasks:
    """Background tasks beside the worker: when one fails, the worker is cancelled (its batch rolls
    back) and `close` raises, so the process exits non-zero and says which task died."""

    def __init__(self, worker: asyncio.Task[None]) -> None:
        self._worker = worker
        self._tasks: list[asyncio.Task[None]] = []
        self._failed: tuple[str, BaseException] | None = None

    def start(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        task.add_done_callback(self._done)
        self._tasks.append(task)

    def _done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        assert error is not None
        log.error("side_task_failed", task=task.get_name(), error_type=type(error).__name__, error=str(error))
        self._failed = (task.get_name(), error)
        self._worker.cancel()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._failed is not None:
            name, error = self._failed
            raise SideTaskError(f"background task {name} failed: {type(error).__name__}: {error}") from error


class GracefulShutdown:
    """First signal: stop claiming and let the batch in hand finish, for at most `grace` seconds.
    Then, or at a second signal, cancel it: its transaction rolls back, so its changes stay queued
    for the next worker. Either way the process exits 0 and loses nothing."""

    def __init__(self, stop: asyncio.Event, task: asyncio.Task[None], grace: float) -> None:
        self._stop, self._task, self._grace = stop, task, grace

    def request(self) -> None:
        if self._stop.is_set():
            log.warning("shutdown_forced")
            self._task.cancel()
            return
        log.info("shutdown_requested", grace_seconds=self._grace)
        self._stop.set()
        asyncio.get_running_loop().call_later(self._grace, self._task.cancel)

    async def wait(self) -> None:
        try:
            await self._task
        except asyncio.CancelledError:
            if not self._task.cancelled():
                raise  # we ourselves were cancelled, not the worker
            log.warning("shutdown_cancelled_in_flight_batch")


async def sample_forever(app: App, metrics: Metrics, stop: asyncio.Event) -> None:
    """Every VECMIRROR_METRICS_INTERVAL: each mirror's queue (depth, oldest change, dead letters,
    backfill) and index (documents, failures, progress). Server trouble skips a sample."""
    while not stop.is_set():
        try:
            await sample_once(app, metrics)
        except TRANSIENT_ERRORS as exc:
            log.warning("metrics_sample_failed", error_type=type(exc).__name__, error=redact(str(exc)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), app.settings.metrics_interval)


async def sample_once(app: App, metrics: Metrics) -> None:
    async with pooled(app.pool) as conn:
        for sync in app.syncs:
            metrics.queue_sampled(sync.name, await queue_state(conn, sync.name))
    for sync in app.syncs:
        metrics.index_sampled(sync.name, await index_state(app.redis, sync.sink.index_name))


async def readiness(app: App, stop: asyncio.Event, paused: Container[str] = ()) -> list[str]:
    """Problems that make the worker unready; none: ready. The app exists only once every model
    loaded and every migration and index was checked at start. A paused mirror does not make the
    worker unready: it serves the others (its trouble shows in `status` and the metrics)."""
    if stop.is_set():
        return ["stopping: finishing the batch in hand"]
    postgres, redis_ = await asyncio.gather(_postgres_problems(app), _redis_problems(app, paused))
    return postgres + redis_


async def _postgres_problems(app: App) -> list[str]:
    try:
        async with asyncio.timeout(SERVER_CHECK_TIMEOUT), pooled(app.pool) as conn:
            await conn.fetchval("SELECT 1")
    except (*TRANSIENT_ERRORS, TimeoutError) as exc:
        return [f"postgres unreachable: {_describe(exc)}"]
    return []


async def _redis_problems(app: App, paused: Container[str]) -> list[str]:
    """FT.INFO of each mirror's index name, which answers for an alias too (an index rebuilt online
    is queried through one: FT._LIST would not list it)."""
    problems = []
    try:
        async with asyncio.timeout(SERVER_CHECK_TIMEOUT):
            for sync in app.syncs:
                if sync.name not in paused and await index_info(app.redis, sync.sink.index_name) is None:
                    problems.append(f"mirror {sync.name!r}: index {sync.sink.index_name!r} is missing")
    except (*TRANSIENT_ERRORS, TimeoutError) as exc:
        return [f"redis unreachable: {_describe(exc)}"]
    return problems


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return f"no answer within {SERVER_CHECK_TIMEOUT} s"
    return f"{type(exc).__name__}: {redact(str(exc))}"[:300]
