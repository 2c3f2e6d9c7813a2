"""Query latency and throughput of KNN, filtered KNN and fused search at 10k and 100k documents.

    .venv/bin/python bench/query_latency.py --rows 100000

Documents go through vecmirror (Postgres → worker → Redis, HNSW, COSINE, 384 dims). Vectors are
random unit vectors so that loading 100k rows does not take an hour of embedding; the "text" rows
add the model's embedding of the query text to every query, the real cost a user pays. One client,
sequential queries: QPS = queries / total seconds.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import numpy as np
from common import default_embedder, run_bench
from pydantic import SecretStr

from vecmirror.commands import migrate_command, run_command
from vecmirror.config import parse_config
from vecmirror.pipeline.embedder import Embedder
from vecmirror.query import MirrorSearch, num, tag
from vecmirror.settings import Settings
from vecmirror.stack import StackUrls

DIMS, QUERIES = 384, 200
WORDS = [
    "river",
    "mountain",
    "city",
    "music",
    "rocket",
    "garden",
    "recipe",
    "engine",
    "market",
    "history",
    "ocean",
    "forest",
]
GENRES = ["news", "sport", "science", "travel", "food"]
MIRROR = {
    "name": "bench",
    "table": "bench_docs",
    "vector_column": "v",
    "index": {
        "index": {"name": "bench_idx", "prefix": "bench", "storage_type": "hash"},
        "fields": [
            {"name": "body", "type": "text"},
            {"name": "genre", "type": "tag"},
            {"name": "price", "type": "numeric"},
            {
                "name": "v",
                "type": "vector",
                "attrs": {"algorithm": "hnsw", "dims": DIMS, "distance_metric": "cosine"},
            },
        ],
    },
}


async def measure(urls: StackUrls, rows: int) -> None:
    settings = Settings(
        database_url=SecretStr(urls.database_url), redis_url=SecretStr(urls.redis_url), batch_size=2000
    )
    config = parse_config({"mirrors": [MIRROR]})
    conn = await asyncpg.connect(urls.database_url)
    await conn.execute(
        "CREATE TABLE bench_docs (id int PRIMARY KEY, body text, genre text, price int, v real[])"
    )
    await migrate_command(settings, config)
    embedder = default_embedder()
    rng = np.random.default_rng(1)
    print("| docs | query | p50 ms | p99 ms | QPS |\n|---:|---|---:|---:|---:|")
    loaded = 0
    for size in sorted({min(10_000, rows), rows}):
        await _load(conn, rng, loaded, size)
        await run_command(settings, config, once=True)
        loaded = size
        async with MirrorSearch.open(settings, config) as search:
            for name, run in _workloads(search, embedder, rng).items():
                latencies = await _timed(run)
                _report(size, name, latencies)
    await conn.close()


async def _load(conn: asyncpg.Connection, rng: np.random.Generator, start: int, end: int) -> None:
    vectors = rng.standard_normal((end - start, DIMS)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    records = [
        (i, " ".join(WORDS[(i * k) % len(WORDS)] for k in range(1, 9)), GENRES[i % 5], i % 100, vec.tolist())
        for i, vec in zip(range(start, end), vectors, strict=True)
    ]
    await conn.copy_records_to_table("bench_docs", records=records)


def _workloads(
    search: MirrorSearch, embedder: Embedder, rng: np.random.Generator
) -> dict[str, Callable[[int], Awaitable[Any]]]:
    vectors = rng.standard_normal((QUERIES, DIMS)).astype(np.float32)
    texts = [f"{WORDS[i % len(WORDS)]} {WORDS[(i * 7) % len(WORDS)]}" for i in range(QUERIES)]
    where = tag("genre").any_of("science", "food") & num("price").between(10, 60)

    async def embedded(i: int) -> list[float]:
        # The bench's vectors are random, so its mirror has no model; the text step is timed here.
        return [float(v) for v in (await asyncio.to_thread(embedder.embed, [texts[i]]))[0]]

    async def knn_text(i: int, **options: Any) -> Any:
        return await search.knn("bench", vector=await embedded(i), k=10, **options)

    async def fused_text(i: int) -> Any:
        return await search.hybrid("bench", text=texts[i], vector=await embedded(i), k=10)

    return {
        "KNN k=10, vector": lambda i: search.knn("bench", vector=vectors[i].tolist(), k=10),
        "KNN k=10, text (embed + search)": knn_text,
        "filter + KNN, vector": lambda i: search.knn("bench", vector=vectors[i].tolist(), k=10, filter=where),
        "filter + KNN, text": lambda i: knn_text(i, filter=where),
        "fused text+vector, vector": lambda i: search.hybrid(
            "bench", text=texts[i], vector=vectors[i].tolist(), k=10
        ),
        "fused text+vector, text (embed + search)": fused_text,
    }


async def _timed(run: Callable[[int], Awaitable[Any]]) -> list[float]:
    await run(0)  # warm-up
    latencies = []
    for i in range(QUERIES):
        started = time.perf_counter()
        await run(i)
        latencies.append(time.perf_counter() - started)
    return latencies


def _report(size: int, name: str, latencies: list[float]) -> None:
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    print(
        f"| {size:,} | {name} | {p50:.2f} | {p99:.2f} | {len(latencies) / sum(latencies):.0f} |", flush=True
    )


def main() -> None:
    run_bench("Query latency and throughput at 10k and N documents.", 100_000, measure)


if __name__ == "__main__":
    main()
