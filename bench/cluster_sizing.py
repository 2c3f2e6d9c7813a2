"""How big one shard must be, and how fast it takes documents: memory per document of an HNSW index
of 384-d and 1,536-d FLOAT32 vectors, and HNSW insert rate, on the stack's own redis-server with the
search module, as one node of an OSS cluster owning every slot (a shard, cluster-mode overheads in).

Each document is a HASH shaped as vecmirror writes one: a TEXT title, a TAG genre, the vector, and
vecmirror's three bookkeeping fields (`_vm_key`, `_vm_version`, `_vm_hash`). Memory per document is
Redis's `used_memory` after the inserts less before, over N; FT.INFO's own sizes break the index
part down. The insert rate is documents/s through pipelined HSETs (one round trip per
--pipeline documents) into an index that already exists, so every insert pays the HNSW insertion,
measured over all N (an HNSW insert slows slowly as the graph grows: a 1M-document shard takes
documents more slowly than this 20k one). Vectors are random (normal, then unit length): the graph's
neighbour lists, hence memory, do not depend on them; a real corpus' clusters can make inserts a
little faster or slower.

    .venv/bin/python bench/cluster_sizing.py --docs 20000   # -> bench/CLUSTER_SIZING.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis

from vecmirror.stack import cluster_down, cluster_up

OUTPUT = Path(__file__).with_name("CLUSTER_SIZING.md")
WORDS = (
    "river",
    "stone",
    "maple",
    "lantern",
    "orbit",
    "velvet",
    "harbor",
    "cedar",
    "signal",
    "meadow",
    "copper",
)
GENRES = ("pets", "farm", "space", "home", "garden", "sport", "music", "travel")


@dataclass(frozen=True)
class Sizing:
    dims: int
    docs: int
    bytes_per_doc: float  # used_memory delta / docs
    key_bytes: int  # MEMORY USAGE of one document's HASH
    index_mb: dict[str, float]  # FT.INFO's sizes
    docs_per_s: float  # HSET + HNSW insert, pipelined
    raw_docs_per_s: float  # the same HSETs with no index: what the index costs


@contextmanager
def one_shard() -> Iterator[redis.Redis]:
    directory = Path(tempfile.mkdtemp(prefix="vecmirror-sizing-"))
    try:
        client = redis.Redis.from_url(cluster_up(directory, 1), socket_timeout=300)
        yield client
        client.close()
    finally:
        cluster_down(directory)
        shutil.rmtree(directory, ignore_errors=True)


def documents(count: int, dims: int, seed: int) -> Iterator[tuple[str, dict[str, Any]]]:
    generator = np.random.default_rng(seed)
    for number in range(count):
        vector = generator.standard_normal(dims).astype(np.float32)
        vector /= np.linalg.norm(vector)
        title = " ".join(generator.choice(WORDS, size=6))
        yield (
            f"doc:{number}",
            {
                "title": title,
                "genre": GENRES[number % len(GENRES)],
                "embedding": vector.tobytes(),
                "_vm_key": f'["{number}"]',
                "_vm_version": 1_000_000 + number,
                "_vm_hash": f"{generator.integers(2**63):032x}",
            },
        )


def create_index(client: redis.Redis, dims: int) -> None:
    vector = ["TYPE", "FLOAT32", "DIM", str(dims), "DISTANCE_METRIC", "L2"]
    schema = ["title", "TEXT", "genre", "TAG", "embedding", "VECTOR", "HNSW", str(len(vector)), *vector]
    command = ["FT.CREATE", "sizing_idx", "ON", "HASH", "PREFIX", "1", "doc:", "SCHEMA", *schema]
    client.execute_command(*command)  # type: ignore[no-untyped-call]


def insert(client: redis.Redis, docs: int, dims: int, pipeline_size: int) -> float:
    """Seconds to HSET `docs` documents, `pipeline_size` per round trip (documents made beforehand)."""
    batch = list(documents(docs, dims, seed=dims))
    started = time.perf_counter()
    for first in range(0, docs, pipeline_size):
        pipe = client.pipeline(transaction=False)
        for key, mapping in batch[first : first + pipeline_size]:
            pipe.hset(key, mapping=mapping)
        pipe.execute()
    return time.perf_counter() - started


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def ft_sizes(client: redis.Redis) -> dict[str, float]:
    info = client.execute_command("FT.INFO", "sizing_idx")  # type: ignore[no-untyped-call]
    wanted = ("vector_index_sz_mb", "inverted_sz_mb", "doc_table_size_mb", "key_table_size_mb")
    sizes = {_text(name): value for name, value in info.items()}
    return {name: float(sizes[name]) for name in wanted}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def measure(dims: int, docs: int, pipeline_size: int) -> Sizing:
    with one_shard() as client:
        raw_seconds = insert(client, docs, dims, pipeline_size)  # no index yet: plain HSETs
        client.flushall()
        before = used_memory(client)
        create_index(client, dims)
        seconds = insert(client, docs, dims, pipeline_size)
        after = used_memory(client)
        key_bytes = int(client.memory_usage("doc:0", samples=0) or 0)  # 0: every field, not 5
        sizes = ft_sizes(client)
    return Sizing(dims, docs, (after - before) / docs, key_bytes, sizes, docs / seconds, docs / raw_seconds)


def report(results: list[Sizing], pipeline_size: int, versions: str, load: float) -> str:
    lines = [
        "# One shard's size and insert rate (HNSW, FLOAT32)",
        "",
        "Measured by `bench/cluster_sizing.py` on one node of a Redis OSS cluster owning every slot",
        "(`vecmirror stack up --cluster 1`'s server and modules). Reproduce:",
        "",
        "```",
        f".venv/bin/python bench/cluster_sizing.py --docs {results[0].docs} --pipeline {pipeline_size}",
        "```",
        "",
        f"Machine: {_cpu()}, {os.cpu_count()} CPUs, load average {load:.1f} before the run (other",
        f"processes share the CPUs: the rates vary run to run); {versions}.",
        "",
        "| dims | docs | memory per doc (used_memory delta / N) | one doc's HASH (MEMORY USAGE) "
        "| FT.INFO vector index / N | FT.INFO inverted + doc table + key table / N | 1M docs need "
        "| HNSW inserts/s (pipelined HSET) | HSET/s without an index |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        sizes = result.index_mb
        other = sizes["inverted_sz_mb"] + sizes["doc_table_size_mb"] + sizes["key_table_size_mb"]
        lines.append(
            f"| {result.dims} | {result.docs:,} | {result.bytes_per_doc / 1024:.1f} KiB "
            f"| {result.key_bytes / 1024:.1f} KiB | {_kib_per_doc(sizes['vector_index_sz_mb'], result.docs)} "
            f"| {_kib_per_doc(other, result.docs)} | {result.bytes_per_doc * 1_000_000 / 1024**3:.1f} GiB "
            f"| {result.docs_per_s:,.0f} | {result.raw_docs_per_s:,.0f} |"
        )
    lines += [
        "",
        "Memory per doc counts the HASH (vector blob, title, genre, vecmirror's `_vm_*` fields) and the",
        "index (HNSW graph with M=16, EF_CONSTRUCTION=200, the defaults; TEXT and TAG postings; doc and",
        'key tables); "1M docs need" is that figure times a million, before replicas, fragmentation',
        "and headroom for forks and resharding. The HNSW insert rate is one shard's, inserting on its",
        "main thread (no search WORKERS configured): N shards that each own a share of the keys take",
        "about N times as many, and it falls slowly as the graph grows. The rate without an index is",
        "what the HNSW insertion costs. vecmirror adds per mirror 16,384 small guard hashes (one per",
        "hash slot), spread over the shards, and a tombstone per deleted document until it is swept.",
        "",
    ]
    return "\n".join(lines)


def _kib_per_doc(mib: float, docs: int) -> str:
    return f"{mib * 1024 / docs:.1f} KiB"  # FT.INFO's `_mb` sizes are MiB


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def versions() -> str:
    with one_shard() as client:
        modules = {_text(m[b"name"]): m[b"ver"] for m in client.module_list()}
        server = client.info("server")["redis_version"]
    return f"Redis {server}, search module {modules['search']}, cluster mode"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[384, 1536])
    parser.add_argument("--pipeline", type=int, default=500, help="documents per round trip")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    results = [measure(dims, args.docs, args.pipeline) for dims in args.dims]
    text = report(results, args.pipeline, versions(), load)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
