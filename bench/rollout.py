"""A template change rolled out online by vecmirror, against the offline way, on the same rows and
model, in one run, while a reader queries the index name every 20 ms.

    .venv/bin/python bench/rollout.py --rows 2000      # or: make bench-rollout -> bench/ROLLOUT.md

Both start from the same synced mirror (template `{title}\\n\\n{body}`, HNSW) and move to the
template `{body}` (every text changes, so every row is embedded again either way):

- vecmirror: a worker with the new file runs `run_once`. The new vectors are made beside the old
  ones (`embedding__<digest>`), a new index generation reading them is filled, then the name switches
  to it and the old vectors are deleted (index/rollout.py).
- offline, what RedisVL's tools and hand-written scripts do: `FT.DROPINDEX` (documents kept),
  `FT.CREATE` of the same name, then every row's new text embedded (same model object, same batch
  size) and its vector written in place with pipelined HSETs, as `SearchIndex.load` does.

Reported per side: wall seconds, model calls, the reader's samples that failed, saw fewer documents
than the table's rows, or got fewer than 10 KNN hits, and Redis' `used_memory` peak over the start.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis
from common import Phase, Stopwatch, chunks, default_embedder, phase, temporary_stack
from corpus import COLUMNS, TABLE_DDL, TEMPLATE, embed_mirror, make_rows

from vecmirror.app import open_app
from vecmirror.commands import migrate_command
from vecmirror.config import parse_config
from vecmirror.index.manage import create_index
from vecmirror.pipeline.embedder import Embedder
from vecmirror.sink.writer import search_result_ids
from vecmirror.stack import StackUrls

TABLE = "rollout_docs"
NEW_TEMPLATE = "{body}"
BATCH = 64
MIB = 1024 * 1024


@dataclass
class Watch:
    """Samples the index by its name every 20 ms (count, KNN 10) and Redis' memory, on a thread."""

    redis_url: str
    index: str
    rows: int
    samples: int = 0
    failed: int = 0
    fewer_documents: int = 0
    short_knn: int = 0
    peak_memory: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Watch:
        self._thread = threading.Thread(target=self._run, name="rollout-watch")
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        client = redis.Redis.from_url(self.redis_url)
        vector = np.random.default_rng(7).standard_normal(384).astype(np.float32).tobytes()
        try:
            while not self.stop.is_set():
                self._sample(client, vector)
                self.stop.wait(0.02)
        finally:
            client.close()

    def _sample(self, client: redis.Redis, vector: bytes) -> None:
        self.samples += 1
        self.peak_memory = max(self.peak_memory, int(client.info("memory")["used_memory"]))
        try:
            count = _total(client.execute_command("FT.SEARCH", self.index, "*", "LIMIT", 0, 0))
            knn = client.execute_command(
                "FT.SEARCH", self.index, "*=>[KNN 10 @embedding $v AS d]", "PARAMS", 2, "v", vector,
                "NOCONTENT", "LIMIT", 0, 10, "DIALECT", 2,
            )  # fmt: skip
        except redis.RedisError:
            self.failed += 1
            return
        self.fewer_documents += count < self.rows
        self.short_knn += len(search_result_ids(knn)) < 10


def _total(reply: Any) -> int:
    """FT.SEARCH's total, in RESP3 (a map) or RESP2 (a flat list) form."""
    if isinstance(reply, dict):
        return int(reply.get(b"total_results", reply.get("total_results", 0)))
    return int(reply[0])


@dataclass(frozen=True)
class Side:
    name: str
    seconds: float
    model_calls: int
    watch: Watch
    memory_before: int
    mixed: str  # how long queries met old and new vectors side by side

    def row(self) -> str:
        w = self.watch
        extra = (w.peak_memory - self.memory_before) / MIB
        return (
            f"| {self.name} | {self.seconds:.1f} | {self.model_calls} | {w.samples} | {w.failed} | "
            f"{w.fewer_documents} | {w.short_knn} | {self.mixed} | {extra:+.1f} |"
        )


async def measure(urls: StackUrls, rows: int, embedder: Embedder) -> list[Side]:
    return [await _vecmirror(urls, rows, embedder), await _offline(urls, rows, embedder)]


