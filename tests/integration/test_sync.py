"""End to end in-process: real Postgres, real Redis Query Engine, real model."""

from __future__ import annotations

from typing import Any

import asyncpg
import numpy as np
import pytest
import redis

from helpers import (
    DOCS_MIRROR,
    DOCS_TABLE,
    NOTES_MIRROR,
    NOTES_TABLE,
    PRODUCTS_MIRROR,
    PRODUCTS_TABLE,
    hash_doc,
    json_doc,
    keys,
    search_ids,
    sync_once,
    vector_of,
)
from vecmirror.commands import migrate_command


@pytest.fixture
async def docs_setup(pg: asyncpg.Connection, write_config: Any, settings_for: Any) -> Any:
    await pg.execute(DOCS_TABLE)
    path, config = write_config([DOCS_MIRROR])
    settings = settings_for(path)
    await migrate_command(settings, config)
    return settings, config


async def test_insert_update_delete_truncate(
    pg: asyncpg.Connection, redis_client: redis.Redis, docs_setup: Any, embedder: Any, embedder_factory: Any
) -> None:
    settings, config = docs_setup
    await pg.execute(
        "INSERT INTO docs VALUES (1, 'Cats', 'Cats purr and sleep all day', 'pets'), "
        "(2, 'Rust', 'A systems programming language', 'tech')"
    )
    await sync_once(settings, config, embedder_factory)
    assert keys(redis_client, "doc:*") == {"doc:1", "doc:2"}
    assert search_ids(redis_client, "docs_idx", "@genre:{pets}") == {"doc:1"}
    first = hash_doc(redis_client, "doc:1")
    assert first["content"] == b"Cats purr and sleep all day"
    expected = embedder.embed(["Cats: Cats purr and sleep all day"])[0]
    np.testing.assert_allclose(vector_of(first), expected, atol=1e-5)

    # Other columns only: the model is not called, the field changes, the vector stays.
    calls = embedder.texts_embedded
    await pg.execute("UPDATE docs SET genre = 'animals' WHERE id = 1")
    await sync_once(settings, config, embedder_factory)
    assert embedder.texts_embedded == calls
    assert search_ids(redis_client, "docs_idx", "@genre:{animals}") == {"doc:1"}
    assert hash_doc(redis_client, "doc:1")["embedding"] == first["embedding"]

    # The embedded text: re-embedded once.
    await pg.execute("UPDATE docs SET content = 'Cats hunt mice at night' WHERE id = 1")
    await sync_once(settings, config, embedder_factory)
    assert embedder.texts_embedded == calls + 1
    assert hash_doc(redis_client, "doc:1")["embedding"] != first["embedding"]
    assert search_ids(redis_client, "docs_idx", "@content:mice") == {"doc:1"}

    # A NULL column removes the field, so the old value is not searchable any more.
    await pg.execute("UPDATE docs SET genre = NULL WHERE id = 1")
    await sync_once(settings, config, embedder_factory)
    assert "genre" not in hash_doc(redis_client, "doc:1")
    assert search_ids(redis_client, "docs_idx", "@genre:{animals}") == set()

    # The primary key: the old key goes, the new one comes.
    await pg.execute("UPDATE docs SET id = 20 WHERE id = 2")
    await sync_once(settings, config, embedder_factory)
    assert keys(redis_client, "doc:*") == {"doc:1", "doc:20"}

    await pg.execute("DELETE FROM docs WHERE id = 1")
    await sync_once(settings, config, embedder_factory)
    assert keys(redis_client, "doc:*") == {"doc:20"}
    assert search_ids(redis_client, "docs_idx", "*") == {"doc:20"}

    await pg.execute("INSERT INTO docs VALUES (3, 'Tea', 'Green tea', 'food')")
    await pg.execute("TRUNCATE docs")
    await pg.execute("INSERT INTO docs VALUES (4, 'Coffee', 'Espresso', 'food')")
    await sync_once(settings, config, embedder_factory)
    assert keys(redis_client, "doc:*") == {"doc:4"}
    assert search_ids(redis_client, "docs_idx", "*") == {"doc:4"}
    assert await pg.fetchval("SELECT count(*) FROM vecmirror.changes_v1") == 0


async def test_duplicate_changes_are_merged(
    pg: asyncpg.Connection, redis_client: redis.Redis, docs_setup: Any, embedder: Any, embedder_factory: Any
) -> None:
    settings, config = docs_setup
    await pg.execute("INSERT INTO docs VALUES (1, 'A', 'first', 'x')")
    await sync_once(settings, config, embedder_factory)
    for n in range(5):
        await pg.execute("UPDATE docs SET content = $1 WHERE id = 1", f"version {n}")
    calls = embedder.texts_embedded
    stats = await sync_once(settings, config, embedder_factory)
    assert stats.changes == 5
    assert embedder.texts_embedded == calls + 1  # five changes of one key: one embedding
    assert hash_doc(redis_client, "doc:1")["content"] == b"version 4"


