"""What a related table's capture costs the user's write that affects many documents, in one run.

    .venv/bin/python bench/related_fanout.py --rows 20000

Two copies of one schema (categories, products, a view joining them): a plain one, and one whose
products are mirrored with `documents:` and `related: categories`. A category holding `--rows`
products is renamed in each, several times; the table prints the median time of the user's UPDATE
in both and their ratio, then what the worker's fan-out of one such rename takes (queueing every
affected document: what the user's UPDATE would pay if the trigger did it).
"""

from __future__ import annotations

import statistics
import time

import asyncpg
import redis
from common import run_bench
from pydantic import SecretStr
from redis.commands.search.query import Query

from vecmirror.commands import migrate_command, run_command
from vecmirror.config import Config, parse_config
from vecmirror.settings import Settings
from vecmirror.source.related import fan_out, fan_out_all
from vecmirror.source.tables import inspect_table
from vecmirror.stack import StackUrls

RENAMES = 15
SCHEMA = """
CREATE SCHEMA {s};
CREATE TABLE {s}.categories (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE {s}.products (id int PRIMARY KEY, name text NOT NULL, category_id int REFERENCES {s}.categories);
CREATE INDEX ON {s}.products (category_id);
CREATE VIEW {s}.product_docs AS
SELECT p.id, p.name, c.name AS category FROM {s}.products p JOIN {s}.categories c ON c.id = p.category_id;
INSERT INTO {s}.categories VALUES (1, 'Kitchen'), (2, 'Garden');
INSERT INTO {s}.products
SELECT g, 'product ' || g, 1 + (g > {rows})::int FROM generate_series(1, {rows} + 1000) g;
"""
MIRROR = {
    "name": "products",
    "table": "mirrored.products",
    "documents": "mirrored.product_docs",
    "related": [{"table": "mirrored.categories", "on": {"category_id": "id"}}],
    "index": {
        "index": {"name": "products_idx", "prefix": "product", "storage_type": "hash"},
        "fields": [{"name": "name", "type": "text"}, {"name": "category", "type": "tag"}],
    },
}


async def measure(urls: StackUrls, rows: int) -> None:
    conn = await asyncpg.connect(urls.database_url)
    for schema in ("plain", "mirrored"):
        await conn.execute(SCHEMA.format(s=schema, rows=rows))
    settings = Settings(database_url=SecretStr(urls.database_url), redis_url=SecretStr(urls.redis_url))
    config = parse_config({"mirrors": [MIRROR]})
    await migrate_command(settings, config)
    await conn.execute("DELETE FROM vecmirror.changes_v1")  # the backfill is not what is measured
    plain = await _renames(conn, "plain")
    mirrored = await _renames(conn, "mirrored")
    print(f"A category of {rows} products renamed, median of {RENAMES} UPDATEs:")
    print(f"{'schema':10} {'UPDATE ms':>10}")
    print(f"{'plain':10} {plain * 1000:10.2f}")
    print(f"{'mirrored':10} {mirrored * 1000:10.2f}   ratio {mirrored / plain:.2f}")
    queued, seconds = await _one_fan_out(conn)
    print(f"The worker's fan-out of one rename: {queued} documents queued in {seconds * 1000:.0f} ms")
    await _documents_follow(conn, settings, config, rows, urls)
    await conn.close()


async def _documents_follow(
    conn: asyncpg.Connection, settings: Settings, config: Config, rows: int, urls: StackUrls
) -> None:
    """The first sync, then a rename synced by `run --once`: every document has the new name."""
    await conn.execute("DELETE FROM vecmirror.changes_v1")
    await conn.execute("DELETE FROM vecmirror.related_changes_v1")
    await run_command(settings, config, once=True)
    await conn.execute("UPDATE mirrored.categories SET name = 'Cookware' WHERE id = 1")
    started = time.perf_counter()
    await run_command(settings, config, once=True)
    seconds = time.perf_counter() - started
    client = redis.Redis.from_url(urls.redis_url)
    count = client.ft("products_idx").search(Query("@category:{Cookware}").paging(0, 0)).total
    client.close()
    print(f"run --once after the rename: {count} of {rows} documents renamed in {seconds:.1f} s")
    assert count == rows, "the documents did not follow the rename"


async def _renames(conn: asyncpg.Connection, schema: str) -> float:
    times = []
    for n in range(RENAMES):
        started = time.perf_counter()
        await conn.execute(f"UPDATE {schema}.categories SET name = $1 WHERE id = 1", f"Kitchen {n}")
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def _one_fan_out(conn: asyncpg.Connection) -> tuple[int, float]:
    """Keeps one queued rename, then fans it out as the worker does."""
    await conn.execute(
        "DELETE FROM vecmirror.related_changes_v1 "
        "WHERE id <> (SELECT max(id) FROM vecmirror.related_changes_v1)"
    )
    mirror = parse_config({"mirrors": [MIRROR]}).mirrors[0]
    table = await inspect_table(conn, mirror)
    everything = fan_out_all(table.statements.qualified_table, table.statements.key_columns)
    started = time.perf_counter()
    async with conn.transaction():
        done = await fan_out(conn, mirror.name, table.relations, everything)
    return done.documents, time.perf_counter() - started


def main() -> None:
    run_bench("A related table's capture: the user's UPDATE with and without it.", 20_000, measure)


if __name__ == "__main__":
    main()
