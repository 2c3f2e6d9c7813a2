"""A removed mirror's Redis data found by the layout Postgres recorded (0006), on real servers.

`migrate` records each mirror's index name, key prefixes, key separator and storage type in
`vecmirror.mirrors_v1`, and moves them to `vecmirror.removed_mirrors_v1` when the mirror leaves the
file; `plan` and `migrate --drop-data` then say and delete exactly that mirror's index and keys,
whatever the names, and never another mirror's keys under a similar prefix. A mirror installed
before 0006 and removed before its next `migrate` has no layout: its data is found in Redis, as
before."""

from __future__ import annotations

import copy
from typing import Any

import asyncpg
import pytest
import redis

from helpers import (
    DOCS_MIRROR,
    DOCS_TABLE,
    NOTES_MIRROR,
    NOTES_TABLE,
    PRODUCTS_MIRROR,
    PRODUCTS_TABLE,
    keys,
    sync_once,
)
from vecmirror.commands import AmbiguousIndexError, migrate_and_remove, migrate_command, plan_command
from vecmirror.ops.plan import format_plan

KB_INDEX = "KB articles/v1"  # spaces and a slash: a name no default would give


def _table(name: str) -> str:
    return f"CREATE TABLE {name} (id integer PRIMARY KEY, title text NOT NULL, v real[])"


def _mirror(
    name: str, index: str, prefix: str, separator: str = ":", storage: str = "hash"
) -> dict[str, Any]:
    return {
        "name": name,
        "table": f"public.{name}",
        "vector_column": "v",
        "index": {
            "index": {"name": index, "prefix": prefix, "key_separator": separator, "storage_type": storage},
            "fields": [
                {"name": "title", "type": "text"},
                {"name": "v", "type": "vector", "attrs": {"algorithm": "flat", "dims": 2}},
            ],
        },
    }


# Keys `kb/1`, under an index over prefix `kb`: FT.CREATE's PREFIX kb also reaches `kbase:…` and
# `kb/archive:…`, the keys of the two mirrors configured once it is removed (the file refuses
# overlapping prefixes, so they cannot be configured beside it).
KB = _mirror("kb", KB_INDEX, "kb", separator="/")
KBASE = _mirror("kbase", "kbase_idx", "kbase")
ARCHIVE = _mirror("archive", "archive_idx", "kb/archive", storage="json")


async def _layouts(pg: asyncpg.Connection, table: str = "mirrors_v1") -> dict[str, tuple[Any, ...]]:
    rows = await pg.fetch(
        f"SELECT name, index_name, key_prefixes, key_separator, storage_type FROM vecmirror.{table}"
    )
    return {r["name"]: tuple(r.values())[1:] for r in rows}


async def _as_before_0006(pg: asyncpg.Connection) -> None:
    """The schema as 0005 left it: mirrors installed by a vecmirror that recorded no layout."""
    await pg.execute(
        "ALTER TABLE vecmirror.mirrors_v1 DROP COLUMN index_name, DROP COLUMN key_prefixes, "
        "DROP COLUMN key_separator, DROP COLUMN storage_type; "
        "DROP TABLE vecmirror.removed_mirrors_v1; "
        "DELETE FROM vecmirror.migrations WHERE version = 6"
    )


def _indexes(client: redis.Redis) -> set[str]:
    return {n.decode() for n in client.execute_command("FT._LIST")}


def _documents(client: redis.Redis, index: str) -> int:
    return int(client.ft(index).info()["num_docs"])


async def test_migrate_records_each_mirrors_redis_layout(
    pg: asyncpg.Connection, write_config: Any, settings_for: Any
) -> None:
    await pg.execute(_table("kb"))
    await pg.execute(NOTES_TABLE)
    path, config = write_config([KB, NOTES_MIRROR])
    await migrate_command(settings_for(path), config)
    assert await _layouts(pg) == {
        "kb": (KB_INDEX, ["kb"], "/", "hash"),
        "notes": ("notes_idx", ["note"], ":", "json"),
    }

    # Another index name and separator: recorded by the next migrate, the capture left as it was.
    changed = copy.deepcopy(KB)
    changed["index"]["index"].update(name="kb_v2", key_separator="|")
    path, config = write_config([changed, NOTES_MIRROR])
    report = await migrate_command(settings_for(path), config)
    assert report.unchanged == ["kb", "notes"] and report.installed == []
    assert (await _layouts(pg))["kb"] == ("kb_v2", ["kb"], "|", "hash")
    written = await pg.fetchval("SELECT xmin::text FROM vecmirror.mirrors_v1 WHERE name = 'kb'")
    await migrate_command(settings_for(path), config)  # a re-run writes nothing
    assert await pg.fetchval("SELECT xmin::text FROM vecmirror.mirrors_v1 WHERE name = 'kb'") == written

    # Removed: the layout moves to removed_mirrors_v1; registered again: the name is the mirror's.
    path, only_kb = write_config([changed])
    await migrate_command(settings_for(path), only_kb)
    assert await _layouts(pg, "removed_mirrors_v1") == {"notes": ("notes_idx", ["note"], ":", "json")}
    assert set(await _layouts(pg)) == {"kb"}
    path, config = write_config([changed, NOTES_MIRROR])
    await migrate_command(settings_for(path), config)
    assert await _layouts(pg, "removed_mirrors_v1") == {}
    assert set(await _layouts(pg)) == {"kb", "notes"}


