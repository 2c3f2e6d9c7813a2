"""R1 and R2: vecmirror's sync rate against the limit it cannot beat, measured in one run.

    .venv/bin/python bench/sync_throughput.py --insert-rows 512 --update-rows 3000

R1, inserts: rows are inserted a claim (`batch_size` rows) at a time; each round times the worker's
drain of that round (claim, read, render, embed, write, acknowledge) and a raw `model.encode` of
the same texts with the same model object, batch size and process. Rounds interleave the two, in
alternating order, so a neighbour stealing the CPU slows both alike. R1 = raw seconds / sync seconds.

R2, updates of non-embedded columns (price, stock) on an index already holding every row, FLAT
and HNSW: each round times the drain of an UPDATE of `round_rows` rows (several claims, which
grow with the backlog, two in flight) against a raw pipeline of HSETs of the same two fields into
the same index (the Query Engine re-indexes the whole document on every write, vector included, so
that raw rate is the real limit). The rows are loaded with a
hash-based fake model: an update whose text is unchanged never calls the model, so nothing timed
depends on it.

Each result also splits the sync's time with the worker's own per-batch timings: model calls,
the Redis write, and the rest (Postgres claim, read and acknowledge, Redis reads, Python).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import redis.asyncio as redis
from common import Phase, chunks, default_embedder, phase, temporary_stack
from corpus import COLUMNS, TABLE_DDL, Row, embed_mirror, make_rows

from vecmirror.app import open_app
from vecmirror.pipeline.embedder import Embedder, FakeEmbedder
from vecmirror.run.sync import BatchStats
from vecmirror.run.worker import Worker
from vecmirror.sink.keys import document_key
from vecmirror.stack import StackUrls

DIMS = 384
LOAD_PAGE = 10_000  # rows per COPY when filling R2's tables
UPDATE_ROUND_ROWS = 4096  # R2: rows per UPDATE statement, i.e. per interleaved round


@dataclass(frozen=True)
class RateRatio:
    """vecmirror's seconds against the baseline's for the same rows, round by round."""

    rows: int
    seconds: list[float]  # vecmirror's, one per round
    baseline_seconds: list[float]  # the baseline's for the same round

    @property
    def rate(self) -> float:
        return self.rows / sum(self.seconds)

    @property
    def baseline_rate(self) -> float:
        return self.rows / sum(self.baseline_seconds)

    @property
    def ratio(self) -> float:
        """The median of the rounds' ratios: a neighbour's burst of CPU that lands on one side of
        one round moves the mean of a few rounds, hardly their median."""
        pairs = zip(self.baseline_seconds, self.seconds, strict=True)
        return statistics.median(theirs / ours for theirs, ours in pairs)

    @property
    def total_ratio(self) -> float:
        return sum(self.baseline_seconds) / sum(self.seconds)


@dataclass
class TimeSplit:
    """Where the sync's batches spent their time, from the worker's own BatchStats."""

    batches: int = 0
    total: float = 0.0
    model: float = 0.0
    redis_write: float = 0.0

    def add(self, stats: BatchStats) -> None:
        self.batches += 1
        self.total += stats.duration_seconds
        self.model += sum(stats.embed_call_seconds)
        self.redis_write += stats.redis_write_seconds or 0.0

    def shares(self) -> dict[str, float]:
        """Fractions of the batches' time: model, Redis write, and the rest (Postgres + Python)."""
        if self.total <= 0:
            return {}
        rest = self.total - self.model - self.redis_write
        return {"model": self.model, "redis write": self.redis_write, "postgres + python": rest} | {
            "total": self.total
        }


@dataclass
class SyncResult:
    name: str
    ratio: RateRatio
    split: TimeSplit = field(default_factory=TimeSplit)

    @property
    def model_share(self) -> float:
        """The model calls' share of the drains' wall clock: what R1 would be if the model ran
        exactly as fast inside the worker as in the raw calls. Both parts come from the same
        drains, so a busy neighbour moves it far less than the ratio of two timings."""
        return self.split.model / sum(self.ratio.seconds)


Step = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class Round:
    setup: Step  # not timed: the user's writes that queue the round's changes
    ours: Step
    baseline: Step


async def interleaved(rows: int, rounds: Sequence[Round]) -> RateRatio:
    """Runs each round's setup, then vecmirror and the baseline, swapping their order every round."""
    ours: list[float] = []
    baseline: list[float] = []
    for number, step in enumerate(rounds):
        await step.setup()
        pairs = [(ours, step.ours), (baseline, step.baseline)]
        for seconds, run in pairs if number % 2 == 0 else reversed(pairs):
            started = time.perf_counter()
            await run()
            seconds.append(time.perf_counter() - started)
    return RateRatio(rows, ours, baseline)


