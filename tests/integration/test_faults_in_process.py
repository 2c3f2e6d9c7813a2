"""Faults injected into an in-process worker on real servers; invariant P must hold afterwards.

Subprocess faults (SIGKILL, SIGSTOP, server restarts) are in tests/acceptance/test_faults_processes.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

import asyncpg
import redis

from helpers import DOCS_MIRROR, DOCS_TABLE, PRODUCTS_MIRROR, PRODUCTS_TABLE, keys, sync_once
from invariant import assert_invariant
from vecmirror.app import open_app
from vecmirror.commands import migrate_command


async def _products(pg: asyncpg.Connection, write_config: Any, settings_for: Any, **overrides: Any) -> Any:
    await pg.execute(PRODUCTS_TABLE)
    path, config = write_config([PRODUCTS_MIRROR])
    settings = settings_for(path, **overrides)
    await migrate_command(settings, config)
    return settings, config


async def test_a_bad_row_is_retried_with_backoff_then_dead_lettered_and_a_fixed_one_recovers(
    pg: asyncpg.Connection, redis_url: str, write_config: Any, settings_for: Any
) -> None:
    settings, config = await _products(
        pg, write_config, settings_for, row_retry_backoff=0.4, row_max_attempts=3
    )
    await pg.execute(
        "INSERT INTO products VALUES ('ok', 'Fine', 1, '{1,2,3,4}'), ('bad', 'Bad', 1, '{1,2}'),"
        " ('fixme', 'Fixed later', 1, '{1}')"
    )
    async with open_app(settings, config) as app:
        worker = app.worker()
        await worker.prepare()
        first = await worker.drain()
        assert first.failed == 2
        failing = await pg.fetch(
            "SELECT row_key, attempts, retry_at FROM vecmirror.failed_v1 ORDER BY row_key"
        )
        now = datetime.now(UTC)
        assert [(r["row_key"], r["attempts"]) for r in failing] == [(["bad"], 1), (["fixme"], 1)]
        assert all(0.1 < (r["retry_at"] - now).total_seconds() <= 0.4 for r in failing)
        delayed = await pg.fetchval("SELECT count(*) FROM vecmirror.changes_v1 WHERE not_before > now()")
        assert delayed == 2  # each waits for its next attempt, unclaimable until then
        assert (await worker.drain()).changes == 0
        await pg.execute("UPDATE products SET vec = '{4,3,2,1}' WHERE sku = 'fixme'")
        await worker.run_once()  # waits for the delayed attempts: 0.4 s, then 0.8 s
    dead = await pg.fetchrow("SELECT row_key, attempts, retry_at, field, error FROM vecmirror.failed_v1")
    assert (dead["row_key"], dead["attempts"], dead["retry_at"], dead["field"]) == (["bad"], 3, None, "vec")
    assert dead["error"] == "the vector has 2 values, the index expects dims=4"
    await assert_invariant(pg, redis_url, config.mirrors[0], poison={("bad",)})


async def test_poison_rows_each_land_in_the_dead_letter_table_with_a_clear_error(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    redis_url: str,
    write_config: Any,
    settings_for: Any,
    embedder_factory: Any,
) -> None:
    await pg.execute(DOCS_TABLE)
    await pg.execute("ALTER TABLE docs ADD COLUMN rank text")
    numeric_rank = {"name": "rank", "type": "numeric"}
    docs = {
        **DOCS_MIRROR,
        "index": {**DOCS_MIRROR["index"], "fields": [*DOCS_MIRROR["index"]["fields"], numeric_rank]},
    }
    path, config = write_config([docs])
    settings = settings_for(path, max_text_length=500)
    await migrate_command(settings, config)
    await pg.execute(
        "INSERT INTO docs (id, title, content, genre, rank) VALUES"
        " (1, 'Fine', 'A good row', 'x', '3'), (2, 'No text', NULL, 'x', '1'),"
        " (3, 'Huge', repeat('word ', 200), 'x', '1'), (4, 'Rank', 'Text', 'x', 'first'),"
        " (5, 'Also fine', 'Another good row', 'y', NULL)"
    )
    await sync_once(settings, config, embedder_factory)
    errors = {
        r["row_key"][0]: (r["field"], r["error"], r["attempts"])
        for r in await pg.fetch("SELECT row_key, field, error, attempts FROM vecmirror.failed_v1")
    }
    attempts = settings.row_max_attempts
    assert errors["2"] == ("content", "column 'content' is NULL, the template needs it", attempts)
    assert errors["3"][0] == "embedding" and "1006 characters long, over the limit of 500" in errors["3"][1]
    assert errors["4"][0] == "rank" and "first" in errors["4"][1]
    assert set(errors) == {"2", "3", "4"}
    assert keys(redis_client, "doc:*") == {"doc:1", "doc:5"}
    poison = {("2",), ("3",), ("4",)}
    await assert_invariant(pg, redis_url, config.mirrors[0], poison=poison, max_text_length=500)


async def test_redis_connections_killed_during_writes_lose_nothing_and_fail_no_row(
    pg: asyncpg.Connection, redis_client: redis.Redis, redis_url: str, write_config: Any, settings_for: Any
) -> None:
    settings, config = await _products(pg, write_config, settings_for, batch_size=50, error_backoff=0.05)
    await pg.execute(
        "INSERT INTO products SELECT 'p' || g, 'Product ' || g, g, ARRAY[g, 1, 2, 3]::real[]"
        " FROM generate_series(1, 3000) g"
    )
    kills = 0

    async def kill_connections() -> None:
        nonlocal kills
        while True:
            await asyncio.sleep(0.05)  # often enough to hit most batches, rarely enough to let them finish
            kills += redis_client.client_kill_filter(_type="normal", skipme=True)

    async with open_app(settings, config) as app:
        killer = asyncio.create_task(kill_connections())
        try:
            await app.worker().run_once()
        finally:
            killer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await killer
    assert kills > 0
    await assert_invariant(pg, redis_url, config.mirrors[0])


async def test_a_flushed_redis_and_keys_deleted_behind_our_back_are_repaired(
    pg: asyncpg.Connection, redis_client: redis.Redis, redis_url: str, write_config: Any, settings_for: Any
) -> None:
    settings, config = await _products(pg, write_config, settings_for)
    await pg.execute(
        "INSERT INTO products SELECT 'p' || g, 'Product ' || g, g, ARRAY[g, 1, 2, 3]::real[]"
        " FROM generate_series(1, 50) g"
    )
    async with open_app(settings, config) as app:
        worker = app.worker()
        await worker.run_once()
        redis_client.delete("product:p7", "product:p8")
        [check] = await worker.check_mirrors()
        assert (check.rows, check.documents, check.drifted) == (50, 48, True)
        await worker.drain()
        await assert_invariant(pg, redis_url, config.mirrors[0])

        redis_client.flushall()  # a restart without persistence looks the same
        await pg.execute("UPDATE products SET price = price + 100 WHERE sku = 'p1'")
        await worker.run_once()  # the write is refused for want of the marker: resync
        await assert_invariant(pg, redis_url, config.mirrors[0])
        assert float(redis_client.hget("product:p1", "price") or 0) == 101

        redis_client.flushall()
        [check] = await worker.check_mirrors()  # an idle worker notices it too
        await worker.run_once()
        await assert_invariant(pg, redis_url, config.mirrors[0])


async def test_a_truncate_clears_the_failing_rows_it_removed(
    pg: asyncpg.Connection, redis_url: str, write_config: Any, settings_for: Any
) -> None:
    settings, config = await _products(pg, write_config, settings_for)
    await pg.execute("INSERT INTO products VALUES ('ok', 'Fine', 1, '{1,2,3,4}'), ('bad', 'Bad', 1, '{1,2}')")
    await sync_once(settings, config)
    assert await pg.fetchval("SELECT count(*) FROM vecmirror.failed_v1") == 1
    await pg.execute("TRUNCATE products")
    await pg.execute("INSERT INTO products VALUES ('new', 'New', 1, '{1,2,3,4}')")
    await sync_once(settings, config)
    await assert_invariant(pg, redis_url, config.mirrors[0])  # no dead letter left for a gone row
