"""A randomized stateful test on real servers: random writes to a HASH and a JSON mirror interleaved
with worker crashes, dying connections, a Redis that forgets, keys deleted behind vecmirror's back
and a frozen worker's stale write; at random quiet points (and at the end) the in-process worker
drains and invariant P must hold for both mirrors.

One run makes EXAMPLES x STEPS = 3 x 500 = 1,500 operations (steps; a transaction, a concurrent
drain or a frozen worker step holds a few more statements), asserted at the end so the test cannot
do fewer; about a minute here. Hypothesis draws every step (an operation and a seed for its
details). Shrinking is off: each replay costs up to a minute on real servers, so the last
operations before a failure are printed with it instead.

What the model knows: which rows exist and which are poison (a vector of the wrong length, NULL,
NaN or infinite, a NULL element, price 'NaN'); poison rows must be dead-lettered and have no
document, every other row must have an up-to-date document (tests/invariant.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import redis.asyncio as aredis
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from helpers import NOTES_MIRROR, NOTES_TABLE, PRODUCTS_MIRROR, PRODUCTS_TABLE
from invariant import assert_invariant
from vecmirror.app import App, open_app
from vecmirror.commands import migrate_command
from vecmirror.config import META_VERSION_FIELD, Config, MirrorConfig
from vecmirror.errors import RedisForgotError
from vecmirror.pipeline.documents import Document
from vecmirror.run.sync import BatchStats, MirrorSync, SyncOptions
from vecmirror.run.worker import TRANSIENT_ERRORS, Worker
from vecmirror.settings import Settings
from vecmirror.sink.keys import document_key, key_pattern
from vecmirror.sink.versioned import GenerationChangedError, marker_key, parse_tombstone, tombstone_key
from vecmirror.sink.writer import RedisSink
from vecmirror.source.tables import inspect_table

EXAMPLES = 3
STEPS = 500
_T = TypeVar("_T")
RowKey = tuple[str, ...]
NAN, INF = float("nan"), float("inf")
COMPONENTS = [-2.5, -1.0, 0.5, 1.0, 2.0, 3.25]  # never all zero: a zero vector has no cosine
WORDS = ["lamp", "desk", "chair", "ship it", "later", "café", "ünïcode", "a-b c", "x"]
FROZEN_CLAIM_TIMEOUT_MS = 300  # the frozen worker's claim dies this long after it went quiet
SETTLE_TIMEOUT = 15.0  # seconds a dead worker's session may take to release its claim
DRAIN_TIMEOUT = 60.0  # seconds; a drain here takes well under one, a hung one fails the test


@dataclass(frozen=True)
class TableSpec:
    """How the test writes one mirror's table: its key pool, good values and poison values."""

    raw: dict[str, Any]
    ddl: str
    table: str
    key_columns: tuple[str, ...]
    keys: tuple[RowKey, ...]  # rows are drawn from this small pool, so keys get reused
    key_params: Callable[[RowKey], list[Any]]
    good: dict[str, list[Any]]  # every value column but the vector, which is drawn from COMPONENTS
    bad: dict[str, list[Any]]  # the columns a row can be poisoned through
    vector: str
    dims: int
    touch: str  # a bulk UPDATE's SET clause that keeps every row's poison as it is


