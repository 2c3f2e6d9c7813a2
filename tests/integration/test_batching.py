"""Claims that adapt to the backlog, and batches in flight together, end to end: their sizes, that
one batch goes on while another waits for the model, and that every change still syncs."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import asyncpg
import pytest
import redis

from helpers import DOCS_MIRROR, DOCS_TABLE, PRODUCTS_MIRROR, PRODUCTS_TABLE, keys, search_ids
from vecmirror.app import open_app
from vecmirror.commands import migrate_command
from vecmirror.pipeline.embedder import Embedder, Vectors
from vecmirror.run.sync import BatchStats

ROWS = 130


@pytest.mark.parametrize(
    ("target_seconds", "expected_sizes"),
    [(600.0, [10, 20, 40, 40, 20]), (1e-9, [10] * 13)],
    ids=["quick batches grow up to the largest", "slow batches stay at the smallest"],
)
async def test_claims_follow_the_backlog_and_the_time_budget(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    write_config: Any,
    settings_for: Any,
    embedder_factory: Any,
    target_seconds: float,
    expected_sizes: list[int],
) -> None:
    await pg.execute(DOCS_TABLE)
    path, config = write_config([DOCS_MIRROR])
    settings = settings_for(
        path, batch_size=10, max_batch_size=40, batch_target_seconds=target_seconds, batches_in_flight=1
    )
    await migrate_command(settings, config)
    await pg.execute(
        f"INSERT INTO docs SELECT i, 'Title ' || i, 'Text ' || i, 'old' FROM generate_series(1, {ROWS}) i"
    )
    async with open_app(settings, config, embedder_factory) as app:
        await app.worker().run_once()
    await pg.execute("UPDATE docs SET genre = 'new'")
    batches: list[BatchStats] = []
    async with open_app(settings, config, embedder_factory) as app:  # claims start small again
        await app.worker(on_batch=batches.append).run_once()

    assert [b.changes for b in batches] == expected_sizes
    assert len(search_ids(redis_client, "docs_idx", "@genre:{new}")) == ROWS
    assert search_ids(redis_client, "docs_idx", "@genre:{old}") == set()


class HeldModel:
    """The real model, whose calls wait until the test lets them go."""

    def __init__(self, model: Embedder) -> None:
        self._model = model
        self.model = model.model
        self.dimension = model.dimension
        self.called = threading.Event()
        self.release = threading.Event()

    def embed(self, texts: Sequence[str]) -> Vectors:
        self.called.set()
        self.release.wait(timeout=60)
        return self._model.embed(texts)


async def test_a_batch_syncs_while_another_waits_for_the_model(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    write_config: Any,
    settings_for: Any,
    embedder: Embedder,
) -> None:
    await pg.execute(DOCS_TABLE)
    await pg.execute(PRODUCTS_TABLE)
    path, config = write_config([DOCS_MIRROR, PRODUCTS_MIRROR])
    settings = settings_for(path, batches_in_flight=2)
    await migrate_command(settings, config)
    model = HeldModel(embedder)

    async with open_app(settings, config, lambda _: model) as app:
        await app.worker().run_once()  # the first run's resync, before the rows come
        await pg.execute("INSERT INTO docs VALUES (1, 'Cats', 'Cats purr', 'pets')")
        await pg.execute("INSERT INTO products VALUES ('a', 'Lamp', 3, '{1,0,0,0}')")
        drain = asyncio.create_task(app.worker().drain())
        try:
            await asyncio.to_thread(model.called.wait, 30)
            # The docs batch holds the model; the products batch must not wait for it.
            for _ in range(300):
                if keys(redis_client, "product:*"):
                    break
                await asyncio.sleep(0.1)
            assert keys(redis_client, "product:*") == {"product:a"}
            assert keys(redis_client, "doc:*") == set()
        finally:
            model.release.set()
        stats = await drain
    assert stats.by_mirror == {"docs": 1, "products": 1}
    assert keys(redis_client, "doc:*") == {"doc:1"}
