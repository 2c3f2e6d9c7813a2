"""Where a sync's time goes: py-spy samples the in-process worker while it drains queued changes.

    .venv/bin/python bench/profile_sync.py            # `make bench-profile`: every kind
    .venv/bin/python bench/profile_sync.py --kind updates-flat --update-rows 50000

inserts: new rows, embedded by the real model (HNSW index). updates-flat, updates-hnsw: an UPDATE
of two non-embedded columns on rows already mirrored in a FLAT or HNSW index (loaded with a
hash-based fake model; the update never calls one).

py-spy (a dev dependency) is started on this very process just before the drain and stopped just
after it, so the stack start, the model load and the user's writes stay out of the samples. It
samples every Python thread, idle ones included (--idle), without pausing the process
(--nonblocking). Each sample is put in one category by the innermost frame of a known library, and
the sync's wall clock is split by the worker's own per-batch timings beside it; for updates, the
Redis write is then taken apart (bench/write_anatomy.py). Prints a Markdown
report and writes it to --out (bench/PROFILE.md); the raw stacks (py-spy's collapsed format, for
flamegraph.pl or speedscope) go to the folder --raw.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from common import chunks, default_embedder, phase, temporary_stack
from corpus import COLUMNS, TABLE_DDL, embed_mirror, make_rows
from sync_throughput import DIMS, TimeSplit
from write_anatomy import markdown as anatomy_markdown
from write_anatomy import write_anatomy

from vecmirror.app import open_app
from vecmirror.pipeline.embedder import Embedder, FakeEmbedder
from vecmirror.stack import StackUrls

TABLE = "profile_docs"
KINDS = ("inserts", "updates-flat", "updates-hnsw")
ATTACH_SECONDS = 1.5  # py-spy needs a moment to attach before the drain starts
MAIN, MODEL = "event loop (MainThread)", "model calls (the asyncio.to_thread pool)"
# The drain's own frames: its batches run in its lanes' tasks, whose stacks start at the event loop.
DRAIN_FRAMES = ("Worker.drain (vecmirror/worker.py", "Worker._drain_lane (vecmirror/worker.py")
IDLE = "idle: awaiting the model thread or a server's reply"
IDLE_LEAVES = ("select (selectors.py", "_worker (concurrent/futures/thread.py", "wait (threading.py")
# (category, fragments of a frame): the innermost frame holding one decides a sample's category.
Parts = Sequence[tuple[str, tuple[str, ...]]]
EVENT_LOOP_PARTS: Parts = [
    ("Postgres client (asyncpg)", ("asyncpg/",)),
    ("Redis client (redis-py)", ("redis/",)),
    ("vecmirror's own Python", ("vecmirror/",)),
]
MODEL_PARTS: Parts = [
    ("tokenizer", ("tokeniz",)),
    ("forward pass (torch kernels, called from torch or transformers)", ("Module._call_impl (torch/",)),
    ("the rest of encode (sorting, batching, pooling, to numpy)", ("SentenceTransformer.encode",)),
]


@dataclass
class Samples:
    """Sample counts by thread and category, and each thread's busiest innermost functions. The
    event loop counts while it runs the drain or waits in select(): a suspended coroutine is not on
    the stack, but the loop waits only during the drain (py-spy's attach and stop block it, and are
    left out). The model thread counts only its busy samples (it is idle outside model calls)."""

    by_thread: dict[str, Counter[str]] = field(default_factory=lambda: {MAIN: Counter(), MODEL: Counter()})
    leaves: dict[str, Counter[str]] = field(default_factory=lambda: {MAIN: Counter(), MODEL: Counter()})

    def add(self, thread: str, frames: list[str], count: int) -> None:
        idle = bool(frames) and any(marker in frames[-1] for marker in IDLE_LEAVES)
        if thread == MAIN and (idle or any(mark in frame for frame in frames for mark in DRAIN_FRAMES)):
            category = IDLE if idle else _category(frames, EVENT_LOOP_PARTS, "asyncio, standard library")
        elif thread == MODEL and not idle:
            category = _category(frames, MODEL_PARTS, "other")
        else:
            return
        self.by_thread[thread][category] += count
        if not idle:
            self.leaves[thread][frames[-1]] += count


def _category(frames: list[str], parts: Parts, rest: str) -> str:
    for frame in reversed(frames):
        for category, fragments in parts:
            if any(fragment in frame for fragment in fragments):
                return category
    return rest


def parse_raw(path: Path) -> Samples:
    """py-spy's raw (collapsed) format: `thread (TID): NAME;frame;frame... COUNT` per line."""
    samples = Samples()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        thread, *frames = stack.split(";")
        samples.add(_thread_name(thread), frames, int(count))
    return samples


def _thread_name(root: str) -> str:
    name = root.partition(": ")[2]
    if name == "MainThread":
        return MAIN
    if name.startswith("asyncio_"):
        return MODEL
    return name or "unnamed thread"


@contextlib.contextmanager
def py_spy(raw: Path, rate: int) -> Iterator[None]:
    executable = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if executable is None:
        raise SystemExit("py-spy is not installed: `make install` (dev extra) or pip install py-spy")
    command = [executable, "record", "--pid", str(os.getpid()), "--rate", str(rate), "--format", "raw"]
    command += ["--threads", "--idle", "--nonblocking", "--output", str(raw)]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(ATTACH_SECONDS)
    if spy.poll() is not None:
        raise SystemExit(f"py-spy could not attach: {spy.stderr.read() if spy.stderr else ''}")
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)