PRODUCTS = TableSpec(
    raw=PRODUCTS_MIRROR,
    ddl=PRODUCTS_TABLE,
    table="products",
    key_columns=("sku",),
    keys=(*((f"p{i}",) for i in range(24)), ("k:1",), ("k 2",), ("ключ",)),
    key_params=lambda key: [key[0]],
    good={"name": WORDS, "price": [None, Decimal(0), Decimal("1.5"), Decimal("19.99"), Decimal(-3)]},
    bad={
        "vec": [None, [1.0, 2.0], [1.0, 2, 3, 4, 5], [1.0, NAN, 3, 4], [INF, 1.0, 1, 1], [1.0, None, 1, 1]],
        "price": [Decimal("NaN")],
    },
    vector="vec",
    dims=4,
    touch="name = name || '+'",
)
NOTES = TableSpec(
    raw=NOTES_MIRROR,
    ddl=NOTES_TABLE,
    table="notes",
    key_columns=("tenant", "id"),
    keys=tuple((tenant, str(i)) for tenant in ("acme", "be:ta") for i in range(13)),
    key_params=lambda key: [key[0], int(key[1])],
    good={"body": WORDS, "labels": [None, "red", "red|urgent", "blue|x y"]},
    bad={"v": [None, [1.0, 2.0], [1.0, 2, 3, 4], [NAN, 1.0, 1], [1.0, None, 1]]},
    vector="v",
    dims=3,
    touch="body = body || '+'",
)
SPECS = (PRODUCTS, NOTES)

# Operation names, each repeated by its weight. Step i runs OPS[(drawn + 37 * i) % len(OPS)], so
# Hypothesis' first, all-simplest example cycles through every operation instead of repeating one.
WEIGHTS = {
    "insert": 14,
    "insert_many": 4,
    "update_vector": 10,
    "update_other": 10,
    "delete": 8,
    "change_key": 6,
    "poison": 5,
    "heal": 5,
    "bulk_update": 2,
    "transaction": 4,
    "truncate": 1,
    "sync_now": 4,
    "concurrent_drain": 4,
    "crash": 4,
    "kill_redis_clients": 3,
    "kill_pg_sessions": 2,
    "flushall": 1,
    "delete_document": 3,
    "delete_marker": 1,
    "renew_generation": 1,
    "frozen_worker": 2,
    "restart": 1,
    "quiet_point": 2,
}
OPS = [name for name, weight in WEIGHTS.items() for _ in range(weight)]
DATA_OPS = [
    "insert",
    "insert_many",
    "update_vector",
    "update_other",
    "delete",
    "change_key",
    "poison",
    "heal",
]
# Each step is an operation and a seed for its details (which rows, values, pauses). Drawn up
# front in one shape whatever the servers do, so a replay by Hypothesis makes the same steps even
# where a step's details depend on the state (how many documents Redis holds, say).
PLANS = st.lists(
    st.tuples(st.integers(0, len(OPS) - 1), st.integers(0, 2**32 - 1)), min_size=STEPS, max_size=STEPS
)


@dataclass
class Tally:
    """What a whole run did, across examples, so the end of the test can check it."""

    examples: int = 0
    steps: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    quiet_points: int = 0
    drift_repairs: int = 0
    stale_writes_refused: int = 0


@dataclass
class FrozenGate:
    """Holds a worker between its last look at Postgres and its write to Redis."""

    reached: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    upserts: list[Document] = field(default_factory=list)
    deletes: list[tuple[RowKey, int]] = field(default_factory=list)
    refused: list[RowKey] = field(default_factory=list)


class FrozenSink(RedisSink):
    """A sink whose first write waits for the gate: the worker froze (a GC pause, SIGSTOP) after its
    claim was checked and before Redis got the batch."""

    def __init__(self, client: aredis.Redis, mirror: MirrorConfig, gate: FrozenGate) -> None:
        super().__init__(client, mirror)
        self._gate: FrozenGate | None = gate

    async def write(
        self,
        upserts: Sequence[Document],
        deletes: Sequence[tuple[RowKey, int]],
        *,
        keep_vector: set[RowKey],
    ) -> list[RowKey]:
        gate, self._gate = self._gate, None
        if gate is None:
            return await super().write(upserts, deletes, keep_vector=keep_vector)
        gate.upserts, gate.deletes = list(upserts), list(deletes)
        gate.reached.set()
        await gate.release.wait()
        gate.refused = await super().write(upserts, deletes, keep_vector=keep_vector)
        return gate.refused


