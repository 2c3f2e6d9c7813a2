"""`vecmirror failed list|retry|discard`: the rows that could not become indexed documents."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from vecmirror.source import Connection
from vecmirror.source.changes import RowKey
from vecmirror.source.sql import QUERIES


@dataclass(frozen=True)
class FailedRow:
    mirror: str
    key: RowKey
    field: str
    error: str
    failed_at: datetime
    attempts: int = 1
    retry_at: datetime | None = None  # None: dead-lettered, no automatic attempt left

    @property
    def state(self) -> str:
        return "dead" if self.retry_at is None else f"retrying at {self.retry_at:%Y-%m-%d %H:%M:%S}"


def _keys(keys: Sequence[RowKey] | None) -> str | None:
    return None if keys is None else json.dumps([list(k) for k in keys])


async def list_failed(
    conn: Connection, mirror: str | None, keys: Sequence[RowKey] | None = None
) -> list[FailedRow]:
    rows = await conn.fetch(QUERIES["list_failures"], mirror, _keys(keys))
    return [
        FailedRow(
            r["mirror"],
            tuple(r["row_key"]),
            r["field"],
            r["error"],
            r["failed_at"],
            r["attempts"],
            r["retry_at"],
        )
        for r in rows
    ]


async def retry_failed(conn: Connection, mirror: str | None, keys: Sequence[RowKey] | None = None) -> int:
    """Queues the rows again (after you fixed them); returns how many."""
    async with conn.transaction():
        count: int = await conn.fetchval(QUERIES["retry_failures"], mirror, _keys(keys))
        if count:
            await conn.execute(QUERIES["wake_workers"])
    return count


async def discard_failed(conn: Connection, mirror: str | None, keys: Sequence[RowKey] | None = None) -> int:
    """Forgets the rows and their queued retries; returns how many rows. A user's write queued since
    they failed still syncs (and records a new failure if the row is still wrong)."""
    async with conn.transaction():
        await conn.fetchval(QUERIES["lock_failures"], mirror, _keys(keys))
        count: int = await conn.fetchval(QUERIES["discard_failures"], mirror, _keys(keys))
    return count
