"""`vecmirror status [--json]`: where each mirror stands, read from Postgres and Redis (not from a
worker, so it answers with any number of workers, or none).

A mirror a worker paused on trouble of its own (a dropped column, a missing privilege, foreign keys
under its prefix) shows as `paused`, with the error and since when; status still answers for it,
so it reads the table's row count without the start-up checks of the table (None: unreadable).
A mirror an operator paused (`vecmirror pause`) shows as `paused`, by the operator, with the reason,
since when, and the changes waiting for `vecmirror resume`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import redis.asyncio as redis

from vecmirror.config import MirrorConfig
from vecmirror.sink.observe import IndexState, index_state, read_last_sync
from vecmirror.source import Connection
from vecmirror.source.migrate import capture_problem
from vecmirror.source.observe import QueueState, queue_state
from vecmirror.source.statements import TableStatements, qualified

COLUMNS = (
    "MIRROR",
    "STATE",
    "PENDING",
    "OLDEST",
    "DEAD",
    "ROWS",
    "DOCUMENTS",
    "INDEXED",
    "FAILURES",
    "BACKFILL",
)


@dataclass(frozen=True)
class MirrorStatus:
    mirror: str
    queue: QueueState
    table_rows: int | None  # None: the table could not be counted (table_error says why)
    index: IndexState
    last_sync: float | None  # Unix time a worker last wrote a batch; None: never (or Redis was emptied)
    table_error: str | None = None
    # Why its changes are not captured (its triggers, or a related table's, are missing): the
    # worker pauses the mirror on it at its next wake-up; status says it at once.
    capture_error: str | None = None

    @property
    def state(self) -> str:
        if self.queue.paused or self.queue.operator_paused:
            return "paused"
        return "uncaptured" if self.capture_error is not None else "ok"

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "mirror": self.mirror,
            "state": self.state,
            "error": self.queue.error,
            "error_since": None
            if self.queue.error_since is None
            else _iso(self.queue.error_since.timestamp()),
            "operator_pause": None
            if self.queue.operator_paused_at is None
            else {
                "since": _iso(self.queue.operator_paused_at.timestamp()),
                "reason": self.queue.operator_pause_reason,
            },
            "pending": self.queue.pending,
            "oldest_pending_age_seconds": self.queue.oldest_age,
            "dead_letters": self.queue.dead_letters,
            "failed_rows": self.queue.failed_rows,
            "backfill": self.queue.backfill_state,
            "table_rows": self.table_rows,
            "table_error": self.table_error,
            "capture_error": self.capture_error,
            "documents": self.index.documents,
            "index": {
                "name": self.index.name,
                "exists": self.index.exists,
                "answering": self.index.answering,
                "percent_indexed": round(self.index.indexed_ratio * 100, 1),
                "indexing_failures": self.index.indexing_failures,
                "rebuild": _rebuild(self.index.rebuild),
            },
            "last_sync": None if self.last_sync is None else _iso(self.last_sync),
            "last_sync_age_seconds": None if self.last_sync is None else round(now - self.last_sync, 3),
        }


async def mirror_status(conn: Connection, client: redis.Redis, mirror: MirrorConfig) -> MirrorStatus:
    rows, table_error = await _table_rows(conn, mirror)
    return MirrorStatus(
        mirror=mirror.name,
        queue=await queue_state(conn, mirror.name),
        table_rows=rows,
        index=await index_state(client, mirror.index.index.name),
        last_sync=await read_last_sync(client, mirror.name),
        table_error=table_error,
        capture_error=await capture_problem(conn, mirror),
    )


async def _table_rows(conn: Connection, mirror: MirrorConfig) -> tuple[int | None, str | None]:
    """The table's rows (the documents view's, where the mirror reads one), or None and why not
    (it was dropped, or this role may not read it)."""
    statement = TableStatements(qualified(*mirror.documents_source), (), ()).count_rows()
    try:
        return int(await conn.fetchval(statement)), None
    except (
        asyncpg.UndefinedTableError,
        asyncpg.InvalidSchemaNameError,
        asyncpg.InsufficientPrivilegeError,
    ) as exc:
        return None, str(exc)


def _rebuild(rebuild: IndexState | None) -> dict[str, Any] | None:
    """The new index generation being filled beside the one users query (index/rollout.py). Its
    progress is the queue's: a rebuild queues every row again, and switches once they are synced."""
    if rebuild is None:
        return None
    return {"name": rebuild.name, "percent_indexed": round(rebuild.indexed_ratio * 100, 1)}


def format_status(statuses: Sequence[MirrorStatus], now: float) -> str:
    """One aligned row per mirror, then each mirror's last sync and what it is paused on."""
    rows = [list(COLUMNS), *(_cells(s) for s in statuses)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    for status in statuses:
        lines.append(f"{status.mirror}: last sync {_last_sync(status.last_sync, now)}")
        lines += _problems(status, now)
    return "\n".join(lines)


def _problems(status: MirrorStatus, now: float) -> list[str]:
    lines = []
    queue = status.queue
    if queue.operator_paused_at is not None:
        reason = queue.operator_pause_reason
        lines.append(
            f"{status.mirror}: paused by the operator since {_ago(queue.operator_paused_at.timestamp(), now)}"
            f"{'' if not reason else ': ' + _one_line(reason)}; {queue.pending} changes pending "
            f"(`vecmirror resume {status.mirror}` syncs them)"
        )
    if queue.error is not None:
        since = "" if queue.error_since is None else f" since {_ago(queue.error_since.timestamp(), now)}"
        lines.append(f"{status.mirror}: paused{since}: {_one_line(queue.error)}")
    if status.table_error is not None:
        lines.append(f"{status.mirror}: cannot count the table's rows: {_one_line(status.table_error)}")
    if status.capture_error is not None and queue.error is None:
        lines.append(f"{status.mirror}: changes not captured: {_one_line(status.capture_error)}")
    rebuild = status.index.rebuild
    if rebuild is not None:
        lines.append(
            f"{status.mirror}: rebuilding online into {rebuild.name} ({rebuild.indexed_ratio * 100:.0f}% "
            f"indexed): it takes over once the {status.queue.pending} pending changes are synced; "
            f"{status.index.name} answers from {status.index.answering} until then"
        )
    return lines


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _cells(status: MirrorStatus) -> list[str]:
    queue, index = status.queue, status.index
    return [
        status.mirror,
        status.state,
        str(queue.pending),
        "-" if queue.oldest_age is None else duration(queue.oldest_age),
        str(queue.dead_letters),
        "-" if status.table_rows is None else str(status.table_rows),
        str(index.documents),
        f"{index.indexed_ratio * 100:.0f}%" if index.exists else "no index",
        str(index.indexing_failures),
        queue.backfill_state,
    ]


def _last_sync(when: float | None, now: float) -> str:
    if when is None:
        return "never (no batch written since Redis was last emptied)"
    return _ago(when, now)


def _ago(when: float, now: float) -> str:
    return f"{_iso(when)} ({duration(max(0.0, now - when))} ago)"


def duration(seconds: float) -> str:
    """3.2s, 4m05s, 2h07m, 3d04h: short and still exact enough to act on."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