class Example:
    """One Hypothesis example: a fresh schema and Redis, STEPS operations, then a last quiet point."""

    def __init__(self, data: st.DataObject, settings: Settings, config: Config, tally: Tally) -> None:
        self.data, self.settings, self.config, self.tally = data, settings, config, tally
        self.mirrors = {spec.table: config.mirror(spec.raw["name"]) for spec in SPECS}
        self.rows: dict[str, dict[RowKey, set[str]]] = {spec.table: {} for spec in SPECS}  # bad columns
        self.deleted_behind: set[str] = set()  # document keys DEL'd since the last quiet point
        self.recent: deque[str] = deque(maxlen=60)
        self.url = settings.require_database_url()
        self.redis_url = settings.require_redis_url()

    # ---- life cycle ----

    async def run(self) -> None:
        self.pg = await asyncpg.connect(self.url)
        self.redis = aredis.Redis.from_url(self.redis_url)
        try:
            plan = self.data.draw(PLANS, label="steps: (operation, seed)")
            self.rng = random.Random(plan[0][1])
            # Batches of one change up to the default: crashes land at different points of a batch.
            size = self._choice([1, 5, 20, 256])
            self.settings = self.settings.model_copy(update={"batch_size": size})
            await self._reset()
            async with self._app():
                for step, (op, seed) in enumerate(plan):
                    await self._step(step, op, seed)
                await self.quiet_point()
        except BaseException:
            note("last operations, oldest first:\n  " + "\n  ".join(self.recent))
            raise
        finally:
            await self.redis.aclose()
            await self.pg.close()
        self.tally.examples += 1

    async def _reset(self) -> None:
        await self.pg.execute("DROP TABLE IF EXISTS products, notes; DROP SCHEMA IF EXISTS vecmirror CASCADE")
        for spec in SPECS:
            await self.pg.execute(spec.ddl)
        await self.redis.flushall()
        await migrate_command(self.settings, self.config)

    @contextlib.asynccontextmanager
    async def _app(self) -> AsyncIterator[None]:
        self._opened = open_app(self.settings, self.config)
        self.app: App = await self._opened.__aenter__()
        self.worker: Worker = self.app.worker()
        try:
            yield
        finally:
            await self._opened.__aexit__(None, None, None)

    async def _step(self, step: int, op: int, seed: int) -> None:
        name = OPS[(op + 37 * step) % len(OPS)]
        self.rng = random.Random(seed)
        self.recent.append(f"{step}: {name}")
        await getattr(self, name)()
        self.tally.steps += 1
        self.tally.kinds[name] += 1

    # ---- drawing ----

    def _int(self, n: int) -> int:
        return self.rng.randrange(n)

    def _choice(self, options: Sequence[_T]) -> _T:
        return options[self._int(len(options))]

    def _spec(self) -> TableSpec:
        return self._choice(SPECS)

    def _pick(self, keys: Sequence[RowKey]) -> RowKey:
        return self._choice(sorted(keys))

    def _absent(self, spec: TableSpec) -> list[RowKey]:
        return [k for k in spec.keys if k not in self.rows[spec.table]]

    def _values(self, spec: TableSpec, columns: Sequence[str], bad: set[str]) -> dict[str, Any]:
        return {c: self._value(spec, c, c in bad) for c in columns}

    def _value(self, spec: TableSpec, column: str, bad: bool) -> Any:
        if bad:
            return self._choice(spec.bad[column])
        if column == spec.vector:
            return [self._choice(COMPONENTS) for _ in range(spec.dims)]
        return self._choice(spec.good[column])

    def _note(self, text: str) -> None:
        self.recent.append("    " + text)

    # ---- writes to the tables (the model follows each statement) ----

    async def insert(self, spec: TableSpec | None = None) -> None:
        spec = spec or self._spec()
        if not self._absent(spec):
            return await self.delete(spec)
        key = self._pick(self._absent(spec))
        await self._insert_rows(spec, [key])

    async def insert_many(self) -> None:
        spec = self._spec()
        absent = self._absent(spec)
        count = 2 + self._int(4)
        keys = [self._pick(absent) for _ in range(count)] if absent else []
        await self._insert_rows(spec, list(dict.fromkeys(keys)))

    async def _insert_rows(self, spec: TableSpec, keys: list[RowKey]) -> None:
        if not keys:
            return
        columns = [*spec.key_columns, *spec.good, spec.vector]
        rows: list[str] = []
        params: list[Any] = []
        for key in keys:
            bad = self._draw_bad(spec, self._int(6) == 5)
            values = self._values(spec, [*spec.good, spec.vector], bad)
            first = len(params) + 1
            params += [*spec.key_params(key), *values.values()]
            rows.append("(" + ", ".join(f"${i}" for i in range(first, len(params) + 1)) + ")")
            self.rows[spec.table][key] = bad
        await self.pg.execute(
            f"INSERT INTO {spec.table} ({', '.join(columns)}) VALUES {', '.join(rows)}", *params
        )
        self._note(f"insert {spec.table} {keys}")

    def _draw_bad(self, spec: TableSpec, poison: bool) -> set[str]:
        if not poison:
            return set()
        return {self._choice(sorted(spec.bad))}

    async def _update(self, spec: TableSpec, key: RowKey, values: dict[str, Any]) -> None:
        sets = ", ".join(f"{column} = ${i}" for i, column in enumerate(values, start=1))
        where = self._where(spec, len(values) + 1)
        await self.pg.execute(
            f"UPDATE {spec.table} SET {sets} WHERE {where}", *values.values(), *spec.key_params(key)
        )

    @staticmethod
    def _where(spec: TableSpec, first: int) -> str:
        return " AND ".join(f"{column} = ${first + i}" for i, column in enumerate(spec.key_columns))

    def _existing(self, spec: TableSpec | None = None) -> tuple[TableSpec, RowKey | None]:
        spec = spec or self._spec()
        rows = self.rows[spec.table]
        return spec, (self._pick(list(rows)) if rows else None)

    async def update_vector(self) -> None:
        spec, key = self._existing()
        if key is None:
            return await self.insert(spec)
        await self._update(spec, key, self._values(spec, [spec.vector], set()))
        self.rows[spec.table][key].discard(spec.vector)
        self._note(f"update vector {spec.table} {key}")

    async def update_other(self) -> None:
        spec, key = self._existing()
        if key is None:
            return await self.insert(spec)
        await self._update(spec, key, self._values(spec, list(spec.good), set()))
        self.rows[spec.table][key] &= {spec.vector}
        self._note(f"update other columns {spec.table} {key}")

    async def poison(self) -> None:
        spec, key = self._existing()
        if key is None:
            return await self.insert(spec)
        bad = self._draw_bad(spec, poison=True)
        await self._update(spec, key, self._values(spec, sorted(bad), bad))
        self.rows[spec.table][key] |= bad
        self._note(f"poison {spec.table} {key} through {bad}")

    async def heal(self) -> None:
        spec, key = self._existing()
        if key is None:
            return await self.insert(spec)
        await self._heal_row(spec, key)

    async def _heal_row(self, spec: TableSpec, key: RowKey) -> None:
        await self._update(spec, key, self._values(spec, [*spec.good, spec.vector], set()))
        self.rows[spec.table][key] = set()
        self._note(f"heal {spec.table} {key}")

    async def delete(self, spec: TableSpec | None = None) -> None:
        spec, key = self._existing(spec)
        if key is None:
            return
        await self.pg.execute(f"DELETE FROM {spec.table} WHERE {self._where(spec, 1)}", *spec.key_params(key))
        del self.rows[spec.table][key]
        self._note(f"delete {spec.table} {key}")

    async def change_key(self) -> None:
        spec, key = self._existing()
        absent = self._absent(spec)
        if key is None or not absent:
            return await self.insert(spec)
        new = self._pick(absent)
        sets = ", ".join(f"{column} = ${i}" for i, column in enumerate(spec.key_columns, start=1))
        where = self._where(spec, len(spec.key_columns) + 1)
        await self.pg.execute(
            f"UPDATE {spec.table} SET {sets} WHERE {where}", *spec.key_params(new), *spec.key_params(key)
        )
        self.rows[spec.table][new] = self.rows[spec.table].pop(key)
        self._note(f"change key {spec.table} {key} -> {new}")

    async def bulk_update(self) -> None:
        spec = self._spec()
        await self.pg.execute(f"UPDATE {spec.table} SET {spec.touch}")
        self._note(f"bulk update {spec.table} ({len(self.rows[spec.table])} rows)")

    async def truncate(self) -> None:
        spec = self._spec()
        await self.pg.execute(f"TRUNCATE {spec.table}")
        self.rows[spec.table].clear()
        self._note(f"truncate {spec.table}")

    async def transaction(self) -> None:
        """Several statements in one transaction, committed or rolled back (then nothing changed)."""
        saved = {table: {k: set(v) for k, v in rows.items()} for table, rows in self.rows.items()}
        commit = self._int(4) != 3
        tx = self.pg.transaction()
        await tx.start()
        try:
            await self._data_ops(2 + self._int(3))
        finally:
            await (tx.commit() if commit else tx.rollback())
        if not commit:
            self.rows = saved
            self._note("rolled back")

    async def _data_ops(self, count: int) -> None:
        for _ in range(count):
            await getattr(self, self._choice(DATA_OPS))()

    # ---- the worker, with faults ----

    async def sync_now(self) -> None:
        await self._drain_with(self._nothing, cancel=False)

    async def concurrent_drain(self) -> None:
        """Writes land while a batch is in flight: the batch read its rows before or after them."""
        count = 1 + self._int(4)
        await self._drain_with(lambda: self._data_ops(count), cancel=False)

    async def crash(self) -> None:
        """The worker dies at a random point of a batch: its transaction rolls back, nothing is lost."""
        count = self._int(3)
        await self._drain_with(lambda: self._data_ops(count), cancel=True)

    async def kill_redis_clients(self) -> None:
        await self._drain_with(self._kill_redis_clients, cancel=False)

    async def _kill_redis_clients(self) -> None:
        await self.redis.execute_command(  # type: ignore[no-untyped-call]
            "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"
        )

    async def kill_pg_sessions(self) -> None:
        await self._drain_with(self._kill_pg_sessions, cancel=False)

    async def _kill_pg_sessions(self) -> None:
        await self.pg.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'vecmirror' AND datname = current_database()"
        )

    async def flushall(self) -> None:
        """Redis forgets everything (a restart without persistence); the worker must notice."""
        if self._int(2):
            await self._drain_with(self._flushall, cancel=False)
        else:
            await self._flushall()

    async def _flushall(self) -> None:
        await self.redis.flushall()
        self.deleted_behind.clear()  # whatever was deleted is gone with the rest; a resync follows

    async def delete_document(self) -> None:
        """A document vanishes behind vecmirror's back; the count check must notice and repair it."""
        mirror = self.mirrors[self._spec().table]
        stored = sorted([k.decode() async for k in self.redis.scan_iter(match=key_pattern(mirror))])
        if stored:
            key = self._choice(stored)
            await self.redis.delete(key)
            self.deleted_behind.add(key)
            self._note(f"DEL {key}")

    async def delete_marker(self) -> None:
        await self.redis.delete(marker_key(self.mirrors[self._spec().table].name))

    async def renew_generation(self) -> None:
        """A new generation behind the worker's back (`verify --repair`, or `migrate` after a DROP
        TABLE, would start one): batches in flight still write in the old one, which the marker
        holds, until the next wake-up resyncs the mirror in the new one."""
        name = self.mirrors[self._spec().table].name

        async def renew() -> None:
            await self.pg.execute(
                "UPDATE vecmirror.mirrors_v1 SET generation = substr(md5(random()::text), 1, 12) "
                "WHERE name = $1",
                name,
            )
            self._note(f"renew generation {name}")

        if self._int(2):
            await self._drain_with(renew, cancel=False)
        else:
            await renew()

    async def restart(self) -> None:
        """A new worker process: fresh pools, clients and per-sync state."""
        await self._opened.__aexit__(None, None, None)
        self._opened = open_app(self.settings, self.config)
        self.app = await self._opened.__aenter__()
        self.worker = self.app.worker()

    async def _nothing(self) -> None:
        return None

    async def _drain_with(self, interfere: Callable[[], Awaitable[None]], *, cancel: bool) -> None:
        """A drain with something happening a random moment after it started. The worker retries
        server trouble itself; any other exception would end `vecmirror run`: a bug."""
        task = asyncio.create_task(asyncio.wait_for(self.worker.drain(), DRAIN_TIMEOUT))
        await asyncio.sleep(self._choice([0.0, 0.001, 0.003, 0.01, 0.03]))
        await interfere()
        if cancel:
            task.cancel()
        (outcome,) = await asyncio.gather(task, return_exceptions=True)
        if isinstance(outcome, asyncio.CancelledError):
            assert cancel, "the drain was cancelled by someone else"
        elif isinstance(outcome, TimeoutError):
            raise AssertionError(f"a drain took over {DRAIN_TIMEOUT}s") from outcome
        elif isinstance(outcome, BaseException):
            raise AssertionError(f"the worker would have crashed: {outcome!r}") from outcome

    # ---- the frozen worker ----

    async def frozen_worker(self) -> None:
        """A worker claims a batch and freezes before writing it; its claim times out, newer versions
        of its keys are synced, then it wakes and writes: Redis must refuse what is now stale."""
        spec = self._spec()
        mirror = self.mirrors[spec.table]
        conn = await asyncpg.connect(
            self.url,
            server_settings={
                "application_name": "vecmirror-frozen",
                "idle_in_transaction_session_timeout": str(FROZEN_CLAIM_TIMEOUT_MS),
            },
        )
        client = aredis.Redis.from_url(self.redis_url)
        gate = FrozenGate()
        size = self._choice([1, 3, 50])
        sync = MirrorSync(
            mirror,
            await inspect_table(conn, mirror),
            FrozenSink(client, mirror, gate),
            None,
            SyncOptions(size),
        )
        # The generation a worker loaded at its last wake-up (MirrorSync.resync_if_forgotten): the
        # marker's, or Postgres' where the marker is gone (its resync marks that one again).
        marker = await sync.sink.versioned.read_marker()
        sync.sink.versioned.generation = (
            marker.generation
            if marker is not None and marker.generation
            else await conn.fetchval(
                "SELECT generation FROM vecmirror.mirrors_v1 WHERE name = $1", mirror.name
            )
        )
        task = asyncio.create_task(sync.sync_batch(conn))
        try:
            if await self._frozen(gate, task):
                await self._stale_write(spec, mirror, conn, gate, task)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            conn.terminate()
            await client.aclose()

    @staticmethod
    async def _frozen(gate: FrozenGate, task: asyncio.Task[Any]) -> bool:
        """Whether the worker froze; it did not when nothing was claimable, it had a TRUNCATE, or
        Redis had forgotten the mirror."""
        reached = asyncio.create_task(gate.reached.wait())
        await asyncio.wait({task, reached}, timeout=SETTLE_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        reached.cancel()
        if gate.reached.is_set():
            return True
        try:
            await task
        except (RedisForgotError, *TRANSIENT_ERRORS):
            pass  # a flushed Redis or a dead connection: Worker._sync_one resyncs or retries
        return False

    async def _stale_write(
        self,
        spec: TableSpec,
        mirror: MirrorConfig,
        conn: asyncpg.Connection,
        gate: FrozenGate,
        task: asyncio.Task[BatchStats | None],
    ) -> None:
        touched = self._pick([d.key for d in gate.upserts] + [k for k, _ in gate.deletes])
        await self._data_ops(self._int(4))
        await self._rewrite(spec, touched)  # at least one key of the frozen batch moves on
        await self._wait_until_gone(conn.get_server_pid())
        await self._drain_with(self._nothing, cancel=False)  # the newer versions reach Redis first
        keys = [document_key(mirror, k) for k in [d.key for d in gate.upserts] + [k for k, _ in gate.deletes]]
        before = await self._effective_versions(mirror, keys)
        gate.release.set()
        (outcome,) = await asyncio.gather(task, return_exceptions=True)
        # Its session is gone, so acknowledging fails like any lost connection, which `run` retries;
        # or the mirror's generation changed while it was frozen (a restart met a generation renewed
        # earlier, and resynced): its whole write was refused.
        other_generation = isinstance(outcome, GenerationChangedError)
        assert other_generation or isinstance(outcome, TRANSIENT_ERRORS), (
            f"the fenced worker's batch ended with {outcome!r}"
        )
        after = await self._effective_versions(mirror, keys)
        went_back = {k: (before[k], after[k]) for k in keys if after[k] < before[k]}
        assert not went_back, f"the frozen worker's stale write took keys back: {went_back}"
        if other_generation:
            self._note(f"frozen worker on {spec.table}: refused as a whole (another generation)")
            return
        assert touched in gate.refused, f"the stale write of {touched} was not refused: {gate.refused}"
        self.tally.stale_writes_refused += len(gate.refused)
        self._note(f"frozen worker on {spec.table}: refused {gate.refused}")

    async def _rewrite(self, spec: TableSpec, key: RowKey) -> None:
        """Makes a good, newer version of the key: updated if the row exists, inserted if not."""
        if key in self.rows[spec.table]:
            await self._heal_row(spec, key)
        else:
            await self._insert_clean(spec, key)

    async def _insert_clean(self, spec: TableSpec, key: RowKey) -> None:
        values = self._values(spec, [*spec.good, spec.vector], set())
        columns = [*spec.key_columns, *values]
        marks = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
        await self.pg.execute(
            f"INSERT INTO {spec.table} ({', '.join(columns)}) VALUES ({marks})",
            *spec.key_params(key),
            *values.values(),
        )
        self.rows[spec.table][key] = set()
        self._note(f"insert {spec.table} {key}")

    async def _wait_until_gone(self, pid: int) -> None:
        """Postgres ends a session idle in a transaction past the claim timeout, freeing its claim."""
        for _ in range(int(SETTLE_TIMEOUT / 0.05)):
            if not await self.pg.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"the frozen worker's session {pid} outlived its claim timeout")

    async def _effective_versions(self, mirror: MirrorConfig, keys: list[str]) -> dict[str, int]:
        """The newest version Redis knows of each key: its document's or its tombstone's; -1: none."""
        versions = {}
        for key in keys:
            tombstone = await self.redis.get(tombstone_key(key))
            held = await self._held_version(mirror, key)
            versions[key] = max(held, parse_tombstone(tombstone, None)[1] if tombstone is not None else -1)
        return versions

    async def _held_version(self, mirror: MirrorConfig, key: str) -> int:
        if mirror.storage == "json":
            raw = await self.redis.execute_command(  # type: ignore[no-untyped-call]
                "JSON.GET", key, f"$.{META_VERSION_FIELD}"
            )
            return int(json.loads(raw)[0]) if raw else -1
        value = await self.redis.hget(key, META_VERSION_FIELD)
        return int(value) if value is not None else -1

    # ---- quiet points: drain, then invariant P ----

    async def quiet_point(self) -> None:
        """Nothing else runs: the worker alone must reach P. Documents deleted behind its back are
        the exception: the count check must notice them, and P holds after the repair's drain."""
        await self._wait_for_released_claims()
        await self._drain()
        missing = await self._missing_documents()
        if not self.deleted_behind:
            await self._assert_invariant()
        checks = {check.mirror: check for check in await self.worker.check_mirrors()}
        for name, keys in missing.items():
            assert checks[name].drifted == bool(keys), f"count check {checks[name]}; missing: {keys}"
            self.tally.drift_repairs += bool(keys)
        await self._drain()
        await self._assert_invariant()
        self.deleted_behind.clear()
        self.tally.quiet_points += 1

    async def _wait_for_released_claims(self) -> None:
        """A crashed worker's session may outlive it a moment; its claim must then go away."""
        for _ in range(int(SETTLE_TIMEOUT / 0.05)):
            if not await self.pg.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"):
                return
            await asyncio.sleep(0.05)
        raise AssertionError("advisory locks still held: a dead worker's claim was never released")

    async def _drain(self) -> None:
        """`run --once`: drains, waiting for failed rows' next attempts, and leaves nothing queued."""
        try:
            await asyncio.wait_for(self.worker.run_once(), DRAIN_TIMEOUT)
        except TimeoutError:
            raise AssertionError(f"run_once took over {DRAIN_TIMEOUT}s") from None
        left = await self.pg.fetch("SELECT mirror, row_key, not_before FROM vecmirror.changes_v1")
        assert not left, f"run_once returned with changes still queued: {[dict(r) for r in left]}"

    async def _missing_documents(self) -> dict[str, set[str]]:
        """Documents of rows in scope that Redis lacks, per mirror: only ones deleted behind
        vecmirror's back may be missing after a drain, and no document may lack its row."""
        missing = {}
        for spec in SPECS:
            mirror = self.mirrors[spec.table]
            stored = {k.decode() async for k in self.redis.scan_iter(match=key_pattern(mirror))}
            expected = {document_key(mirror, k) for k, bad in self.rows[spec.table].items() if not bad}
            assert stored <= expected, f"documents without a row in scope: {stored - expected}"
            unexplained = expected - stored - self.deleted_behind
            assert not unexplained, f"documents missing that nobody deleted: {unexplained}"
            missing[mirror.name] = expected - stored
        return missing

    async def _assert_invariant(self) -> None:
        for spec in SPECS:
            rows = self.rows[spec.table]
            keys = await self.pg.fetch(f"SELECT {', '.join(spec.key_columns)} FROM {spec.table}")
            assert {tuple(str(v) for v in r.values()) for r in keys} == set(rows), "the test's model is wrong"
            poison = {k for k, bad in rows.items() if bad}
            await assert_invariant(self.pg, self.redis_url, self.mirrors[spec.table], poison=poison)


