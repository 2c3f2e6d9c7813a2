"""Change capture and start-up checks: triggers, NOTIFY, migrate, claiming, mismatches."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
import redis

from helpers import DOCS_MIRROR, DOCS_TABLE, PRODUCTS_MIRROR, PRODUCTS_TABLE, keys, sync_once
from vecmirror.app import open_app
from vecmirror.commands import migrate_command
from vecmirror.errors import NotMigratedError, StartupError
from vecmirror.pipeline.embedder import FakeEmbedder
from vecmirror.source.listener import CHANNEL
from vecmirror.source.migrate import bundled_migrations


async def test_notify_fires_once_per_statement_without_payload(
    pg: asyncpg.Connection, database_url: str, write_config: Any, settings_for: Any
) -> None:
    await pg.execute(DOCS_TABLE)
    path, config = write_config([DOCS_MIRROR])
    await migrate_command(settings_for(path), config)
    listener = await asyncpg.connect(database_url)
    received: list[str] = []
    await listener.add_listener(CHANNEL, lambda *args: received.append(args[3]))
    try:
        await pg.execute("INSERT INTO docs SELECT g, 't', 'c', 'g' FROM generate_series(1, 500) g")
        await pg.execute("UPDATE docs SET genre = 'x' WHERE id > 1000")  # touches nothing: no NOTIFY
        await asyncio.sleep(0.5)
    finally:
        await listener.close()
    assert received == [""]
    assert await pg.fetchval("SELECT count(*) FROM vecmirror.changes_v1") == 500


async def test_changes_commit_and_roll_back_with_the_users_transaction(
    pg: asyncpg.Connection, write_config: Any, settings_for: Any
) -> None:
    await pg.execute(DOCS_TABLE)
    path, config = write_config([DOCS_MIRROR])
    await migrate_command(settings_for(path), config)
    with pytest.raises(asyncpg.UniqueViolationError):
        async with pg.transaction():
            await pg.execute("INSERT INTO docs VALUES (1, 't', 'c', 'g')")
            await pg.execute("INSERT INTO docs VALUES (1, 't', 'c', 'g')")
    assert await pg.fetchval("SELECT count(*) FROM vecmirror.changes_v1") == 0
    await pg.execute("UPDATE docs SET id = 2 WHERE id = 1")  # nothing to update
    await pg.execute("INSERT INTO docs VALUES (1, 't', 'c', 'g')")
    await pg.execute("UPDATE docs SET id = 2 WHERE id = 1")
    rows = await pg.fetch("SELECT row_key FROM vecmirror.changes_v1 ORDER BY id")
    assert [r["row_key"] for r in rows][-2:] in ([["1"], ["2"]], [["2"], ["1"]])


async def test_migrate_is_idempotent_and_removes_dropped_mirrors(
    pg: asyncpg.Connection, write_config: Any, settings_for: Any
) -> None:
    await pg.execute(DOCS_TABLE)
    await pg.execute(PRODUCTS_TABLE)
    path, config = write_config([DOCS_MIRROR, PRODUCTS_MIRROR])
    first = await migrate_command(settings_for(path), config)
    again = await migrate_command(settings_for(path), config)
    assert first.applied == [f"{m.version:04d}_{m.name}" for m in bundled_migrations()]
    assert first.applied[:3] == ["0001_initial", "0002_versions_retries", "0003_truncate_marker_index"]
    assert sorted(first.installed) == ["docs", "products"]
    assert again.applied == [] and again.installed == [] and sorted(again.unchanged) == ["docs", "products"]
    await pg.execute("INSERT INTO products VALUES ('a', 'A', 1, '{1,0,0,0}')")

    path, config = write_config([DOCS_MIRROR])
    removed = await migrate_command(settings_for(path), config)
    assert removed.removed == ["products"]
    triggers = await pg.fetch("SELECT tgname FROM pg_trigger WHERE tgname LIKE 'vecmirror%' ORDER BY 1")
    assert {r["tgname"] for r in triggers} == {f"vecmirror_v1_docs_{e}" for e in ("ins", "upd", "del", "trn")}
    assert await pg.fetchval("SELECT count(*) FROM vecmirror.changes_v1") == 0
    assert await pg.fetchval("SELECT count(*) FROM pg_proc WHERE proname = 'capture_v1_products'") == 0
    await pg.execute("INSERT INTO products VALUES ('b', 'B', 1, '{1,0,0,0}')")
    assert await pg.fetchval("SELECT count(*) FROM vecmirror.changes_v1") == 0


async def test_concurrent_migrations_apply_once(
    pg: asyncpg.Connection, write_config: Any, settings_for: Any
) -> None:
    await pg.execute(DOCS_TABLE)
    path, config = write_config([DOCS_MIRROR])
    reports = await asyncio.gather(*(migrate_command(settings_for(path), config) for _ in range(3)))
    assert sorted(len(r.applied) for r in reports) == [0, 0, len(bundled_migrations())]
    assert await pg.fetchval("SELECT count(*) FROM vecmirror.migrations") == len(bundled_migrations())


async def test_two_workers_share_the_queue_and_never_hold_one_key_twice(
    pg: asyncpg.Connection, redis_client: redis.Redis, write_config: Any, settings_for: Any
) -> None:
    await pg.execute(PRODUCTS_TABLE)
    path, config = write_config([PRODUCTS_MIRROR])
    settings = settings_for(path, batch_size=20)
    await migrate_command(settings, config)
    await pg.execute(
        "INSERT INTO products SELECT 'p' || g, 'n', g, '{1,2,3,4}' FROM generate_series(1, 300) g"
    )
    for round_ in range(3):
        await pg.execute("UPDATE products SET price = price + $1 WHERE (substr(sku, 2)::int) % 3 = 0", round_)
    async with open_app(settings, config) as first, open_app(settings, config) as second:
        results = await asyncio.gather(first.worker().run_once(), second.worker().run_once())
    assert all(r.changes > 0 for r in results)  # both took part
    assert len(keys(redis_client, "product:*")) == 300
    assert redis_client.hget("product:p3", "price") == b"6.0"  # 3 + 0 + 1 + 2
    assert await pg.fetchval("SELECT count(*) FROM vecmirror.changes_v1") == 0


async def test_claimed_key_is_not_claimed_by_another_worker(
    pg: asyncpg.Connection, database_url: str, write_config: Any, settings_for: Any
) -> None:
    from vecmirror.source import changes

    await pg.execute(PRODUCTS_TABLE)
    path, config = write_config([PRODUCTS_MIRROR])
    await migrate_command(settings_for(path), config)
    await pg.execute("INSERT INTO products VALUES ('a', 'A', 1, '{1,0,0,0}'), ('b', 'B', 1, '{1,0,0,0}')")
    await pg.execute("UPDATE products SET price = 2 WHERE sku = 'a'")  # a second change of key 'a'
    other = await asyncpg.connect(database_url)
    try:
        async with pg.transaction():
            mine = await changes.claim(pg, "products", 1)  # the oldest change: key 'a'
            async with other.transaction():
                theirs = await changes.claim(other, "products", 10)
    finally:
        await other.close()
    assert mine.keys == [("a",)]
    assert theirs.keys == [("b",)]  # a's newer change is skipped while 'a' is held


async def test_start_up_stops_on_wrong_dims_index_mismatch_and_missing_migration(
    pg: asyncpg.Connection, redis_client: redis.Redis, write_config: Any, settings_for: Any
) -> None:
    await pg.execute(PRODUCTS_TABLE)
    await pg.execute(DOCS_TABLE)
    path, config = write_config([PRODUCTS_MIRROR])
    with pytest.raises(NotMigratedError, match="run `vecmirror migrate`"):
        async with open_app(settings_for(path), config):
            pass
    await migrate_command(settings_for(path), config)
    redis_client.execute_command(
        "FT.CREATE",
        "products_idx",
        "ON",
        "HASH",
        "PREFIX",
        "1",
        "product",
        "SCHEMA",
        "name",
        "TEXT",
        "price",
        "NUMERIC",
        "vec",
        "VECTOR",
        "FLAT",
        "6",
        "TYPE",
        "FLOAT32",
        "DIM",
        "8",
        "DISTANCE_METRIC",
        "COSINE",
    )
    # An index of other dims no longer stops start-up: the config's vectors are made beside the
    # index's, and a new generation reading them takes over once filled (index/rollout.py).
    async with open_app(settings_for(path), config) as app:
        [sync] = app.syncs
        assert sync.rebuild_into is not None and sync.rebuild_into.startswith("products_idx__")
        assert sync.mirror.vector_at is not None and sync.mirror.vector_at.startswith("vec__")

    wrong_dims = {
        **DOCS_MIRROR,
        "index": {
            **DOCS_MIRROR["index"],
            "fields": [
                {"name": "content", "type": "text"},
                {"name": "embedding", "type": "vector", "attrs": {"algorithm": "flat", "dims": 128}},
            ],
        },
    }
    path, config = write_config([wrong_dims])
    await migrate_command(settings_for(path), config)
    with pytest.raises(StartupError, match=r"outputs 8-dimensional vectors but index\.fields\.embedding"):
        async with open_app(settings_for(path), config, lambda _: FakeEmbedder(8)):
            pass


async def test_missing_columns_are_named_at_start(
    pg: asyncpg.Connection, write_config: Any, settings_for: Any
) -> None:
    await pg.execute("CREATE TABLE docs (id int PRIMARY KEY, title text)")
    path, config = write_config([DOCS_MIRROR])
    with pytest.raises(StartupError) as error:
        await migrate_command(settings_for(path), config)
    message = str(error.value)
    assert message.startswith("mirror 'docs': index.fields.content: no column 'content' in public.docs; ")
    assert "; embed.template: placeholder {content} is not a column" in message
    assert "\n" not in message  # one line, as every command's error


async def test_sync_once_uses_fake_embedder_contract(
    pg: asyncpg.Connection, redis_client: redis.Redis, write_config: Any, settings_for: Any
) -> None:
    """The fake embedder plugs into the same seam as the real model (used by unit tests)."""
    small = {
        **DOCS_MIRROR,
        "index": {
            **DOCS_MIRROR["index"],
            "fields": [
                {"name": "content", "type": "text"},
                {"name": "embedding", "type": "vector", "attrs": {"algorithm": "flat", "dims": 8}},
            ],
        },
    }
    await pg.execute(DOCS_TABLE)
    path, config = write_config([small])
    await migrate_command(settings_for(path), config)
    await pg.execute("INSERT INTO docs VALUES (1, 'a', 'b', 'c')")
    fake = FakeEmbedder(8)
    await sync_once(settings_for(path), config, lambda _: fake)
    assert fake.texts_embedded == 1 and keys(redis_client, "doc:*") == {"doc:1"}


async def test_an_evicting_redis_stops_start_up(
    pg: asyncpg.Connection, redis_client: redis.Redis, write_config: Any, settings_for: Any
) -> None:
    await pg.execute(PRODUCTS_TABLE)
    path, config = write_config([PRODUCTS_MIRROR])
    await migrate_command(settings_for(path), config)
    redis_client.config_set("maxmemory", "1gb")
    redis_client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with pytest.raises(StartupError, match="maxmemory-policy allkeys-lru"):
            async with open_app(settings_for(path), config):
                pass
        redis_client.config_set("maxmemory-policy", "volatile-lru")  # only keys with a TTL: ours have none
        async with open_app(settings_for(path), config):
            pass
    finally:
        redis_client.config_set("maxmemory", "0")
        redis_client.config_set("maxmemory-policy", "noeviction")
