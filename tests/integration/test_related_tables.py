"""Documents from several tables (a mirror's `documents:` view and `related:` tables), end to end on
real servers with the real model: after each drain Redis equals the view, `verify` agrees, and
only documents whose embedded text changed cost a model call."""

from __future__ import annotations

import asyncio
import os
from decimal import Decimal
from typing import Any

import asyncpg
import numpy as np
import pytest
import redis

from helpers import DOCS_MIRROR, DOCS_TABLE, hash_doc, keys, search_ids, sync_once, vector_of
from vecmirror.commands import migrate_command, plan_command, status_command, verify_command
from vecmirror.config import parse_config
from vecmirror.errors import StartupError
from vecmirror.run.worker import MirrorsPausedError
from vecmirror.source.migrate import bundled_migrations
from vecmirror.source.related import fan_out, fan_out_all
from vecmirror.source.sql import QUERIES
from vecmirror.source.tables import inspect_table

SHOP = """
CREATE TABLE categories (id integer PRIMARY KEY, name text NOT NULL);
CREATE TABLE products (
    id integer PRIMARY KEY,
    name text NOT NULL,
    price numeric NOT NULL,
    category_id integer REFERENCES categories
);
CREATE TABLE tags (id integer PRIMARY KEY, name text NOT NULL);
CREATE TABLE product_tags (
    product_id integer REFERENCES products ON DELETE CASCADE,
    tag_id integer REFERENCES tags ON DELETE CASCADE,
    PRIMARY KEY (product_id, tag_id)
);
CREATE VIEW product_docs AS
SELECT p.id, p.name, p.price, coalesce(c.name, 'Uncategorised') AS category,
       (SELECT string_agg(t.name, ',' ORDER BY t.name)
        FROM product_tags pt JOIN tags t ON t.id = pt.tag_id
        WHERE pt.product_id = p.id) AS tags
FROM products p LEFT JOIN categories c ON c.id = p.category_id;
"""

SHOP_MIRROR: dict[str, Any] = {
    "name": "products",
    "table": "public.products",
    "documents": "public.product_docs",
    "related": [
        {"table": "public.categories", "on": {"category_id": "id"}},
        {"table": "public.product_tags", "on": {"id": "product_id"}},
        {
            "table": "public.tags",
            "keys": "SELECT pt.product_id FROM product_tags pt WHERE pt.tag_id = ANY($1)",
        },
    ],
    "embed": {"field": "embedding", "template": "{name} in {category}"},
    "index": {
        "index": {"name": "products_idx", "prefix": "product", "storage_type": "hash"},
        "fields": [
            {"name": "name", "type": "text"},
            {"name": "category", "type": "tag"},
            {"name": "tags", "type": "tag", "attrs": {"separator": ","}},
            {"name": "price", "type": "numeric"},
            {
                "name": "embedding",
                "type": "vector",
                "attrs": {"algorithm": "flat", "dims": 384, "distance_metric": "cosine"},
            },
        ],
    },
}


SHOP_CONFIG_RELATIONS = [r.relation_id for r in parse_config({"mirrors": [SHOP_MIRROR]}).mirrors[0].related]


@pytest.fixture
async def shop(pg: asyncpg.Connection, write_config: Any, settings_for: Any) -> Any:
    await pg.execute(SHOP)
    await pg.execute(
        "INSERT INTO categories VALUES (1, 'Kitchen'), (2, 'Garden'), (3, 'Office');"
        "INSERT INTO products VALUES (1, 'Kettle', 30, 1), (2, 'Toaster', 45.5, 1), "
        "(3, 'Rake', 12, 2), (4, 'Stapler', 8, 3), (5, 'Mystery box', 1, NULL);"
        "INSERT INTO tags VALUES (1, 'sale'), (2, 'new'), (3, 'steel');"
        "INSERT INTO product_tags VALUES (1, 1), (1, 3), (2, 2), (3, 1)"
    )
    path, config = write_config([SHOP_MIRROR])
    settings = settings_for(path)
    await migrate_command(settings, config)
    return settings, config


