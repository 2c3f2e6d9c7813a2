"""Mirrors paused on trouble of their own: which, why, since when, and when to try again.

A paused mirror is left alone by the drain until its next attempt is due (the wait doubles, with
jitter, up to a minute); the other mirrors keep syncing. Its error is logged once per attempt
(`mirror_paused`), exported (`vecmirror_mirror_paused`) and recorded in `vecmirror.mirrors_v1`
for `vecmirror status`; the first batch that syncs again clears all three (`mirror_resumed`).
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass

import structlog

from vecmirror.errors import MirrorError
from vecmirror.ops.metrics import Metrics
from vecmirror.source import Connection, changes

log = structlog.get_logger(__name__)
MAX_PAUSE_BACKOFF = 60.0  # seconds: a paused mirror is tried again at least once a minute


@dataclass
class Pause:
    error: MirrorError
    attempts: int
    retry_at: float  # time.monotonic()


class MirrorPauses:
    def __init__(self, metrics: Metrics, backoff: float) -> None:
        self._metrics = metrics
        self._backoff = backoff
        self._pauses: dict[str, Pause] = {}
        self._confirmed: set[str] = set()  # mirrors this worker has seen sync (their error cleared)

    def __contains__(self, mirror: object) -> bool:
        return mirror in self._pauses

    def take_attempt(self, mirror: str) -> bool:
        """True unless the mirror is paused and its next attempt is not due yet, or another lane
        is making it: one attempt per due time, however many lanes drain."""
        pause = self._pauses.get(mirror)
        if pause is None:
            return True
        if time.monotonic() < pause.retry_at:
            return False
        pause.retry_at = math.inf  # taken: pause() sets the next one, healthy() ends the pause
        return True

    def end_attempt(self, mirror: str) -> None:
        """An attempt that neither paused nor resumed the mirror (server trouble, or a step that
        proves nothing) leaves it due again."""
        pause = self._pauses.get(mirror)
        if pause is not None and pause.retry_at == math.inf:
            pause.retry_at = time.monotonic()

    def seconds_to_next_attempt(self) -> float | None:
        if not self._pauses:
            return None
        soonest = min(p.retry_at for p in self._pauses.values())
        return max(0.0, soonest - time.monotonic())

    def errors(self) -> list[MirrorError]:
        return [p.error for p in self._pauses.values()]

    async def pause(self, conn: Connection, error: MirrorError, table: str) -> None:
        self._confirmed.discard(error.mirror)
        previous = self._pauses.get(error.mirror)
        attempts = 1 if previous is None else previous.attempts + 1
        wait = min(self._backoff * 2 ** (attempts - 1), MAX_PAUSE_BACKOFF) + random.uniform(0, self._backoff)
        self._pauses[error.mirror] = Pause(error, attempts, time.monotonic() + wait)
        log.log(
            logging.ERROR if error.of_the_mirror else logging.WARNING,
            "mirror_paused",
            mirror=error.mirror,
            table=table,
            error=error.problem,
            attempt=attempts,
            retry_in=round(wait, 2),
        )
        self._metrics.mirror_paused.labels(error.mirror).set(1)
        self._metrics.mirror_errors.labels(error.mirror).inc()
        if error.of_the_mirror:
            await changes.record_mirror_error(conn, error.mirror, error.problem)

    async def healthy(self, conn: Connection, mirror: str) -> bool:
        """After a batch went through; True when that resumed a paused mirror. The first one of
        each mirror also clears an error left by another worker (or by this one before a restart)."""
        pause = self._pauses.pop(mirror, None)
        if pause is None and mirror in self._confirmed:
            return False
        await changes.record_mirror_error(conn, mirror, None)
        self._confirmed.add(mirror)
        if pause is None:
            return False
        self._metrics.mirror_paused.labels(mirror).set(0)
        log.info("mirror_resumed", mirror=mirror, after_attempts=pause.attempts)
        return True
