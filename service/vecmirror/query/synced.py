"""Read-your-writes: wait until every change of some keys, committed before the wait, is in Redis.

A write's change enters vecmirror.changes_v1 in the writer's own transaction, and the worker deletes
it in the transaction that wrote it to Redis, after Redis accepted the write (run/sync.py: claim,
write, acknowledge, one transaction). So a key is synced once the changes of it that were queued
when the wait began have left the queue, and the row is not a failed one (failed_v1).

Three things queue a change of a key later, with a new id, for something committed before the wait:
a related table's change (the worker fans it out), a TRUNCATE (its marker, once handled, re-queues
every key Redis holds) and the backfill walk (rows never captured: the first sync, a resync). So the
wait first lets those that existed at its start happen (the gates), then lists the keys' queued
changes, then polls until they are gone. Only Postgres is read: one indexed query per poll.

A change that was never queued cannot be waited for, so the gates also stay closed while capture
is broken: the mirror's triggers missing (its table dropped and created again, or restored) or the
table not the one the mirror registered, and while the mirror is paused on an error of its own.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import date
from datetime import time as clock_time
from typing import Any

import asyncpg

from vecmirror.config import MirrorConfig
from vecmirror.errors import FailedRowError, MirrorError, NotMigratedError, QueryError
from vecmirror.query.synced_sql import QUERIES
from vecmirror.source import Connection, pooled
from vecmirror.source.migrate import capture_problem
from vecmirror.source.session import SESSION_SETTINGS
from vecmirror.source.statements import qualified, quote_ident

RowKey = tuple[str, ...]
# Polls start quick (a worker that is idle syncs one change in tens of milliseconds) and slow down
# to the cap while a backlog drains: at most 1 / POLL_CAP queries a second per wait.
POLL_FIRST = 0.02
POLL_GROWTH = 1.5
POLL_CAP = 0.2
# How long past its timeout a wait may take to give up on a query Postgres does not answer (a lock
# held on the queue, a server gone silent): the query is cancelled and the wait ends unsynced.
ANSWER_GRACE = 1.0
NO_ANSWER = "Postgres did not answer in time (a lock held on vecmirror's tables, or a silent server)"


@dataclass(frozen=True)
class SyncWait:
    """How a wait ended: `waiting` keys still have a change that is not in Redis (all of them while
    a gate is closed); `reason` says why where Postgres knows (a pause, the mirror's error, a gate)."""

    mirror: str
    keys: int
    waiting: int
    reason: str | None = None

    @property
    def synced(self) -> bool:
        return self.waiting == 0

    def line(self, timeout: float) -> str:
        if self.synced:
            return f"synced: {self.keys} key(s) of mirror {self.mirror!r}"
        why = self.reason or "no worker synced them in time (is `vecmirror run` running?)"
        return (
            f"not synced after {timeout:g} s: {self.waiting} of {self.keys} key(s) of mirror "
            f"{self.mirror!r} still wait: {why}"
        )


@dataclass(frozen=True)
class _Poll:
    done: bool
    wait: SyncWait


async def wait_synced(
    pool: asyncpg.Pool, mirror: MirrorConfig, keys: Sequence[object], timeout: float
) -> SyncWait:
    """Waits at most `timeout` seconds (and ANSWER_GRACE for a query in flight); raises
    FailedRowError when a key's row failed."""
    deadline = time.monotonic() + _checked_timeout(timeout)
    limit = None if math.isinf(timeout) else timeout + ANSWER_GRACE
    answer = asyncio.timeout(limit)
    try:
        async with answer:
            return await _wait(pool, mirror, keys, deadline)
    except TimeoutError:
        if not answer.expired():  # a TimeoutError of its own (asyncpg's connect timeout)
            raise
    count = len(keys)
    return SyncWait(mirror.name, count, count, NO_ANSWER)


async def _wait(
    pool: asyncpg.Pool, mirror: MirrorConfig, keys: Sequence[object], deadline: float
) -> SyncWait:
    name = mirror.name
    async with pooled(pool) as conn:
        wanted = await canonical_keys(conn, name, keys)
        marks = await conn.fetchrow(QUERIES["wait_marks"], name)
    assert marks is not None  # two subqueries: always one row
    if not wanted:
        return SyncWait(name, 0, 0)
    gates = (name, marks["changes_mark"] or 0, marks["related_mark"] or 0)
    poll = await _until(deadline, lambda: _gates(pool, mirror, gates, len(wanted)))
    if not poll.done:
        return poll.wait
    async with pooled(pool) as conn:
        ids = await conn.fetchval(QUERIES["key_changes"], name, _as_json(wanted))
    return (await _until(deadline, lambda: _progress(pool, name, ids, wanted))).wait


def _checked_timeout(timeout: float) -> float:
    number = isinstance(timeout, int | float) and not isinstance(timeout, bool)
    if not number or math.isnan(timeout) or timeout < 0:
        raise QueryError(f"timeout must be a number of seconds of at least 0, not {timeout!r}")
    return float(timeout)


async def _until(deadline: float, check: Callable[[], Awaitable[_Poll]]) -> _Poll:
    """Checks until done or past the deadline (once more at it), the interval growing to the cap."""
    interval = POLL_FIRST
    while True:
        poll = await check()
        left = deadline - time.monotonic()
        if poll.done or left <= 0:
            return poll
        await asyncio.sleep(min(interval, left))
        interval = min(interval * POLL_GROWTH, POLL_CAP)


async def _gates(pool: asyncpg.Pool, config: MirrorConfig, gates: tuple[str, int, int], count: int) -> _Poll:
    async with pooled(pool) as conn:
        row = await conn.fetchrow(QUERIES["wait_gates"], *gates)
        uncaptured = None if row is None else await capture_problem(conn, config)
    mirror = gates[0]
    if row is None:
        raise _not_installed(mirror)
    closed = _closed_gate(row, uncaptured)
    done = closed is None and not row["error"]  # (see _progress)
    return _Poll(done, SyncWait(mirror, count, count, _pause(mirror, row) or closed))


def _closed_gate(row: Any, uncaptured: str | None) -> str | None:
    if uncaptured is not None:
        return uncaptured
    if row["replaced"]:
        return "its table was dropped and created again (or restored) and no worker has taken it in yet"
    if row["related_pending"]:
        return "changes of its related tables are not fanned out yet"
    if row["truncate_pending"]:
        return "a TRUNCATE of its table is not handled yet"
    if not row["walked"]:
        return "its backfill walk has not queued every row yet"
    return None


async def _progress(pool: asyncpg.Pool, mirror: str, ids: list[int], wanted: list[RowKey]) -> _Poll:
    async with pooled(pool) as conn:
        row = await conn.fetchrow(QUERIES["wait_progress"], mirror, ids, _as_json(wanted))
    if row is None:
        raise _not_installed(mirror)
    pending = {tuple(key) for key in json.loads(row["pending"])}
    # A key with a change still queued may yet sync (a fix written after the failure): it waits.
    failed = [f for f in json.loads(row["failed"]) if tuple(f["key"]) not in pending]
    if failed:
        raise _failed(mirror, failed[0])
    # A mirror paused on an error of its own may have missed the change (a replaced table): not yet.
    done = not pending and not row["error"]
    waiting = len(pending) or (0 if done else len(wanted))
    return _Poll(done, SyncWait(mirror, len(wanted), waiting, _pause(mirror, row)))


def _pause(mirror: str, row: Any) -> str | None:
    if row["operator_paused"]:
        why = row["operator_pause_reason"]
        return f"the mirror is paused by an operator{f' ({why})' if why else ''}: `vecmirror resume {mirror}`"
    if row["error"]:
        return f"the mirror is paused on an error: {row['error']}"
    return None


def _failed(mirror: str, failure: dict[str, Any]) -> FailedRowError:
    attempts, retry_at = failure["attempts"], failure["retry_at"]
    state = f"{attempts} attempt(s), " + (f"retried at {retry_at}" if retry_at else "dead-lettered")
    return FailedRowError(mirror, failure["key"], failure["field"], failure["error"], state)


def _not_installed(mirror: str) -> NotMigratedError:
    return NotMigratedError(f"mirror {mirror!r} is not installed: run `vecmirror migrate` first")


def _as_json(keys: Sequence[RowKey]) -> str:
    return json.dumps([list(key) for key in keys])


# ---- keys


async def canonical_keys(conn: Connection, mirror: str, keys: Sequence[object]) -> list[RowKey]:
    """The keys as changes_v1 holds them: each key column's value read as its type and written back
    as text under vecmirror's session settings, as the capture function does (`"id"::text`), so
    `7` and `'007'` name the same integer row, and a timestamptz given in any zone its UTC text."""
    if isinstance(keys, str | bytes):
        raise QueryError(f"mirror {mirror!r}: keys is a list of keys: give one key as [{keys!r}]")
    async with conn.transaction():
        settings = (list(SESSION_SETTINGS), list(SESSION_SETTINGS.values()))
        await conn.fetchval(QUERIES["session_settings"], *settings)
        key = await _key_columns(conn, mirror)
        given = [key_texts(mirror, list(key.types), k) for k in keys]
        if not given:
            return []
        by_column = [list(texts) for texts in zip(*given, strict=True)]
        try:
            rows = await conn.fetch(canonical_sql(list(key.types.values())), *by_column)
            equal = await conn.fetch(equal_rows_sql(key), *by_column)
        except asyncpg.DataError as exc:  # '12x' for an integer, a date that is none...
            raise QueryError(f"mirror {mirror!r}: a key is not a value of its column's type: {exc}") from None
    return list(dict.fromkeys(tuple(r["row_key"]) for r in [*rows, *equal]))


@dataclass(frozen=True)
class _Key:
    """The mirror's table and key columns, in key order, with their SQL types (and without their
    modifiers, `base_types`)."""

    table: str  # quoted
    types: dict[str, str]
    base_types: dict[str, str]


async def _key_columns(conn: Connection, mirror: str) -> _Key:
    columns = await conn.fetch(QUERIES["key_types"], mirror)
    if not columns:
        raise _not_installed(mirror)
    lost = [c["name"] for c in columns if c["sql_type"] is None]
    if lost:
        problem = f"its table lacks the key column(s) {', '.join(lost)}: run `vecmirror migrate`"
        raise MirrorError(mirror, problem)
    table = qualified(columns[0]["table_schema"], columns[0]["table_name"])
    types = {c["name"]: c["sql_type"] for c in columns}
    return _Key(table, types, {c["name"]: c["base_type"] for c in columns})


def equal_rows_sql(key: _Key) -> str:
    """The key texts of the table's rows equal to the given keys: an equal value may be written
    otherwise (numeric 1 and 1.00, intervals, citext), and the capture writes the row's own text."""
    names = list(key.types)
    arrays, given = _given_keys(len(names))
    texts = ", ".join(f"t.{quote_ident(name)}::text" for name in names)
    match = " AND ".join(
        f"t.{quote_ident(name)} = k.{c}::{key.base_types[name]}" for c, name in zip(given, names, strict=True)
    )
    rows = f"{key.table} t JOIN unnest({arrays}) AS k({', '.join(given)}) ON {match}"
    return f"SELECT ARRAY[{texts}] AS row_key FROM {rows}"


def canonical_sql(types: Sequence[str]) -> str:
    """Every key's texts ($1: the first column's of each key...) cast to the columns' types and back."""
    arrays, names = _given_keys(len(types))
    texts = ", ".join(f"k.{name}::{sql_type}::text" for name, sql_type in zip(names, types, strict=True))
    return (
        f"SELECT ARRAY[{texts}] AS row_key FROM unnest({arrays}) "
        f"WITH ORDINALITY AS k({', '.join(names)}, position) ORDER BY position"
    )


def _given_keys(columns: int) -> tuple[str, list[str]]:
    """The parameters holding the given keys ($1: every key's first column as text...) and the
    names of their columns once unnested."""
    return ", ".join(f"${i + 1}::text[]" for i in range(columns)), [f"c{i}" for i in range(columns)]


def key_texts(mirror: str, columns: Sequence[str], key: object) -> RowKey:
    """One key's values as text: a value for a one-column key, a tuple (or list) in key order for a
    composite one."""
    parts = tuple(key) if isinstance(key, tuple | list) else (key,)
    if len(parts) != len(columns):
        raise QueryError(
            f"mirror {mirror!r}: key {key!r} has {len(parts)} value(s); the mirror's key has "
            f"{len(columns)} column(s): ({', '.join(columns)})"
        )
    return tuple(_part_text(mirror, key, part) for part in parts)


def _part_text(mirror: str, key: object, part: object) -> str:
    if part is None or isinstance(part, bytes | bytearray | dict | list | tuple | set):
        raise QueryError(
            f"mirror {mirror!r}: key {key!r}: a key value is a string, number, UUID, date or time, "
            f"not {type(part).__name__}"
        )
    if isinstance(part, bool):
        return "true" if part else "false"
    if isinstance(part, date | clock_time):  # a datetime too: ISO text keeps its zone
        return part.isoformat()
    return str(part)