async def measure_inserts(
    urls: StackUrls,
    rows: int,
    embedder: Embedder,
    round_rows: int | None = None,
    baseline: Callable[[list[str]], object] | None = None,
) -> SyncResult:
    """R1 over rows 0..rows-1 of the corpus, after a warm-up batch of other rows. A round inserts
    `round_rows` rows (default: one claim, `batch_size`), so the worker's claims and the raw calls
    see the same texts together and sort them by length alike."""
    mirror = embed_mirror("r1", "r1_docs")
    async with (
        phase(urls, "r1", {"r1_docs": TABLE_DDL}, [mirror]) as env,
        open_app(env.settings, env.config, lambda _: embedder) as app,
    ):
        batch = env.settings.batch_size
        warm_up = app.worker()
        await warm_up.prepare()
        await _insert(env, make_rows(rows, 16))
        await warm_up.drain()
        split = TimeSplit()
        worker = app.worker(on_batch=split.add)
        groups = chunks(make_rows(0, rows), min(batch, round_rows or batch))
        encode = baseline or embedder.embed
        rounds = [_insert_round(env, worker, encode, group) for group in groups]
        return SyncResult("R1 inserts", await interleaved(rows, rounds), split)


def _insert_round(
    env: Phase, worker: Worker, encode: Callable[[list[str]], object], rows: Sequence[Row]
) -> Round:
    texts = [row.text for row in rows]

    async def raw_encode() -> None:
        encode(texts)  # the harness: plain SentenceTransformer.encode(texts, batch_size=64), torch

    return Round(
        setup=lambda: _insert(env, rows), ours=lambda: _drained(worker, len(rows)), baseline=raw_encode
    )


async def measure_updates(
    urls: StackUrls, rows: int, algorithm: str, round_rows: int = UPDATE_ROUND_ROWS
) -> SyncResult:
    """R2 for one vector algorithm: every row updated once, `round_rows` per round: a bulk UPDATE
    that the worker syncs in several claims (they grow with the backlog, two in flight), against
    one pipeline of HSETs of the same rows."""
    name = f"r2_{algorithm}"
    mirror = embed_mirror(name, f"{name}_docs", algorithm=algorithm)
    async with (
        phase(urls, name, {f"{name}_docs": TABLE_DDL}, [mirror]) as env,
        open_app(env.settings, env.config, lambda _: FakeEmbedder(DIMS)) as app,
    ):
        corpus = make_rows(0, rows)
        loader = app.worker()
        await loader.prepare()
        for page in chunks(corpus, LOAD_PAGE):
            await _insert(env, page)
            await loader.drain()
        split = TimeSplit()
        worker = app.worker(on_batch=split.add)
        groups = chunks(corpus, round_rows)
        ratio = await interleaved(rows, [_update_round(env, worker, g) for g in groups])
        return SyncResult(f"R2 updates, {algorithm.upper()}", ratio, split)


def _update_round(env: Phase, worker: Worker, rows: Sequence[Row]) -> Round:
    """UPDATE price and stock (+1 each) of `rows`; the baseline HSETs the same new values."""
    mirror = env.config.mirrors[0]
    ids = [row.id for row in rows]
    values = {document_key(mirror, [str(r.id)]): (float(r.price + 1), r.stock + 1) for r in rows}

    async def update() -> None:
        await env.conn.execute(
            f"UPDATE {mirror.table_name} SET price = price + 1, stock = stock + 1 WHERE id = ANY($1)", ids
        )

    return Round(
        setup=update, ours=lambda: _drained(worker, len(rows)), baseline=lambda: _hset(env.redis, values)
    )


async def _hset(client: redis.Redis, values: dict[str, tuple[float, int]]) -> None:
    """The raw limit: one pipeline (no transaction, no script) of HSETs of the two fields."""
    async with client.pipeline(transaction=False) as pipe:
        for key, (price, stock) in values.items():
            pipe.hset(key, mapping={"price": price, "stock": stock})
        await pipe.execute()


async def _drained(worker: Worker, expected: int) -> None:
    stats = await worker.drain()
    if stats.changes != expected or stats.failed:
        raise RuntimeError(
            f"the drain synced {stats.changes} changes ({stats.failed} failed), not {expected}"
        )


async def _insert(env: Phase, rows: Sequence[Row]) -> None:
    await env.conn.copy_records_to_table(
        env.config.mirrors[0].table_name, records=[r.record() for r in rows], columns=COLUMNS
    )


def summary(result: SyncResult) -> str:
    r = result.ratio
    shares = ", ".join(f"{k} {v:.2f} s" for k, v in result.split.shares().items())
    return (
        f"{result.name}: {r.rows} rows  vecmirror {r.rate:,.1f} rows/s  "
        f"baseline {r.baseline_rate:,.1f} rows/s  ratio {r.ratio:.3f} (of the totals {r.total_ratio:.3f})  "
        f"({result.split.batches} batches: {shares})"
    )


async def main_async(urls: StackUrls, insert_rows: int, update_rows: int, round_rows: int | None) -> None:
    embedder = default_embedder()
    print(summary(await measure_inserts(urls, insert_rows, embedder, round_rows)), flush=True)
    for algorithm in ("flat", "hnsw"):
        print(summary(await measure_updates(urls, update_rows, algorithm)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="R1 and R2: sync rates against their baselines.")
    parser.add_argument("--insert-rows", type=int, default=1024)
    parser.add_argument("--update-rows", type=int, default=10_000)
    parser.add_argument("--round-rows", type=int, default=None, help="R1 rows per round (batch_size)")
    args = parser.parse_args()
    with temporary_stack() as urls:
        asyncio.run(main_async(urls, args.insert_rows, args.update_rows, args.round_rows))


if __name__ == "__main__":
    main()