async def assert_mirrors_view(
    pg: asyncpg.Connection, client: redis.Redis, settings: Any, config: Any
) -> None:
    """Redis holds exactly the view's rows, field by field, and `verify` finds nothing to say."""
    rows = await pg.fetch("SELECT * FROM product_docs")
    assert keys(client, "product:*") == {f"product:{r['id']}" for r in rows}
    for row in rows:
        doc = hash_doc(client, f"product:{row['id']}")
        assert doc["name"] == row["name"].encode()
        assert Decimal(doc["price"].decode()) == row["price"]
        for column in ("category", "tags"):
            assert doc.get(column) == (None if row[column] is None else row[column].encode()), column
    assert await pg.fetchval("SELECT count(*) FROM vecmirror.related_changes_v1") == 0
    assert await pg.fetchval("SELECT count(*) FROM vecmirror.changes_v1") == 0
    (drift,) = await verify_command(settings, config, None, repair=False)
    assert drift.clean, drift.lines()
    assert drift.rows == len(rows)


async def refused_by_migrate(write_config: Any, settings_for: Any, mirror: dict[str, Any]) -> str:
    """The one line `migrate` refuses the mirror with."""
    path, config = write_config([mirror])
    with pytest.raises(StartupError) as raised:
        await migrate_command(settings_for(path), config)
    return str(raised.value)


def embedding_of(client: redis.Redis, product: int) -> bytes:
    return hash_doc(client, f"product:{product}")["embedding"]


async def test_documents_follow_every_table_behind_the_view(
    pg: asyncpg.Connection, redis_client: redis.Redis, shop: Any, embedder: Any, embedder_factory: Any
) -> None:
    settings, config = shop
    await sync_once(settings, config, embedder_factory)
    await assert_mirrors_view(pg, redis_client, settings, config)
    assert search_ids(redis_client, "products_idx", "@tags:{sale}") == {"product:1", "product:3"}
    np.testing.assert_allclose(
        vector_of(hash_doc(redis_client, "product:1")),
        embedder.embed(["Kettle in Kitchen"])[0],
        atol=1e-5,
    )
    before = {p: embedding_of(redis_client, p) for p in range(1, 6)}

    # Rename a category: its two products get the new name and new vectors, no other is embedded.
    calls = embedder.texts_embedded
    await pg.execute("UPDATE categories SET name = 'Cookware' WHERE id = 1")
    # The capture queued one row for the renamed category, not one per product.
    assert await pg.fetch("SELECT relation, row_values FROM vecmirror.related_changes_v1") == [
        (SHOP_CONFIG_RELATIONS[0], ["1"])
    ]
    await sync_once(settings, config, embedder_factory)
    assert embedder.texts_embedded == calls + 2
    await assert_mirrors_view(pg, redis_client, settings, config)
    np.testing.assert_allclose(
        vector_of(hash_doc(redis_client, "product:2")), embedder.embed(["Toaster in Cookware"])[0], atol=1e-5
    )
    assert {p for p in range(1, 6) if embedding_of(redis_client, p) != before[p]} == {1, 2}
    assert search_ids(redis_client, "products_idx", "@category:{Cookware}") == {"product:1", "product:2"}

    # Tags added, removed and renamed: the documents follow, the template does not use tags.
    calls = embedder.texts_embedded
    await pg.execute("INSERT INTO product_tags VALUES (4, 2), (5, 1)")
    await pg.execute("DELETE FROM product_tags WHERE (product_id, tag_id) = (1, 3)")
    await sync_once(settings, config, embedder_factory)
    await assert_mirrors_view(pg, redis_client, settings, config)
    await pg.execute("UPDATE tags SET name = 'clearance' WHERE id = 1")
    await sync_once(settings, config, embedder_factory)
    await assert_mirrors_view(pg, redis_client, settings, config)
    assert search_ids(redis_client, "products_idx", "@tags:{clearance}") == {
        "product:1",
        "product:3",
        "product:5",
    }
    assert search_ids(redis_client, "products_idx", "@tags:{sale}") == set()
    assert embedder.texts_embedded == calls

    # A product moves to another category: its own change; one model call.
    await pg.execute("UPDATE products SET category_id = 2 WHERE id = 2")
    await sync_once(settings, config, embedder_factory)
    assert embedder.texts_embedded == calls + 1
    await assert_mirrors_view(pg, redis_client, settings, config)

    # A category's last product goes, then the category.
    await pg.execute("DELETE FROM products WHERE id = 4")
    await pg.execute("DELETE FROM categories WHERE id = 3")
    await sync_once(settings, config, embedder_factory)
    await assert_mirrors_view(pg, redis_client, settings, config)

    # The join table truncated: every document is read again, none re-embedded.
    calls = embedder.texts_embedded
    await pg.execute("TRUNCATE product_tags")
    await sync_once(settings, config, embedder_factory)
    await assert_mirrors_view(pg, redis_client, settings, config)
    assert search_ids(redis_client, "products_idx", "@tags:{clearance|new}") == set()
    assert embedder.texts_embedded == calls

    # A key change in a related table reaches the documents of the old and the new key.
    await pg.execute("INSERT INTO product_tags VALUES (1, 2), (3, 2)")
    await sync_once(settings, config, embedder_factory)
    await pg.execute("UPDATE product_tags SET product_id = 5 WHERE product_id = 3")
    await sync_once(settings, config, embedder_factory)
    await assert_mirrors_view(pg, redis_client, settings, config)
    assert search_ids(redis_client, "products_idx", "@tags:{new}") == {"product:1", "product:5"}

    (status,) = await status_command(settings, config)
    assert status.table_rows == 4
    assert status.queue.pending == 0


