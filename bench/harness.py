"""Every measurement of the benchmark in one run: printed as it goes, then written as Markdown.

    .venv/bin/python bench/harness.py --quick                # `make bench-quick`: under two minutes
    .venv/bin/python bench/harness.py --rows 100000          # `make bench`: hours on a 2-core CPU

Starts the embedded stack in a temporary directory, then measures, each in a database of its own:
R1 (insert sync against raw `model.encode`), R2 (updates of non-embedded columns against raw
pipelined HSETs, FLAT and HNSW), the backfill against RedisVL's load, and a `vecmirror run`
subprocess under load (latency at half its capacity, CPU per 1,000 rows, peak RSS). See each
module's docstring for the method, and bench/RESULTS.md for the last report.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from backfill import measure_backfill
from backfill import summary as backfill_summary
from common import default_embedder, temporary_stack
from corpus import make_rows
from embedding_speed import measure as measure_embedding
from embedding_speed import plain_model
from environment import describe
from live_load import measure_live
from live_load import summary as live_summary
from report import Results, markdown
from sync_throughput import measure_inserts, measure_updates
from sync_throughput import summary as sync_summary

from vecmirror.settings import Settings
from vecmirror.stack import StackUrls

LOAD_SHARE = 0.5


@dataclass(frozen=True)
class Sizes:
    insert_rows: int  # R1
    round_rows: int  # R1 rows per interleaved round
    update_rows: int  # R2, each of FLAT and HNSW
    update_round_rows: int  # R2 rows per UPDATE, i.e. per interleaved round
    backfill_rows: int
    bulk_rows: int  # the subprocess worker's capacity run
    load_seconds: float  # its steady load
    embedding_scale: float  # of bench/embedding_speed.py's three corpora (1,500, 600, 150 texts)


QUICK = Sizes(
    insert_rows=192,
    round_rows=64,
    update_rows=4096,
    update_round_rows=2048,
    backfill_rows=96,
    bulk_rows=96,
    load_seconds=8,
    embedding_scale=0.2,
)
FULL = Sizes(
    insert_rows=10_000,
    round_rows=256,
    update_rows=100_000,
    update_round_rows=4096,
    backfill_rows=100_000,
    bulk_rows=2000,
    load_seconds=120,
    embedding_scale=1.0,
)


def sizes_from(args: argparse.Namespace) -> Sizes:
    sizes = QUICK if args.quick else replace(FULL, update_rows=args.rows, backfill_rows=args.rows)
    if args.insert_rows is not None:
        sizes = replace(sizes, insert_rows=args.insert_rows)
    return sizes


async def run_all(urls: StackUrls, sizes: Sizes) -> Results:
    clock = _Clock()
    embedder = default_embedder()
    embedder.embed([row.text for row in make_rows(10_000_000, 16)])  # warm-up: first calls are slow
    plain = plain_model()  # R1's baseline and the embedding table's: what a user would otherwise run
    plain.encode([row.text for row in make_rows(10_000_000, 16)])
    clock.lap("models loaded")
    embedding = await measure_embedding(urls, sizes.embedding_scale, plain, embedder)
    clock.lap(
        f"embedding vs plain sentence-transformers: {[f'{r.corpus} {r.ratio:.2f}x' for r in embedding]}"
    )

    def baseline(texts: list[str]) -> object:
        return plain.encode(texts, batch_size=64, show_progress_bar=False)

    inserts = await measure_inserts(urls, sizes.insert_rows, embedder, sizes.round_rows, baseline)
    clock.lap(sync_summary(inserts))
    updates = []
    for algorithm in ("flat", "hnsw"):
        updates.append(await measure_updates(urls, sizes.update_rows, algorithm, sizes.update_round_rows))
        clock.lap(sync_summary(updates[-1]))
    backfill = await measure_backfill(urls, sizes.backfill_rows, embedder)
    clock.lap(backfill_summary(backfill))
    live = await measure_live(urls, sizes.bulk_rows, sizes.load_seconds, LOAD_SHARE)
    clock.lap(live_summary(live))
    return Results(
        title="",
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        wall_seconds=0.0,
        environment=await describe(urls, Settings()),
        inserts=inserts,
        updates=updates,
        backfill=backfill,
        live=live,
        embedding=embedding,
    )


class _Clock:
    """Prints each phase's summary with the seconds it took, so a slow phase shows."""

    def __init__(self) -> None:
        self._last = time.perf_counter()

    def lap(self, summary: str) -> None:
        now = time.perf_counter()
        print(f"[{now - self._last:5.1f} s] {summary}", flush=True)
        self._last = now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes: under two minutes")
    parser.add_argument("--rows", type=int, default=100_000, help="backfill and R2 rows (full run)")
    parser.add_argument("--insert-rows", type=int, default=None, help="R1 rows (quick 192, full 10,000)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    args = parser.parse_args()
    started = time.perf_counter()
    with temporary_stack() as urls:
        results = asyncio.run(run_all(urls, sizes_from(args)))
    command = shlex.join(["bench/harness.py", *sys.argv[1:]])
    results = replace(results, title=command, wall_seconds=time.perf_counter() - started)
    text = markdown(results)
    args.out.write_text(text)
    print(f"\n{text}\nwritten to {args.out}", flush=True)


if __name__ == "__main__":
    main()
