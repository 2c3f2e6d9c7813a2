"""An update's Redis write taken apart: what each layer of vecmirror's versioned write adds to the
raw HSET of the changed fields (R2's baseline), timed on the same documents of a mirrored index.
vecmirror writes a chunk of documents per script call, their values in one JSON argument, and reads
the text hashes a chunk of keys per script call: redis-py's Python costs per command (about 30 µs to
pack and parse one) and per argument (about 1.3 µs to pack one) would otherwise add up to as much as
Redis spends re-indexing a document.

Used by bench/profile_sync.py for the updates profile. Each claim-sized group of rows is written by
every variant in turn, so they share the machine's ups and downs.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence

import redis.asyncio as redis
from common import chunks
from corpus import COLUMNS, Row

from vecmirror.config import MirrorConfig
from vecmirror.pipeline.documents import Document, DocumentBuilder
from vecmirror.sink.encode import HashEncoder
from vecmirror.sink.versioned import CALL_SIZE
from vecmirror.sink.writer import READ_CHUNK, RedisSink

VERSION_BASE = 10**12  # above any captured change's id, so no versioned write is refused
RAW = "HSET of the 2 changed fields, one pipeline (R2's baseline)"
ALL_FIELDS = "HSET of every field vecmirror writes, one pipeline"
VERSIONED = f"vecmirror's write: a versioned-write script call per {CALL_SIZE} documents, sent as JSON"
ONE_SLOT = "the same, a script call per hash slot (as on a sharded Redis or a proxy endpoint)"
HASH_READS = f"reading the text hashes first: one script call per {READ_CHUNK:,} keys"
INDEX_INFO = "FT.INFO once per batch (documents the index refused)"
Fields = Mapping[str, str | bytes | int | float]


async def write_anatomy(
    client: redis.Redis, mirror: MirrorConfig, sink: RedisSink, rows: Sequence[Row], batch: int
) -> dict[str, float]:
    """Microseconds per row of each variant."""
    builder = DocumentBuilder(mirror)
    seconds: dict[str, float] = defaultdict(float)
    for number, group in enumerate(chunks(rows, batch)):
        documents = [_document(builder, row, VERSION_BASE + number) for row in group]
        for name, step in _variants(client, sink, HashEncoder(mirror), group, documents).items():
            started = time.perf_counter()
            await step()
            seconds[name] += time.perf_counter() - started
    return {name: total / len(rows) * 1e6 for name, total in seconds.items()}


def _variants(
    client: redis.Redis, sink: RedisSink, encoder: HashEncoder, rows: Sequence[Row], documents: list[Document]
) -> dict[str, Callable[[], Awaitable[object]]]:
    keys = [sink.key(d.key) for d in documents]
    changed: list[Fields] = [{"price": float(row.price), "stock": row.stock} for row in rows]
    return {
        RAW: lambda: _hset(client, keys, changed),
        ALL_FIELDS: lambda: _hset(client, keys, [encoder.mapping(d) for d in documents]),
        VERSIONED: lambda: sink.write(documents, [], keep_vector={d.key for d in documents}),
        ONE_SLOT: lambda: _one_slot_write(sink, documents),
        HASH_READS: lambda: sink.stored_text_hashes([d.key for d in documents]),
        INDEX_INFO: sink.indexing_failures,
    }


def _document(builder: DocumentBuilder, row: Row, version: int) -> Document:
    """The document an update of this row makes: its text unchanged, so no vector."""
    document = builder.build((str(row.id),), dict(zip(COLUMNS, row.record(), strict=True)))
    document.version = version
    return document


async def _one_slot_write(sink: RedisSink, documents: list[Document]) -> None:
    sink.versioned.one_slot = True
    try:
        await sink.write(documents, [], keep_vector={d.key for d in documents})
    finally:
        sink.versioned.one_slot = False


async def _hset(client: redis.Redis, keys: Sequence[str], mappings: Sequence[Fields]) -> None:
    async with client.pipeline(transaction=False) as pipe:
        for key, mapping in zip(keys, mappings, strict=True):
            pipe.hset(key, items=[item for pair in mapping.items() for item in pair])
        await pipe.execute()


def markdown(micros: dict[str, float]) -> list[str]:
    raw = micros[RAW]
    rows = [f"| {name} | {value:,.0f} | {value / raw:.2f} |" for name, value in micros.items()]
    return [
        "## The update's Redis write, layer by layer (same documents, interleaved)\n",
        "| variant | µs per row | times the baseline |",
        "|---|--:|--:|",
        *rows,
        "",
    ]
