"""`vecmirror plan` (= `migrate --dry-run`) on real servers: added, removed and kept mirrors, index
differences, the exact re-embed count of a template change, pending migrations and trigger moves;
and `migrate` keeping a removed mirror's Redis data unless `--drop-data` deletes it (only it)."""

from __future__ import annotations

import copy
from typing import Any

import asyncpg
import pytest
import redis
from pydantic import SecretStr

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
from vecmirror.boundary import RedisUnavailableError
from vecmirror.commands import AmbiguousIndexError, migrate_and_remove, migrate_command, plan_command
from vecmirror.ops.plan import format_plan, rebuild_note


async def _two_mirrors_synced(
    pg: asyncpg.Connection, write_config: Any, settings_for: Any, embedder_factory: Any
) -> tuple[Any, Any]:
    await pg.execute(DOCS_TABLE)
    await pg.execute(PRODUCTS_TABLE)
    await pg.execute(
        "INSERT INTO docs VALUES (1, 'Cats', 'purr', 'pets'), (2, 'Dogs', 'bark', NULL), "
        "(3, 'Fish', 'swim', 'x')"
    )
    await pg.execute("INSERT INTO products VALUES ('a', 'A', 1.5, '{1,0,0,0}'), ('b', 'B', 2, '{0,1,0,0}')")
    path, config = write_config([DOCS_MIRROR, PRODUCTS_MIRROR])
    settings = settings_for(path)
    await migrate_command(settings, config)
    await sync_once(settings, config, embedder_factory)
    return settings, config


async def test_a_fresh_database_plans_every_migration_and_every_mirror(
    pg: asyncpg.Connection, write_config: Any, settings_for: Any
) -> None:
    await pg.execute(DOCS_TABLE)
    await pg.execute("INSERT INTO docs VALUES (1, 'Cats', 'purr', 'pets'), (2, 'Dogs', 'bark', NULL)")
    path, config = write_config([DOCS_MIRROR])
    plan = await plan_command(settings_for(path), config)
    assert plan.changes
    assert plan.pending_migrations and plan.pending_migrations[0].startswith("0001_")
    (docs,) = plan.as_dict()["mirrors"]
    assert docs == {
        "mirror": "docs",
        "action": "add",
        "table": "public.docs",
        "rows_to_queue": 2,
        "problem": None,
    }
    assert "+ docs: added (public.docs): its first sync will queue 2 rows" in format_plan(plan)
    assert await pg.fetchval("SELECT to_regclass('vecmirror.migrations')") is None  # nothing written


async def test_in_sync_mirrors_plan_no_change(
    pg: asyncpg.Connection, write_config: Any, settings_for: Any, embedder_factory: Any
) -> None:
    settings, config = await _two_mirrors_synced(pg, write_config, settings_for, embedder_factory)
    plan = await plan_command(settings, config)
    assert not plan.changes, format_plan(plan)
    lines = format_plan(plan)
    assert lines[0] == "migrations: none pending" and lines[-1] == "nothing would change"
    assert "= docs: unchanged (3 documents in docs_idx)" in lines
    docs = plan.as_dict()["mirrors"][0]
    assert docs["embedding"] == {
        "rows": 3,
        "reembed": 0,
        "unchanged": 3,
        "without_document": 0,
        "failing": 0,
        "exact": True,
    }


async def test_template_change_counts_exact_re_embeds_and_index_change_is_named(
    pg: asyncpg.Connection, write_config: Any, settings_for: Any, embedder_factory: Any
) -> None:
    await _two_mirrors_synced(pg, write_config, settings_for, embedder_factory)
    # Under the new template rows 1 and 2 render another text; row 3 renders exactly its stored
    # text 'Fish: swim', so its vector stays.
    await pg.execute("UPDATE docs SET content = 'Fish: swim' WHERE id = 3")
    changed = copy.deepcopy(DOCS_MIRROR)
    changed["embed"]["template"] = "{content}"
    products = copy.deepcopy(PRODUCTS_MIRROR)
    products["index"]["fields"][1]["attrs"] = {"sortable": True}
    path, config = write_config([changed, products])
    plan = await plan_command(settings_for(path), config)
    by_name = {m["mirror"]: m for m in plan.as_dict()["mirrors"]}
    assert by_name["docs"]["embedding"] == {
        "rows": 3,
        "reembed": 2,
        "unchanged": 1,
        "without_document": 0,
        "failing": 0,
        "exact": True,
    }
    index = by_name["products"]["index"]
    assert index["rebuild"] is True and index["exists"] is True and index["documents"] == 2
    assert index["rebuild_online"] is True  # a flag: the documents follow in place
    assert index["differences"] == ["field 'price': SORTABLE is on in the config, off in Redis"]
    lines = format_plan(plan)
    assert "~ docs: 2 of 3 rows will be re-embedded (exact; 1 unchanged)" in lines
    assert "~ products: index products_idx differs from the config and must be rebuilt:" in lines
    assert f"    {rebuild_note('products_idx', online=True)}" in lines
    assert plan.changes


