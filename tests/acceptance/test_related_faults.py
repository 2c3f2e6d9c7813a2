"""Documents from several tables, with `vecmirror run` as a subprocess: a worker SIGKILLed in the
middle of fanning a category rename out to its products loses nothing, and the next one finishes."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import asyncpg
import redis
import yaml

from helpers import keys
from processes import start_worker, until, vecmirror

PRODUCTS = 600
SCHEMA = f"""
CREATE TABLE categories (id integer PRIMARY KEY, name text NOT NULL);
CREATE TABLE products (id integer PRIMARY KEY, name text NOT NULL, category_id integer REFERENCES categories);
CREATE VIEW product_docs AS
SELECT p.id, p.name, c.name AS category FROM products p JOIN categories c ON c.id = p.category_id;
INSERT INTO categories VALUES (1, 'Kitchen'), (2, 'Garden');
INSERT INTO products SELECT g, 'item ' || g, 1 + g % 2 FROM generate_series(1, {PRODUCTS}) g;
"""
MIRROR: dict[str, Any] = {
    "name": "products",
    "table": "public.products",
    "documents": "public.product_docs",
    "related": [{"table": "public.categories", "on": {"category_id": "id"}}],
    "embed": {"field": "embedding", "template": "{name} for the {category}"},
    "index": {
        "index": {"name": "products_idx", "prefix": "product", "storage_type": "hash"},
        "fields": [
            {"name": "category", "type": "tag"},
            {
                "name": "embedding",
                "type": "vector",
                "attrs": {"algorithm": "flat", "dims": 384, "distance_metric": "cosine"},
            },
        ],
    },
}


def _categories(client: redis.Redis) -> dict[int, str]:
    found = {}
    for key in keys(client, "product:*"):
        found[int(key.split(":")[1])] = client.hget(key, "category").decode()  # type: ignore[union-attr]
    return found


async def test_worker_killed_while_fanning_out_a_rename_loses_nothing(
    pg: asyncpg.Connection,
    database_url: str,
    redis_client: redis.Redis,
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await pg.execute(SCHEMA)
    config = tmp_path / "mirrors.yaml"
    config.write_text(yaml.safe_dump({"mirrors": [MIRROR]}, sort_keys=False))
    assert vecmirror(cli_env, "migrate", "--config", str(config)).returncode == 0
    first = vecmirror(cli_env, "run", "--once", "--config", str(config), timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert set(_categories(redis_client).values()) == {"Kitchen", "Garden"}

    # The fan-out's INSERT of the products' new versions waits behind this lock: the worker is
    # killed there, with its transaction open.
    blocker = await asyncpg.connect(database_url)
    gate = blocker.transaction()
    await gate.start()
    await blocker.execute("LOCK TABLE vecmirror.related_versions_v1 IN EXCLUSIVE MODE")
    await pg.execute("UPDATE categories SET name = 'Cookware' WHERE id = 1")
    worker = start_worker(cli_env, config)
    try:
        blocked = (
            "SELECT count(*) > 0 FROM pg_stat_activity WHERE application_name = 'vecmirror'"
            " AND wait_event_type = 'Lock' AND query LIKE '%WITH affected AS%'"
        )
        await until(lambda: pg.fetchval(blocked), 60, "the worker to block in its fan-out")
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        worker.kill()
        worker.communicate()
        await gate.rollback()
        await blocker.close()
    # Nothing of the fan-out committed: the rename is still queued, no product change is.
    assert await pg.fetchval("SELECT count(*) FROM vecmirror.related_changes_v1") == 1
    assert await pg.fetchval("SELECT count(*) FROM vecmirror.changes_v1") == 0

    finished = vecmirror(cli_env, "run", "--once", "--config", str(config), timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    expected = {n: "Garden" if n % 2 else "Cookware" for n in range(1, PRODUCTS + 1)}
    assert _categories(redis_client) == expected
    verified = vecmirror(cli_env, "verify", "--config", str(config))
    assert verified.returncode == 0, verified.stdout + verified.stderr