async def test_a_product_missing_from_the_view_has_no_document(
    pg: asyncpg.Connection, redis_client: redis.Redis, shop: Any, embedder_factory: Any
) -> None:
    settings, config = shop
    await sync_once(settings, config, embedder_factory)
    # The view now leaves out products without a category: the change of definition (no trigger
    # fires) reads every document again, and product 5's goes.
    await pg.execute(
        "CREATE OR REPLACE VIEW product_docs AS "
        "SELECT p.id, p.name, p.price, coalesce(c.name, 'Uncategorised') AS category, "
        "(SELECT string_agg(t.name, ',' ORDER BY t.name) FROM product_tags pt JOIN tags t "
        "ON t.id = pt.tag_id WHERE pt.product_id = p.id) AS tags "
        "FROM products p JOIN categories c ON c.id = p.category_id"
    )
    await sync_once(settings, config, embedder_factory)
    assert "product:5" not in keys(redis_client, "product:*")
    await assert_mirrors_view(pg, redis_client, settings, config)


async def test_a_view_with_two_rows_for_a_key_fails_that_row(
    pg: asyncpg.Connection, redis_client: redis.Redis, shop: Any, embedder_factory: Any
) -> None:
    settings, config = shop
    await pg.execute(
        "CREATE OR REPLACE VIEW product_docs AS "
        "SELECT p.id, p.name, p.price, coalesce(c.name, '-') AS category, t.name AS tags "
        "FROM products p LEFT JOIN categories c ON c.id = p.category_id "
        "LEFT JOIN product_tags pt ON pt.product_id = p.id LEFT JOIN tags t ON t.id = pt.tag_id"
    )
    await sync_once(settings, config, embedder_factory)
    failed = await pg.fetch("SELECT row_key, field, error FROM vecmirror.failed_v1 ORDER BY row_key")
    assert [(r["row_key"], r["field"]) for r in failed] == [(["1"], "(documents)")]
    assert "has 2 rows with this key" in failed[0]["error"]
    assert keys(redis_client, "product:*") == {f"product:{n}" for n in (2, 3, 4, 5)}


async def test_migrate_names_what_the_view_and_the_relations_lack(
    pg: asyncpg.Connection, write_config: Any, settings_for: Any
) -> None:
    await pg.execute(SHOP)
    await pg.execute("CREATE VIEW thin_docs AS SELECT p.id, p.name FROM products p")
    mirror = {
        **SHOP_MIRROR,
        "documents": "public.thin_docs",
        "related": [
            {"table": "public.categories", "on": {"category": "id"}},
            {"table": "public.product_tags", "on": {"id": "product"}},
            {
                "table": "public.tags",
                "keys": "SELECT pt.product_id, 1 FROM product_tags pt WHERE pt.tag_id = ANY($1)",
            },
            {"table": "public.nowhere", "on": {"id": "id"}},
        ],
    }
    message = await refused_by_migrate(write_config, settings_for, mirror)
    assert message.startswith("mirror 'products': ")
    assert "index.fields.category: no column 'category' in public.thin_docs" in message
    assert "embed.template: placeholder {category} is not a column of public.thin_docs" in message

    message = await refused_by_migrate(
        write_config, settings_for, {**mirror, "documents": "public.product_docs"}
    )
    assert "related.0.on: no column 'category' in public.products" in message
    assert "related.1.on.id: no column 'product' in public.product_tags" in message
    assert "related.2.keys: returns 2 column(s); expected the 1 key column(s) of public.products" in message
    assert "related.3.table: public.nowhere does not exist" in message

    path, config = write_config([{**SHOP_MIRROR, "documents": "public.nowhere_docs"}])
    with pytest.raises(StartupError, match=r"documents: public\.nowhere_docs does not exist"):
        await migrate_command(settings_for(path), config)


