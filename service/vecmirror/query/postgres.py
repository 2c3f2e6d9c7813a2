"""The Postgres pool `wait_synced` reads: searching needs only Redis, so it is opened on first use."""

from __future__ import annotations

import asyncio

import asyncpg

from vecmirror.settings import Settings
from vecmirror.source.session import SESSION_SETTINGS

# Not "vecmirror": peers end stuck sessions of that name (queries.sql, end_stuck_claims).
APPLICATION_NAME = "vecmirror_wait_synced"
CONNECT_TIMEOUT = 10.0  # seconds; asyncpg's own default (60) would outlast most waits
POOL_SIZE = 4  # a wait holds a connection only for one poll's query, so a few serve many waits


async def open_pool(
    settings: Settings, *, max_size: int = POOL_SIZE, connect_timeout: float = CONNECT_TIMEOUT
) -> asyncpg.Pool:
    """min_size 0: no connection is kept up in the background, whose reconnection attempts, with
    Postgres down, asyncpg logs with a traceback; each wait connects as it needs."""
    return await asyncpg.create_pool(
        settings.require_database_url(),
        min_size=0,
        max_size=max_size,
        timeout=connect_timeout,
        server_settings={**SESSION_SETTINGS, "application_name": APPLICATION_NAME},
    )


class LazyPool:
    """A pool opened by the first `get()`, from the settings' VECMIRROR_DATABASE_URL: a MirrorSearch
    that only searches never connects to Postgres, nor needs its URL."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()  # concurrent first waits open one pool

    async def get(self) -> asyncpg.Pool:
        async with self._opening:
            if self._pool is None:
                self._pool = await open_pool(self._settings)
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
