"""DDL on a mirrored table: the user's writes never fail in the capture function, `migrate` finds a
mirror's triggers wherever the table went, and tables whose writes triggers cannot all see
(partitioned, partitions, inheritance) are refused."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
import redis

from helpers import PRODUCTS_MIRROR, PRODUCTS_TABLE, keys, shape_problem, sync_once
from vecmirror.commands import migrate_command
from vecmirror.errors import StartupError
from vecmirror.source.tables import inspect_table

SEEN: dict[str, int] = {}  # the last change id queued() read, per database (one per test)


async def queued(pg: asyncpg.Connection) -> list[list[str] | None]:
    """The keys queued since the last call (left in the queue for the worker), sorted."""
    database = await pg.fetchval("SELECT current_database()")
    rows = await pg.fetch(
        "SELECT id, row_key FROM vecmirror.changes_v1 WHERE id > $1 ORDER BY id", SEEN.get(database, 0)
    )
    if rows:
        SEEN[database] = rows[-1]["id"]
    return sorted((r["row_key"] for r in rows), key=lambda k: (k is not None, k or []))


async def triggers(pg: asyncpg.Connection) -> set[tuple[str, str]]:
    rows = await pg.fetch(
        "SELECT tgrelid::regclass::text AS t, tgname FROM pg_trigger WHERE tgname LIKE 'vecmirror%'"
    )
    return {(r["t"], r["tgname"]) for r in rows}


@pytest.fixture
async def products(pg: asyncpg.Connection, write_config: Any, settings_for: Any) -> Any:
    await pg.execute(PRODUCTS_TABLE)
    path, config = write_config([PRODUCTS_MIRROR])
    settings = settings_for(path)
    await migrate_command(settings, config)
    await pg.execute("INSERT INTO products VALUES ('a', 'A', 1, '{1,0,0,0}'), ('b', 'B', 2, '{0,1,0,0}')")
    await sync_once(settings, config)
    await queued(pg)
    return settings, config


async def test_a_renamed_key_column_never_fails_a_write_and_queues_the_right_keys(
    pg: asyncpg.Connection, redis_client: redis.Redis, products: Any
) -> None:
    settings, config = products
    await pg.execute("ALTER TABLE products RENAME COLUMN sku TO code")
    await pg.execute("INSERT INTO products VALUES ('c', 'C', 3, '{0,0,1,0}')")
    assert await queued(pg) == [["c"]]
    await pg.execute("UPDATE products SET code = 'b2' WHERE code = 'b'")
    assert await queued(pg) == [["b"], ["b2"]]  # old key and new
    await pg.execute("UPDATE products SET price = 10")
    assert await queued(pg) == [["a"], ["b2"], ["c"]]
    await pg.execute("DELETE FROM products WHERE code = 'a'")
    assert await queued(pg) == [["a"]]
    assert await pg.fetchval("SELECT count(*) FROM products") == 2
    await pg.execute("INSERT INTO products VALUES ('d', 'D', 4, '{0,0,0,1}'), ('e', 'E', 5, '{0,0,0,1}')")

    # The key is the primary key: a worker started now reads it under its new name; `migrate`
    # writes the static SQL again.
    await migrate_command(settings, config)
    await pg.execute("INSERT INTO products VALUES ('f', 'F', 6, '{1,1,0,0}')")
    await sync_once(settings, config)
    assert keys(redis_client, "product:*") == {f"product:{k}" for k in ("b2", "c", "d", "e", "f")}
    assert redis_client.hget("product:c", "price") == b"10.0"


async def test_a_type_change_of_the_key_or_a_dropped_column_never_fails_a_write(
    pg: asyncpg.Connection, redis_client: redis.Redis, products: Any
) -> None:
    settings, config = products
    await pg.execute("ALTER TABLE products ADD COLUMN extra text")
    await pg.execute("INSERT INTO products VALUES ('c', 'C', 3, '{0,0,1,0}', 'x')")
    await pg.execute("ALTER TABLE products DROP COLUMN extra")
    await pg.execute("INSERT INTO products VALUES ('d', 'D', 4, '{0,0,0,1}')")
    await pg.execute("ALTER TABLE products ALTER COLUMN sku TYPE varchar(10)")
    await pg.execute("INSERT INTO products VALUES ('e', 'E', 5, '{0,0,0,1}')")
    await pg.execute("UPDATE products SET sku = 'a2' WHERE sku = 'a'")
    await pg.execute("DELETE FROM products WHERE sku = 'b'")
    assert await queued(pg) == [["a"], ["a2"], ["b"], ["c"], ["d"], ["e"]]
    await pg.execute("UPDATE products SET price = price + 1")
    await sync_once(settings, config)  # a type change needs no migrate: the key text is the same
    assert keys(redis_client, "product:*") == {f"product:{k}" for k in ("a2", "c", "d", "e")}
    assert redis_client.hget("product:e", "price") == b"6.0"


@pytest.mark.usefixtures("products")
async def test_a_dropped_key_column_queues_a_full_recheck_and_only_warns(pg: asyncpg.Connection) -> None:
    warnings: list[str] = []
    pg.add_log_listener(lambda _conn, message: warnings.append(f"{message.severity}: {message.message}"))
    await pg.execute("ALTER TABLE products DROP COLUMN sku")
    await pg.execute("INSERT INTO products VALUES ('C', 3, '{0,0,1,0}')")
    await pg.execute("UPDATE products SET price = 1")
    await pg.execute("DELETE FROM products")
    assert await queued(pg) == [None, None, None]  # TRUNCATE markers: every key in Redis re-checked
    assert any(
        w.startswith("WARNING: vecmirror: a key column of mirror products was dropped") for w in warnings
    )


async def test_migrate_finds_the_triggers_of_a_renamed_table(
    pg: asyncpg.Connection, write_config: Any, settings_for: Any, redis_client: redis.Redis
) -> None:
    await pg.execute(PRODUCTS_TABLE)
    path, config = write_config([PRODUCTS_MIRROR])
    await migrate_command(settings_for(path), config)
    await pg.execute("ALTER TABLE products RENAME TO goods")

    # The config follows the rename: the triggers stay on goods, exactly once, and capture works.
    path, renamed = write_config([{**PRODUCTS_MIRROR, "table": "goods"}])
    report = await migrate_command(settings_for(path), renamed)
    assert report.installed == ["products"]
    assert {t for t, _ in await triggers(pg)} == {"goods"} and len(await triggers(pg)) == 4
    await pg.execute("INSERT INTO goods VALUES ('a', 'A', 1, '{1,0,0,0}')")
    assert await queued(pg) == [["a"]]
    await sync_once(settings_for(path), renamed)
    assert keys(redis_client, "product:*") == {"product:a"}

    # A new table under the old name, the config pointing at it: the renamed one is let go.
    await pg.execute(PRODUCTS_TABLE)
    path, config = write_config([PRODUCTS_MIRROR])
    await migrate_command(settings_for(path), config)
    assert {t for t, _ in await triggers(pg)} == {"products"}
    await pg.execute("INSERT INTO goods VALUES ('b', 'B', 1, '{1,0,0,0}')")
    assert await queued(pg) == []

    # Renamed again, then removed from the config: migrate still succeeds and leaves nothing.
    await pg.execute("ALTER TABLE products RENAME TO wares")
    await pg.execute("CREATE TABLE other (sku text PRIMARY KEY, name text, price numeric, vec real[])")
    other = {**PRODUCTS_MIRROR, "name": "other", "table": "other"}
    other["index"] = {**other["index"], "index": {"name": "other_idx", "prefix": "other"}}
    path, remaining = write_config([other])
    report = await migrate_command(settings_for(path), remaining)
    assert report.removed == ["products"]
    assert {t for t, _ in await triggers(pg)} == {"other"}
    assert await pg.fetchval("SELECT count(*) FROM pg_proc WHERE proname = 'capture_v1_products'") == 0


@pytest.mark.parametrize(
    ("ddl", "problem"),
    [
        (
            "CREATE TABLE products (sku text NOT NULL, name text, price numeric, vec real[], "
            "PRIMARY KEY (sku)) PARTITION BY HASH (sku)",
            "products is a partitioned table",
        ),
        (
            "CREATE TABLE all_products (sku text NOT NULL, name text, price numeric, vec real[], "
            "PRIMARY KEY (sku)) PARTITION BY HASH (sku); "
            "CREATE TABLE products PARTITION OF all_products FOR VALUES WITH (MODULUS 1, REMAINDER 0)",
            "products is a partition",
        ),
        (
            f"{PRODUCTS_TABLE}; CREATE TABLE special_products (note text) INHERITS (products); "
            "ALTER TABLE special_products ADD PRIMARY KEY (sku)",
            "has inheritance children",
        ),
        (
            "CREATE TABLE base (sku text NOT NULL, name text, price numeric, vec real[]); "
            "CREATE TABLE products (PRIMARY KEY (sku)) INHERITS (base)",
            "inherits from another table",
        ),
        (
            "CREATE TABLE real_products (sku text PRIMARY KEY, name text, price numeric, vec real[]); "
            "CREATE VIEW products AS SELECT * FROM real_products",
            "products is a view",
        ),
    ],
)
async def test_tables_whose_writes_triggers_cannot_see_are_refused(
    pg: asyncpg.Connection, write_config: Any, settings_for: Any, ddl: str, problem: str
) -> None:
    await pg.execute(ddl)
    path, config = write_config([PRODUCTS_MIRROR])
    with pytest.raises(StartupError, match=problem):
        await migrate_command(settings_for(path), config)
    assert await triggers(pg) == set()


async def test_a_table_attached_as_a_partition_later_is_noticed(
    pg: asyncpg.Connection, products: Any
) -> None:
    _, config = products
    mirror = config.mirrors[0]
    assert await shape_problem(pg, mirror) is None
    await pg.execute(
        "CREATE TABLE all_products (sku text NOT NULL, name text NOT NULL, price numeric, vec real[], "
        "PRIMARY KEY (sku)) PARTITION BY LIST (sku)"
    )
    await pg.execute("ALTER TABLE all_products ATTACH PARTITION products DEFAULT")
    problem = await shape_problem(pg, mirror)
    assert problem is not None and "products is a partition" in problem
    with pytest.raises(StartupError, match="products is a partition"):
        await inspect_table(pg, mirror)
