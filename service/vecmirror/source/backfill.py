"""Queues every existing row of a mirror's table as a change, page by page in key order.

Each page is queued and its cursor saved in one transaction holding the mirror's registry row, so
a crash resumes exactly after the last page, and two workers backfilling at once take turns
instead of queueing rows twice.
"""

from __future__ import annotations

from collections.abc import Callable

from vecmirror.errors import NotMigratedError
from vecmirror.source import Connection
from vecmirror.source.sql import QUERIES
from vecmirror.source.tables import SourceTable

DONE = "done"


async def backfill_pending(conn: Connection, mirror: str) -> bool:
    state = await conn.fetchrow(QUERIES["backfill_state"], mirror)
    if state is None:
        raise NotMigratedError(f"mirror {mirror!r} is not installed: run `vecmirror migrate` first")
    return bool(state["backfill_state"] != DONE)


async def start_backfill(conn: Connection, mirror: str) -> bool:
    """True when a new walk starts; False when an interrupted one will resume where it stopped."""
    return await conn.fetchval(QUERIES["start_backfill"], mirror) is not None


async def count_rows(conn: Connection, table: SourceTable) -> int:
    total: int = await conn.fetchval(table.statements.count_rows())
    return total


async def queue_all_rows(
    conn: Connection,
    table: SourceTable,
    page_size: int,
    on_page: Callable[[int], object] = lambda _: None,
) -> int:
    """Queues the rows not queued yet by this backfill; returns how many this call queued."""
    queued = 0
    while True:
        page = await _queue_next_page(conn, table, page_size)
        if page is None:
            return queued
        queued += page
        on_page(page)


async def _queue_next_page(conn: Connection, table: SourceTable, page_size: int) -> int | None:
    async with conn.transaction():
        state = await conn.fetchrow(QUERIES["backfill_state"], table.mirror)
        if state is None or state["backfill_state"] == DONE:
            return None
        cursor = state["backfill_cursor"]
        statement = table.statements.backfill_page(after_cursor=cursor is not None)
        result = await conn.fetchrow(statement, table.mirror, page_size, *(cursor or []))
        assert result is not None
        if result["queued"] < page_size:
            await conn.execute(QUERIES["save_backfill"], table.mirror, DONE, None)
        else:
            await conn.execute(QUERIES["save_backfill"], table.mirror, "running", result["last_key"])
        return int(result["queued"])
