"""The change queue: claim a batch, acknowledge it, re-queue keys, record failed rows.

A claim lives in a transaction that stays open until the batch is written to Redis: the row and
advisory locks it holds are what keep a key out of two workers' hands, and a worker that dies
simply lets its transaction roll back, so its changes become claimable again.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from vecmirror.source import Connection
from vecmirror.source.sql import QUERIES

RowKey = tuple[str, ...]


@dataclass(frozen=True)
class ClaimedBatch:
    change_ids: list[int]
    keys: list[RowKey]  # distinct, in the order their first change was queued
    failing: frozenset[RowKey] = frozenset()  # keys with a failed_v1 row, cleared if they sync now
    truncate_queued: bool = False  # nothing claimed: a TRUNCATE marker must be handled first


@dataclass(frozen=True)
class RowFailure:
    key: RowKey
    field: str
    error: str


async def claim(conn: Connection, mirror: str, limit: int, *, after_truncate: bool = False) -> ClaimedBatch:
    """Must run inside a transaction; the claim ends with it. Claims nothing while a TRUNCATE
    marker is queued, unless `after_truncate` (its handling was just tried: a peer holds it)."""
    if await conn.fetchval(QUERIES["lock_mirror_shared"], mirror) and not after_truncate:
        return ClaimedBatch([], [], truncate_queued=True)
    rows = await conn.fetch(QUERIES["claim_changes"], mirror, limit)
    keys = dict.fromkeys(tuple(r["row_key"]) for r in rows)
    failing = frozenset(tuple(r["row_key"]) for r in rows if r["failing"])
    return ClaimedBatch([r["id"] for r in rows], list(keys), failing)


async def claim_truncate(conn: Connection, mirror: str) -> int | None:
    """The id of a TRUNCATE marker, with every in-flight batch of the mirror finished."""
    marker: int | None = await conn.fetchval(QUERIES["claim_truncate"], mirror)
    if marker is not None:
        await conn.execute(QUERIES["lock_mirror_exclusive"], mirror)
    return marker


async def acknowledge(
    conn: Connection, mirror: str, change_ids: Sequence[int], timed: Collection[int] = ()
) -> list[float]:
    """Deletes the changes; returns the seconds since each of `timed` was queued (freshness)."""
    rows = await conn.fetch(QUERIES["delete_changes"], mirror, list(change_ids), list(timed))
    return [float(r["age"]) for r in rows]


async def enqueue(conn: Connection, mirror: str, keys: Iterable[RowKey]) -> None:
    payload = json.dumps([list(k) for k in keys])
    await conn.execute(QUERIES["enqueue_keys"], mirror, payload)


async def enqueue_failed(conn: Connection, mirror: str) -> None:
    await conn.execute(QUERIES["enqueue_failed_keys"], mirror)


async def queue_resync(conn: Connection, mirror: str) -> None:
    await conn.execute(QUERIES["queue_resync"], mirror)


async def failed_rows(conn: Connection, mirror: str) -> int:
    count: int = await conn.fetchval(QUERIES["failed_rows"], mirror)
    return count


async def pending(conn: Connection, mirror: str) -> int:
    count: int = await conn.fetchval(QUERIES["pending_changes"], mirror)
    return count


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failing row is tried before it is dead-lettered, and how long to wait first."""

    max_attempts: int = 5
    first_backoff: float = 5.0  # seconds; doubles with each attempt, at most an hour


async def record_outcome(
    conn: Connection,
    mirror: str,
    failures: Sequence[RowFailure],
    succeeded: Sequence[RowKey],
    retry: RetryPolicy,
) -> None:
    """Failed rows count an attempt and are queued again or dead-lettered; rows that synced leave
    the failed table."""
    if failures:
        payload = [{"key": list(f.key), "field": f.field, "error": f.error} for f in failures]
        await conn.execute(
            QUERIES["record_failures"], mirror, json.dumps(payload), retry.max_attempts, retry.first_backoff
        )
    if succeeded:
        await conn.execute(QUERIES["clear_failures"], mirror, json.dumps([list(k) for k in succeeded]))


async def forget_deleted_versions(
    conn: Connection, mirror: str, deleted: Sequence[tuple[RowKey, int]], *, related: bool = False
) -> None:
    """`related`: the mirror reads related tables, whose fan-outs version documents too (0007)."""
    if deleted:
        payload = json.dumps([{"key": list(k), "version": v} for k, v in deleted])
        await conn.execute(QUERIES["forget_deleted_versions"], mirror, payload)
        if related:
            await conn.execute(QUERIES["forget_deleted_related_versions"], mirror, payload)


async def next_retry_at(conn: Connection, mirror: str) -> datetime | None:
    when: datetime | None = await conn.fetchval(QUERIES["next_retry_at"], mirror)
    return when


async def end_stuck_claims(conn: Connection, claim_timeout: float) -> int:
    """Ends the sessions of workers stuck receiving a result for longer than the claim timeout."""
    ended: int = await conn.fetchval(QUERIES["end_stuck_claims"], claim_timeout)
    return ended


async def record_mirror_error(conn: Connection, mirror: str, error: str | None) -> None:
    """Records (or, with None, clears) the trouble a mirror is paused on, for `status`."""
    if error is None:
        await conn.execute(QUERIES["clear_mirror_error"], mirror)
    else:
        await conn.execute(QUERIES["record_mirror_error"], mirror, error)


async def is_first_sync(conn: Connection, mirror: str) -> bool:
    return bool(await conn.fetchval(QUERIES["mirror_first_sync"], mirror))


async def requeue_all_rows(conn: Connection, mirror: str) -> None:
    await conn.execute(QUERIES["requeue_all_rows"], mirror)


async def pause_mirror(conn: Connection, mirror: str, reason: str | None) -> datetime | None:
    """An operator's pause (0008): since when the mirror is paused; None when it is not installed."""
    row = await conn.fetchrow(QUERIES["pause_mirror"], mirror, reason)
    return None if row is None else row["operator_paused_at"]


async def resume_mirror(conn: Connection, mirror: str) -> bool | None:
    """Ends an operator's pause: whether the mirror was paused; None when it is not installed."""
    row = await conn.fetchrow(QUERIES["resume_mirror"], mirror)
    return None if row is None else bool(row["was_paused"])


async def operator_paused_mirrors(conn: Connection) -> set[str]:
    """The mirrors an operator paused: every worker leaves their queue alone."""
    return {r["name"] for r in await conn.fetch(QUERIES["operator_paused_mirrors"])}
