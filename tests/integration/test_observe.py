"""Metrics, readiness and `vecmirror status` in-process on real servers (the subprocess end to end is
tests/acceptance/test_operations.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import redis
from prometheus_client import CollectorRegistry

from helpers import PRODUCTS_MIRROR, PRODUCTS_TABLE
from vecmirror.app import App, open_app
from vecmirror.commands import migrate_command, status_command
from vecmirror.ops.metrics import Metrics
from vecmirror.run.serve import readiness, sample_once
from vecmirror.sink.observe import last_sync_key


async def _products(pg: asyncpg.Connection, write_config: Any, settings_for: Any) -> Any:
    await pg.execute(PRODUCTS_TABLE)
    await pg.execute(
        "INSERT INTO products VALUES ('old1', 'Old', 1, '{1,2,3,4}'), ('old2', 'Old', 2, '{1,2,3,4}')"
    )
    path, config = write_config([PRODUCTS_MIRROR])
    settings = settings_for(path, row_max_attempts=1)
    await migrate_command(settings, config)
    return settings, config


def value(metrics: Metrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, {"mirror": "products", **labels})
    assert found is not None, name
    return found


async def test_freshness_counts_each_user_write_once_and_never_a_backfill(
    pg: asyncpg.Connection, redis_client: redis.Redis, write_config: Any, settings_for: Any
) -> None:
    settings, config = await _products(pg, write_config, settings_for)
    metrics = Metrics(CollectorRegistry())
    async with open_app(settings, config) as app:
        worker = app.worker(metrics=metrics)
        await worker.run_once()  # the two rows from before `migrate`: a backfill, no user write
        assert value(metrics, "vecmirror_backfill_rows_total") == 2
        assert value(metrics, "vecmirror_rows_synced_total", operation="upsert") == 2
        assert value(metrics, "vecmirror_freshness_seconds_count") == 0

        await pg.execute(
            "INSERT INTO products VALUES ('n1', 'New', 1, '{1,2,3,4}'), ('n2', 'New', 1, '{4,3,2,1}')"
        )
        await pg.execute("UPDATE products SET price = 9 WHERE sku = 'old1'")
        await pg.execute("DELETE FROM products WHERE sku = 'old2'")
        # Three writes to one key in three transactions: one searchable state, one observation.
        for price in (1, 2, 3):
            await pg.execute("UPDATE products SET price = $1 WHERE sku = 'n1'", price)
        await pg.execute("INSERT INTO products VALUES ('bad', 'Bad', 1, '{1,2}')")  # wrong dims: fails
        await worker.run_once()

    assert value(metrics, "vecmirror_rows_synced_total", operation="upsert") == 2 + 3
    assert value(metrics, "vecmirror_rows_synced_total", operation="delete") == 1
    assert value(metrics, "vecmirror_freshness_seconds_count") == 4  # n1, n2, old1, old2
    assert value(metrics, "vecmirror_freshness_seconds_sum") > 0
    assert metrics.registry.get_sample_value("vecmirror_errors_total", {"stage": "document"}) == 1
    assert (metrics.registry.get_sample_value("vecmirror_redis_write_duration_seconds_count") or 0) >= 2
    written = float(redis_client.get(last_sync_key("products")) or 0)
    assert written <= time.time() and written == value(metrics, "vecmirror_last_sync_timestamp_seconds")


async def test_samples_and_status_report_the_queue_the_index_and_dead_letters(
    pg: asyncpg.Connection, write_config: Any, settings_for: Any
) -> None:
    settings, config = await _products(pg, write_config, settings_for)
    metrics = Metrics(CollectorRegistry())
    async with open_app(settings, config) as app:
        worker = app.worker(metrics=metrics)
        [before] = await status_command(settings, config)
        assert before.last_sync is None and before.index.exists and before.index.documents == 0
        await worker.run_once()
        await pg.execute("INSERT INTO products VALUES ('bad', 'Bad', 1, '{1,2}')")
        await worker.run_once()
        await pg.execute("INSERT INTO products VALUES ('queued', 'Later', 1, '{1,2,3,4}')")
        await sample_once(app, metrics)
        [status] = await status_command(settings, config)

    assert value(metrics, "vecmirror_changes_pending") == 1
    assert value(metrics, "vecmirror_oldest_pending_change_age_seconds") > 0
    assert value(metrics, "vecmirror_dead_letters") == 1
    assert value(metrics, "vecmirror_backfill_running") == 0
    assert value(metrics, "vecmirror_index_documents") == 2
    assert value(metrics, "vecmirror_index_indexing_failures") == 0
    assert value(metrics, "vecmirror_index_indexed_ratio") == 1

    assert (status.queue.pending, status.queue.dead_letters, status.queue.failed_rows) == (1, 1, 1)
    assert status.queue.oldest_age is not None and status.queue.oldest_age > 0
    assert (status.table_rows, status.index.documents, status.index.exists) == (4, 2, True)
    assert status.last_sync is not None and status.last_sync <= time.time()


async def test_the_count_check_is_exported(
    pg: asyncpg.Connection, write_config: Any, settings_for: Any
) -> None:
    settings, config = await _products(pg, write_config, settings_for)
    metrics = Metrics(CollectorRegistry())
    async with open_app(settings, config) as app:
        worker = app.worker(metrics=metrics)
        await worker.run_once()
        await app.redis.delete("product:old1")  # behind vecmirror's back
        await worker.check_mirrors()
    assert value(metrics, "vecmirror_table_rows") == 2
    assert value(metrics, "vecmirror_index_documents") == 1
    assert value(metrics, "vecmirror_mirror_drifted") == 1


async def test_readiness_names_what_is_missing(
    pg: asyncpg.Connection, write_config: Any, settings_for: Any
) -> None:
    settings, config = await _products(pg, write_config, settings_for)
    stop = asyncio.Event()
    async with open_app(settings, config) as app:
        assert await readiness(app, stop) == []
        await app.redis.execute_command("FT.DROPINDEX", "products_idx")
        assert await readiness(app, stop) == ["mirror 'products': index 'products_idx' is missing"]
        await _close_pool_and_check(app, stop)
        stop.set()
        assert await readiness(app, stop) == ["stopping: finishing the batch in hand"]


async def _close_pool_and_check(app: App, stop: asyncio.Event) -> None:
    """A pool that cannot hand out connections is Postgres being unreachable, to the check."""
    await app.pool.close()
    [postgres, _index] = await readiness(app, stop)
    assert postgres.startswith("postgres unreachable: InterfaceError")
