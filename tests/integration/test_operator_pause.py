"""An operator's pause (`vecmirror pause` / `resume`, migration 0008): capture keeps queueing, a
running worker leaves the paused mirror alone within a poll interval while the others keep syncing,
`status` and the metric say so, and `resume` drains what was queued meanwhile. The CLI refuses an
unknown mirror, and a Postgres that is down, in one line with exit 2."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import redis

from helpers import keys, sync_once, two_mirrors
from processes import running_worker, vecmirror
from vecmirror.app import open_app
from vecmirror.commands import pause_command, resume_command, status_command

POLL = 0.2


async def _eventually(condition: Any, what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _queued(pg: asyncpg.Connection, mirror: str) -> int:
    count: int = await pg.fetchval("SELECT count(*) FROM vecmirror.changes_v1 WHERE mirror = $1", mirror)
    return count


async def test_a_running_worker_leaves_a_paused_mirror_alone_until_resume(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    database_url: str,
    write_config: Any,
    settings_for: Any,
    cli_env: dict[str, str],
) -> None:
    path, settings, config = await two_mirrors(pg, write_config, settings_for, POLL)
    async with open_app(settings, config) as app:
        worker = app.worker()
        paused_metric = worker.metrics.mirror_operator_paused
        async with running_worker(worker, database_url, POLL):
            await _eventually(lambda: {"product:a", "part:a"} <= keys(redis_client, "*"), "the first sync")

            result = await pause_command(settings, config, "products", "reindex tonight")
            assert result.paused and result.since is not None
            # The running worker notices within a poll interval (the pause also wakes it).
            await _eventually(
                lambda: worker.operator_paused == {"products"}, "the worker to see the pause", 2
            )
            assert paused_metric.labels("products")._value.get() == 1
            assert paused_metric.labels("parts")._value.get() == 0

            # Capture keeps queueing; the other mirror keeps syncing.
            await pg.execute(
                "INSERT INTO products VALUES ('b', 'B', 2, '{1,0,0,0}'), ('c', 'C', 3, '{0,1,0,0}')"
            )
            await pg.execute("UPDATE products SET name = 'A2' WHERE sku = 'a'")
            await pg.execute("INSERT INTO parts VALUES ('b', 'B', 2, '{1,0,0,0}')")
            await _eventually(lambda: "part:b" in keys(redis_client, "part:*"), "parts to keep syncing")
            await asyncio.sleep(5 * POLL)  # several wake-ups: none touches the paused mirror
            assert keys(redis_client, "product:*") == {"product:a"}
            assert redis_client.hget("product:a", "name") == b"A"
            assert await _queued(pg, "products") == 3

            [products, parts] = await status_command(settings, config)
            assert (products.state, products.queue.operator_pause_reason, products.queue.pending) == (
                "paused",
                "reindex tonight",
                3,
            )
            assert (parts.state, parts.queue.operator_paused_at) == ("ok", None)
            shown = json.loads(vecmirror(cli_env, "status", "--json", "--config", str(path)).stdout)
            assert shown[0]["state"] == "paused" and shown[0]["pending"] == 3
            assert shown[0]["operator_pause"]["reason"] == "reindex tonight"
            assert shown[0]["operator_pause"]["since"].endswith("Z")
            assert shown[1]["operator_pause"] is None
            table = vecmirror(cli_env, "status", "--config", str(path))
            assert table.returncode == 0, table.stderr
            [line] = [
                x for x in table.stdout.splitlines() if x.startswith("products: paused by the operator")
            ]
            assert "reindex tonight; 3 changes pending" in line

            resumed = await resume_command(settings, config, "products")
            assert resumed.paused and resumed.pending == 3
            await _eventually(
                lambda: keys(redis_client, "product:*") == {"product:a", "product:b", "product:c"},
                "the writes made while paused",
            )
            await _eventually(lambda: redis_client.hget("product:a", "name") == b"A2", "the update")
            assert worker.operator_paused == set()
            assert paused_metric.labels("products")._value.get() == 0
        assert await _queued(pg, "products") == 0
        [products, _] = await status_command(settings, config)
        assert (products.state, products.queue.operator_paused_at, products.queue.pending) == ("ok", None, 0)


async def test_run_once_leaves_a_paused_mirror_queued(
    pg: asyncpg.Connection, redis_client: redis.Redis, write_config: Any, settings_for: Any
) -> None:
    _, settings, config = await two_mirrors(pg, write_config, settings_for, POLL)
    await pause_command(settings, config, "parts", None)
    await pause_command(settings, config, "parts", "again")  # the first time stays, the reason changes
    await pg.execute("INSERT INTO parts VALUES ('b', 'B', 2, '{1,0,0,0}')")  # captured, queued
    stats = await sync_once(settings, config)  # returns: the paused mirror is not waited for
    assert stats.by_mirror == {"products": 1}
    assert keys(redis_client, "part:*") == set()
    assert await _queued(pg, "parts") == 1
    reason = await pg.fetchval("SELECT operator_pause_reason FROM vecmirror.mirrors_v1 WHERE name = 'parts'")
    assert reason == "again"

    await resume_command(settings, config, "parts")
    assert (await resume_command(settings, config, "parts")).paused is False  # not paused any more
    await sync_once(settings, config)  # the walk over its rows waited too: it runs now
    assert keys(redis_client, "part:*") == {"part:a", "part:b"}


async def test_the_cli_pauses_resumes_and_refuses_in_one_line(
    pg: asyncpg.Connection, write_config: Any, settings_for: Any, cli_env: dict[str, str]
) -> None:
    path, _, _ = await two_mirrors(pg, write_config, settings_for, POLL)
    args = ["--config", str(path)]

    paused = vecmirror(cli_env, "pause", "products", "--reason", "load test", *args)
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.startswith("mirror 'products' paused") and "0 changes pending" in paused.stdout
    row = await pg.fetchrow(
        "SELECT operator_paused_at, operator_pause_reason FROM vecmirror.mirrors_v1 WHERE name = 'products'"
    )
    assert (
        row is not None
        and row["operator_paused_at"] is not None
        and row["operator_pause_reason"] == "load test"
    )

    resumed = vecmirror(cli_env, "resume", "products", *args)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith("mirror 'products' resumed")
    assert (
        await pg.fetchval("SELECT operator_paused_at FROM vecmirror.mirrors_v1 WHERE name = 'products'")
        is None
    )

    for command in (["pause", "nope", "--reason", "x"], ["resume", "nope"]):
        refused = vecmirror(cli_env, *command, *args)
        assert refused.returncode == 2
        assert refused.stderr.startswith("vecmirror: no mirror 'nope' in the mirrors file")
        assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr

    down = {**cli_env, "VECMIRROR_DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none"}
    for command in (["pause", "products"], ["resume", "products"]):
        refused = vecmirror(down, *command, *args)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.startswith("vecmirror: ") and "Traceback" not in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    # Nothing was paused by the refusals.
    assert (
        await pg.fetchval("SELECT count(*) FROM vecmirror.mirrors_v1 WHERE operator_paused_at IS NOT NULL")
        == 0
    )