async def test_a_removed_mirrors_unusual_prefix_and_index_are_dropped_exactly(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    write_config: Any,
    settings_for: Any,
    embedder_factory: Any,
) -> None:
    for name in ("kb", "kbase", "archive"):
        await pg.execute(_table(name))
    await pg.execute("INSERT INTO kb VALUES (1, 'One', '{1,0}'), (2, 'Two', '{0,1}'), (3, 'Three', '{1,1}')")
    await pg.execute("INSERT INTO kbase VALUES (1, 'Base', '{1,0}'), (2, 'Base 2', '{0,1}')")
    await pg.execute("INSERT INTO archive VALUES (1, 'Old', '{1,0}')")
    path, config = write_config([KB])  # (kbase and archive overlap it: never in one file with it)
    await migrate_command(settings_for(path), config)
    await sync_once(settings_for(path), config, embedder_factory)
    assert keys(redis_client, "kb/*") == {"kb/1", "kb/2", "kb/3"}
    redis_client.set("kb/notes", "a user's string under the prefix")
    redis_client.hset("kb/manual", mapping={"title": "a user's hash: kb's index holds it"})
    redis_client.set("vecmirror:tombstone:kb/9", "1")

    # kb leaves the file (its data kept); kbase and archive, whose prefixes start `kb`, join.
    path, later = write_config([KBASE, ARCHIVE])
    report, removals = await migrate_and_remove(settings_for(path), later)
    assert report.removed == ["kb"]
    assert [r.line() for r in removals] == [
        f"kept 'kb': 3 documents under prefix kb and index {KB_INDEX}; `vecmirror migrate --drop-data` "
        "deletes them"
    ]
    await sync_once(settings_for(path), later, embedder_factory)
    assert keys(redis_client, "kb/archive:*") == {"kb/archive:1"}
    # The index kb left holds every HASH key starting `kb`: its 3 documents, kb/manual and kbase's 2.
    assert _documents(redis_client, KB_INDEX) == 6

    plan = await plan_command(settings_for(path), later, drop_data=True)
    (left,) = [m for m in plan.as_dict()["mirrors"] if m["action"] == "left"]
    assert left["mirror"] == "kb"
    assert left["recorded"] == {
        "index": KB_INDEX,
        "prefixes": ["kb"],
        "key_separator": "/",
        "storage_type": "hash",
        "index_kept_for": None,
    }
    assert left["redis"] == {
        "index": KB_INDEX,
        "prefixes": ["kb"],
        "documents": 3,  # counted key by key: the index's count holds other mirrors' keys
        "marker": True,
        "candidates": [],
        "kept": False,
    }
    line = f"- kb: removed earlier: Redis: 3 documents under prefix kb and index {KB_INDEX}; deleted"
    assert f"{line} (--drop-data)" in format_plan(plan)

    kbase = {k: redis_client.hgetall(k) for k in keys(redis_client, "kbase:*")}
    report, removals = await migrate_and_remove(settings_for(path), later, drop_data=True)
    assert report.removed == []
    (removal,) = removals
    dropped = removal.dropped
    assert dropped is not None and dropped.index == KB_INDEX and dropped.indexes == [KB_INDEX]
    assert dropped.documents == 3 and sorted(dropped.foreign) == ["kb/manual", "kb/notes"]
    assert dropped.other_keys >= 3  # the tombstone, the marker, the last sync (and a config lease)
    assert removal.line() == (
        f"deleted 'kb': index {KB_INDEX} and its 3 documents, {dropped.other_keys} other keys; left 2 keys "
        "vecmirror did not write"
    )
    assert keys(redis_client, "kb*") == {"kb/notes", "kb/manual", "kb/archive:1", "kbase:1", "kbase:2"}
    assert {k: redis_client.hgetall(k) for k in keys(redis_client, "kbase:*")} == kbase
    assert keys(redis_client, "vecmirror:*kb/*") == set() and keys(redis_client, "vecmirror:*:kb") == set()
    assert _indexes(redis_client) == {"kbase_idx", "archive_idx"}
    assert _documents(redis_client, "kbase_idx") == 2 and _documents(redis_client, "archive_idx") == 1
    assert await _layouts(pg, "removed_mirrors_v1") == {}
    assert not (await plan_command(settings_for(path), later, drop_data=True)).changes


