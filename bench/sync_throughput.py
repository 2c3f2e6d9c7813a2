"""End-to-end sync throughput against the model's own limit, measured in one run.

    .venv/bin/python bench/sync_throughput.py --rows 2000

Starts the embedded stack in a temporary directory, fills a table, then measures
  raw:   model.encode over the same texts, batch size and process (the ceiling on a CPU);
  sync:  migrate + `run --once` (backfill, claim, read, render, embed, write to Redis);
  edit:  an update of a non-embedded column on every row (no model call) synced again;
and prints rows/s for each and the ratios sync/raw and edit/sync.
"""

from __future__ import annotations

import time

import asyncpg
from common import run_bench

from vecmirror.commands import migrate_command, run_command
from vecmirror.config import DEFAULT_MODEL, parse_config
from vecmirror.pipeline.embedder import SentenceTransformerEmbedder
from vecmirror.settings import Settings
from vecmirror.stack import StackUrls

WORDS = [
    "vector",
    "search",
    "keeps",
    "postgres",
    "rows",
    "mirrored",
    "into",
    "redis",
    "indexes",
    "with",
    "fresh",
    "embeddings",
]
MIRROR = {
    "name": "bench",
    "table": "bench_docs",
    "embed": {"field": "embedding", "template": "{body}"},
    "index": {
        "index": {"name": "bench_idx", "prefix": "bench", "storage_type": "hash"},
        "fields": [
            {"name": "body", "type": "text"},
            {"name": "genre", "type": "tag"},
            {"name": "price", "type": "numeric"},
            {"name": "embedding", "type": "vector", "attrs": {"algorithm": "hnsw", "dims": 384}},
        ],
    },
}


def texts(rows: int) -> list[str]:
    # Varied lengths (8 to 120 words), deterministic.
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(8 + (i * 37) % 113)) for i in range(rows)]


async def measure(urls: StackUrls, rows: int) -> None:
    bodies = texts(rows)
    embedder = SentenceTransformerEmbedder(DEFAULT_MODEL)
    embedder.embed(bodies[:64])  # warm-up
    raw_before = _raw_encode_rate(embedder, bodies)

    conn = await asyncpg.connect(urls.database_url)
    await conn.execute("CREATE TABLE bench_docs (id int PRIMARY KEY, body text, genre text, price int)")
    await conn.executemany(
        "INSERT INTO bench_docs VALUES ($1, $2, $3, $4)",
        [(i, body, f"g{i % 7}", i % 100) for i, body in enumerate(bodies)],
    )
    config = parse_config({"mirrors": [MIRROR]})
    settings = Settings(database_url=urls.database_url, redis_url=urls.redis_url)
    await migrate_command(settings, config)
    sync = await _timed_sync(settings, config, embedder, rows)
    await conn.execute("UPDATE bench_docs SET price = price + 1")
    edit = await _timed_sync(settings, config, embedder, rows)
    await conn.close()
    # The ceiling is measured before and after the sync and the faster kept, so machine noise
    # cannot flatter the ratio.
    raw = max(raw_before, _raw_encode_rate(embedder, bodies))
    print(f"rows={rows}  raw encode {raw:.0f} rows/s  sync {sync:.0f} rows/s  edit-only {edit:.0f} rows/s")
    print(f"R1 sync/raw = {sync / raw:.3f}   edit-only/sync = {edit / sync:.1f}x")


def _raw_encode_rate(embedder: SentenceTransformerEmbedder, bodies: list[str]) -> float:
    started = time.perf_counter()
    embedder.embed(bodies)
    return len(bodies) / (time.perf_counter() - started)


async def _timed_sync(
    settings: Settings, config: object, embedder: SentenceTransformerEmbedder, rows: int
) -> float:
    started = time.perf_counter()
    await run_command(settings, config, once=True, embedder_factory=lambda _: embedder)  # type: ignore[arg-type]
    return rows / (time.perf_counter() - started)


def main() -> None:
    run_bench(__doc__.splitlines()[0] if __doc__ else "", 2000, measure)


if __name__ == "__main__":
    main()
