"""Versioned writes on real servers: versions grow in commit order per key, Redis refuses an older
write atomically, a delete leaves a tombstone, a replay is harmless, a forgotten Redis is noticed.
A chunk of documents, upserts and deletes mixed, is one script call whose replies keep their rows;
the stored text hashes are read a chunk of keys per call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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
from vecmirror.pipeline.documents import Document, RowKey
from vecmirror.sink import writer
from vecmirror.sink.versioned import CALL_SIZE as WRITE_CHUNK
from vecmirror.sink.versioned import tombstone_key
from vecmirror.sink.writer import RedisSink

STORAGES = pytest.mark.parametrize("raw", [PRODUCTS_MIRROR, NOTES_MIRROR], ids=["hash", "json"])


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
    generation = await pg.fetchval("SELECT generation FROM vecmirror.mirrors_v1 WHERE name = 'products'")
    assert redis_client.get(tombstone_key("product:b")) == f"{generation}:{deleted_at}".encode()
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


def _document(
    mirror: MirrorConfig,
    version: int,
    name: str,
    ident: str = "1",
    *,
    vector: bool = True,
    tagged: bool = True,
) -> Document:
    """A document of the hash mirror (products) or the JSON one (notes); without a vector it is
    the write of a row whose text is unchanged; untagged, its optional column is NULL."""
    if mirror.storage == "json":
        fields: dict[str, Any] = {"body": name, "labels": "l" if tagged else None}
        array = np.array([1, 0, 0], dtype=np.float64)
        return Document(("t", ident), fields, vector=array if vector else None, version=version)
    hash_fields: dict[str, Any] = {"name": name, "price": 1.0 if tagged else None}
    array = np.array([1, 2, 3, 4], dtype=np.float32)
    return Document((ident,), hash_fields, vector=array if vector else None, version=version)


def _row_key(mirror: MirrorConfig, ident: str) -> RowKey:
    return _document(mirror, 0, "", ident).key


def _stored_name(client: redis.Redis, mirror: MirrorConfig, key: str) -> str | None:
    return _stored(client, mirror, key, "name", "body")


def _stored_version(client: redis.Redis, mirror: MirrorConfig, key: str) -> int | None:
    stored = _stored(client, mirror, key, "_vm_version", "_vm_version")
    return None if stored is None else int(stored)


def _has_vector(client: redis.Redis, mirror: MirrorConfig, key: str) -> bool:
    return _stored(client, mirror, key, "vec", "v") is not None


def _is_tagged(client: redis.Redis, mirror: MirrorConfig, key: str) -> bool:
    """Whether the document holds its optional field (hash: price; JSON: meta.labels)."""
    if mirror.storage == "json":
        return "labels" in (json_doc(client, key).get("meta") or {})
    return bool(client.hexists(key, "price"))


def _stored(client: redis.Redis, mirror: MirrorConfig, key: str, hash_field: str, json_field: str) -> Any:
    if mirror.storage == "json":
        document = json_doc(client, key)
        return None if document is None else document.get(json_field)
    value = client.hget(key, hash_field)
    return None if value is None else value.decode(errors="replace")


@asynccontextmanager
async def _open_sink(
    redis_url: str, mirror: MirrorConfig, *, marked: bool = True
) -> AsyncIterator[RedisSink]:
    client = aredis.Redis.from_url(redis_url)
    try:
        await ensure_index(client, mirror)
        sink = RedisSink(client, mirror, tombstone_ttl=60)
        if marked:
            await sink.versioned.mark()
        yield sink
    finally:
        await client.aclose()


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
        tombstone = f"{sink.versioned.generation}:6".encode()
        assert redis_client.exists(key) == 0 and redis_client.get(tombstone_key(key)) == tombstone
        assert await write(5, "late") == [row_key]  # a late upsert cannot bring it back
        assert redis_client.exists(key) == 0
        assert await sink.write([], [(row_key, 4)], keep_vector=set()) == []  # already gone: fine
        assert await write(7, "seven") == []
        assert _stored_name(redis_client, mirror, key) == "seven"
        assert redis_client.exists(tombstone_key(key)) == 0
        assert await sink.document_count() == 1
    finally:
        await client.aclose()


@STORAGES
@pytest.mark.parametrize("operation", ["upsert", "delete"])
async def test_writes_to_a_redis_that_lost_the_marker_are_refused(
    raw: dict[str, Any], operation: str, redis_client: redis.Redis, redis_url: str, write_config: Any
) -> None:
    _, config = write_config([raw])
    mirror = config.mirrors[0]
    async with _open_sink(redis_url, mirror, marked=False) as sink:
        document = _document(mirror, 1, "x")
        upserts, deletes = ([document], []) if operation == "upsert" else ([], [(document.key, 1)])
        with pytest.raises(RedisForgotError, match=f"'{mirror.name}'"):
            await sink.write(upserts, deletes, keep_vector=set())
        key = sink.key(document.key)
        assert redis_client.exists(key, tombstone_key(key)) == 0


@STORAGES
async def test_one_chunk_mixes_upserts_and_deletes_and_refuses_only_the_stale_ones(
    raw: dict[str, Any], redis_client: redis.Redis, redis_url: str, write_config: Any
) -> None:
    _, config = write_config([raw])
    mirror = config.mirrors[0]
    async with _open_sink(redis_url, mirror) as sink:
        existing = ["kept", "stale", "gone", "old-delete"]
        assert await sink.write([_document(mirror, 10, n, n) for n in existing], [], keep_vector=set()) == []
        redis_client.script_flush()  # the next call finds Redis without the script (NOSCRIPT)
        kept = _document(mirror, 11, "kept again", "kept", vector=False, tagged=False)
        upserts = [kept, _document(mirror, 9, "late", "stale"), _document(mirror, 1, "new", "new")]
        deletes = [(_row_key(mirror, "gone"), 12), (_row_key(mirror, "old-delete"), 9)]

        refused = await sink.write(upserts, deletes, keep_vector={kept.key})

        assert refused == [_row_key(mirror, "stale"), _row_key(mirror, "old-delete")]

        def key(ident: str) -> str:
            return sink.key(_row_key(mirror, ident))

        stored = {i: _stored_name(redis_client, mirror, key(i)) for i in [*existing, "new"]}
        assert stored == {
            "kept": "kept again",
            "stale": "stale",
            "gone": None,
            "old-delete": "old-delete",
            "new": "new",
        }
        versions = {
            i: _stored_version(redis_client, mirror, key(i)) for i in ["kept", "stale", "new", "old-delete"]
        }
        assert versions == {"kept": 11, "stale": 10, "new": 1, "old-delete": 10}
        assert _has_vector(redis_client, mirror, key("kept"))  # the unchanged text kept its vector
        assert not _is_tagged(redis_client, mirror, key("kept"))  # its NULL column's field is gone
        assert _is_tagged(redis_client, mirror, key("stale"))
        assert redis_client.get(tombstone_key(key("gone"))) == f"{sink.versioned.generation}:12".encode()
        assert (
            redis_client.exists(*(tombstone_key(key(i)) for i in ["kept", "stale", "new", "old-delete"])) == 0
        )
        assert await sink.document_count() == 4


@STORAGES
async def test_a_batch_larger_than_a_chunk_takes_a_script_call_per_chunk_and_refusals_keep_their_rows(
    raw: dict[str, Any], redis_client: redis.Redis, redis_url: str, write_config: Any
) -> None:
    _, config = write_config([raw])
    mirror = config.mirrors[0]
    idents = [f"d{n:03d}" for n in range(2 * WRITE_CHUNK + 5)]
    stale = {idents[WRITE_CHUNK - 1], idents[WRITE_CHUNK], idents[-1]}  # at both ends of chunks
    async with _open_sink(redis_url, mirror) as sink:
        await sink.write([_document(mirror, 50, "newer", i) for i in sorted(stale)], [], keep_vector=set())
        redis_client.config_resetstat()

        refused = await sink.write([_document(mirror, 20, i, i) for i in idents], [], keep_vector=set())

        assert refused == [_row_key(mirror, i) for i in idents if i in stale]
        # Three calls of the documents (grouped by slot, a call may hold several), the config
        # lease's claim before them and the marker's high-water version after them.
        assert redis_client.info("commandstats")["cmdstat_evalsha"]["calls"] == 3 + 2
        names = [_stored_name(redis_client, mirror, sink.key(_row_key(mirror, i))) for i in idents]
        assert names == ["newer" if i in stale else i for i in idents]
        assert await sink.document_count() == len(idents)


@STORAGES
async def test_stored_text_hashes_and_row_keys_are_read_a_chunk_of_keys_per_call(
    raw: dict[str, Any], redis_client: redis.Redis, redis_url: str, write_config: Any, monkeypatch: Any
) -> None:
    _, config = write_config([raw])
    mirror = config.mirrors[0]
    monkeypatch.setattr(writer, "READ_CHUNK", 2)
    hashed = {"a": "hash-a", "c": "hash-c", "e": None}  # e's document has no text hash
    documents = [_document(mirror, 1, i, i) for i in hashed]
    for document, text_hash in zip(documents, hashed.values(), strict=True):
        document.text_hash = text_hash
    async with _open_sink(redis_url, mirror) as sink:
        await sink.write(documents, [], keep_vector=set())
        redis_client.script_flush()  # the read script too is loaded when Redis answers NOSCRIPT

        hashes = await sink.stored_text_hashes([_row_key(mirror, i) for i in "abcde"])

        assert hashes == ["hash-a", None, "hash-c", None, None]
        redis_client.config_resetstat()
        assert await sink.stored_text_hashes([_row_key(mirror, i) for i in "abcde"]) == hashes
        assert redis_client.info("commandstats")["cmdstat_evalsha"]["calls"] == 3  # 2 keys a call
        assert await sink.stored_text_hashes([]) == []
        scanned = [row_key async for page in sink.scan_row_keys() for row_key in page]
        assert sorted(scanned) == [d.key for d in documents]


TRICKY = 'a "quote", a \\ backslash, a\nnewline, a\ttab, \x01, é, 😀, </script>'


@STORAGES
async def test_values_reach_redis_byte_for_byte(
    raw: dict[str, Any], redis_client: redis.Redis, redis_url: str, write_config: Any
) -> None:
    """The chunk travels as JSON with binary values beside it: text, numbers and vectors must land
    as redis-py would have sent each of them, and a text that reads as a number stays a text."""
    _, config = write_config([raw])
    mirror = config.mirrors[0]
    tricky, numeric = _document(mirror, 7, TRICKY, "tricky"), _document(mirror, 7, "3", "numeric")
    if mirror.storage == "hash":
        tricky.fields["price"] = 0.1 + 0.2
    async with _open_sink(redis_url, mirror) as sink:
        assert await sink.write([tricky, numeric], [], keep_vector=set()) == []
        if mirror.storage == "json":
            stored = json_doc(redis_client, sink.key(tricky.key))
            assert (stored["body"], stored["v"], stored["_vm_version"]) == (TRICKY, [1.0, 0.0, 0.0], 7)
            assert json_doc(redis_client, sink.key(numeric.key))["body"] == "3"
            return
        stored = hash_doc(redis_client, sink.key(tricky.key))
        assert stored["name"] == TRICKY.encode() and stored["price"] == b"0.30000000000000004"
        assert stored["vec"] == np.array([1, 2, 3, 4], dtype=np.float32).tobytes()
        assert stored["_vm_version"] == b"7" and stored["_vm_key"] == b'["tricky"]'
        assert hash_doc(redis_client, sink.key(numeric.key))["name"] == b"3"