async def test_rows_before_migrate_are_backfilled(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    write_config: Any,
    settings_for: Any,
    embedder_factory: Any,
) -> None:
    await pg.execute(DOCS_TABLE)
    await pg.execute(
        "INSERT INTO docs SELECT g, 'title ' || g, 'content ' || g, 'bulk' FROM generate_series(1, 250) g"
    )
    path, config = write_config([DOCS_MIRROR])
    settings = settings_for(path, backfill_batch_size=100)
    await migrate_command(settings, config)
    await sync_once(settings, config, embedder_factory)
    assert len(keys(redis_client, "doc:*")) == 250
    state = await pg.fetchrow("SELECT backfill_state, backfill_cursor FROM vecmirror.mirrors_v1")
    assert state["backfill_state"] == "done"


async def test_three_mirrors_hash_json_precomputed(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    write_config: Any,
    settings_for: Any,
    embedder_factory: Any,
) -> None:
    for ddl in (DOCS_TABLE, PRODUCTS_TABLE, NOTES_TABLE):
        await pg.execute(ddl)
    path, config = write_config([DOCS_MIRROR, PRODUCTS_MIRROR, NOTES_MIRROR])
    settings = settings_for(path)
    await migrate_command(settings, config)
    await pg.execute("INSERT INTO docs VALUES (1, 'Cats', 'purr', 'pets')")
    await pg.execute(
        "INSERT INTO products VALUES ('a-1', 'Lamp', 19.5, '{1,0,0,0}'), ('b:2', 'Desk', 120, '{0,1,0,0}')"
    )
    await pg.execute(
        "INSERT INTO notes VALUES ('acme', 1, 'ship it', 'red|urgent', '{1,0,0}'), "
        "('acme', 2, 'later', 'blue', '{0,1,0}')"
    )
    await sync_once(settings, config, embedder_factory)
    assert hash_doc(redis_client, "product:b:2")["price"] == b"120.0"
    assert search_ids(redis_client, "products_idx", "@price:[10 50]") == {"product:a-1"}
    note = json_doc(redis_client, "note:acme:1")
    assert note["meta"]["labels"] == "red|urgent"
    assert note["v"] == [1.0, 0.0, 0.0]
    assert note["_vm_key"] == ["acme", "1"]
    assert search_ids(redis_client, "notes_idx", "@labels:{urgent}") == {"note:acme:1"}

    await pg.execute("UPDATE notes SET id = 3 WHERE tenant = 'acme' AND id = 2")
    await pg.execute("DELETE FROM products WHERE sku = 'a-1'")
    await sync_once(settings, config, embedder_factory)
    assert keys(redis_client, "note:*") == {"note:acme:1", "note:acme:3"}
    assert keys(redis_client, "product:*") == {"product:b:2"}


async def test_malformed_vectors_are_reported_and_the_rest_synced(
    pg: asyncpg.Connection, redis_client: redis.Redis, write_config: Any, settings_for: Any
) -> None:
    await pg.execute(PRODUCTS_TABLE)
    path, config = write_config([PRODUCTS_MIRROR])
    settings = settings_for(path)
    await migrate_command(settings, config)
    await pg.execute(
        "INSERT INTO products VALUES ('ok', 'Good', 1, '{1,2,3,4}'), ('short', 'Short', 1, '{1,2}'), "
        "('nan', 'NaN', 1, '{1,NaN,3,4}'), ('price', 'Price', 'NaN', '{1,2,3,4}')"
    )
    stats = await sync_once(settings, config)
    assert stats.failed == 3 * settings.row_max_attempts  # every attempt of each bad row counts
    assert keys(redis_client, "product:*") == {"product:ok"}
    records = await pg.fetch("SELECT row_key, field, error, attempts, retry_at FROM vecmirror.failed_v1")
    assert {(r["attempts"], r["retry_at"]) for r in records} == {(settings.row_max_attempts, None)}
    failures = {r["row_key"][0]: (r["field"], r["error"]) for r in records}
    assert failures["short"] == ("vec", "the vector has 2 values, the index expects dims=4")
    assert failures["nan"] == ("vec", "the vector contains NaN or infinite values")
    assert failures["price"][0] == "price"

    await pg.execute("UPDATE products SET vec = '{4,3,2,1}' WHERE sku = 'short'")
    await sync_once(settings, config)
    assert "product:short" in keys(redis_client, "product:*")
    assert await pg.fetchval("SELECT count(*) FROM vecmirror.failed_v1") == 2