async def _docs_and_products_synced(
    pg: asyncpg.Connection, write_config: Any, settings_for: Any, embedder_factory: Any
) -> None:
    await pg.execute(DOCS_TABLE)
    await pg.execute(PRODUCTS_TABLE)
    await pg.execute("INSERT INTO docs VALUES (1, 'Cats', 'purr', 'pets'), (2, 'Dogs', 'bark', NULL)")
    await pg.execute("INSERT INTO products VALUES ('a', 'A', 1.5, '{1,0,0,0}'), ('b', 'B', 2, '{0,1,0,0}')")
    path, config = write_config([DOCS_MIRROR, PRODUCTS_MIRROR])
    await migrate_command(settings_for(path), config)
    await sync_once(settings_for(path), config, embedder_factory)


async def test_the_recorded_layout_needs_no_marker_to_tell_two_removed_mirrors_apart(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    write_config: Any,
    settings_for: Any,
    embedder_factory: Any,
) -> None:
    """Without their markers nothing in Redis links docs_idx and products_idx to their mirrors
    (before 0006: ambiguous, refused); Postgres' record does."""
    await _docs_and_products_synced(pg, write_config, settings_for, embedder_factory)
    redis_client.delete("vecmirror:marker:docs", "vecmirror:marker:products")
    await pg.execute(NOTES_TABLE)
    await pg.execute("INSERT INTO notes VALUES ('acme', 1, 'Hello', 'x', '{1,0,0}')")
    path, notes = write_config([NOTES_MIRROR])
    await migrate_command(settings_for(path), notes)
    await sync_once(settings_for(path), notes, embedder_factory)
    plan = await plan_command(settings_for(path), notes, drop_data=True)
    removed = {m["mirror"]: m["redis"] for m in plan.as_dict()["mirrors"] if m["action"] == "left"}
    assert {name: (r["index"], r["documents"], r["candidates"]) for name, r in removed.items()} == {
        "docs": ("docs_idx", 2, []),
        "products": ("products_idx", 2, []),
    }
    _, removals = await migrate_and_remove(settings_for(path), notes, drop_data=True)
    assert {r.mirror: r.dropped.index if r.dropped else None for r in removals} == {
        "docs": "docs_idx",
        "products": "products_idx",
    }
    assert _indexes(redis_client) == {"notes_idx"}
    assert keys(redis_client, "doc:*") | keys(redis_client, "product:*") == set()
    assert keys(redis_client, "note:*") == {"note:acme:1"}


async def test_a_renamed_mirror_keeps_the_index_and_keys_it_took_over(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    write_config: Any,
    settings_for: Any,
    embedder_factory: Any,
) -> None:
    """docs renamed articles, same index and prefix: dropping docs' data leaves articles' alone."""
    await _docs_and_products_synced(pg, write_config, settings_for, embedder_factory)
    articles = {**DOCS_MIRROR, "name": "articles"}
    path, config = write_config([articles, PRODUCTS_MIRROR])
    plan = await plan_command(settings_for(path), config)
    (docs,) = [m for m in plan.as_dict()["mirrors"] if m["action"] == "remove"]
    assert docs["recorded"]["index_kept_for"] == "articles"
    assert docs["redis"]["index"] is None and docs["redis"]["documents"] == 0
    report, removals = await migrate_and_remove(settings_for(path), config, drop_data=True)
    assert report.removed == ["docs"]
    (removal,) = removals
    assert removal.dropped is not None and removal.dropped.index_kept_for == "articles"
    assert removal.dropped.indexes == [] and removal.dropped.documents == 0
    assert removal.line().startswith("deleted 'docs': 0 documents (its index is kept: mirror 'articles''s)")
    assert _indexes(redis_client) == {"docs_idx", "products_idx"}
    assert keys(redis_client, "doc:*") == {"doc:1", "doc:2"}
    assert keys(redis_client, "vecmirror:marker:docs") == set()


