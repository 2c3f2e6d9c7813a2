"""The worker loop: wait for a notification, a poll timeout or a stop, then drain every mirror.

Server trouble (Postgres or Redis down, connections reset, timeouts) never fails a row: the batch
rolls back, its changes stay queued, and the loop retries with a growing backoff until the servers
answer again. A Redis that forgot a mirror is resynced; every `check_interval` the counts of each
table and index are compared, and a drift found while nothing is queued is repaired.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import structlog
from redis.exceptions import RedisClusterException, RedisError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential, wait_random

from vecmirror.errors import MirrorError, RedisForgotError, VecmirrorError
from vecmirror.index.manage import index_info
from vecmirror.index.rollout import IndexPlan, settle, switch
from vecmirror.ops.metrics import Metrics
from vecmirror.ops.verify import CountCheck, Verifier, count_check
from vecmirror.run.faults import as_mirror_error, classify
from vecmirror.run.pauses import MirrorPauses
from vecmirror.run.sync import BatchStats, MirrorSync
from vecmirror.sink.versioned import SupersededError, marker_key
from vecmirror.source import Connection, changes, pooled
from vecmirror.source.backfill import backfill_pending, queue_all_rows
from vecmirror.source.listener import ChangeListener

log = structlog.get_logger(__name__)
# Anything a server or its driver raises. The loop decides whose fault it is (vecmirror.run.faults);
# serve.py's samplers and health checks catch these as "a server could not be read".
TRANSIENT_ERRORS = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    RedisError,
    RedisClusterException,  # not a RedisError: a cluster client's own refusals (classify says whose)
)
BatchCallback = Callable[[BatchStats], None]
_T = TypeVar("_T")
MAX_ERROR_BACKOFF = 60.0  # seconds: a long outage is retried at least once a minute
STUCK_CHECKS_PER_TIMEOUT = 0.25  # of the claim timeout, between two looks for stuck claims
UNCLAIMABLE_RECHECK = 0.1  # seconds: `run --once` waits this long for a change it cannot claim yet
OPERATOR_PAUSE_RECHECK = 1.0  # seconds: a long drain looks this often for mirrors an operator paused


@dataclass
class DrainStats:
    batches: int = 0
    changes: int = 0
    failed: int = 0
    by_mirror: dict[str, int] = field(default_factory=dict)


class MirrorsPausedError(VecmirrorError):
    """`run --once` drained every other mirror; these could not sync."""

    def __init__(self, errors: Sequence[MirrorError]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(f"{e} (paused; `vecmirror status` shows it)" for e in errors))


class Worker:
    def __init__(
        self,
        pool: asyncpg.Pool,
        syncs: Sequence[MirrorSync],
        *,
        backfill_page: int,
        on_batch: BatchCallback | None = None,
        error_backoff: float = 2.0,
        metrics: Metrics | None = None,
        claim_timeout: float = 60.0,
        batches_in_flight: int = 1,
    ) -> None:
        self._pool = pool
        self._batches_in_flight = batches_in_flight
        self._resync_lock = asyncio.Lock()
        self._claim_timeout = claim_timeout
        self._next_stuck_check = 0.0  # the first drain looks at once
        self._syncs = list(syncs)
        self._backfill_page = backfill_page
        self._on_batch = on_batch
        self._error_backoff = error_backoff
        self.last_checks: dict[str, CountCheck] = {}
        self.metrics = metrics if metrics is not None else Metrics()
        self.metrics.declare_mirrors(sync.name for sync in self._syncs)
        self.pauses = MirrorPauses(self.metrics, error_backoff)
        # Mirrors an operator paused (`vecmirror pause`, mirrors_v1.operator_paused_at): left alone.
        self.operator_paused: set[str] = set()
        self._next_operator_check = 0.0

    async def refresh_operator_pauses(self, *, force: bool = True) -> None:
        """Reads which mirrors an operator paused: on every wake-up and drain, and every
        OPERATOR_PAUSE_RECHECK seconds during a long drain (`pause` also wakes the workers)."""
        if not force and time.monotonic() < self._next_operator_check:
            return
        async with pooled(self._pool) as conn:
            paused = await changes.operator_paused_mirrors(conn)
        self._next_operator_check = time.monotonic() + OPERATOR_PAUSE_RECHECK
        for sync in self._syncs:
            now, before = sync.name in paused, sync.name in self.operator_paused
            if now and not before:
                log.warning("mirror_operator_paused", mirror=sync.name)
            elif before and not now:
                log.info("mirror_operator_resumed", mirror=sync.name)
            self.metrics.mirror_operator_paused.labels(sync.name).set(1 if now else 0)
        self.operator_paused = {sync.name for sync in self._syncs if sync.name in paused}

    async def prepare(self) -> None:
        """Before draining, on every wake-up of `run`, and after server trouble (cheap: a few
        reads a mirror): resync every mirror Redis forgot (restarted empty, flushed, its index
        dropped), then queue the rows of new mirrors. A mirror an operator paused is left alone."""
        await self.refresh_operator_pauses()
        for sync in self._syncs:
            await self._for_mirror(sync, sync.take_config)
            await self._for_mirror(sync, sync.resync_if_forgotten)
            await self._for_mirror(sync, sync.settle)
        await self.backfill_new_mirrors()
        await self.finish_rebuilds()

    async def finish_rebuilds(self) -> bool:
        """Switches each mirror whose new index generation is filled (index/rollout.py); True
        while one is still filling."""
        restarted = False
        for sync in self._syncs:
            if sync.rebuild_into is not None:
                restarted |= bool(await self._for_mirror(sync, functools.partial(self._finish_rebuild, sync)))
        if restarted:
            await self.backfill_new_mirrors()  # the walk over every row, for the generation built again
        return any(sync.rebuild_into is not None for sync in self._unpaused())

    async def _finish_rebuild(self, sync: MirrorSync, conn: Connection) -> bool:
        """Filled: the walk over every row is done, nothing of the mirror is queued, and Redis has
        indexed every document (FT.CREATE scans the keys in the background). True when the new
        generation was lost and is built again."""
        target = sync.rebuild_into
        assert target is not None
        if await backfill_pending(conn, sync.name) or await changes.pending(conn, sync.name):
            return False
        info = await index_info(sync.sink.client, target)
        if info is None:  # dropped by hand, or Redis was emptied: the rollout starts again
            log.warning("index_rebuild_restarted", mirror=sync.name, index=target)
            sync.index_prepared = False
            await sync.take_config(conn)
            return True
        if int(info.get("indexing", 0)) or float(info.get("percent_indexed", 1)) < 1:
            return False
        await switch(sync.sink.client, sync.sink.index_name, target)
        sync.follow(IndexPlan(sync.mirror))
        await settle(sync.sink.client, marker_key(sync.name), sync.mirror, sync.sink.versioned.generation)
        return False

    async def backfill_new_mirrors(self) -> None:
        """Rows that existed before `migrate` are queued on the first run."""
        for sync in self._syncs:
            await self._for_mirror(sync, functools.partial(self._backfill_if_pending, sync))

    async def _backfill_if_pending(self, sync: MirrorSync, conn: Connection) -> None:
        await sync.follow_documents(conn)  # on every wake-up: a view redefined starts a new walk
        if await backfill_pending(conn, sync.name):
            progress = functools.partial(self.metrics.backfill_queued, sync.name)
            queued = await queue_all_rows(conn, sync.table, self._backfill_page, progress)
            log.info("backfill_queued", mirror=sync.name, rows=queued)

    async def _for_mirror(
        self,
        sync: MirrorSync,
        step: Callable[[Connection], Awaitable[_T]],
        *,
        proves_health: bool = False,
    ) -> _T | None:
        """Runs one mirror's step, skipped while the mirror is paused and its next attempt not due.
        Trouble of the mirror's own pauses it (None); server trouble is raised for the caller to
        retry. A step that `proves_health` (a batch) and succeeds resumes a paused mirror. Nothing
        is done for a mirror an operator paused (its queue is left alone until `resume`)."""
        if sync.name in self.operator_paused or not self.pauses.take_attempt(sync.name):
            return None
        try:
            return await self._attempt(sync, step, proves_health=proves_health)
        finally:
            self.pauses.end_attempt(sync.name)

    async def _attempt(
        self, sync: MirrorSync, step: Callable[[Connection], Awaitable[_T]], *, proves_health: bool
    ) -> _T | None:
        try:
            result = await self._with_fresh_table(sync, step)
        except Exception as exc:
            fault = classify(exc)
            if fault == "server":
                raise
            if fault is None:  # a bug, met by one mirror: it pauses, the others go on
                log.exception("mirror_step_crashed", mirror=sync.name)
            async with pooled(self._pool) as conn:
                await self.pauses.pause(conn, as_mirror_error(sync.name, exc), sync.mirror.table)
            return None
        if proves_health:
            async with pooled(self._pool) as conn:
                resumed = await self.pauses.healthy(conn, sync.name)
            if resumed:
                await self.backfill_new_mirrors()  # a mirror paused since start-up has its first walk now
        return result

    async def _with_fresh_table(self, sync: MirrorSync, step: Callable[[Connection], Awaitable[_T]]) -> _T:
        """A table changed under a running worker (a key column's type, a column back) breaks the
        statements built from it: on a mirror's trouble the table is checked again and the step
        tried once more before the mirror pauses. A paused mirror's table is checked first."""
        fresh = sync.name in self.pauses or not sync.inspected
        try:
            async with pooled(self._pool) as conn:
                if fresh:
                    await sync.reinspect(conn)
                    await sync.take_config(conn)  # a superseded worker reads and embeds nothing
                return await step(conn)
        except Exception as exc:
            if fresh or classify(exc) != "mirror" or isinstance(exc, SupersededError):
                raise
        async with pooled(self._pool) as conn:
            await sync.reinspect(conn)
            return await step(conn)

    async def drain(self, stop: asyncio.Event | None = None) -> DrainStats:
        """Syncs batches until no mirror has a claimable change, `batches_in_flight` at a time:
        while one batch waits for Redis or the model, another claims, reads and renders its rows
        (each on its own connection; claims never share a key, as between workers)."""
        stop = stop or asyncio.Event()
        totals = DrainStats()
        await self._retrying(stop, self.refresh_operator_pauses)
        if time.monotonic() >= self._next_stuck_check:
            await self._retrying(stop, self._end_stuck_claims)
        async with asyncio.TaskGroup() as lanes:  # one failing lane cancels the others
            for lane in range(self._batches_in_flight):
                lanes.create_task(self._drain_lane(stop, totals), name=f"vecmirror-lane-{lane}")
        return totals

    async def _drain_lane(self, stop: asyncio.Event, totals: DrainStats) -> None:
        """Batches round-robin over mirrors until none has a claimable change. Each batch is
        retried on its own through server trouble, so the backoff starts small again after every
        batch that got through."""
        while not stop.is_set():
            await self._retrying(stop, functools.partial(self.refresh_operator_pauses, force=False))
            progressed = False
            for sync in self._syncs:
                stats = await self._retrying(stop, functools.partial(self._sync_one, sync))
                if stats is not None:
                    progressed = True
                    self._count(totals, stats)
            if not progressed:
                return

    async def _end_stuck_claims(self) -> None:
        """At most a few times per claim timeout: a session is only ended once stuck that long, so
        a check per drain (one per notification under a trickle of writes) would find nothing new."""
        async with pooled(self._pool) as conn:
            ended = await changes.end_stuck_claims(conn, self._claim_timeout)
        self._next_stuck_check = time.monotonic() + self._claim_timeout * STUCK_CHECKS_PER_TIMEOUT
        if ended:
            log.warning("stuck_claims_ended", sessions=ended, claim_timeout=self._claim_timeout)

    async def _sync_one(self, sync: MirrorSync) -> BatchStats | None:
        stats = await self._for_mirror(sync, functools.partial(self._sync_batch, sync), proves_health=True)
        if stats is not None and stats.resynced:
            await self.backfill_new_mirrors()
        if stats is not None:
            self._report(stats)
        return stats

    async def _sync_batch(self, sync: MirrorSync, conn: Connection) -> BatchStats | None:
        try:
            return await sync.sync_batch(conn)
        except RedisForgotError as exc:
            # On a connection of its own: the batch's was discarded with its claim. One lane at a
            # time: another lane's batch may fail alike, and resyncs must not interleave (a second
            # one only queues the table again).
            async with self._resync_lock, pooled(self._pool) as own:
                await sync.resync(own, reason=str(exc))
            return BatchStats(sync.name, resynced=True)

    def _report(self, stats: BatchStats) -> None:
        log.info(
            "batch_synced",
            mirror=stats.mirror,
            changes=stats.changes,
            rows=stats.upserted + stats.deleted,
            duration_seconds=round(stats.duration_seconds, 4),
            upserted=stats.upserted,
            deleted=stats.deleted,
            embedded=stats.embedded,
            embedding_skipped=stats.embedding_skipped,
            failed=stats.failed,
            refused_stale=stats.refused_stale,
            truncated=stats.truncated,
        )
        self.metrics.batch_synced(stats)
        if self._on_batch is not None:
            self._on_batch(stats)

    @staticmethod
    def _count(totals: DrainStats, stats: BatchStats) -> None:
        totals.batches += 1
        totals.changes += stats.changes
        totals.failed += stats.failed
        totals.by_mirror[stats.mirror] = totals.by_mirror.get(stats.mirror, 0) + stats.changes

    async def run_once(self) -> DrainStats:
        """Drains the queue, waiting for failed rows' delayed attempts, and returns. Server
        trouble is retried like `run` does, so a job that must finish does."""
        never = asyncio.Event()
        await self._retrying(never, self.prepare)
        totals = DrainStats()
        while True:
            drained = await self.drain()
            totals.batches += drained.batches
            totals.changes += drained.changes
            totals.failed += drained.failed
            for mirror, count in drained.by_mirror.items():
                totals.by_mirror[mirror] = totals.by_mirror.get(mirror, 0) + count
            delay = await self._retrying(never, self._seconds_to_next_retry)
            if delay is None:
                if not await self._retrying(never, self._anything_queued):
                    if await self._retrying(never, self.finish_rebuilds):
                        await asyncio.sleep(UNCLAIMABLE_RECHECK)  # Redis still indexing the new one
                        continue
                    if self.pauses.errors():
                        raise MirrorsPausedError(self.pauses.errors())
                    if self.operator_paused:  # their queues wait for `vecmirror resume`
                        log.warning("operator_paused_mirrors_left", mirrors=sorted(self.operator_paused))
                    return totals
                # Queued yet not claimable: another worker's key, or an attempt that came due
                # between this batch's start (its now()) and its claim. Look again shortly.
                delay = UNCLAIMABLE_RECHECK
            await asyncio.sleep(delay)

    def _unpaused(self) -> list[MirrorSync]:
        """`run --once` leaves a paused mirror alone to the end: it reports it instead of waiting.
        A mirror an operator paused is left alone too (its changes wait for `resume`)."""
        return [
            sync
            for sync in self._syncs
            if sync.name not in self.pauses and sync.name not in self.operator_paused
        ]

    async def _anything_queued(self) -> bool:
        async with pooled(self._pool) as conn:
            counts = [await changes.pending(conn, sync.name) for sync in self._unpaused()]
        return any(counts)

    async def check_mirrors(self) -> list[CountCheck]:
        """The cheap check: a forgotten mirror is resynced; counts that disagree while nothing is
        queued start a full verify, whose drifted keys are queued (repaired by the next drain)."""
        checks = []
        for sync in self._unpaused():
            check = await self._for_mirror(sync, functools.partial(self._check_mirror, sync))
            if check is not None:
                checks.append(check)
        return checks

    async def _check_mirror(self, sync: MirrorSync, conn: Connection) -> CountCheck | None:
        # A table that became a partition (ATTACH), gained inheritance, lost its unique key or its
        # capture since start-up pauses its mirror, named; one whose mirrored columns changed type
        # or number without its rows changing has every row read again (MirrorSync.reinspect).
        await sync.reinspect(conn)
        if await sync.resync_if_forgotten(conn):
            await self.backfill_new_mirrors()
        try:
            check = await count_check(conn, sync.table, sync.sink)
        except RedisForgotError as exc:  # the index itself is gone
            await sync.resync(conn, reason=str(exc))
            await self.backfill_new_mirrors()
            return None
        log.info("mirror_checked", **vars(check), drifted=check.drifted)
        self.metrics.mirror_checked(check)
        if check.drifted:
            await self._repair(conn, sync)
        self.last_checks[sync.name] = check
        return check

    async def _repair(self, conn: Any, sync: MirrorSync) -> None:
        verifier = Verifier(
            sync.mirror, sync.table, sync.sink.client, max_text_length=sync.options.max_text_length
        )
        drift = await verifier.verify(conn)
        queued = await verifier.repair(conn, drift)
        log.warning(
            "drift_repaired",
            mirror=sync.name,
            missing=len(drift.missing),
            extra=len(drift.extra),
            stale=len(drift.stale),
            queued=queued,
        )

    async def _seconds_to_next_retry(self) -> float | None:
        async with pooled(self._pool) as conn:
            times = [await changes.next_retry_at(conn, sync.name) for sync in self._unpaused()]
        pending = [t for t in times if t is not None]
        if not pending:
            return None
        return max(0.0, (min(pending) - datetime.now(UTC)).total_seconds()) + 0.05

    async def run_forever(
        self,
        listener: ChangeListener,
        stop: asyncio.Event,
        poll_interval: float,
        check_interval: float = 300.0,
    ) -> None:
        """LISTEN first, then catch up, then drain on every wake-up until `stop` is set."""
        await listener.start()
        next_check = time.monotonic() + check_interval
        try:
            while not stop.is_set():
                # Every wake-up, not only after server trouble: an idle worker notices a Redis
                # restarted empty, or an index dropped by hand, within a poll interval.
                await self._retrying(stop, self.prepare)
                await self.drain(stop)
                if time.monotonic() >= next_check and not stop.is_set():
                    await self._retrying(stop, self.check_mirrors)
                    next_check = time.monotonic() + check_interval
                wait = min(poll_interval, max(0.0, next_check - time.monotonic()))
                retry = await self._retrying(stop, self._seconds_to_next_retry)
                paused = self.pauses.seconds_to_next_attempt()
                wait = min(w for w in (wait, retry, paused) if w is not None)
                await _wait_for_wake(listener, stop, wait)
        finally:
            await listener.close()

    async def _retrying(self, stop: asyncio.Event, step: Callable[[], Awaitable[_T]]) -> _T | None:
        """Runs `step` until it succeeds or `stop` is set, backing off on server trouble (never a
        row's attempt: the batch rolled back and its changes are still queued)."""
        retrying = AsyncRetrying(
            # Server trouble; and a mirror's trouble met outside a mirror's own step (the queue's
            # tables themselves), which no single mirror can be paused for.
            retry=retry_if_exception(lambda error: classify(error) is not None),
            wait=wait_exponential(multiplier=self._error_backoff, max=MAX_ERROR_BACKOFF)
            + wait_random(0, self._error_backoff),
            sleep=lambda seconds: _sleep_unless_stopped(stop, seconds),
            before_sleep=self._on_server_trouble,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if stop.is_set():
                    return None
                return await step()
        return None

    def _on_server_trouble(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.error(
            "server_unavailable" if error is None or classify(error) == "server" else "worker_step_failed",
            error=str(error),
            error_type=type(error).__name__,
            attempt=state.attempt_number,
            retry_in=round(state.upcoming_sleep, 2),
        )
        # redis-py wraps its socket errors in RedisError; the others come from asyncpg or its sockets.
        self.metrics.server_error("redis" if isinstance(error, RedisError) else "postgres")


async def _wait_for_wake(listener: ChangeListener, stop: asyncio.Event, timeout: float) -> None:
    stop_task = asyncio.create_task(stop.wait(), name="vecmirror-stop-wait")
    wake_task = asyncio.create_task(listener.wait(timeout), name="vecmirror-listen-wait")
    try:
        await asyncio.wait({stop_task, wake_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (stop_task, wake_task):
            task.cancel()
        await asyncio.gather(stop_task, wake_task, return_exceptions=True)


async def _sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
