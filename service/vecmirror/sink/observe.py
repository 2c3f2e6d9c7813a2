"""What Redis says about a mirror, for /metrics and `vecmirror status`: its index's state, and when a
worker last wrote a batch of it (kept under vecmirror's own keys, so every worker and `status` see it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
from redis.exceptions import ResponseError

from vecmirror.config import OWN_KEY_PREFIX
from vecmirror.sink.cluster import as_text, index_names, shards_index_alone


@dataclass(frozen=True)
class IndexState:
    name: str
    exists: bool
    documents: int = 0
    indexing_failures: int = 0  # documents the index refused (FT.INFO hash_indexing_failures)
    indexed_ratio: float = 0.0  # 0..1: how far a (re)indexing scan has got (FT.INFO percent_indexed)
    answering: str | None = None  # the real index behind the name (an alias's target after a rebuild)
    # A new index generation being filled beside it (`<name>__<digest>`, see index/rollout.py).
    rebuild: IndexState | None = None


async def index_state(client: redis.Redis, index_name: str, *, with_rebuild: bool = True) -> IndexState:
    """The index users query by this name, and the new generation being filled beside it, if any
    (another index named `<name>__…`; one a rollout abandoned is dropped by the next worker start)."""
    try:
        info = await client.ft(index_name).info()  # type: ignore[no-untyped-call]
    except ResponseError as exc:
        if "unknown index" in str(exc).lower() or "no such index" in str(exc).lower():
            return IndexState(index_name, exists=False)
        raise
    answering = as_text(info.get("index_name", index_name))
    rebuild = None
    if with_rebuild:
        names = sorted(await index_names(client))  # on a cluster, every primary's
        beside = [n for n in names if n.startswith(f"{index_name}__") and n != answering]
        if beside:
            rebuild = await index_state(client, beside[-1], with_rebuild=False)
    return IndexState(
        index_name,
        exists=True,
        documents=await document_count(client, info),
        indexing_failures=int(info["hash_indexing_failures"]),
        indexed_ratio=float(info["percent_indexed"]),
        answering=answering,
        rebuild=rebuild,
    )


async def document_count(client: redis.Redis, info: dict[str, Any]) -> int:
    """The index's documents, from its FT.INFO. Where each shard of a cluster indexes alone, the
    index is on one of them and counts that one's documents: the keys under its prefixes, of its
    type, are counted on every primary instead (a SCAN of each)."""
    if not await shards_index_alone(client):
        return int(info["num_docs"])
    definition = _pairs(info.get("index_definition") or [])
    kind = "ReJSON-RL" if as_text(definition.get("key_type", "HASH")).upper() == "JSON" else "hash"
    prefixes = [as_text(p) for p in definition.get("prefixes") or [""]]
    keys: set[str] = set()  # prefixes may overlap: a key counts once
    for prefix in prefixes:
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"
        async for key in client.scan_iter(match=pattern, count=1000, _type=kind):
            keys.add(as_text(key))
    return len(keys)


def _pairs(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return {as_text(k): v for k, v in raw.items()}
    return {as_text(raw[i]): raw[i + 1] for i in range(0, len(raw) - 1, 2)}


def last_sync_key(mirror: str) -> str:
    return f"{OWN_KEY_PREFIX}last_sync:{mirror}"


async def record_last_sync(client: redis.Redis, mirror: str, when: float) -> None:
    """`when`: Unix time of the worker's clock when its batch was written."""
    await client.set(last_sync_key(mirror), repr(when))


async def read_last_sync(client: redis.Redis, mirror: str) -> float | None:
    value = await client.get(last_sync_key(mirror))
    return None if value is None else float(value)