@dataclass
class Run:
    settings: Settings
    config: Config
    tally: Tally = field(default_factory=Tally)


def _run_examples(run: Run) -> None:
    @settings(
        max_examples=EXAMPLES,
        phases=[Phase.generate],
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(st.data())
    def examples(data: st.DataObject) -> None:
        # Each example in an event loop of its own, in this worker thread (see the test).
        asyncio.run(Example(data, run.settings, run.config, run.tally).run())

    examples()


async def test_random_writes_and_faults_keep_invariant_p(write_config: Any, settings_for: Any) -> None:
    path, config = write_config([PRODUCTS_MIRROR, NOTES_MIRROR])
    # Failed rows are retried after 10 ms, server trouble after 50 ms: faults cost little time.
    run = Run(settings_for(Path(path), row_retry_backoff=0.01, error_backoff=0.05), config)
    # settings_for gives this test a database of its own; each example resets it (and Redis) itself.
    # Hypothesis runs a synchronous function per example and pytest's event loop is running here,
    # so the examples run in a thread, each in an event loop of its own.
    await asyncio.to_thread(_run_examples, run)
    tally = run.tally
    print(f"stateful run: {tally}")
    assert tally.examples == EXAMPLES
    assert tally.steps == EXAMPLES * STEPS == 1500
    assert set(tally.kinds) == set(WEIGHTS), f"operations never drawn: {set(WEIGHTS) - set(tally.kinds)}"
    assert tally.quiet_points >= EXAMPLES  # at least the last one of each example
    assert tally.stale_writes_refused > 0 and tally.drift_repairs > 0