async def test_a_removed_mirror_rebuilt_online_loses_every_generation_of_its_index(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    write_config: Any,
    settings_for: Any,
    embedder_factory: Any,
) -> None:
    """Its name is an alias of `<name>__<digest>`, and a newer generation was being filled when it
    was removed: both go, and the alias with them; nobody else's index does."""
    await _docs_and_products_synced(pg, write_config, settings_for, embedder_factory)
    schema = ["SCHEMA", "name", "TEXT"]
    for generation in ("products_idx__0123456789", "products_idx__abcdef0123"):
        redis_client.execute_command("FT.CREATE", generation, "ON", "HASH", "PREFIX", 1, "product", *schema)
    redis_client.execute_command("FT.ALIASADD", "products_idx", "products_idx__0123456789")
    redis_client.execute_command("FT.DROPINDEX", "products_idx")  # the switch: the name is the alias
    other = "products_idx__notmine"  # not a digest: no generation of products_idx
    redis_client.execute_command("FT.CREATE", other, "ON", "HASH", "PREFIX", 1, "x", *schema)
    path, only_docs = write_config([DOCS_MIRROR])
    _, removals = await migrate_and_remove(settings_for(path), only_docs, drop_data=True)
    (removal,) = removals
    assert removal.dropped is not None and removal.dropped.index == "products_idx"
    assert removal.dropped.indexes == ["products_idx__0123456789", "products_idx__abcdef0123"]
    assert removal.dropped.documents == 2
    assert _indexes(redis_client) == {"docs_idx", "products_idx__notmine"}
    assert keys(redis_client, "product:*") == set() and keys(redis_client, "doc:*") == {"doc:1", "doc:2"}


async def test_before_0006_a_removed_mirror_is_found_in_redis_and_the_next_migrate_records_layouts(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    write_config: Any,
    settings_for: Any,
    embedder_factory: Any,
) -> None:
    """Mirrors installed by 0005; docs is removed by the migrate that applies 0006 (no layout of it
    was ever recorded) and dropped later, found by its marker's generation. The index over `doc`
    reaches the configured docs2's keys: it is dropped without them (no DD)."""
    await _docs_and_products_synced(pg, write_config, settings_for, embedder_factory)
    await _as_before_0006(pg)
    docs2 = copy.deepcopy(PRODUCTS_MIRROR)
    docs2["index"]["index"].update(name="docs2_idx", prefix="docs2")
    path, config = write_config([docs2])  # docs removed; products moves to docs2_idx (keys docs2:…)

    plan = await plan_command(settings_for(path), config)
    assert plan.pending_migrations == ["0006_redis_layout"]
    docs = next(m for m in plan.as_dict()["mirrors"] if m["mirror"] == "docs")
    assert docs["action"] == "remove" and docs["recorded"] is None
    assert docs["redis"]["index"] == "docs_idx" and docs["redis"]["documents"] == 2

    report, removals = await migrate_and_remove(settings_for(path), config)
    assert report.applied == ["0006_redis_layout"] and report.removed == ["docs"]
    (removal,) = removals
    assert removal.data is not None and removal.data.layout is None  # found by guessing
    assert removal.data.index is not None and removal.data.index.name == "docs_idx"
    assert await _layouts(pg) == {"products": ("docs2_idx", ["docs2"], ":", "hash")}
    assert await _layouts(pg, "removed_mirrors_v1") == {}  # none recorded of docs: nothing kept
    await sync_once(settings_for(path), config, embedder_factory)
    assert keys(redis_client, "docs2:*") == {"docs2:a", "docs2:b"}

    _, removals = await migrate_and_remove(settings_for(path), config, drop_data=True)
    dropped = {r.mirror: r.dropped for r in removals}
    assert set(dropped) == {"docs"}
    assert dropped["docs"] is not None and dropped["docs"].index == "docs_idx"
    assert dropped["docs"].documents == 2
    assert keys(redis_client, "doc:*") == set() and keys(redis_client, "docs2:*") == {"docs2:a", "docs2:b"}
    assert "docs_idx" not in _indexes(redis_client)


async def test_before_0006_two_removed_mirrors_without_markers_are_still_refused(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    write_config: Any,
    settings_for: Any,
    embedder_factory: Any,
) -> None:
    await _docs_and_products_synced(pg, write_config, settings_for, embedder_factory)
    await _as_before_0006(pg)
    redis_client.delete("vecmirror:marker:docs", "vecmirror:marker:products")  # nothing links them now
    await pg.execute(NOTES_TABLE)
    path, notes = write_config([NOTES_MIRROR])
    plan = await plan_command(settings_for(path), notes, drop_data=True)
    removed = {m["mirror"]: m["redis"] for m in plan.as_dict()["mirrors"] if m["action"] == "remove"}
    assert removed["docs"]["index"] is None
    assert removed["docs"]["candidates"] == ["docs_idx", "products_idx"]
    with pytest.raises(AmbiguousIndexError, match="its index is one of docs_idx, products_idx"):
        await migrate_and_remove(settings_for(path), notes, drop_data=True)
    assert await pg.fetchval("SELECT count(*) FROM vecmirror.migrations WHERE version = 6") == 0
    assert len(keys(redis_client, "doc:*")) == 2
