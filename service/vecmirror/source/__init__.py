"""Postgres side: migrations, change capture, claiming changes, loading rows, listening."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A plain connection or one borrowed from a pool: every source function accepts either.
# A string: asyncpg's classes are generic only in its stubs, not at run time.
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"


def discard(conn: Connection) -> None:
    """Ends the session at once, which rolls back whatever it had open. A pooled connection whose
    session already ended has been handed back to the pool, and asyncpg refuses to touch it."""
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()


@contextlib.asynccontextmanager
async def pooled(pool: asyncpg.Pool) -> AsyncIterator[PoolConnectionProxy[asyncpg.Record]]:
    """A pooled connection that is discarded, not reset, when an error leaves its block: after a
    killed backend the connection may still be waiting for the interrupted statement, and the
    pool's reset would then fail with an error that hides the real one."""
    async with pool.acquire() as conn:
        try:
            yield conn
        except BaseException:
            discard(conn)
            raise
