"""LISTEN on a connection of its own: notifications only wake the worker, the table is the truth.

The connection can die silently (a killed backend, a restarted server, a dropped NAT entry), so it
is pinged whenever a wait ends without a notification and re-opened when the ping fails; the caller
drains after every wake-up anyway, which is the catch-up.
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import structlog

CHANNEL = "vecmirror_changes_v1"
RECONNECT_DELAY = 2.0  # seconds between attempts to re-open a lost LISTEN connection
CONNECTION_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)
log = structlog.get_logger(__name__)


class ChangeListener:
    def __init__(self, database_url: str) -> None:
        self._database_url = database_url
        self._connection: asyncpg.Connection | None = None
        self._wake = asyncio.Event()

    async def start(self) -> None:
        connection = await asyncpg.connect(
            self._database_url, server_settings={"application_name": "vecmirror-listener"}
        )
        await connection.add_listener(CHANNEL, self._on_notification)
        # A lost connection wakes the worker at once, so it reconnects and catches up now.
        connection.add_termination_listener(self._on_notification)
        self._connection = connection
        self._wake.set()  # the first wait returns at once: catch up on what queued while we were away

    async def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close(timeout=2)
            self._connection = None

    async def wait(self, timeout: float) -> bool:
        """True when notified; False after `timeout` seconds (then the connection is checked).
        Without a connection (Postgres unreachable), tries to open one first and waits a little
        when that fails, so the worker's loop neither spins nor sleeps through the recovery."""
        if self._connection is None and not await self._reconnect():
            await asyncio.sleep(min(timeout, RECONNECT_DELAY))
            return False
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            await self._ensure_alive()
            return False
        self._wake.clear()
        if self._connection is None or self._connection.is_closed():
            await self._ensure_alive()
        return True

    def _on_notification(self, *_: object) -> None:
        self._wake.set()

    async def _ensure_alive(self) -> None:
        if self._connection is not None and await _answers(self._connection):
            return
        log.warning("listener_reconnecting")
        await self.close()
        await self._reconnect()

    async def _reconnect(self) -> bool:
        try:
            await self.start()
        except CONNECTION_ERRORS as exc:
            log.warning("listener_reconnect_failed", error=str(exc), error_type=type(exc).__name__)
            return False
        log.info("listener_connected")
        return True


async def _answers(connection: asyncpg.Connection) -> bool:
    try:
        await connection.execute("SELECT 1", timeout=5)
    except CONNECTION_ERRORS:
        return False
    return True
