"""The worker loop: wait for a notification, a poll timeout or a stop, then drain every mirror."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import asyncpg
import structlog
from redis.exceptions import RedisError

from vecmirror.source.backfill import backfill_pending, queue_all_rows
from vecmirror.source.listener import ChangeListener
from vecmirror.sync import BatchStats, MirrorSync

log = structlog.get_logger(__name__)
# Server trouble, not a bug: the batch rolled back and its changes are still queued.
TRANSIENT_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, RedisError)
BatchCallback = Callable[[BatchStats], None]


@dataclass
class DrainStats:
    batches: int = 0
    changes: int = 0
    failed: int = 0
    by_mirror: dict[str, int] = field(default_factory=dict)


class Worker:
    def __init__(
        self,
        pool: asyncpg.Pool,
        syncs: Sequence[MirrorSync],
        *,
        backfill_page: int,
        on_batch: BatchCallback | None = None,
    ) -> None:
        self._pool = pool
        self._syncs = list(syncs)
        self._backfill_page = backfill_page
        self._on_batch = on_batch

    async def backfill_new_mirrors(self) -> None:
        """Rows that existed before `migrate` are queued on the first run."""
        async with self._pool.acquire() as conn:
            for sync in self._syncs:
                if await backfill_pending(conn, sync.name):
                    queued = await queue_all_rows(conn, sync.table, self._backfill_page)
                    log.info("backfill_queued", mirror=sync.name, rows=queued)

    async def drain(self, stop: asyncio.Event | None = None) -> DrainStats:
        """Syncs batches, round-robin over mirrors, until no mirror has a claimable change."""
        totals = DrainStats()
        while stop is None or not stop.is_set():
            progressed = False
            for sync in self._syncs:
                stats = await self._sync_one(sync)
                if stats is not None:
                    progressed = True
                    self._count(totals, stats)
            if not progressed:
                break
        return totals

    async def _sync_one(self, sync: MirrorSync) -> BatchStats | None:
        async with self._pool.acquire() as conn:
            stats = await sync.sync_batch(conn)
        if stats is not None:
            log.info(
                "batch_synced",
                mirror=stats.mirror,
                changes=stats.changes,
                upserted=stats.upserted,
                deleted=stats.deleted,
                embedded=stats.embedded,
                embedding_skipped=stats.embedding_skipped,
                failed=stats.failed,
                truncated=stats.truncated,
            )
            if self._on_batch is not None:
                self._on_batch(stats)
        return stats

    @staticmethod
    def _count(totals: DrainStats, stats: BatchStats) -> None:
        totals.batches += 1
        totals.changes += stats.changes
        totals.failed += stats.failed
        totals.by_mirror[stats.mirror] = totals.by_mirror.get(stats.mirror, 0) + stats.changes

    async def run_once(self) -> DrainStats:
        await self.backfill_new_mirrors()
        return await self.drain()

    async def run_forever(
        self, listener: ChangeListener, stop: asyncio.Event, poll_interval: float, error_backoff: float
    ) -> None:
        """LISTEN first, then catch up, then drain on every wake-up until `stop` is set."""
        await listener.start()
        try:
            await self.backfill_new_mirrors()
            while not stop.is_set():
                await self._drain_logging_errors(stop, error_backoff)
                await _wait_for_wake(listener, stop, poll_interval)
        finally:
            await listener.close()

    async def _drain_logging_errors(self, stop: asyncio.Event, error_backoff: float) -> None:
        try:
            await self.drain(stop)
        except TRANSIENT_ERRORS as exc:
            log.error("drain_failed", error=str(exc), error_type=type(exc).__name__)
            await _sleep_unless_stopped(stop, error_backoff)


async def _wait_for_wake(listener: ChangeListener, stop: asyncio.Event, poll_interval: float) -> None:
    stop_task = asyncio.create_task(stop.wait(), name="vecmirror-stop-wait")
    wake_task = asyncio.create_task(listener.wait(poll_interval), name="vecmirror-listen-wait")
    try:
        await asyncio.wait({stop_task, wake_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (stop_task, wake_task):
            task.cancel()
        await asyncio.gather(stop_task, wake_task, return_exceptions=True)


async def _sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