async def test_an_upgrade_gives_the_workers_role_the_related_queue(
    pg: asyncpg.Connection, write_config: Any, settings_for: Any
) -> None:
    """A role granted the queue before 0007 may work the related queue after it, without a GRANT."""
    async with pg.transaction():
        await pg.execute(QUERIES["create_migrations_table"])
        for migration in bundled_migrations():
            if migration.version < 7:
                await pg.execute(migration.sql)
                await pg.execute(QUERIES["record_migration"], migration.version, migration.name)
    role = f"vecmirror_upgrade_{os.getpid()}"
    await pg.execute(f"CREATE ROLE {role}")
    try:
        await pg.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON vecmirror.changes_v1 TO {role}")
        await pg.execute(SHOP)
        path, config = write_config([SHOP_MIRROR])
        await migrate_command(settings_for(path), config)
        held = await pg.fetchrow(
            "SELECT has_table_privilege($1, 'vecmirror.related_changes_v1', 'SELECT, DELETE') AS queue, "
            "has_table_privilege($1, 'vecmirror.related_captures_v1', 'SELECT') AS captures, "
            "has_table_privilege($1, 'vecmirror.related_captures_v1', 'INSERT') AS writes_captures",
            role,
        )
        assert dict(held) == {"queue": True, "captures": True, "writes_captures": False}
    finally:
        await pg.execute(f"DROP OWNED BY {role}")
        await pg.execute(f"DROP ROLE {role}")


async def test_a_fan_out_that_fails_pauses_only_its_mirror_named_by_the_related_table(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    write_config: Any,
    settings_for: Any,
    embedder_factory: Any,
) -> None:
    await pg.execute(SHOP)
    await pg.execute(DOCS_TABLE)
    await pg.execute(
        "INSERT INTO categories VALUES (1, 'Kitchen'); INSERT INTO products VALUES (1, 'Kettle', 3, 1)"
    )
    await pg.execute(
        "INSERT INTO tags VALUES (1, 'sale'), (2, 'new'); INSERT INTO product_tags VALUES (1, 2)"
    )
    # Fails at run time only, for tag 2: a division by zero in the user's own query.
    failing = (
        "SELECT pt.product_id FROM product_tags pt WHERE pt.tag_id = ANY($1) AND 1 / (pt.tag_id - 2) = 0"
    )
    shop = {
        **SHOP_MIRROR,
        "related": [*SHOP_MIRROR["related"][:2], {"table": "public.tags", "keys": failing}],
    }
    path, config = write_config([shop, DOCS_MIRROR])
    settings = settings_for(path)
    await migrate_command(settings, config)
    await sync_once(settings, config, embedder_factory)

    await pg.execute("UPDATE tags SET name = 'fresh' WHERE id = 2")
    await pg.execute("INSERT INTO docs VALUES (1, 'Cats', 'Cats purr', 'pets')")
    with pytest.raises(MirrorsPausedError) as paused:
        await sync_once(settings, config, embedder_factory)
    (error,) = paused.value.errors
    assert error.mirror == "products"
    assert "related table public.tags: its changes could not be fanned out" in str(error)
    assert "DivisionByZeroError" in str(error)
    assert keys(redis_client, "doc:*") == {"doc:1"}  # the other mirror synced
    assert await pg.fetchval("SELECT count(*) FROM vecmirror.related_changes_v1") == 1  # kept

    # Fixed (the query no longer divides): the change is fanned out and the document follows.
    fixed = {**shop, "related": SHOP_MIRROR["related"]}
    path, config = write_config([fixed, DOCS_MIRROR])
    settings = settings_for(path)
    await migrate_command(settings, config)
    await sync_once(settings, config, embedder_factory)
    assert hash_doc(redis_client, "product:1")["tags"] == b"fresh"


async def test_migrate_refuses_an_on_pair_that_cannot_be_compared(
    pg: asyncpg.Connection, write_config: Any, settings_for: Any
) -> None:
    await pg.execute(SHOP)
    await pg.execute("CREATE TABLE suppliers (code text PRIMARY KEY, name text)")
    mirror = {**SHOP_MIRROR, "related": [{"table": "public.suppliers", "on": {"category_id": "code"}}]}
    message = await refused_by_migrate(write_config, settings_for, mirror)
    assert (
        "related.0.on: the documents it names cannot be found: "
        "UndefinedFunctionError: operator does not exist" in message
    )


