"""A mirror's own trouble pauses that mirror only, named; the others keep syncing; it resumes by
itself once the trouble is gone. And what Redis forgot (a flush, an index dropped by hand) is noticed
by an idle worker within a poll interval and refilled."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import asyncpg
import pytest
import redis

from helpers import PARTS_MIRROR, PRODUCTS_MIRROR, PRODUCTS_TABLE, keys, two_mirrors
from invariant import assert_invariant
from processes import running_worker
from vecmirror.app import open_app
from vecmirror.commands import migrate_command
from vecmirror.run.worker import MirrorsPausedError


async def _eventually(condition: Any, what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await _truth(condition()):
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _truth(value: Any) -> bool:
    return bool(await value) if inspect.isawaitable(value) else bool(value)


async def _mirror_error(pg: asyncpg.Connection, name: str) -> str | None:
    error: str | None = await pg.fetchval("SELECT error FROM vecmirror.mirrors_v1 WHERE name = $1", name)
    return error


async def test_a_lost_column_pauses_its_mirror_only_and_it_resumes_when_the_column_is_back(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    redis_url: str,
    database_url: str,
    write_config: Any,
    settings_for: Any,
) -> None:
    _, settings, config = await two_mirrors(pg, write_config, settings_for, 0.2)
    async with open_app(settings, config) as app:
        worker = app.worker()
        async with running_worker(worker, database_url, 0.2):
            await _eventually(lambda: _has(redis_client, {"product:a", "part:a"}), "the first sync")
            await pg.execute("ALTER TABLE parts RENAME COLUMN price TO cost")
            await pg.execute("INSERT INTO parts (sku, name, cost, vec) VALUES ('b', 'B', 2, '{1,1,1,1}')")
            await _eventually(lambda: _paused(pg, "parts"), "parts to pause")
            error = await _mirror_error(pg, "parts")
            assert error is not None and "price" in error, error
            assert worker.metrics.mirror_paused.labels("parts")._value.get() == 1
            for n in range(3):  # products keeps syncing all along
                await pg.execute("INSERT INTO products VALUES ($1, 'P', 1, '{1,2,3,4}')", f"p{n}")
                await _eventually(lambda n=n: _has(redis_client, {f"product:p{n}"}), f"product p{n}", 5)
            assert keys(redis_client, "part:*") == {"part:a"}
            await pg.execute("ALTER TABLE parts RENAME COLUMN cost TO price")
            await _eventually(lambda: _has(redis_client, {"part:b"}), "parts to catch up")
            await _eventually(lambda: _not_paused(pg, "parts"), "the error to clear")
            assert worker.metrics.mirror_paused.labels("parts")._value.get() == 0
    for mirror in config.mirrors:
        await assert_invariant(pg, redis_url, mirror)


async def test_a_key_column_of_a_new_type_is_picked_up_after_the_pause(
    pg: asyncpg.Connection, redis_client: redis.Redis, redis_url: str, write_config: Any, settings_for: Any
) -> None:
    """A type change of the key column breaks the statements built at start; the mirror's next
    attempt checks the table again and builds them anew."""
    await pg.execute("CREATE TABLE parts (sku integer PRIMARY KEY, name text, price numeric, vec real[])")
    await pg.execute(PRODUCTS_TABLE)
    path, config = write_config([PRODUCTS_MIRROR, PARTS_MIRROR])
    settings = settings_for(path, error_backoff=0.05)
    await migrate_command(settings, config)
    await pg.execute("INSERT INTO parts VALUES (1, 'One', 1, '{1,2,3,4}')")
    async with open_app(settings, config) as app:
        worker = app.worker()
        await worker.run_once()
        await pg.execute("ALTER TABLE parts ALTER COLUMN sku TYPE text")
        await pg.execute("INSERT INTO parts VALUES ('x2', 'Two', 2, '{1,2,3,4}')")
        await pg.execute("INSERT INTO products VALUES ('p', 'P', 1, '{1,2,3,4}')")
        await worker.run_once()
    assert keys(redis_client, "part:*") == {"part:1", "part:x2"}
    assert keys(redis_client, "product:*") == {"product:p"}
    for mirror in config.mirrors:
        await assert_invariant(pg, redis_url, mirror)


async def test_run_once_drains_the_others_and_names_the_broken_mirror(
    pg: asyncpg.Connection, redis_client: redis.Redis, write_config: Any, settings_for: Any
) -> None:
    _, settings, config = await two_mirrors(pg, write_config, settings_for, 0.2)
    await pg.execute("ALTER TABLE parts DROP COLUMN name")  # broken before the worker starts
    await pg.execute("INSERT INTO products VALUES ('b', 'B', 1, '{1,2,3,4}')")
    async with open_app(settings, config) as app:  # start-up does not stop for one mirror
        with pytest.raises(MirrorsPausedError, match=r"mirror 'parts': .*'name'"):
            await app.worker().run_once()
    assert keys(redis_client, "product:*") == {"product:a", "product:b"}
    assert keys(redis_client, "part:*") == set()
    error = await _mirror_error(pg, "parts")
    assert error is not None and "name" in error


async def test_foreign_keys_under_the_prefix_pause_the_mirror_naming_them(
    pg: asyncpg.Connection, redis_client: redis.Redis, write_config: Any, settings_for: Any
) -> None:
    _, settings, config = await two_mirrors(pg, write_config, settings_for, 0.2)
    redis_client.set("part:b", "not a hash")  # someone else's key, under the mirror's prefix
    await pg.execute("INSERT INTO parts VALUES ('b', 'B', 1, '{1,2,3,4}')")
    await pg.execute("INSERT INTO products VALUES ('b', 'B', 1, '{1,2,3,4}')")
    async with open_app(settings, config) as app:
        with pytest.raises(MirrorsPausedError, match=r"mirror 'parts': .*part:b \(string\)"):
            await app.worker().run_once()
        assert keys(redis_client, "product:*") == {"product:a", "product:b"}
        redis_client.delete("part:b")
        await app.worker().run_once()  # a new worker: nothing remembered, it syncs and clears the error
    assert redis_client.type("part:b") == b"hash"
    assert await _mirror_error(pg, "parts") is None


async def test_an_idle_worker_refills_a_flushed_redis_and_a_dropped_index_within_seconds(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    redis_url: str,
    database_url: str,
    write_config: Any,
    settings_for: Any,
) -> None:
    _, settings, config = await two_mirrors(pg, write_config, settings_for, 0.2)
    async with open_app(settings, config) as app, running_worker(app.worker(), database_url, 0.5):
        await _eventually(lambda: _has(redis_client, {"product:a", "part:a"}), "the first sync")
        redis_client.flushall()
        await _eventually(lambda: _has(redis_client, {"product:a", "part:a"}), "a refill", 5)
        redis_client.execute_command("FT.DROPINDEX", "parts_idx", "DD")
        await _eventually(lambda: _searchable(redis_client, "parts_idx", "part:a"), "the index back", 5)
    for mirror in config.mirrors:
        await assert_invariant(pg, redis_url, mirror)


async def test_run_once_refills_an_index_dropped_by_hand(
    pg: asyncpg.Connection, redis_client: redis.Redis, redis_url: str, write_config: Any, settings_for: Any
) -> None:
    _, settings, config = await two_mirrors(pg, write_config, settings_for, 0.2)
    async with open_app(settings, config) as app:
        await app.worker().run_once()
    redis_client.execute_command("FT.DROPINDEX", "parts_idx", "DD")
    async with open_app(settings, config) as app:
        await app.worker().run_once()
    assert _searchable(redis_client, "parts_idx", "part:a")
    for mirror in config.mirrors:
        await assert_invariant(pg, redis_url, mirror)


async def _has(client: redis.Redis, wanted: set[str]) -> bool:
    return wanted <= {k.decode() for k in client.keys("*")}


def _searchable(client: redis.Redis, index: str, key: str) -> bool:
    try:
        reply = client.ft(index).search("*")
    except redis.ResponseError:
        return False
    return key in {doc.id for doc in reply.docs}


async def _paused(pg: asyncpg.Connection, name: str) -> bool:
    return await _mirror_error(pg, name) is not None


async def _not_paused(pg: asyncpg.Connection, name: str) -> bool:
    return await _mirror_error(pg, name) is None


async def test_ddl_that_rewrites_values_without_touching_rows_has_every_row_read_again(
    pg: asyncpg.Connection, redis_client: redis.Redis, redis_url: str, write_config: Any, settings_for: Any
) -> None:
    """ALTER COLUMN TYPE ... USING rewrites values and fires no trigger; a column dropped and added
    again loses its values the same way. The worker's table check reads every row again."""
    _, settings, config = await two_mirrors(pg, write_config, settings_for, 0.2)
    await pg.execute("UPDATE parts SET price = 1.5")
    async with open_app(settings, config) as app:
        worker = app.worker()
        await worker.run_once()
        assert redis_client.hget("part:a", "price") == b"1.5"
        await pg.execute("ALTER TABLE parts ALTER COLUMN price TYPE integer USING ceil(price)")
        await worker.check_mirrors()
        await worker.run_once()
        assert redis_client.hget("part:a", "price") == b"2"
        await pg.execute("ALTER TABLE parts DROP COLUMN name")
        await pg.execute("ALTER TABLE parts ADD COLUMN name text")  # NULL now: the field goes
        await worker.check_mirrors()
        await worker.run_once()
        assert redis_client.hget("part:a", "name") is None
        assert redis_client.hget("product:a", "name") == b"A"  # the other mirror was not re-read
    for mirror in config.mirrors:
        await assert_invariant(pg, redis_url, mirror)


