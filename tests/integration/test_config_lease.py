"""The config lease (sink/versioned.py): during a rolling update, a worker of an older mirrors file
runs beside workers of the new one and must not undo their work. The newest config holds the
mirror; an older one is refused whole and pauses, until the newer workers have been gone a lease."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
import redis

from helpers import PRODUCTS_MIRROR, PRODUCTS_TABLE, hash_doc
from vecmirror.app import open_app
from vecmirror.commands import migrate_command
from vecmirror.config import MirrorConfig, parse_config
from vecmirror.index.rollout import generation_name
from vecmirror.run.worker import MirrorsPausedError
from vecmirror.settings import Settings

# The new config: a TAG field more (an online rebuild, index/rollout.py).
NEW_PRODUCTS = {
    **PRODUCTS_MIRROR,
    "index": {
        **PRODUCTS_MIRROR["index"],
        "fields": [{"name": "sku", "type": "tag"}, *PRODUCTS_MIRROR["index"]["fields"]],
    },
}


async def _run_once(settings: Settings, mirror: dict[str, Any], write_config: Callable[..., Any]) -> Any:
    path, config = write_config([mirror])
    await migrate_command(settings, config)
    async with open_app(settings.model_copy(update={"config": path}), config) as app:
        return await app.worker().run_once()


async def _superseded(settings: Settings, mirror: dict[str, Any], write_config: Callable[..., Any]) -> str:
    with pytest.raises(MirrorsPausedError) as refused:
        await _run_once(settings, mirror, write_config)
    [error] = refused.value.errors
    assert error.mirror == "products"
    return error.problem


def _indexes(client: redis.Redis) -> set[str]:
    return {n.decode() if isinstance(n, bytes) else str(n) for n in client.execute_command("FT._LIST")}


async def _products(pg: asyncpg.Connection) -> None:
    await pg.execute(PRODUCTS_TABLE)
    await pg.execute(
        "INSERT INTO products SELECT 'p' || g, 'Product ' || g, g, ARRAY[g, 1, 2, 3]::real[]"
        " FROM generate_series(1, 20) g"
    )


async def test_an_older_config_is_refused_once_a_newer_one_wrote_and_writes_nothing(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    write_config: Callable[..., Any],
    settings_for: Callable[..., Settings],
) -> None:
    await _products(pg)
    settings = settings_for(write_config([PRODUCTS_MIRROR])[0])
    await _run_once(settings, PRODUCTS_MIRROR, write_config)
    await _run_once(settings, NEW_PRODUCTS, write_config)  # a config never seen before takes over
    assert hash_doc(redis_client, "product:p1")["sku"] == b"p1"

    await pg.execute("UPDATE products SET price = 1000 WHERE sku = 'p1'")
    problem = await _superseded(settings, PRODUCTS_MIRROR, write_config)
    assert problem.startswith("superseded: a worker of another config of this mirror (")
    assert f"({_config(NEW_PRODUCTS).digest})" in problem
    assert float(hash_doc(redis_client, "product:p1")["price"]) == 1  # the old worker wrote nothing
    assert await pg.fetchval("SELECT count(*) FROM vecmirror.changes_v1") == 1  # still queued
    # The mirror is fine (the newer workers sync it): `status` must not show it paused for all.
    assert await pg.fetchval("SELECT error FROM vecmirror.mirrors_v1 WHERE name = 'products'") is None

    await _run_once(settings, NEW_PRODUCTS, write_config)
    assert float(hash_doc(redis_client, "product:p1")["price"]) == 1000


async def test_an_old_worker_started_during_the_rollout_builds_nothing_and_queues_nothing(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    write_config: Callable[..., Any],
    settings_for: Callable[..., Settings],
) -> None:
    await _products(pg)
    settings = settings_for(write_config([PRODUCTS_MIRROR])[0])
    await _run_once(settings, PRODUCTS_MIRROR, write_config)
    await _run_once(settings, NEW_PRODUCTS, write_config)
    new_index = generation_name(_config(NEW_PRODUCTS))
    assert _indexes(redis_client) == {new_index}  # `products_idx` is its alias now
    # Without the lease, this start would create the old definition's generation beside it and
    # read every row again to fill it, taking the name back from the new config.
    await _superseded(settings, PRODUCTS_MIRROR, write_config)
    assert _indexes(redis_client) == {new_index}
    assert await pg.fetchval("SELECT count(*) FROM vecmirror.changes_v1") == 0


async def test_an_older_config_takes_the_mirror_back_a_lease_after_the_newer_workers_stopped(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    write_config: Callable[..., Any],
    settings_for: Callable[..., Settings],
) -> None:
    await _products(pg)
    settings = settings_for(write_config([PRODUCTS_MIRROR])[0], config_lease=1.0)
    await _run_once(settings, PRODUCTS_MIRROR, write_config)
    await _run_once(settings, NEW_PRODUCTS, write_config)
    await _superseded(settings, PRODUCTS_MIRROR, write_config)
    await asyncio.sleep(1.2)  # the new config's workers are gone: its lease runs out

    await pg.execute("UPDATE products SET price = 7 WHERE sku = 'p2'")
    await _run_once(settings, PRODUCTS_MIRROR, write_config)  # the rollback
    assert float(hash_doc(redis_client, "product:p2")["price"]) == 7
    assert "sku" not in hash_doc(redis_client, "product:p2")  # the old definition, whole again
    assert _indexes(redis_client) == {generation_name(_config(PRODUCTS_MIRROR))}
    # ...and now the newer config is the one that waits, until the old one's lease runs out.
    await _superseded(settings, NEW_PRODUCTS, write_config)


async def test_workers_of_the_same_config_share_the_lease(
    pg: asyncpg.Connection,
    write_config: Callable[..., Any],
    settings_for: Callable[..., Settings],
) -> None:
    await _products(pg)
    path, config = write_config([PRODUCTS_MIRROR])
    settings = settings_for(path)
    await migrate_command(settings, config)
    async with open_app(settings, config) as first, open_app(settings, config) as second:
        await pg.execute("UPDATE products SET price = price + 1")
        await asyncio.gather(first.worker().run_once(), second.worker().run_once())
    assert await pg.fetchval("SELECT count(*) FROM vecmirror.changes_v1") == 0


def _config(mirror: dict[str, Any]) -> MirrorConfig:
    return parse_config({"mirrors": [mirror]}).mirrors[0]
