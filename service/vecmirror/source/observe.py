"""What the queue says about a mirror, for /metrics and `vecmirror status` (read-only)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files

from vecmirror.source import Connection
from vecmirror.source.sql import parse_named_sql

OBSERVE_QUERIES = parse_named_sql(files("vecmirror.source.sql").joinpath("observe.sql").read_text())


@dataclass(frozen=True)
class QueueState:
    pending: int  # queued changes, delayed retries included
    oldest_age: float | None  # seconds the oldest claimable change has waited; None: nothing claimable
    dead_letters: int  # failed rows with no automatic attempt left
    failed_rows: int  # failed rows, still retried or dead-lettered
    backfill_state: str  # pending, running or done
    error: str | None = None  # why a worker paused the mirror (mirrors_v1.error); None: it syncs
    error_since: datetime | None = None
    # An operator's pause (`vecmirror pause`, migration 0008): no worker syncs the mirror meanwhile.
    operator_paused_at: datetime | None = None
    operator_pause_reason: str | None = None

    @property
    def backfill_running(self) -> bool:
        return self.backfill_state != "done"

    @property
    def paused(self) -> bool:
        return self.error is not None

    @property
    def operator_paused(self) -> bool:
        return self.operator_paused_at is not None


async def queue_state(conn: Connection, mirror: str) -> QueueState:
    row = await conn.fetchrow(OBSERVE_QUERIES["queue_state"], mirror)
    assert row is not None
    return QueueState(
        pending=row["pending"],
        oldest_age=row["oldest_age"],
        dead_letters=row["dead_letters"],
        failed_rows=row["failed_rows"],
        backfill_state=row["backfill_state"] or "not installed",
        error=row["error"],
        error_since=row["error_since"],
        operator_paused_at=row["operator_paused_at"],
        operator_pause_reason=row["operator_pause_reason"],
    )
