"""The HTTP server of `vecmirror run` (/metrics, /healthz, /readyz) and the supervision of side tasks,
with fake checks: the real ones run in tests/acceptance/test_operations.py."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from vecmirror.ops.metrics import Metrics
from vecmirror.run.health import HealthApp, HealthServer, Probes
from vecmirror.run.serve import SideTaskError, SideTasks


@pytest.fixture
async def server() -> AsyncIterator[tuple[HealthServer, Probes]]:
    probes = Probes(asyncio.get_running_loop())
    server = HealthServer(HealthApp(Metrics(CollectorRegistry()).registry, probes), "127.0.0.1", 0)
    server.start()
    try:
        yield server, probes
    finally:
        await asyncio.to_thread(server.close)


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def get(server: HealthServer, path: str) -> tuple[int, Any]:
    """From a thread, as a prober would: the event loop must stay free to answer."""
    status, body = await asyncio.to_thread(_get, server.port, path)
    return status, (json.loads(body) if path != "/metrics" and status != 404 else body)


async def test_healthz_answers_while_the_loop_runs(server: tuple[HealthServer, Probes]) -> None:
    assert await get(server[0], "/healthz") == (200, {"status": "ok"})


async def test_readyz_follows_the_check(server: tuple[HealthServer, Probes]) -> None:
    http, probes = server
    status, body = await get(http, "/readyz")
    assert status == 503 and body["problems"] == ["starting: loading the models and checking the servers"]

    async def ready() -> list[str]:
        return []

    async def redis_down() -> list[str]:
        return ["redis unreachable: ConnectionError"]

    probes.set_ready_check(ready)
    assert await get(http, "/readyz") == (200, {"status": "ok"})
    probes.set_ready_check(redis_down)
    assert await get(http, "/readyz") == (
        503,
        {"status": "unavailable", "problems": ["redis unreachable: ConnectionError"]},
    )


async def test_a_failing_check_is_an_answer_not_a_crash(server: tuple[HealthServer, Probes]) -> None:
    http, probes = server

    async def broken() -> list[str]:
        raise ZeroDivisionError

    probes.set_ready_check(broken)
    assert await get(http, "/readyz") == (
        503,
        {"status": "unavailable", "problems": ["the readiness check failed: ZeroDivisionError"]},
    )
    assert await get(http, "/healthz") == (200, {"status": "ok"})


async def test_metrics_and_unknown_paths(server: tuple[HealthServer, Probes]) -> None:
    status, text = await get(server[0], "/metrics")
    assert status == 200 and 'vecmirror_build_info{version="' in text
    status, text = await get(server[0], "/nope")
    assert status == 404 and "/metrics" in text


def test_a_closed_loop_is_not_alive() -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    probes = Probes(loop)
    assert probes.live() == ["the event loop did not answer within 5.0 s"]


async def test_a_dead_side_task_stops_the_worker_loudly() -> None:
    async def work() -> None:
        await asyncio.Event().wait()  # until cancelled

    async def sampler() -> None:
        raise KeyError("bug")

    worker = asyncio.create_task(work(), name="worker")
    side_tasks = SideTasks(worker)
    side_tasks.start(sampler(), "vecmirror-metrics")
    with pytest.raises(asyncio.CancelledError):
        await worker
    with pytest.raises(SideTaskError, match="background task vecmirror-metrics failed: KeyError"):
        await side_tasks.close()


async def test_side_tasks_that_end_quietly_are_no_failure() -> None:
    worker = asyncio.create_task(asyncio.sleep(0))
    side_tasks = SideTasks(worker)
    side_tasks.start(asyncio.sleep(3600), "idle")
    await worker
    await side_tasks.close()
    assert not worker.cancelled()
