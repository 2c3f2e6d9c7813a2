"""`vecmirror plan` (and `migrate --dry-run`): what applying the mirrors file would do, read from
Postgres and Redis without writing anything.

- migrations not yet applied;
- mirrors added (rows their first sync queues), removed (what Redis holds of them, kept or
  deleted), and kept: trigger changes (the table renamed, other key columns), index definitions
  that differ from FT.INFO (index.manage.index_differences), and the rows whose embedding changes.

The re-embed count is exact: every row is read in key order, a page at a time, rendered and hashed
as the worker would (DocumentBuilder), and its hash compared with the document's `_vm_hash` (what
sync's stored_text_hashes reads to skip the model). It costs a read of the table and of one field
per document, no model call. It includes rows whose changes are still queued.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as redis
from redis.exceptions import ResponseError

from vecmirror.config import Config, MirrorConfig
from vecmirror.errors import RowError, VecmirrorError
from vecmirror.index.manage import index_differences, index_info, physical_schema
from vecmirror.index.rollout import blocking_differences, key_move
from vecmirror.index.vectors import copyable, place_vectors, served_vector
from vecmirror.pipeline.documents import DocumentBuilder, RowKey
from vecmirror.sink.drop import Layout, MirrorData, left_behind, locate
from vecmirror.sink.observe import document_count
from vecmirror.sink.versioned import marker_key
from vecmirror.sink.writer import RedisSink
from vecmirror.source import Connection
from vecmirror.source.generations import load as load_generation
from vecmirror.source.migrate import bundled_migrations, recorded_layouts, uncaptured_relation
from vecmirror.source.sql import QUERIES
from vecmirror.source.statements import TRIGGER_EVENTS, capture_function_name, trigger_name
from vecmirror.source.tables import SourceTable, inspect_table

PAGE = 1000
GENERATIONS = 5  # the migration that records each mirror's table OID (0005_generations)


def rebuild_note(
    index: str, *, online: bool = False, moves_keys: bool = False, why: str | None = None
) -> str:
    """What `run` does with an index whose definition differs (index/rollout.py)."""
    if online and moves_keys:
        return (
            f"run rebuilds it online under the new keys: a new index beside {index} is filled (every "
            f"row written to its new key and embedded), then {index} switches to it and the old keys "
            "are deleted"
        )
    if online:
        return (
            f"run rebuilds it online: a new index beside {index} is filled (every row read again; "
            f"unchanged texts keep their vectors, other vectors are made beside the old ones), then "
            f"{index} switches to it"
        )
    return (
        f"run will refuse to start ({why or 'another storage or prefix'}): drop the index "
        f"(FT.DROPINDEX {index}) or change the config back"
    )


@dataclass
class Reembed:
    """Rows of an embedding mirror, by what their text hash says about their stored vector."""

    rows: int = 0
    reembed: int = 0  # a document whose _vm_hash is not the new hash: the model runs again
    unchanged: int = 0
    without_document: int = 0  # embedded when first written, not because of the config
    failing: int = 0  # the new template cannot render the row (a NULL, a text too long)

    def as_dict(self) -> dict[str, Any]:
        return {**vars(self), "exact": True}


@dataclass
class MirrorPlan:
    mirror: str
    action: str  # add, remove, keep; left: removed earlier, its Redis data kept
    table: str
    rows: int | None = None  # add: queued by the first sync
    removed: MirrorData | None = None
    triggers: str | None = None  # keep: why migrate re-installs them
    table_replaced: bool = False  # keep: another table under the name (a new generation, a resync)
    index: str | None = None
    index_exists: bool = False
    documents: int = 0
    differences: list[str] = field(default_factory=list)
    rebuild_online: bool = False  # the differences are ones documents can follow in place
    moves_keys: bool = False  # another prefix or storage: documents move to new keys (index/rekey.py)
    rebuild_problem: str | None = None  # why the rebuild cannot run online
    embedding: Reembed | None = None
    problem: str | None = None  # what stops migrate or run for this mirror

    @property
    def changes(self) -> bool:
        if self.action in ("add", "remove"):
            return True
        if self.action == "left":
            return False
        reembed = self.embedding is not None and self.embedding.reembed > 0
        moved = self.triggers or self.table_replaced
        return bool(moved or self.differences or not self.index_exists or reembed or self.problem)

    def as_dict(self, *, drop_data: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"mirror": self.mirror, "action": self.action, "table": self.table}
        if self.action == "add":
            out["rows_to_queue"] = self.rows
        elif self.action in ("remove", "left"):
            out["redis"] = {**(self.removed.as_dict() if self.removed else {}), "kept": not drop_data}
            out["recorded"] = None if self.removed is None else self.removed.recorded()
        else:
            out["triggers"] = self.triggers
            out["table_replaced"] = self.table_replaced
            out["index"] = {
                "name": self.index,
                "exists": self.index_exists,
                "documents": self.documents,
                "differences": self.differences,
                "rebuild": bool(self.differences),
                "rebuild_online": bool(self.differences) and self.rebuild_online,
                "moves_keys": self.moves_keys,
            }
            out["embedding"] = None if self.embedding is None else self.embedding.as_dict()
        out["problem"] = self.problem
        return out


@dataclass
class Plan:
    pending_migrations: list[str]
    mirrors: list[MirrorPlan]
    drop_data: bool = False

    @property
    def changes(self) -> bool:
        dropped = self.drop_data and any(m.action == "left" for m in self.mirrors)
        return bool(self.pending_migrations) or dropped or any(m.changes for m in self.mirrors)

    def as_dict(self) -> dict[str, Any]:
        return {
            "changes": self.changes,
            "pending_migrations": self.pending_migrations,
            "mirrors": [m.as_dict(drop_data=self.drop_data) for m in self.mirrors],
        }


async def build_plan(
    conn: Connection, client: redis.Redis, config: Config, *, drop_data: bool = False
) -> Plan:
    applied, installed = await _installed(conn)
    pending = [f"{m.version:04d}_{m.name}" for m in bundled_migrations() if m.version not in applied]
    plans = []
    for mirror in config.mirrors:
        row = installed.get(mirror.name)
        if row is None:
            plans.append(await _added(conn, mirror))
        else:
            plans.append(await _kept(conn, client, mirror, row, generations=GENERATIONS in applied))
    configured = {m.name for m in config.mirrors}
    removed = sorted(set(installed) - configured)
    layouts, gone = await recorded_redis_layouts(conn)
    known = configured | set(installed)
    left = sorted({*await left_behind(client, known), *gone} - known)
    located = await locate(client, [*removed, *left], config.mirrors, layouts)
    for name in removed:
        table = f"{installed[name]['table_schema']}.{installed[name]['table_name']}"
        plans.append(MirrorPlan(name, "remove", table, removed=located[name]))
    plans += [MirrorPlan(name, "left", "", removed=located[name]) for name in left]
    return Plan(pending, plans, drop_data)


async def recorded_redis_layouts(conn: Connection) -> tuple[dict[str, Layout], set[str]]:
    """The Redis layout Postgres recorded of each mirror (0006; none before), registered or
    removed, and the names of the removed ones whose data may still be in Redis."""
    layouts: dict[str, Layout] = {}
    gone: set[str] = set()
    for record in sorted(await recorded_layouts(conn), key=lambda r: not r["removed"]):
        layouts[record["name"]] = Layout.from_record(record)  # a registered mirror's comes last
        if record["removed"]:
            gone.add(record["name"])
    return layouts, gone


async def _installed(conn: Connection) -> tuple[set[int], dict[str, Any]]:
    """Applied migration versions and registered mirrors; none before the first migrate."""
    if not await conn.fetchval("SELECT to_regclass('vecmirror.migrations') IS NOT NULL"):
        return set(), {}
    applied = {r["version"] for r in await conn.fetch(QUERIES["applied_migrations"])}
    if not await conn.fetchval("SELECT to_regclass('vecmirror.mirrors_v1') IS NOT NULL"):
        return applied, {}
    return applied, {r["name"]: r for r in await conn.fetch(QUERIES["installed_mirrors"])}


async def _added(conn: Connection, mirror: MirrorConfig) -> MirrorPlan:
    plan = MirrorPlan(mirror.name, "add", f"{mirror.schema_name}.{mirror.table_name}")
    try:
        table = await inspect_table(conn, mirror)
    except VecmirrorError as exc:
        plan.problem = str(exc)
        return plan
    plan.rows = int(await conn.fetchval(table.statements.count_rows()))
    return plan


async def _kept(
    conn: Connection, client: redis.Redis, mirror: MirrorConfig, row: Any, *, generations: bool
) -> MirrorPlan:
    plan = MirrorPlan(mirror.name, "keep", f"{mirror.schema_name}.{mirror.table_name}")
    plan.index = mirror.index.index.name
    reuse_from = None  # where old vectors of unchanged texts are copied from (index/rollout.py)
    info = await index_info(client, plan.index)
    if info is not None:
        plan.index_exists = True
        plan.documents = await document_count(client, info)
        keys_left, plan.rebuild_problem = await key_move(client, marker_key(mirror.name), mirror, info)
        if keys_left is None:
            mirror = await place_vectors(client, marker_key(mirror.name), mirror, info)
            served = served_vector(info)
            if served is not None and served.at != mirror.vector_at and copyable(mirror, served):
                reuse_from = served.at
        plan.differences = index_differences(physical_schema(mirror, plan.index), info)
        plan.moves_keys = keys_left is not None
        blocking = blocking_differences(plan.differences) if keys_left is None else []
        plan.rebuild_online = not blocking and plan.rebuild_problem is None
        if plan.rebuild_problem is not None:  # what `run` refuses, even where FT.INFO shows no difference
            plan.problem = f"index {plan.index}: {plan.rebuild_problem}"
    try:
        table = await inspect_table(conn, mirror)
    except VecmirrorError as exc:
        plan.problem = str(exc)
        return plan
    plan.triggers = await _trigger_change(conn, mirror, table, row)
    if generations:  # as source/migrate.py's _follow_table decides
        plan.table_replaced = (await load_generation(conn, mirror.name)).replaced_table()
    if mirror.embed is not None and plan.index_exists:
        plan.embedding = await count_reembeds(conn, client, mirror, table, reuse_from)
    return plan


async def _trigger_change(conn: Connection, mirror: MirrorConfig, table: SourceTable, row: Any) -> str | None:
    """Why migrate would re-install the triggers (as source/migrate.py's _install_mirror decides)."""
    had = (row["table_schema"], row["table_name"], list(row["key_columns"]))
    wanted = (mirror.schema_name, mirror.table_name, list(table.key_names))
    if had[:2] != wanted[:2]:
        return f"the table changes: {had[0]}.{had[1]} -> {wanted[0]}.{wanted[1]}"
    if had[2] != wanted[2]:
        return f"the key columns change: {had[2]} -> {wanted[2]}"
    found = await conn.fetch(QUERIES["capture_triggers"], capture_function_name(mirror.name) + "()")
    expected = {(*wanted[:2], trigger_name(mirror.name, event)) for event in TRIGGER_EVENTS}
    present = {(r["table_schema"], r["table_name"], r["trigger_name"]) for r in found}
    if present != expected:
        places = sorted({f"{s}.{t}" for s, t, _ in present}) or ["nowhere"]
        return f"the capture triggers are not as registered (found on {', '.join(places)}): re-installed"
    gap = await uncaptured_relation(conn, mirror)
    if gap is not None:
        position, related = gap
        return (
            f"related.{position}: {related.table}'s capture does not queue this relation yet (new, "
            "or its triggers are gone): installed, and every document is read again"
        )
    return None


async def count_reembeds(
    conn: Connection,
    client: redis.Redis,
    mirror: MirrorConfig,
    table: SourceTable,
    reuse_from: str | None = None,
) -> Reembed:
    """Every row rendered and hashed under the file's template, model and backend, compared with
    its document's `_vm_hash`, a page at a time (exact). A vector copied from `reuse_from` (the same
    text, the same model) costs no model call either."""
    counts = Reembed()
    builder = DocumentBuilder(mirror, reuse_from=reuse_from)
    sink = RedisSink(client, mirror)
    cursor: list[str] | None = None
    while True:
        statement = table.statements.key_page(after_cursor=cursor is not None)
        rows = await conn.fetch(statement, PAGE, mirror.name, *(cursor or []))
        if not rows:
            return counts
        hashes: dict[RowKey, tuple[str | None, ...]] = {}
        for record in rows:
            key = tuple(record["_vm_key"])
            try:
                document = builder.build(key, dict(record))
            except RowError:
                counts.failing += 1
                continue
            hashes[key] = (document.text_hash, document.reusable_hash)
        counts.rows += len(rows)
        await _compare(sink, hashes, counts)
        cursor = list(rows[-1]["_vm_key"])


async def _compare(sink: RedisSink, hashes: dict[RowKey, tuple[str | None, ...]], counts: Reembed) -> None:
    """`hashes`: per row, the hashes its stored document may hold for the model not to run."""
    try:
        stored = await sink.stored_text_hashes(list(hashes))
    except ResponseError:  # keys of another type than the config's storage: rebuilt anyway
        stored = [None] * len(hashes)
    for wanted, held in zip(hashes.values(), stored, strict=True):
        if held is None:
            counts.without_document += 1
        elif held in wanted:
            counts.unchanged += 1
        else:
            counts.reembed += 1


def format_plan(plan: Plan) -> list[str]:
    """The human report: one line per migration state and mirror, indented details under it."""
    lines = [
        f"migrations: {len(plan.pending_migrations)} pending ({', '.join(plan.pending_migrations)})"
        if plan.pending_migrations
        else "migrations: none pending"
    ]
    for mirror in plan.mirrors:
        lines += _mirror_lines(mirror, drop_data=plan.drop_data)
    lines.append("changes pending" if plan.changes else "nothing would change")
    return lines


def _mirror_lines(plan: MirrorPlan, *, drop_data: bool) -> list[str]:
    if plan.action == "add":
        rows = "?" if plan.rows is None else plan.rows
        lines = [f"+ {plan.mirror}: added ({plan.table}): its first sync will queue {rows} rows"]
    elif plan.action == "remove":
        lines = [f"- {plan.mirror}: removed ({plan.table}): {_removal(plan, drop_data=drop_data)}"]
    elif plan.action == "left":
        lines = [f"- {plan.mirror}: removed earlier: {_removal(plan, drop_data=drop_data)}"]
    else:
        lines = _kept_lines(plan)
    if plan.problem:
        lines += [f"    problem: {line}" for line in plan.problem.splitlines()]
    return lines


def _removal(plan: MirrorPlan, *, drop_data: bool) -> str:
    data = plan.removed
    what = "no index of it found in Redis" if data is None else data.describe()
    if drop_data:
        return f"Redis: {what}; deleted (--drop-data)"
    return f"Redis keeps {what}; `vecmirror migrate --drop-data` deletes them"


def _kept_lines(plan: MirrorPlan) -> list[str]:
    head = f"~ {plan.mirror}" if plan.changes else f"= {plan.mirror}"
    lines = []
    if plan.triggers:
        lines.append(f"{head}: triggers re-installed: {plan.triggers}")
    if plan.table_replaced:
        lines.append(f"{head}: {plan.table} is another table than the one registered: run resyncs every row")
    if not plan.index_exists and plan.index is not None and not plan.problem:
        lines.append(f"{head}: index {plan.index} missing: run creates it and syncs every row into it")
    if plan.differences:
        lines.append(f"{head}: index {plan.index} differs from the config and must be rebuilt:")
        lines += [f"    - {d}" for d in plan.differences]
        note = rebuild_note(
            str(plan.index), online=plan.rebuild_online, moves_keys=plan.moves_keys, why=plan.rebuild_problem
        )
        lines.append(f"    {note}")
    if plan.embedding is not None and plan.embedding.reembed:
        e = plan.embedding
        lines.append(
            f"{head}: {e.reembed} of {e.rows} rows will be re-embedded (exact; {e.unchanged} unchanged)"
        )
    if plan.embedding is not None and plan.embedding.failing:
        lines.append(
            f"{head}: {plan.embedding.failing} rows cannot be rendered by the template (failed rows)"
        )
    if not lines:
        lines.append(f"{head}: unchanged ({plan.documents} documents in {plan.index})")
    return lines