async def test_a_table_dropped_and_created_again_pauses_until_migrate_then_nothing_is_lost(
    pg: asyncpg.Connection, redis_client: redis.Redis, redis_url: str, write_config: Any, settings_for: Any
) -> None:
    _, settings, config = await two_mirrors(pg, write_config, settings_for, 0.2)
    async with open_app(settings, config) as app:
        await app.worker().run_once()
    await pg.execute("DROP TABLE parts")
    await pg.execute(PRODUCTS_TABLE.replace("products", "parts"))
    await pg.execute("INSERT INTO parts VALUES ('b', 'B', 2, '{1,2,3,4}')")  # not captured: no trigger
    async with open_app(settings, config) as app:
        with pytest.raises(MirrorsPausedError, match=r"capture triggers are missing on parts.*migrate"):
            await app.worker().run_once()
    error = await _mirror_error(pg, "parts")
    assert error is not None and "\n" not in error
    await migrate_command(settings, config)
    await pg.execute("UPDATE parts SET name = 'Bee' WHERE sku = 'b'")
    async with open_app(settings, config) as app:
        await app.worker().run_once()
    assert keys(redis_client, "part:*") == {"part:b"}  # 'a' went with the old table
    assert redis_client.hget("part:b", "name") == b"Bee"
    for mirror in config.mirrors:
        await assert_invariant(pg, redis_url, mirror)


async def test_foreign_keys_under_a_json_mirrors_prefix_are_named_too(
    pg: asyncpg.Connection, redis_client: redis.Redis, write_config: Any, settings_for: Any
) -> None:
    await pg.execute(PRODUCTS_TABLE.replace("products", "parts"))
    json_parts = {
        **PARTS_MIRROR,
        "index": {
            **PARTS_MIRROR["index"],
            "index": {**PARTS_MIRROR["index"]["index"], "storage_type": "json"},
        },
    }
    path, config = write_config([json_parts])
    settings = settings_for(path, error_backoff=0.05)
    await migrate_command(settings, config)
    redis_client.hset("part:b", "a", "b")
    await pg.execute("INSERT INTO parts VALUES ('b', 'B', 1, '{1,2,3,4}')")
    async with open_app(settings, config) as app:
        with pytest.raises(MirrorsPausedError, match=r"part:b \(hash\)"):
            await app.worker().run_once()
