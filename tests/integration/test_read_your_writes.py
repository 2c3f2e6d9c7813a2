"""Read-your-writes (`MirrorSearch.wait_synced`) on real servers: with a running worker, a write
then `wait_synced` then a search that must see it, 100 times; a stopped worker times out; a paused
mirror says why; a failed row raises at once; a related table's change, a TRUNCATE and the backfill
walk are waited for; keys are read as the capture writes them."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import asyncpg
import pytest

from helpers import PRODUCTS_MIRROR, PRODUCTS_TABLE, sync_once
from processes import running_worker
from vecmirror.app import open_app
from vecmirror.commands import migrate_command, pause_command
from vecmirror.config import ModelSpec
from vecmirror.errors import FailedRowError, QueryError
from vecmirror.pipeline.embedder import Embedder
from vecmirror.query import MirrorSearch, SyncMirrorSearch, num, tag
from vecmirror.query.synced import ANSWER_GRACE, NO_ANSWER, canonical_keys
from vecmirror.run.worker import MirrorsPausedError

POLL = 0.2
ROUNDS = 100


def _no_model(spec: ModelSpec) -> Embedder:
    raise AssertionError(f"no model is loaded for vector queries, asked for {spec}")


@pytest.fixture
async def products(pg: asyncpg.Connection, write_config: Any, settings_for: Any) -> Any:
    """The products mirror (vectors from a column: no model), migrated and synced once."""
    await pg.execute(PRODUCTS_TABLE)
    path, config = write_config([PRODUCTS_MIRROR])
    settings = settings_for(path, poll_interval=POLL, error_backoff=0.05)
    await migrate_command(settings, config)
    await sync_once(settings, config)
    return settings, config


async def _sees(search: MirrorSearch, price: int, name: str | None) -> bool:
    """Whether a KNN search among the documents of this price finds `name` (None: finds none)."""
    hits = await search.knn(
        "products", vector=[1, 1, 1, 1], k=2, filter=num("price").eq(price), return_fields=["name"]
    )
    return [h.fields["name"] for h in hits] == ([] if name is None else [name])


async def test_a_search_after_wait_synced_sees_every_write(
    pg: asyncpg.Connection, database_url: str, products: Any
) -> None:
    settings, config = products
    rows: dict[str, int] = {}  # sku -> its price now: each write gives a price no other row has
    chance = random.Random(17)
    async with (
        open_app(settings, config) as app,
        running_worker(app.worker(), database_url, POLL),
        MirrorSearch.open(settings, config, _no_model) as search,
    ):
        for price in range(1, ROUNDS + 1):
            sku = f"s{chance.randrange(8)}"
            vector = [chance.random() + 0.1 for _ in range(4)]
            if sku in rows and chance.random() < 0.3:
                await pg.execute("DELETE FROM products WHERE sku = $1", sku)
                gone = rows.pop(sku)
            elif sku in rows:
                await pg.execute(
                    "UPDATE products SET name = $2, price = $3, vec = $4 WHERE sku = $1",
                    sku,
                    f"n{price}",
                    price,
                    vector,
                )
                gone, rows[sku] = rows[sku], price
            else:
                await pg.execute(
                    "INSERT INTO products VALUES ($1, $2, $3, $4)", sku, f"n{price}", price, vector
                )
                gone, rows[sku] = None, price
            assert await search.wait_synced("products", [sku], 10), f"round {price}"
            if sku in rows:
                assert await _sees(search, price, f"n{price}"), f"round {price}: the new value"
            if gone is not None:
                assert await _sees(search, gone, None), f"round {price}: the old value is gone"


async def test_a_stopped_worker_times_out_and_a_drained_queue_is_synced(
    pg: asyncpg.Connection, products: Any
) -> None:
    settings, config = products
    await pg.execute("INSERT INTO products VALUES ('a', 'A', 1, '{1,2,3,4}')")
    async with MirrorSearch.open(settings, config, _no_model) as search:
        started = time.monotonic()
        outcome = await search.wait_synced_outcome("products", ["a"], 0.5)
        assert 0.5 <= time.monotonic() - started < 3
        assert (outcome.synced, outcome.waiting, outcome.reason) == (False, 1, None)
        assert "is `vecmirror run` running?" in outcome.line(0.5)
        assert await search.wait_synced("products", ["other", "keys"], 0)  # nothing of theirs queued
        assert not await asyncio.to_thread(_blocking_wait, settings, config, 0.1)
        await sync_once(settings, config)
        assert await search.wait_synced("products", ["a"], 0)
        assert await asyncio.to_thread(_blocking_wait, settings, config, 0)


def _blocking_wait(settings: Any, config: Any, timeout: float) -> bool:
    """SyncMirrorSearch's form, as a script calls it (its own event loop: off the test's thread)."""
    with SyncMirrorSearch(settings, config, _no_model) as search:
        return search.wait_synced("products", ["a"], timeout)


async def test_a_paused_mirror_times_out_saying_so(pg: asyncpg.Connection, products: Any) -> None:
    settings, config = products
    await pause_command(settings, config, "products", "reindex tonight")
    await pg.execute("INSERT INTO products VALUES ('a', 'A', 1, '{1,2,3,4}')")
    async with MirrorSearch.open(settings, config, _no_model) as search:
        outcome = await search.wait_synced_outcome("products", ["a", "b"], 0.2)
    assert (outcome.synced, outcome.keys, outcome.waiting) == (False, 2, 1)
    assert (
        outcome.reason == "the mirror is paused by an operator (reindex tonight): `vecmirror resume products`"
    )


async def test_a_failed_row_raises_at_once_and_its_fix_syncs(
    pg: asyncpg.Connection, database_url: str, products: Any
) -> None:
    settings, config = products
    async with (
        open_app(settings, config) as app,
        running_worker(app.worker(), database_url, POLL),
        MirrorSearch.open(settings, config, _no_model) as search,
    ):
        await pg.execute("INSERT INTO products VALUES ('bad', 'B', 1, '{1,2}')")  # 2 of 4 dims
        started = time.monotonic()
        with pytest.raises(
            FailedRowError, match=r"mirror 'products', row key \['bad'\]: the row failed"
        ) as e:
            await search.wait_synced("products", ["bad"], 60)
        assert time.monotonic() - started < 10
        assert e.value.field == "vec" and "4" in e.value.error
        await pg.execute("UPDATE products SET vec = '{1,2,3,4}' WHERE sku = 'bad'")
        assert await search.wait_synced("products", ["bad"], 10)
        assert await _sees(search, 1, "B")


async def test_a_truncate_and_the_backfill_walk_are_waited_for(
    pg: asyncpg.Connection, write_config: Any, settings_for: Any
) -> None:
    await pg.execute(PRODUCTS_TABLE)
    await pg.execute("INSERT INTO products VALUES ('old', 'Old', 1, '{1,2,3,4}')")  # before capture
    path, config = write_config([PRODUCTS_MIRROR])
    settings = settings_for(path)
    await migrate_command(settings, config)
    async with MirrorSearch.open(settings, config, _no_model) as search:
        outcome = await search.wait_synced_outcome("products", ["old"], 0.1)
        assert (outcome.waiting, outcome.reason) == (1, "its backfill walk has not queued every row yet")
        await sync_once(settings, config)
        assert await search.wait_synced("products", ["old"], 0)
        assert await _sees(search, 1, "Old")

        await pg.execute("TRUNCATE products")
        outcome = await search.wait_synced_outcome("products", ["old"], 0.1)
        assert (outcome.waiting, outcome.reason) == (1, "a TRUNCATE of its table is not handled yet")
        await sync_once(settings, config)
        assert await search.wait_synced("products", ["old"], 0)
        assert await _sees(search, 1, None)


SHOP = """
CREATE TABLE categories (id integer PRIMARY KEY, name text NOT NULL);
CREATE TABLE items (id integer PRIMARY KEY, name text NOT NULL, category_id integer, vec real[]);
CREATE VIEW item_docs AS
SELECT i.id, i.name, i.vec, coalesce(c.name, 'none') AS category
FROM items i LEFT JOIN categories c ON c.id = i.category_id;
INSERT INTO categories VALUES (1, 'Kitchen');
INSERT INTO items VALUES (1, 'Kettle', 1, '{1,2,3,4}'), (2, 'Rake', NULL, '{4,3,2,1}');
"""

ITEMS_MIRROR: dict[str, Any] = {
    "name": "items",
    "table": "public.items",
    "documents": "public.item_docs",
    "related": [{"table": "public.categories", "on": {"category_id": "id"}}],
    "vector_column": "vec",
    "index": {
        "index": {"name": "items_idx", "prefix": "item", "storage_type": "hash"},
        "fields": [
            {"name": "name", "type": "text"},
            {"name": "category", "type": "tag"},
            {
                "name": "vec",
                "type": "vector",
                "attrs": {"algorithm": "flat", "dims": 4, "distance_metric": "cosine"},
            },
        ],
    },
}


async def test_a_related_tables_change_is_waited_for(
    pg: asyncpg.Connection, database_url: str, write_config: Any, settings_for: Any
) -> None:
    await pg.execute(SHOP)
    path, config = write_config([ITEMS_MIRROR])
    settings = settings_for(path, poll_interval=POLL)
    await migrate_command(settings, config)
    await sync_once(settings, config)
    async with MirrorSearch.open(settings, config, _no_model) as search:

        async def in_category(name: str) -> list[str]:
            found = await search.knn("items", vector=[1, 1, 1, 1], k=5, filter=tag("category").any_of(name))
            return sorted(hit.id for hit in found)

        await pg.execute("UPDATE categories SET name = 'Cookware' WHERE id = 1")  # item 1's document
        outcome = await search.wait_synced_outcome("items", [1], 0.1)
        assert (outcome.waiting, outcome.reason) == (
            1,
            "changes of its related tables are not fanned out yet",
        )
        async with open_app(settings, config) as app, running_worker(app.worker(), database_url, POLL):
            assert await search.wait_synced("items", [1], 10)
            assert await in_category("Cookware") == ["item:1"]
            for round_ in range(5):
                await pg.execute("UPDATE categories SET name = $1 WHERE id = 1", f"c{round_}")
                assert await search.wait_synced("items", [1, 2], 10)
                assert await in_category(f"c{round_}") == ["item:1"]


async def test_keys_are_read_as_the_capture_writes_them(
    pg: asyncpg.Connection, database_url: str, write_config: Any, settings_for: Any
) -> None:
    await pg.execute(
        "CREATE TABLE slots (at timestamptz, n integer, note text, vec real[], PRIMARY KEY (at, n))"
    )
    mirror = {**PRODUCTS_MIRROR, "name": "slots", "table": "slots"}
    mirror["index"] = {**PRODUCTS_MIRROR["index"], "index": {"name": "slots_idx", "prefix": "slot"}}
    mirror["index"]["fields"] = [PRODUCTS_MIRROR["index"]["fields"][2]]
    path, config = write_config([mirror])
    settings = settings_for(path)
    await migrate_command(settings, config)
    tokyo = await asyncpg.connect(database_url, server_settings={"TimeZone": "Asia/Tokyo"})
    try:
        await tokyo.execute("INSERT INTO slots VALUES ('2024-01-01 21:00', 7, 'x', '{1,2,3,4}')")
        assert await canonical_keys(
            tokyo, "slots", [("2024-01-01 13:00+01", "007"), ["2024-01-01T12:00Z", 7]]
        ) == [("2024-01-01 12:00:00+00", "7")]
        with pytest.raises(QueryError, match="has 1 value"):
            await canonical_keys(tokyo, "slots", ["2024-01-01 12:00+00"])
        with pytest.raises(QueryError, match="not a value of its column's type"):
            await canonical_keys(tokyo, "slots", [("2024-01-01 12:00+00", "seven")])
    finally:
        await tokyo.close()
    [queued] = await pg.fetch(
        "SELECT row_key FROM vecmirror.changes_v1 WHERE mirror = 'slots' AND row_key IS NOT NULL"
    )
    assert tuple(queued["row_key"]) == ("2024-01-01 12:00:00+00", "7")
    async with MirrorSearch.open(settings, config, _no_model) as search:
        assert not await search.wait_synced("slots", [("2024-01-01 12:00:00+00", 7)], 0)
        await sync_once(settings, config)
        assert await search.wait_synced("slots", [("2024-01-01 12:00:00+00", 7)], 0)


# ---- found by trying to break it: each of these said "synced" or overstayed its timeout before


async def test_a_replaced_table_is_not_synced_until_a_worker_takes_it_in(
    pg: asyncpg.Connection, products: Any
) -> None:
    """Dropped and created again, the table has no capture triggers: its writes are never queued,
    so no queued change of the key can say it is synced. Once the worker has paused the mirror on
    that, its error keeps the wait closed too; after `migrate` and a sync it is synced."""
    settings, config = products
    await pg.execute("INSERT INTO products VALUES ('a', 'A', 1, '{1,2,3,4}')")
    await sync_once(settings, config)
    await pg.execute("DROP TABLE products")
    await pg.execute(PRODUCTS_TABLE)
    await pg.execute("INSERT INTO products VALUES ('a', 'new', 2, '{1,2,3,4}')")
    async with MirrorSearch.open(settings, config, _no_model) as search:
        outcome = await search.wait_synced_outcome("products", ["a"], 0.2)
        assert (outcome.synced, outcome.waiting) == (False, 1)
        assert outcome.reason is not None and "capture triggers are missing" in outcome.reason
        with pytest.raises(MirrorsPausedError, match="capture triggers are missing"):
            await sync_once(settings, config)  # the worker pauses the mirror on its trouble
        outcome = await search.wait_synced_outcome("products", ["a"], 0.2)
        assert not outcome.synced and (outcome.reason or "").startswith("the mirror is paused on an error")
        await migrate_command(settings, config)
        await sync_once(settings, config)
        assert await search.wait_synced("products", ["a"], 5)
        assert await _sees(search, 2, "new")


async def test_a_key_equal_in_value_but_written_otherwise_waits_for_its_row(
    pg: asyncpg.Connection, write_config: Any, settings_for: Any
) -> None:
    """numeric 1 = 1.00, but the capture writes the row's own text, '1.00': the given key is
    looked up in the table too, so its queued change is found."""
    await pg.execute("CREATE TABLE prices (id numeric PRIMARY KEY, name text, price int, vec real[])")
    mirror = {**PRODUCTS_MIRROR, "name": "prices", "table": "prices"}
    mirror["index"] = {**PRODUCTS_MIRROR["index"], "index": {"name": "prices_idx", "prefix": "price"}}
    path, config = write_config([mirror])
    settings = settings_for(path)
    await migrate_command(settings, config)
    await pg.execute("INSERT INTO prices VALUES (1.00, 'A', 1, '{1,2,3,4}')")
    await sync_once(settings, config)
    await pause_command(settings, config, "prices", None)
    await pg.execute("UPDATE prices SET name = 'B' WHERE id = 1")
    async with MirrorSearch.open(settings, config, _no_model) as search:
        for spelling in (1, "1", "1.0", "1.00"):
            outcome = await search.wait_synced_outcome("prices", [spelling], 0)
            assert (outcome.synced, outcome.waiting) == (False, 1), spelling
        assert await search.wait_synced("prices", [2], 0)  # no such row, nothing queued


async def test_a_lock_on_the_queue_ends_the_wait_near_its_timeout(database_url: str, products: Any) -> None:
    """A query Postgres does not answer (here: a lock held on the queue) is cancelled at the
    timeout and a grace second; the wait ends unsynced, saying so."""
    settings, config = products
    locker = await asyncpg.connect(database_url)
    try:
        async with locker.transaction():
            await locker.execute("LOCK TABLE vecmirror.changes_v1 IN ACCESS EXCLUSIVE MODE")
            async with MirrorSearch.open(settings, config, _no_model) as search:
                started = time.monotonic()
                outcome = await search.wait_synced_outcome("products", ["a"], 0.5)
                assert time.monotonic() - started < 0.5 + ANSWER_GRACE + 1
        assert (outcome.synced, outcome.reason) == (False, NO_ANSWER)
    finally:
        await locker.close()