async def test_a_fan_out_and_a_users_open_transaction_never_wait_for_each_other(
    pg: asyncpg.Connection, database_url: str, redis_client: redis.Redis, shop: Any, embedder_factory: Any
) -> None:
    """The fan-out's versions are not the ones users' triggers lock: with a user's transaction open
    on a product of the renamed category, the rename still syncs, and the other way round a user's
    write goes through (within a short lock_timeout) while a fan-out holds its transaction open."""
    settings, config = shop
    await sync_once(settings, config, embedder_factory)
    user = await asyncpg.connect(database_url)
    blocker = await asyncpg.connect(database_url)
    try:
        open_write = user.transaction()
        await open_write.start()
        await user.execute("UPDATE products SET name = 'Electric kettle' WHERE id = 1")
        await pg.execute("UPDATE categories SET name = 'Cookware' WHERE id = 1")
        await asyncio.wait_for(sync_once(settings, config, embedder_factory), 60)
        assert hash_doc(redis_client, "product:2")["category"] == b"Cookware"
        await open_write.commit()

        # A fan-out held open (its versions wait behind this lock) while the user writes.
        gate = blocker.transaction()
        await gate.start()
        await blocker.execute("LOCK TABLE vecmirror.related_versions_v1 IN EXCLUSIVE MODE")
        await pg.execute("UPDATE categories SET name = 'Kitchenware' WHERE id = 1")
        syncing = asyncio.create_task(sync_once(settings, config, embedder_factory))
        waiting = (
            "SELECT count(*) > 0 FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND query LIKE '%WITH affected AS%'"
        )
        for _ in range(200):
            if await pg.fetchval(waiting):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the fan-out never started")
        await user.execute("SET lock_timeout = '200ms'")
        await user.execute("UPDATE products SET name = 'Steel kettle' WHERE id = 1")
        await user.execute("UPDATE products SET price = price + 1 WHERE category_id = 1")
        await gate.rollback()
        await asyncio.wait_for(syncing, 60)
        await sync_once(settings, config, embedder_factory)
    finally:
        await user.close()
        await blocker.close()
    await assert_mirrors_view(pg, redis_client, settings, config)
    assert hash_doc(redis_client, "product:1")["name"] == b"Steel kettle"


async def test_keys_queries_that_return_nulls_or_other_types_name_the_right_documents(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    write_config: Any,
    settings_for: Any,
    embedder_factory: Any,
) -> None:
    await pg.execute(SHOP)
    await pg.execute(
        "INSERT INTO categories VALUES (1, 'Kitchen');"
        "INSERT INTO products VALUES (1, 'Kettle', 3, 1), (2, 'Pan', 9, 1);"
        "INSERT INTO tags VALUES (1, 'sale'); INSERT INTO product_tags VALUES (1, 1), (2, 1)"
    )
    # A LEFT JOIN: a tag without products returns one NULL; numeric(10,1) returns 1.0 for product 1.
    keys_query = (
        "SELECT pt.product_id::numeric(10, 1) FROM tags t LEFT JOIN product_tags pt ON pt.tag_id = t.id "
        "WHERE t.id = ANY($1)"
    )
    related = [*SHOP_MIRROR["related"][:2], {"table": "public.tags", "keys": keys_query}]
    path, config = write_config([{**SHOP_MIRROR, "related": related}])
    settings = settings_for(path)
    await migrate_command(settings, config)
    await sync_once(settings, config, embedder_factory)
    await pg.execute("INSERT INTO tags VALUES (2, 'unused')")
    await pg.execute("UPDATE tags SET name = 'clearance' WHERE id = 1")
    await sync_once(settings, config, embedder_factory)
    await assert_mirrors_view(pg, redis_client, settings, config)
    assert search_ids(redis_client, "products_idx", "@tags:{clearance}") == {"product:1", "product:2"}
    assert not [k for k in keys(redis_client, "*") if "None" in k]


