"""Backfill: rows that predate the mirror, synced by vecmirror against RedisVL's own way of loading
them (`HFTextVectorizer` + `SearchIndex.load`), in one process on the same rows and model.

    .venv/bin/python bench/backfill.py --rows 2000

vecmirror: the rows are in the table before `vecmirror migrate`; the in-process worker's
`run_once` queues them (the backfill walk) and syncs them. RedisVL: the same rows read from
Postgres, their template text embedded with `HFTextVectorizer.embed_many` (same model files, same
batch size), loaded with `SearchIndex.load` into an index of the same schema. RedisVL's load is
split in two halves, run before and after vecmirror's, so a drift in the machine's speed weighs on
both alike. Neither side's timing includes loading its model or creating its index.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass
from typing import Any

import asyncpg
from common import Phase, Stopwatch, chunks, default_embedder, phase, temporary_stack
from corpus import COLUMNS, TABLE_DDL, TEMPLATE, embed_mirror, make_rows

from vecmirror.app import open_app
from vecmirror.pipeline.embedder import Embedder, resolve_model
from vecmirror.stack import StackUrls

TABLE = "backfill_docs"
COPY_PAGE = 10_000


@dataclass(frozen=True)
class BackfillResult:
    rows: int
    vecmirror_seconds: float
    redisvl_seconds: float

    @property
    def vecmirror_rate(self) -> float:
        return self.rows / self.vecmirror_seconds

    @property
    def redisvl_rate(self) -> float:
        return self.rows / self.redisvl_seconds

    @property
    def ratio(self) -> float:
        return self.redisvl_seconds / self.vecmirror_seconds


async def measure_backfill(urls: StackUrls, rows: int, embedder: Embedder) -> BackfillResult:
    async def fill(conn: asyncpg.Connection) -> None:
        for start in range(0, rows, COPY_PAGE):
            page = make_rows(start, min(COPY_PAGE, rows - start))
            await conn.copy_records_to_table(TABLE, records=[r.record() for r in page], columns=COLUMNS)

    mirror = embed_mirror("backfill", TABLE)
    async with phase(urls, "backfill", {TABLE: TABLE_DDL}, [mirror], before_migrate=fill) as env:
        redisvl = _RedisVL(env, embedder.model)
        half = rows // 2
        redisvl_watch, vecmirror_watch = Stopwatch(), Stopwatch()
        with redisvl_watch:
            await redisvl.load(0, half)
        async with open_app(env.settings, env.config, lambda _: embedder) as app:
            with vecmirror_watch:
                drained = await app.worker().run_once()
        if drained.by_mirror.get("backfill", 0) < rows or drained.failed:
            raise RuntimeError(
                f"the backfill synced {drained.by_mirror} ({drained.failed} failed), not {rows}"
            )
        with redisvl_watch:
            await redisvl.load(half, rows)
        return BackfillResult(rows, vecmirror_watch.seconds, redisvl_watch.seconds)


class _RedisVL:
    """What a RedisVL user writes: read the rows, embed their text, load the documents."""

    def __init__(self, env: Phase, model: str) -> None:
        from redisvl.index import SearchIndex
        from redisvl.utils.vectorize import HFTextVectorizer

        schema = embed_mirror("redisvl", TABLE)["index"]
        self._conn = env.conn
        self._batch_size = env.settings.embed_batch_size
        self._vectorizer = HFTextVectorizer(model=resolve_model(model))
        self._index = SearchIndex.from_dict(schema, redis_url=env.settings.require_redis_url())
        self._index.create(overwrite=True)

    async def load(self, start: int, end: int) -> None:
        records = await self._conn.fetch(f"SELECT * FROM {TABLE} WHERE id >= $1 AND id < $2", start, end)
        for page in chunks(records, COPY_PAGE):
            texts = [TEMPLATE.format(**row) for row in page]
            vectors = self._vectorizer.embed_many(texts, batch_size=self._batch_size, as_buffer=True)
            self._index.load([_document(row, v) for row, v in zip(page, vectors, strict=True)], id_field="id")


def _document(row: asyncpg.Record, vector: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "title": row["title"],
        "body": row["body"],
        "category": row["category"],
        "tags": ",".join(row["tags"]),
        "price": float(row["price"]),
        "rating": row["rating"],
        "stock": row["stock"],
        "embedding": vector,
    }


def summary(result: BackfillResult) -> str:
    return (
        f"backfill: {result.rows} rows  vecmirror {result.vecmirror_rate:.1f} rows/s"
        f"  RedisVL {result.redisvl_rate:.1f} rows/s  ratio {result.ratio:.2f}"
    )


async def main_async(urls: StackUrls, rows: int) -> None:
    print(summary(await measure_backfill(urls, rows, default_embedder())), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Backfill: vecmirror against RedisVL's load.")
    parser.add_argument("--rows", type=int, default=2000)
    args = parser.parse_args()
    with temporary_stack() as urls:
        asyncio.run(main_async(urls, args.rows))


if __name__ == "__main__":
    main()
