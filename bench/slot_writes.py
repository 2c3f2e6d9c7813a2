"""Versioned writes grouped by hash slot, against the same writes before slots and raw HSETs.

Since issue 13 every script call holds the documents of one hash slot where the server asks for it
(a cluster, a proxy endpoint), and vecmirror's own keys sit in each document's slot; on a single
Redis a call still holds up to CALL_SIZE documents of many slots. This measures, in one run on the
same documents (384-d FLOAT32 vectors and four fields, an HNSW index over them, batches of 500):

- raw redis-py: a pipeline of HSETs of every field, what a user would write without vecmirror;
- vecmirror before slots: the write script of the commit before issue 13 (read from git), one call
  per 100 documents;
- vecmirror today on a single Redis (calls across slots);
- vecmirror today a slot per call, as on a proxy endpoint (a plain client to a one-node cluster);
- vecmirror today through a cluster client on a one-node cluster.

Each batch is written by every variant in turn (inserts into fresh keys, then updates of the
same keys), so they share the machine's ups and downs. Prints Markdown (bench/SLOT_WRITES.md).
Run: .venv/bin/python bench/slot_writes.py [--documents 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster

from vecmirror.sink.versioned import VersionedWrites, Write
from vecmirror.stack import cluster_down, cluster_up, stack_down, stack_up

BEFORE_SLOTS = "8d5cc31"  # the last commit before issue 13
BATCH = 500
DIMS = 384
Variant = Callable[[list[tuple[str, dict[str, Any]]], int], Awaitable[None]]


def _before_slots_module() -> ModuleType:
    """sink/versioned.py as it was before slots (git show), loaded as a module of its own."""
    source = subprocess.run(
        ["git", "show", f"{BEFORE_SLOTS}:service/vecmirror/sink/versioned.py"],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "versioned_before_slots.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("versioned_before_slots", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _documents(prefix: str, count: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, DIMS)).astype(np.float32)
    return [
        (
            f"{prefix}{n}",
            {
                "title": f"document {n} {seed}",
                "category": f"c{n % 17}",
                "price": float(n % 1000),
                "embedding": vectors[n].tobytes(),
            },
        )
        for n in range(count)
    ]


async def _index(client: redis.Redis, prefix: str) -> None:
    await client.execute_command(  # type: ignore[no-untyped-call]
        "FT.CREATE", f"{prefix}idx", "ON", "HASH", "PREFIX", "1", prefix, "SCHEMA",
        "title", "TEXT", "category", "TAG", "price", "NUMERIC",
        "embedding", "VECTOR", "HNSW", "6", "TYPE", "FLOAT32", "DIM", str(DIMS), "DISTANCE_METRIC", "COSINE",
    )  # fmt: skip


def _raw(client: redis.Redis) -> Variant:
    async def write(documents: list[tuple[str, dict[str, Any]]], version: int) -> None:  # noqa: ARG001
        async with client.pipeline(transaction=False) as pipe:
            for key, fields in documents:
                pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
            await pipe.execute()

    return write


def _versioned(writes: Any, generation: str) -> Variant:
    async def write(documents: list[tuple[str, dict[str, Any]]], version: int) -> None:
        batch: list[Write] = []
        for key, fields in documents:
            mapping = {**fields, "_vm_version": version, "_vm_gen": generation, "_vm_key": key}
            batch.append(writes.hash_upsert(key, version, mapping, []))
        if hasattr(writes, "one_slot"):
            applied = await writes.apply(batch, generation)
        else:  # before slots: a call per 100 documents, as its RedisSink sent them
            applied = [
                ok
                for start in range(0, len(batch), 100)
                for ok in await writes.apply(batch[start : start + 100], generation)
            ]
        assert all(applied)

    return write


async def _variants(single: str, cluster: str) -> dict[str, tuple[Variant, str]]:
    """Each variant's writer and the key prefix it writes under (an index of its own)."""
    plain, node = redis.Redis.from_url(single), redis.Redis.from_url(cluster)
    clustered = RedisCluster.from_url(cluster)
    await clustered.initialize()
    old = _before_slots_module().VersionedWrites(
        plain, "before", json=False, tombstone_ttl=600, config="bench"
    )
    today = VersionedWrites(plain, "today", json=False, tombstone_ttl=600, config="bench")
    proxy = VersionedWrites(node, "proxy", json=False, tombstone_ttl=600, config="bench")
    proxy.one_slot = True  # learnt from the first CROSSSLOT otherwise
    through_cluster = VersionedWrites(clustered, "cluster", json=False, tombstone_ttl=600, config="bench")  # type: ignore[arg-type]
    variants: dict[str, tuple[Variant, str]] = {"raw redis-py HSET pipeline": (_raw(plain), "raw:")}
    for name, writes, prefix, client in [
        ("vecmirror before slots (single Redis)", old, "before:", plain),
        ("vecmirror today, single Redis", today, "today:", plain),
        ("vecmirror today, a slot per call (proxy endpoint)", proxy, "proxy:", node),
        ("vecmirror today, cluster client (one-node cluster)", through_cluster, "cluster:", clustered),
    ]:
        generation = await writes.mark("g1")
        if writes.config:
            await writes.claim_config()
        variants[name] = (_versioned(writes, generation), prefix)
        await _index(client, prefix)  # type: ignore[arg-type]
    await _index(plain, "raw:")
    return variants


async def measure(documents: int, single: str, cluster: str) -> dict[str, dict[str, float]]:
    variants = await _variants(single, cluster)
    seconds: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for phase, seed in (("insert", 1), ("update", 2)):
        for start in range(0, documents, BATCH):
            for name, (write, prefix) in variants.items():
                batch = _documents(prefix, documents, seed)[start : start + BATCH]
                began = time.perf_counter()
                await write(batch, seed)
                seconds[name][phase] += time.perf_counter() - began
    return {
        name: {phase: total / documents * 1e6 for phase, total in by.items()} for name, by in seconds.items()
    }


def markdown(micros: dict[str, dict[str, float]], documents: int) -> str:
    raw = micros["raw redis-py HSET pipeline"]
    before = micros["vecmirror before slots (single Redis)"]
    lines = [
        f"# Versioned writes by hash slot ({documents:,} documents, {DIMS}-d HNSW, batches of {BATCH})\n",
        "| variant | insert µs/doc | update µs/doc | insert x raw | update x raw | insert x before | update x before |",  # noqa: E501
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for name, by in micros.items():
        lines.append(
            f"| {name} | {by['insert']:,.0f} | {by['update']:,.0f} | {by['insert'] / raw['insert']:.2f} | "
            f"{by['update'] / raw['update']:.2f} | {by['insert'] / before['insert']:.2f} | "
            f"{by['update'] / before['update']:.2f} |"
        )
    lines += ["", f"Reproduce: `.venv/bin/python bench/slot_writes.py --documents {documents}`", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=5000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "SLOT_WRITES.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        try:
            urls = stack_up(directory / "single")
            cluster = cluster_up(directory / "cluster", 1)
            micros = asyncio.run(measure(args.documents, urls.redis_url, cluster))
        finally:
            cluster_down(directory / "cluster")
            stack_down(directory / "single")
    report = markdown(micros, args.documents)
    args.out.write_text(report)
    sys.stdout.write(report)


if __name__ == "__main__":
    main()