async def test_a_related_table_created_again_reads_every_document_once_migrated(
    pg: asyncpg.Connection, redis_client: redis.Redis, shop: Any, embedder_factory: Any
) -> None:
    settings, config = shop
    await sync_once(settings, config, embedder_factory)
    view = await pg.fetchval("SELECT pg_get_viewdef('product_docs'::regclass)")
    async with pg.transaction():
        await pg.execute(
            "DROP VIEW product_docs; ALTER TABLE products DROP CONSTRAINT products_category_id_fkey"
        )
        await pg.execute(
            "DROP TABLE categories; CREATE TABLE categories (id integer PRIMARY KEY, name text NOT NULL)"
        )
        await pg.execute("INSERT INTO categories VALUES (1, 'Cookware'), (2, 'Yard'), (3, 'Desk')")
        await pg.execute(f"CREATE VIEW product_docs AS {view}")
    (status,) = await status_command(settings, config)  # before a worker notices
    assert status.state == "uncaptured"
    assert status.capture_error is not None
    assert status.capture_error.startswith("related.0: the changes of public.categories are not captured")
    with pytest.raises(
        MirrorsPausedError, match=r"related\.0: the changes of public\.categories are not captured"
    ):
        await sync_once(settings, config, embedder_factory)
    assert (await status_command(settings, config))[0].state == "paused"
    (plan,) = (await plan_command(settings, config)).mirrors
    assert plan.triggers is not None
    assert plan.triggers.startswith("related.0: public.categories's capture does not queue this relation yet")
    report = await migrate_command(settings, config)
    assert report.installed == ["products"]
    assert (await plan_command(settings, config)).mirrors[0].triggers is None
    await sync_once(settings, config, embedder_factory)
    assert (await status_command(settings, config))[0].state == "ok"
    await assert_mirrors_view(pg, redis_client, settings, config)
    assert hash_doc(redis_client, "product:3")["category"] == b"Yard"


async def test_migrate_refuses_keys_and_views_of_other_types_in_one_line(
    pg: asyncpg.Connection, write_config: Any, settings_for: Any
) -> None:
    await pg.execute(SHOP)
    await pg.execute("CREATE TABLE codes (code text PRIMARY KEY, label text)")
    await pg.execute(
        "CREATE VIEW text_docs AS "
        "SELECT id::text AS id, name, price, 'x' AS category, '' AS tags FROM products"
    )
    # A query that fails to prepare first: the checks after it still run (in a savepoint each).
    mirror = {
        **SHOP_MIRROR,
        "related": [
            {
                "table": "public.tags",
                "keys": "SELECT pt.product_id FROM product_tags pt WHERE pt.tagid = ANY($1)",
            },
            {"table": "public.codes", "keys": "SELECT p.id FROM products p WHERE p.category_id = ANY($1)"},
            {"table": "public.categories", "on": {"name": "id"}},
        ],
    }
    message = await refused_by_migrate(write_config, settings_for, mirror)
    assert "\n" not in message
    assert "related.1.keys: $1 takes integer[], which the key column 'code' of public.codes (text)" in message
    assert (
        "related.0.keys: UndefinedColumnError: column pt.tagid does not exist HINT: Perhaps you meant"
        in message
    )
    assert "related.2.on: the documents it names cannot be found: UndefinedFunctionError" in message

    path, config = write_config([{**SHOP_MIRROR, "documents": "public.text_docs"}])
    with pytest.raises(
        StartupError, match=r"documents: key column 'id' is text in public\.text_docs but integer"
    ):
        await migrate_command(settings_for(path), config)


async def test_plan_before_the_first_migrate_sees_no_problem(
    pg: asyncpg.Connection, write_config: Any, settings_for: Any
) -> None:
    """The relations' checks read only the user's tables: the vecmirror schema need not exist."""
    await pg.execute(SHOP)
    path, config = write_config([SHOP_MIRROR])
    (plan,) = (await plan_command(settings_for(path), config)).mirrors
    assert (plan.action, plan.problem) == ("add", None)


async def test_a_fan_out_settles_one_relation_per_transaction(
    pg: asyncpg.Connection, shop: Any, embedder_factory: Any
) -> None:
    """One statement (one relation's changes) per fan-out transaction: two fan-outs taking the same
    documents' versions, each in key order, cannot deadlock."""
    settings, config = shop
    await sync_once(settings, config, embedder_factory)
    await pg.execute("UPDATE categories SET name = name || '!'")
    await pg.execute("UPDATE tags SET name = name || '!' WHERE id = 1")
    await pg.execute("UPDATE categories SET name = name || '?' WHERE id = 2")
    (mirror,) = config.mirrors
    table = await inspect_table(pg, mirror)
    everything = fan_out_all(table.statements.qualified_table, table.statements.key_columns)
    settled = []
    for _ in range(3):
        async with pg.transaction():
            settled.append(await fan_out(pg, mirror.name, table.relations, everything))
    assert [(f.related_changes, f.documents) for f in settled] == [(4, 4), (1, 2), (0, 0)]