async def test_removed_mirror_is_kept_by_default_and_drop_data_deletes_only_its_keys(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    write_config: Any,
    settings_for: Any,
    embedder_factory: Any,
) -> None:
    await _two_mirrors_synced(pg, write_config, settings_for, embedder_factory)
    redis_client.set("vecmirror:tombstone:product:gone", "1")
    redis_client.set("product:foreign", "not ours")
    docs_keys = keys(redis_client, "doc:*") | keys(redis_client, "vecmirror:*docs*")
    assert len(keys(redis_client, "doc:*")) == 3
    path, only_docs = write_config([DOCS_MIRROR])

    plan = await plan_command(settings_for(path), only_docs)
    removed = next(m for m in plan.as_dict()["mirrors"] if m["mirror"] == "products")
    assert removed["action"] == "remove" and removed["table"] == "public.products"
    assert removed["redis"] == {
        "index": "products_idx",
        "prefixes": ["product"],
        "documents": 2,
        "marker": True,
        "candidates": [],
        "kept": True,
    }
    assert (
        "- products: removed (public.products): Redis keeps 2 documents under prefix product and index "
        "products_idx; `vecmirror migrate --drop-data` deletes them"
    ) in format_plan(plan)

    report, removals = await migrate_and_remove(settings_for(path), only_docs)
    assert report.removed == ["products"]
    assert [r.line() for r in removals] == [
        "kept 'products': 2 documents under prefix product and index products_idx; "
        "`vecmirror migrate --drop-data` deletes them"
    ]
    assert keys(redis_client, "product:*") == {"product:a", "product:b", "product:foreign"}
    assert b"products_idx" in redis_client.execute_command("FT._LIST")

    # Later: the data kept of the mirror removed earlier is still found, and deleted on request.
    later = await plan_command(settings_for(path), only_docs, drop_data=True)
    assert later.changes
    assert [m["action"] for m in later.as_dict()["mirrors"]] == ["keep", "left"]
    report, removals = await migrate_and_remove(settings_for(path), only_docs, drop_data=True)
    assert report.removed == []
    (removal,) = removals
    assert removal.dropped is not None and removal.dropped.index == "products_idx"
    assert removal.dropped.documents == 2 and removal.dropped.foreign == ["product:foreign"]
    assert keys(redis_client, "product:*") == {"product:foreign"}  # not written by vecmirror: left
    assert keys(redis_client, "vecmirror:*product*") == set()
    assert b"products_idx" not in redis_client.execute_command("FT._LIST")
    assert keys(redis_client, "doc:*") | keys(redis_client, "vecmirror:*docs*") == docs_keys
    assert not (await plan_command(settings_for(path), only_docs, drop_data=True)).changes


async def test_drop_data_at_removal_deletes_after_postgres_committed(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    write_config: Any,
    settings_for: Any,
    embedder_factory: Any,
) -> None:
    await _two_mirrors_synced(pg, write_config, settings_for, embedder_factory)
    path, only_products = write_config([PRODUCTS_MIRROR])
    report, removals = await migrate_and_remove(settings_for(path), only_products, drop_data=True)
    assert report.removed == ["docs"]
    assert [r.dropped.index if r.dropped else None for r in removals] == ["docs_idx"]
    assert keys(redis_client, "doc:*") == set()
    assert keys(redis_client, "vecmirror:marker:docs") == set()
    assert keys(redis_client, "vecmirror:last_sync:docs") == set()
    assert keys(redis_client, "product:*") == {"product:a", "product:b"}
    assert await pg.fetchval("SELECT count(*) FROM vecmirror.mirrors_v1 WHERE name = 'docs'") == 0


