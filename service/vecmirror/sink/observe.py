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
    answering = _text(info.get("index_name", index_name))
    rebuild = None
    if with_rebuild:
        names = sorted(_text(n) for n in await client.execute_command("FT._LIST"))  # type: ignore[no-untyped-call]
        beside = [n for n in names if n.startswith(f"{index_name}__") and n != answering]
        if beside:
            rebuild = await index_state(client, beside[-1], with_rebuild=False)
    return IndexState(
        index_name,
        exists=True,
        documents=int(info["num_docs"]),
        indexing_failures=int(info["hash_indexing_failures"]),
        indexed_ratio=float(info["percent_indexed"]),
        answering=answering,
        rebuild=rebuild,
    )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def last_sync_key(mirror: str) -> str:
    return f"{OWN_KEY_PREFIX}last_sync:{mirror}"


async def record_last_sync(client: redis.Redis, mirror: str, when: float) -> None:
    """`when`: Unix time of the worker's clock when its batch was written."""
    await client.set(last_sync_key(mirror), repr(when))


async def read_last_sync(client: redis.Redis, mirror: str) -> float | None:
    value = await client.get(last_sync_key(mirror))
    return None if value is None else float(value)
