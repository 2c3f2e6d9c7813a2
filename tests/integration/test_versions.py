"""Versioned writes on real servers: versions grow in commit order per key, Redis refuses an older
write atomically, a delete leaves a tombstone, a replay is harmless, a forgotten Redis is noticed."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import numpy as np
import pytest
import redis
import redis.asyncio as aredis

from helpers import NOTES_MIRROR, PRODUCTS_MIRROR, PRODUCTS_TABLE, hash_doc, json_doc, sync_once
from invariant import assert_invariant
from vecmirror.commands import migrate_command
from vecmirror.config import MirrorConfig
from vecmirror.errors import RedisForgotError
from vecmirror.index.manage import ensure_index
from vecmirror.pipeline.documents import Document
from vecmirror.sink.versioned import tombstone_key
from vecmirror.sink.writer import RedisSink


async def test_versions_follow_each_change_and_redis_holds_the_latest(
    pg: asyncpg.Connection, redis_client: redis.Redis, redis_url: str, write_config: Any, settings_for: Any
) -> None:
    await pg.execute(PRODUCTS_TABLE)
    path, config = write_config([PRODUCTS_MIRROR])
    settings = settings_for(path)
    await migrate_command(settings, config)
    await pg.execute("INSERT INTO products VALUES ('a', 'A', 1, '{1,2,3,4}'), ('b', 'B', 2, '{1,1,1,1}')")
    first = await pg.fetchval("SELECT version FROM vecmirror.versions_v1 WHERE row_key = '{a}'")
    await pg.execute("UPDATE products SET price = price + 1 WHERE sku = 'a'")
    await pg.execute("UPDATE products SET price = price + 1 WHERE sku = 'a'")
    latest = await pg.fetchval("SELECT version FROM vecmirror.versions_v1 WHERE row_key = '{a}'")
    assert latest > first
    await sync_once(settings, config)
    assert int(hash_doc(redis_client, "product:a")["_vm_version"]) == latest
    await pg.execute("DELETE FROM products WHERE sku = 'b'")
    deleted_at = await pg.fetchval("SELECT version FROM vecmirror.versions_v1 WHERE row_key = '{b}'")
    await sync_once(settings, config)
    assert redis_client.get(tombstone_key("product:b")) == str(deleted_at).encode()
    assert 0 < redis_client.ttl(tombstone_key("product:b")) <= settings.tombstone_ttl
    # the deleted row's version moved to its tombstone; versions_v1 keeps the size of the table
    assert await pg.fetchval("SELECT count(*) FROM vecmirror.versions_v1") == 1
    await assert_invariant(pg, redis_url, config.mirrors[0])


async def test_a_writer_that_waited_for_the_row_lock_gets_the_larger_version(
    pg: asyncpg.Connection, database_url: str, write_config: Any, settings_for: Any
) -> None:
    await pg.execute(PRODUCTS_TABLE)
    path, config = write_config([PRODUCTS_MIRROR])
    await migrate_command(settings_for(path), config)
    await pg.execute("INSERT INTO products VALUES ('a', 'A', 1, '{1,2,3,4}')")
    early, late = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        early_tx = early.transaction()
        await early_tx.start()
        # `early` starts first and draws an id from the queue's sequence for another key...
        await early.execute("INSERT INTO products VALUES ('other', 'O', 1, '{1,1,1,1}')")
        late_tx = late.transaction()
        await late_tx.start()
        await late.execute("UPDATE products SET price = 2 WHERE sku = 'a'")
        # ...then waits for the row lock `late` holds, and so commits after it.
        waiting = asyncio.create_task(early.execute("UPDATE products SET price = 3 WHERE sku = 'a'"))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await late_tx.commit()
        await waiting
        await early_tx.commit()
    finally:
        await early.close()
        await late.close()
    versions = await pg.fetch("SELECT id FROM vecmirror.changes_v1 WHERE row_key = '{a}' ORDER BY id")
    final = await pg.fetchval("SELECT version FROM vecmirror.versions_v1 WHERE row_key = '{a}'")
    assert final == versions[-1]["id"]  # the last commit (price 3) holds the largest version
    assert await pg.fetchval("SELECT price FROM products WHERE sku = 'a'") == 3


def _document(mirror: MirrorConfig, version: int, name: str) -> Document:
    if mirror.storage == "json":
        fields: dict[str, Any] = {"body": name, "labels": None}
        vector = np.array([1, 0, 0], dtype=np.float64)
        return Document(("t", "1"), fields, vector=vector, version=version)
    vector = np.array([1, 2, 3, 4], dtype=np.float32)
    return Document(("1",), {"name": name, "price": 1.0}, vector=vector, version=version)


def _stored_name(client: redis.Redis, mirror: MirrorConfig, key: str) -> str | None:
    if mirror.storage == "json":
        document = json_doc(client, key)
        return None if document is None else str(document["body"])
    value = client.hget(key, "name")
    return None if value is None else value.decode()


@pytest.mark.parametrize("raw", [PRODUCTS_MIRROR, NOTES_MIRROR], ids=["hash", "json"])
async def test_older_writes_are_refused_deletes_leave_tombstones_replays_are_harmless(
    raw: dict[str, Any], redis_client: redis.Redis, redis_url: str, write_config: Any
) -> None:
    _, config = write_config([raw])
    mirror = config.mirrors[0]
    client = aredis.Redis.from_url(redis_url)
    try:
        await ensure_index(client, mirror)
        sink = RedisSink(client, mirror, tombstone_ttl=60)
        await sink.versioned.mark()
        key = sink.key(_document(mirror, 0, "").key)

        async def write(version: int, name: str) -> list[Any]:
            return await sink.write([_document(mirror, version, name)], [], keep_vector=set())

        assert await write(5, "five") == []
        assert await write(3, "three") == [_document(mirror, 3, "").key]  # older: refused
        assert _stored_name(redis_client, mirror, key) == "five"
        assert await write(5, "five") == []  # a replay of the same version applies, unchanged
        assert _stored_name(redis_client, mirror, key) == "five"
        row_key = _document(mirror, 0, "").key
        assert await sink.write([], [(row_key, 6)], keep_vector=set()) == []
        assert redis_client.exists(key) == 0 and redis_client.get(tombstone_key(key)) == b"6"
        assert await write(5, "late") == [row_key]  # a late upsert cannot bring it back
        assert redis_client.exists(key) == 0
        assert await sink.write([], [(row_key, 4)], keep_vector=set()) == []  # already gone: fine
        assert await write(7, "seven") == []
        assert _stored_name(redis_client, mirror, key) == "seven"
        assert redis_client.exists(tombstone_key(key)) == 0
        assert await sink.document_count() == 1
    finally:
        await client.aclose()


async def test_writes_to_a_redis_that_lost_the_marker_are_refused(
    redis_client: redis.Redis, redis_url: str, write_config: Any
) -> None:
    _, config = write_config([NOTES_MIRROR])
    mirror = config.mirrors[0]
    client = aredis.Redis.from_url(redis_url)
    try:
        await ensure_index(client, mirror)
        sink = RedisSink(client, mirror)
        with pytest.raises(RedisForgotError, match="'notes'"):
            await sink.write([_document(mirror, 1, "x")], [], keep_vector=set())
        assert redis_client.exists(sink.key(("t", "1"))) == 0
    finally:
        await client.aclose()