async def test_a_renamed_table_is_a_trigger_change(
    pg: asyncpg.Connection, write_config: Any, settings_for: Any, embedder_factory: Any
) -> None:
    await _two_mirrors_synced(pg, write_config, settings_for, embedder_factory)
    await pg.execute("ALTER TABLE products RENAME TO goods")
    moved = copy.deepcopy(PRODUCTS_MIRROR)
    moved["table"] = "goods"
    path, config = write_config([DOCS_MIRROR, moved])
    plan = await plan_command(settings_for(path), config)
    products = next(m for m in plan.as_dict()["mirrors"] if m["mirror"] == "products")
    assert products["triggers"] == "the table changes: public.products -> public.goods"
    assert "~ products: triggers re-installed: the table changes: public.products -> public.goods" in (
        format_plan(plan)
    )


async def test_drop_data_refuses_before_any_change_when_the_index_is_ambiguous(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    write_config: Any,
    settings_for: Any,
    embedder_factory: Any,
) -> None:
    await _two_mirrors_synced(pg, write_config, settings_for, embedder_factory)
    await pg.execute(  # installed before 0006: Postgres recorded no layout (else nothing is ambiguous)
        "UPDATE vecmirror.mirrors_v1 SET index_name = NULL, key_prefixes = NULL, key_separator = NULL, "
        "storage_type = NULL"
    )
    redis_client.delete("vecmirror:marker:docs", "vecmirror:marker:products")  # nothing links them now
    await pg.execute(NOTES_TABLE)
    path, none = write_config([NOTES_MIRROR])  # docs and products both removed
    plan = await plan_command(settings_for(path), none, drop_data=True)
    removed = {m["mirror"]: m["redis"] for m in plan.as_dict()["mirrors"] if m["action"] == "remove"}
    assert removed["docs"]["index"] is None
    assert removed["docs"]["candidates"] == ["docs_idx", "products_idx"]
    with pytest.raises(AmbiguousIndexError, match="its index is one of docs_idx, products_idx"):
        await migrate_and_remove(settings_for(path), none, drop_data=True)
    assert await pg.fetchval("SELECT count(*) FROM vecmirror.mirrors_v1") == 2  # nothing changed
    assert len(keys(redis_client, "doc:*")) == 3


async def test_migrate_without_drop_data_goes_on_when_redis_is_out_of_reach(
    pg: asyncpg.Connection, write_config: Any, settings_for: Any, embedder_factory: Any
) -> None:
    await _two_mirrors_synced(pg, write_config, settings_for, embedder_factory)
    path, only_docs = write_config([DOCS_MIRROR])
    nowhere = settings_for(path).model_copy(update={"redis_url": SecretStr("redis://127.0.0.1:1/0")})
    with pytest.raises(RedisUnavailableError):
        await migrate_and_remove(nowhere, only_docs, drop_data=True)
    assert await pg.fetchval("SELECT count(*) FROM vecmirror.mirrors_v1") == 2  # refused before Postgres
    report, removals = await migrate_and_remove(nowhere, only_docs)
    assert report.removed == ["products"]
    (line,) = [r.line() for r in removals]
    assert line.startswith("kept 'products''s data in Redis (not inspected: Redis unreachable at 127.0.0.1:1")


async def test_a_table_dropped_and_created_again_is_planned_as_a_resync(
    pg: asyncpg.Connection, write_config: Any, settings_for: Any, embedder_factory: Any
) -> None:
    settings, config = await _two_mirrors_synced(pg, write_config, settings_for, embedder_factory)
    await pg.execute("DROP TABLE products")
    await pg.execute(PRODUCTS_TABLE)
    plan = await plan_command(settings, config)
    products = next(m for m in plan.as_dict()["mirrors"] if m["mirror"] == "products")
    assert products["table_replaced"] is True
    assert products["triggers"] == (
        "the capture triggers are not as registered (found on nowhere): re-installed"
    )
    assert (
        "~ products: public.products is another table than the one registered: run resyncs every row"
        in format_plan(plan)
    )
    docs = next(m for m in plan.as_dict()["mirrors"] if m["mirror"] == "docs")
    assert docs["table_replaced"] is False and docs["triggers"] is None
