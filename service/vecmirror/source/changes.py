"""The change queue: claim a batch, acknowledge it, re-queue keys, record failed rows.

A claim lives in a transaction that stays open until the batch is written to Redis: the row and
advisory locks it holds are what keep a key out of two workers' hands, and a worker that dies
simply lets its transaction roll back, so its changes become claimable again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vecmirror.source import Connection
from vecmirror.source.sql import QUERIES

RowKey = tuple[str, ...]


@dataclass(frozen=True)
class ClaimedBatch:
    change_ids: list[int]
    keys: list[RowKey]  # distinct, in the order their first change was queued


@dataclass(frozen=True)
class RowFailure:
    key: RowKey
    field: str
    error: str


async def claim(conn: Connection, mirror: str, limit: int) -> ClaimedBatch:
    """Must run inside a transaction; the claim ends with it."""
    await conn.execute(QUERIES["lock_mirror_shared"], mirror)
    rows = await conn.fetch(QUERIES["claim_changes"], mirror, limit)
    keys = dict.fromkeys(tuple(r["row_key"]) for r in rows)
    return ClaimedBatch([r["id"] for r in rows], list(keys))


async def claim_truncate(conn: Connection, mirror: str) -> int | None:
    """The id of a TRUNCATE marker, with every in-flight batch of the mirror finished."""
    marker: int | None = await conn.fetchval(QUERIES["claim_truncate"], mirror)
    if marker is not None:
        await conn.execute(QUERIES["lock_mirror_exclusive"], mirror)
    return marker


async def acknowledge(conn: Connection, mirror: str, change_ids: Sequence[int]) -> None:
    await conn.execute(QUERIES["delete_changes"], mirror, list(change_ids))


async def enqueue(conn: Connection, mirror: str, keys: Iterable[RowKey]) -> None:
    payload = json.dumps([list(k) for k in keys])
    await conn.execute(QUERIES["enqueue_keys"], mirror, payload)


async def pending(conn: Connection, mirror: str) -> int:
    count: int = await conn.fetchval(QUERIES["pending_changes"], mirror)
    return count


async def record_outcome(
    conn: Connection,
    mirror: str,
    failures: Sequence[RowFailure],
    succeeded: Sequence[RowKey],
) -> None:
    """Failed rows are upserted with their reason; rows that synced leave the failed table."""
    if failures:
        payload = [{"key": list(f.key), "field": f.field, "error": f.error} for f in failures]
        await conn.execute(QUERIES["record_failures"], mirror, json.dumps(payload))
    if succeeded:
        await conn.execute(QUERIES["clear_failures"], mirror, json.dumps([list(k) for k in succeeded]))