def _synced(urls: StackUrls, name: str, rows: int) -> Any:
    """A fresh database with `rows` rows and the mirror migrated (the worker syncs it: _sync)."""

    async def fill(conn: Any) -> None:
        for page in chunks(make_rows(0, rows), 10_000):
            await conn.copy_records_to_table(TABLE, records=[r.record() for r in page], columns=COLUMNS)

    return phase(urls, name, {TABLE: TABLE_DDL}, [embed_mirror("rollout", TABLE)], before_migrate=fill)


async def _sync(env: Phase, embedder: Embedder) -> None:
    async with open_app(env.settings, env.config, lambda _: embedder) as app:
        await app.worker().run_once()


async def _vecmirror(urls: StackUrls, rows: int, embedder: Embedder) -> Side:
    async with _synced(urls, "rollout_online", rows) as env:
        await _sync(env, embedder)
        mirror = embed_mirror("rollout", TABLE)
        new = parse_config({"mirrors": [{**mirror, "embed": {**mirror["embed"], "template": NEW_TEMPLATE}}]})
        await migrate_command(env.settings, new)
        before = int((await env.redis.info("memory"))["used_memory"])
        with Watch(urls.redis_url, "rollout_idx", rows) as watch, Stopwatch() as clock:
            async with open_app(env.settings, new, lambda _: embedder) as app:
                worker = app.worker()
                await worker.run_once()
        calls = int(worker.metrics.embeddings.labels("rollout", "computed")._value.get())
        # The name answers from the old index (old vectors only) until one FT.ALIASUPDATE, then from
        # the new one (new vectors only).
        mixed = "0 (one alias switch)"
        return Side("vecmirror, online (blue/green)", clock.seconds, calls, watch, before, mixed)


async def _offline(urls: StackUrls, rows: int, embedder: Embedder) -> Side:
    async with _synced(urls, "rollout_offline", rows) as env:
        await _sync(env, embedder)
        client = redis.Redis.from_url(urls.redis_url)
        records = await env.conn.fetch(f"SELECT id, body FROM {TABLE} ORDER BY id")
        before = int((await env.redis.info("memory"))["used_memory"])
        writes: list[float] = []  # when each page of new vectors was written
        with Watch(urls.redis_url, "rollout_idx", rows) as watch, Stopwatch() as clock:
            client.execute_command("FT.DROPINDEX", "rollout_idx")
            await create_index(env.redis, env.config.mirrors[0].index)
            for page in chunks(records, BATCH):
                vectors = await asyncio.to_thread(embedder.embed, [r["body"] for r in page])
                pipe = client.pipeline(transaction=False)
                for record, vector in zip(page, vectors, strict=True):
                    blob = np.asarray(vector, np.float32).tobytes()
                    pipe.hset(f"rollout:{record['id']}", "embedding", blob)
                pipe.execute()
                writes.append(time.perf_counter())
            while int(client.ft("rollout_idx").info()["indexing"]):
                time.sleep(0.02)
        client.close()
        # From the first page of new vectors to the last, queries met both templates' vectors.
        mixed = f"{writes[-1] - writes[0]:.1f} s"
        name = "offline: drop, create, re-embed in place"
        return Side(name, clock.seconds, len(records), watch, before, mixed)


def report(rows: int, sides: list[Side]) -> str:
    lines = [
        f"# Online config change: {rows} rows, template `{TEMPLATE!r}` -> `{NEW_TEMPLATE!r}`",
        "",
        "`make bench-rollout` (bench/rollout.py). Reader: FT.SEARCH count + KNN 10 on the index name every "
        "20 ms. Memory: Redis `used_memory` peak during the change, over its value before.",
        "",
        "| way | seconds | model calls | reader samples | failed | fewer documents | < 10 KNN hits "
        "| old and new vectors mixed | peak memory (MiB) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
        *(side.row() for side in sides),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "ROLLOUT.md")
    args = parser.parse_args()
    embedder = default_embedder()
    with temporary_stack() as urls:
        sides = asyncio.run(measure(urls, args.rows, embedder))
    text = report(args.rows, sides)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