@dataclass
class Profile:
    kind: str
    rows: int
    wall_seconds: float
    split: TimeSplit
    samples: Samples
    write_micros: dict[str, float] = field(default_factory=dict)  # updates: write_anatomy's


async def profile(urls: StackUrls, kind: str, rows: int, rate: int, raw: Path) -> Profile:
    updates = kind.startswith("updates")
    embedder: Embedder = FakeEmbedder(DIMS) if updates else default_embedder()
    mirror = embed_mirror("profile", TABLE, algorithm="flat" if kind == "updates-flat" else "hnsw")
    async with (
        phase(urls, "profile", {TABLE: TABLE_DDL}, [mirror]) as env,
        open_app(env.settings, env.config, lambda _: embedder) as app,
    ):
        loader = app.worker()
        await loader.prepare()
        corpus = make_rows(0, rows) if updates else make_rows(rows, 64)  # the updated rows, or a warm-up
        for page in chunks(corpus, 10_000):
            await env.conn.copy_records_to_table(TABLE, records=[r.record() for r in page], columns=COLUMNS)
            await loader.drain()
        if not updates:
            records = [r.record() for r in make_rows(0, rows)]
            await env.conn.copy_records_to_table(TABLE, records=records, columns=COLUMNS)
        else:
            await env.conn.execute(f"UPDATE {TABLE} SET price = price + 1, stock = stock + 1")
        split = TimeSplit()
        worker = app.worker(on_batch=split.add)
        with py_spy(raw, rate):
            started = time.perf_counter()
            await worker.drain()
            wall = time.perf_counter() - started
        result = Profile(kind, rows, wall, split, parse_raw(raw))
        if updates:
            sink, batch = app.syncs[0].sink, env.settings.batch_size
            result.write_micros = await write_anatomy(env.redis, env.config.mirrors[0], sink, corpus, batch)
    return result


def markdown(result: Profile, command: str) -> str:
    rate = result.rows / result.wall_seconds
    lines = [
        f"# Where the {result.kind} sync's time goes\n",
        f"`{command}`, {datetime.now(UTC):%Y-%m-%d %H:%M UTC}: {result.rows:,} rows drained in "
        f"{result.wall_seconds:.2f} s ({rate:,.1f} rows/s), sampled by py-spy.\n",
        "## Batch time, from the worker's per-batch timings\n",
        "Two batches are in flight (VECMIRROR_BATCHES_IN_FLIGHT): their times overlap, so they add "
        "up to more than the drain's wall clock, and a model call's time includes waiting for the "
        "other batch's call (one model, one call at a time).\n",
        "| part | seconds | share |",
        "|---|--:|--:|",
    ]
    shares = result.split.shares()
    total = shares.pop("total", 0.0)
    lines += [f"| {name} | {seconds:.2f} | {seconds / total:.1%} |" for name, seconds in shares.items()]
    lines.append(f"| all {result.split.batches} batches | {total:.2f} | |\n")
    for thread in (MAIN, MODEL):
        if result.samples.by_thread[thread]:  # no model thread when no row was embedded
            lines += _thread_tables(thread, result.samples.by_thread[thread], result.samples.leaves[thread])
    if result.write_micros:
        lines += anatomy_markdown(result.write_micros)
    return "\n".join(lines) + "\n"


def _thread_tables(thread: str, counts: Counter[str], leaves: Counter[str]) -> list[str]:
    total = sum(counts.values()) or 1
    busy = sum(leaves.values()) or 1
    return [
        f"## Thread: {thread}, {sum(counts.values())} samples\n",
        "| category | samples | share |",
        "|---|--:|--:|",
        *(f"| {category} | {count} | {count / total:.1%} |" for category, count in counts.most_common()),
        "",
        f"Busiest innermost functions of the {busy} busy samples:\n",
        "| function | samples | share |",
        "|---|--:|--:|",
        *(f"| `{leaf}` | {count} | {count / busy:.1%} |" for leaf, count in leaves.most_common(12)),
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description="py-spy profiles of the worker's drain.")
    parser.add_argument("--kind", choices=[*KINDS, "all"], default="all")
    parser.add_argument("--rows", type=int, default=512, help="inserted rows (embedded by the model)")
    parser.add_argument("--update-rows", type=int, default=5000)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("PROFILE.md"))
    parser.add_argument("--raw", type=Path, default=Path(tempfile.gettempdir()), help="folder for raw stacks")
    args = parser.parse_args()
    kinds = {kind: args.rows if kind == "inserts" else args.update_rows for kind in KINDS}
    if args.kind != "all":
        kinds = {args.kind: kinds[args.kind]}
    command = shlex.join(["bench/profile_sync.py", *sys.argv[1:]])
    texts = []
    with temporary_stack() as urls:
        for kind, rows in kinds.items():
            raw = args.raw / f"vecmirror-profile-{kind}.txt"
            texts.append(markdown(asyncio.run(profile(urls, kind, rows, args.rate, raw)), command))
            print(texts[-1], f"raw stacks: {raw}", sep="\n", flush=True)
    args.out.write_text("\n".join(texts))
    print(f"written to {args.out}", flush=True)


if __name__ == "__main__":
    main()
