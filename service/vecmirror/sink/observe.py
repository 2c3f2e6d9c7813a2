"""What Redis says about a mirror, for /metrics and `vecmirror status`: its index's state, and when a
worker last wrote a batch of it (kept under vecmirror's own keys, so every worker and `status` see it).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as redis
from redis.exceptions import ResponseError

from vecmirror.config import OWN_KEY_PREFIX


@dataclass(frozen=True)
class IndexState:
    name: str
    exists: bool
    documents: int = 0
    indexing_failures: int = 0  # documents the index refused (FT.INFO hash_indexing_failures)
    indexed_ratio: float = 0.0  # 0..1: how far a (re)indexing scan has got (FT.INFO percent_indexed)


async def index_state(client: redis.Redis, index_name: str) -> IndexState:
    try:
        info = await client.ft(index_name).info()  # type: ignore[no-untyped-call]
    except ResponseError as exc:
        if "unknown index" in str(exc).lower() or "no such index" in str(exc).lower():
            return IndexState(index_name, exists=False)
        raise
    return IndexState(
        index_name,
        exists=True,
        documents=int(info["num_docs"]),
        indexing_failures=int(info["hash_indexing_failures"]),
        indexed_ratio=float(info["percent_indexed"]),
    )


def last_sync_key(mirror: str) -> str:
    return f"{OWN_KEY_PREFIX}last_sync:{mirror}"


async def record_last_sync(client: redis.Redis, mirror: str, when: float) -> None:
    """`when`: Unix time of the worker's clock when its batch was written."""
    await client.set(last_sync_key(mirror), repr(when))


async def read_last_sync(client: redis.Redis, mirror: str) -> float | None:
    value = await client.get(last_sync_key(mirror))
    return None if value is None else float(value)