async def test_documents_redis_refuses_are_reported_by_key(
    pg: asyncpg.Connection, redis_client: redis.Redis, write_config: Any, settings_for: Any
) -> None:
    await pg.execute("CREATE TABLE places (id int PRIMARY KEY, name text, location text, v real[])")
    mirror = {
        "name": "places",
        "table": "places",
        "vector_column": "v",
        "index": {
            "index": {"name": "places_idx", "prefix": "place", "storage_type": "hash"},
            "fields": [
                {"name": "name", "type": "text"},
                {"name": "location", "type": "geo"},
                {
                    "name": "v",
                    "type": "vector",
                    "attrs": {"algorithm": "flat", "dims": 2, "distance_metric": "l2"},
                },
            ],
        },
    }
    path, config = write_config([mirror])
    settings = settings_for(path)
    await migrate_command(settings, config)
    await pg.execute(
        "INSERT INTO places VALUES (1, 'Paris', '2.35,48.85', '{1,2}'), (2, 'Nowhere', '999,999', '{1,2}')"
    )
    stats = await sync_once(settings, config)
    assert stats.failed == settings.row_max_attempts
    assert search_ids(redis_client, "places_idx", "*") == {"place:1"}
    assert keys(redis_client, "place:*") == {"place:1"}  # the refused document left Redis
    row = await pg.fetchrow("SELECT row_key, error FROM vecmirror.failed_v1")
    assert row["row_key"] == ["2"] and "refused to index" in row["error"]
    assert "geo" in row["error"].lower()  # Redis's own reason is passed on


async def test_backfill_command_requeues_everything_and_resumes_after_a_crash(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    write_config: Any,
    settings_for: Any,
    embedder_factory: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from vecmirror.commands import backfill_command
    from vecmirror.source.backfill import _queue_next_page, queue_all_rows
    from vecmirror.source.tables import inspect_table

    await pg.execute(DOCS_TABLE)
    path, config = write_config([DOCS_MIRROR])
    settings = settings_for(path, backfill_batch_size=50)
    await migrate_command(settings, config)
    await pg.execute("INSERT INTO docs SELECT g, 't' || g, 'c' || g, 'x' FROM generate_series(1, 120) g")
    await sync_once(settings, config, embedder_factory)
    redis_client.delete("doc:7", "doc:99")  # drift behind vecmirror's back

    await backfill_command(settings, config, "docs", embedder_factory)
    assert len(keys(redis_client, "doc:*")) == 120
    assert "docs: synced" in capsys.readouterr().err  # the progress bars

    # A walk that died after its first page resumes after key 50: rows 51..120, nothing twice.
    table = await inspect_table(pg, config.mirrors[0])
    await pg.execute("UPDATE vecmirror.mirrors_v1 SET backfill_state = 'pending', backfill_cursor = NULL")
    assert await _queue_next_page(pg, table, 50) == 50
    assert await pg.fetchval("SELECT backfill_cursor FROM vecmirror.mirrors_v1") == ["50"]
    assert await queue_all_rows(pg, table, 50) == 70
    state = await pg.fetchrow("SELECT backfill_state, backfill_cursor FROM vecmirror.mirrors_v1")
    assert state["backfill_state"] == "done"
    assert await pg.fetchval("SELECT count(DISTINCT row_key) FROM vecmirror.changes_v1") == 120


async def test_pgvector_and_bytea_vector_columns(
    pg: asyncpg.Connection, redis_client: redis.Redis, write_config: Any, settings_for: Any
) -> None:
    await pg.execute("CREATE EXTENSION IF NOT EXISTS vector")
    await pg.execute("CREATE TABLE items (id int PRIMARY KEY, name text, emb vector, raw bytea)")
    fields = [
        {"name": "name", "type": "text"},
        {"name": "v", "type": "vector", "attrs": {"algorithm": "flat", "dims": 3, "distance_metric": "ip"}},
    ]

    def mirror(name: str, column: str) -> dict[str, Any]:
        return {
            "name": name,
            "table": "items",
            "vector_column": column,
            "index": {
                "index": {"name": f"{name}_idx", "prefix": name, "storage_type": "hash"},
                "fields": fields,
            },
        }

    # Both mirrors read the same table; the vector field takes a differently named column.
    path, config = write_config([mirror("pgv", "emb"), mirror("raw", "raw")])
    await migrate_command(settings_for(path), config)
    raw = np.array([0.5, 0.25, 2.0], dtype=np.float32).tobytes()
    await pg.execute("INSERT INTO items VALUES (1, 'one', '[1,2,3]', $1)", raw)
    await pg.execute("INSERT INTO items VALUES (2, 'two', '[1,2]', $1)", raw[:8])
    stats = await sync_once(settings_for(path), config)
    # row 2 is bad in both mirrors (the pgvector has 2 values, the bytea 8 bytes), at every attempt
    assert stats.failed == 2 * settings_for(path).row_max_attempts
    np.testing.assert_array_equal(vector_of(hash_doc(redis_client, "pgv:1"), "v"), [1, 2, 3])
    np.testing.assert_array_equal(vector_of(hash_doc(redis_client, "raw:1"), "v"), [0.5, 0.25, 2.0])
    assert keys(redis_client, "pgv:*") == {"pgv:1"} and keys(redis_client, "raw:*") == {"raw:1"}
