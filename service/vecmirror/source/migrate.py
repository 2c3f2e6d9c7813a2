"""`vecmirror migrate`: apply the versioned schema once, then install or remove capture triggers.

Everything happens in one transaction under an advisory lock, so replicas starting together are
safe, and a failure leaves the database exactly as it was.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files

import asyncpg
import structlog

from vecmirror.config import Config, MirrorConfig, RelatedConfig
from vecmirror.source import Connection, generations
from vecmirror.source.related import (
    Relation,
    capture_id,
    consumer_name,
    create_related_triggers,
    related_capture_function,
    wanted_captures,
)
from vecmirror.source.related import capture_function_name as related_function_name
from vecmirror.source.related import trigger_name as related_trigger_name
from vecmirror.source.sql import QUERIES
from vecmirror.source.statements import (
    TRIGGER_EVENTS,
    capture_function,
    capture_function_name,
    create_triggers,
    drop_capture_function,
    drop_triggers,
    qualified,
    quote_ident,
    trigger_name,
)
from vecmirror.source.tables import SourceTable, inspect_table

log = structlog.get_logger(__name__)
MIGRATION_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


@dataclass
class MigrateReport:
    applied: list[str]
    installed: list[str]
    unchanged: list[str]
    removed: list[str]


def bundled_migrations() -> list[Migration]:
    found = []
    for entry in files("vecmirror.migrations").iterdir():
        match = MIGRATION_FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    return sorted(found, key=lambda m: m.version)


async def migrate(conn: Connection, config: Config) -> MigrateReport:
    report = MigrateReport([], [], [], [])
    async with conn.transaction():
        await conn.execute(QUERIES["lock_migrations"])
        await conn.execute(QUERIES["create_migrations_table"])
        report.applied = await _apply_pending(conn)
        tables = [await inspect_table(conn, mirror) for mirror in config.mirrors]
        installed = {r["name"]: r for r in await conn.fetch(QUERIES["installed_mirrors"])}
        for mirror, table in zip(config.mirrors, tables, strict=True):
            changed = await _install_mirror(conn, mirror, table, installed.get(mirror.name))
            changed = await _follow_table(conn, mirror.name) or changed
            changed = await follow_documents(conn, mirror.name, table.documents_state) or changed
            await conn.execute(QUERIES["record_redis_layout"], mirror.name, *redis_layout(mirror))
            (report.installed if changed else report.unchanged).append(mirror.name)
        await conn.execute(QUERIES["forget_removed_layouts"], [m.name for m in config.mirrors])
        for name in sorted(set(installed) - {m.name for m in config.mirrors}):
            await _remove_mirror(conn, installed[name])
            report.removed.append(name)
        for name in await _install_related(conn, [r for table in tables for r in table.relations]):
            if name in report.unchanged:
                report.unchanged.remove(name)
                report.installed.append(name)
    log.info("migrated", **vars(report))
    return report


def redis_layout(mirror: MirrorConfig) -> tuple[str, list[str], str, str]:
    """What the mirror writes in Redis, as mirrors_v1 records it (0006): index name, key prefixes,
    key separator, storage type. A removed mirror's data is deleted by it (sink/drop.py)."""
    index = mirror.index.index
    prefixes = [index.prefix] if isinstance(index.prefix, str) else list(index.prefix)
    return index.name, prefixes, index.key_separator, mirror.storage


async def recorded_layouts(conn: Connection) -> list[asyncpg.Record]:
    """Every recorded Redis layout (`redis_layouts`): of registered mirrors and of removed mirrors
    whose data may still be in Redis. None before 0006 is applied."""
    if not await conn.fetchval("SELECT to_regclass('vecmirror.removed_mirrors_v1') IS NOT NULL"):
        return []
    return list(await conn.fetch(QUERIES["redis_layouts"]))


async def forget_removed_layout(conn: Connection, mirror: str) -> None:
    """A removed mirror's Redis data was deleted: its recorded layout goes too."""
    await conn.execute(QUERIES["forget_removed_layout"], mirror)


async def _apply_pending(conn: Connection) -> list[str]:
    done = {r["version"] for r in await conn.fetch(QUERIES["applied_migrations"])}
    applied = []
    for migration in bundled_migrations():
        if migration.version in done:
            continue
        await conn.execute(migration.sql)
        await conn.execute(QUERIES["record_migration"], migration.version, migration.name)
        applied.append(f"{migration.version:04d}_{migration.name}")
    return applied


async def _install_mirror(
    conn: Connection,
    mirror: MirrorConfig,
    table: SourceTable,
    previous: asyncpg.Record | None,
) -> bool:
    """Installs the mirror's triggers unless exactly these are already in place. The function is
    always replaced: that takes no lock on the user's table, while DROP TRIGGER would. Triggers of
    the function found anywhere else (the table was renamed, or the config names another) go."""
    await conn.execute(capture_function(mirror.name, table.statements))
    wanted = (mirror.schema_name, mirror.table_name, list(table.key_names))
    found = await _capture_triggers(conn, mirror.name)
    if previous is not None:
        had = (previous["table_schema"], previous["table_name"], list(previous["key_columns"]))
        wanted_triggers = {(*wanted[:2], trigger_name(mirror.name, event)) for event in TRIGGER_EVENTS}
        if had == wanted and set(found) == wanted_triggers:
            return False
    await _drop_triggers(conn, found)
    for statement in drop_triggers(mirror.name, table.statements.qualified_table):
        await conn.execute(statement)
    for statement in create_triggers(mirror.name, table.statements):
        await conn.execute(statement)
    await conn.execute(QUERIES["register_mirror"], mirror.name, *wanted)
    return True


async def _follow_table(conn: Connection, mirror: str) -> bool:
    """Records the table's OID; another OID than the registered one (the table was dropped and
    created again, or the mirror now names another table) starts a new generation: the versions
    Redis holds belong to the old table's history. True when the generation changed."""
    state = await generations.load(conn, mirror)
    if state.current_oid is None:
        return False
    if not state.replaced_table():
        await generations.record_table_oid(conn, mirror, state.current_oid)
        return False
    renewed = await generations.renew(conn, mirror, state.generation, table_oid=state.current_oid)
    log.warning("generation_renewed", mirror=mirror, generation=renewed, reason="the table was replaced")
    return True


async def follow_documents(conn: Connection, mirror: str, state: str | None) -> bool:
    """Records where the mirror's documents are read (a view and its definition, or the table):
    another source reads other documents, so a new backfill walk reads each again. True then."""
    if await conn.fetchval(QUERIES["documents_source"], mirror) == state:
        return False
    changed = bool(await conn.fetchval(QUERIES["record_documents_source"], mirror, state))
    if changed:
        log.info("documents_source_changed", mirror=mirror, documents=state)
    return changed


async def _install_related(conn: Connection, relations: list[Relation]) -> set[str]:
    """One capture per related table, serving every mirror relating to it. Its function is always
    replaced (no lock on the table); triggers are created only where missing. Captures no mirror
    relates to any more go. Returns the mirrors whose every document is queued to be read again:
    those a capture starts serving, or served again after its triggers were gone (the table was
    dropped and created again), since related changes may have gone unseen."""
    wanted = {capture.capture: capture for capture in wanted_captures(relations)}
    registered = {r["capture"]: r for r in await conn.fetch(QUERIES["related_captures"])}
    reread: set[str] = set()
    for capture in wanted.values():
        await conn.execute(related_capture_function(capture.capture, capture.consumers, capture.columns))
        table = qualified(capture.schema, capture.table)
        found = set(await _capture_triggers(conn, capture.capture, related=True))
        triggers = {
            (capture.schema, capture.table, related_trigger_name(capture.capture, e)) for e in TRIGGER_EVENTS
        }
        consumers = [consumer_name(c.mirror, c.relation_id) for c in capture.consumers]
        served = set(registered[capture.capture]["consumers"]) if capture.capture in registered else set()
        if found != triggers:
            await _drop_triggers(conn, list(found))
            for statement in create_related_triggers(capture.capture, table):
                await conn.execute(statement)
            served = set()
        reread |= {
            c.mirror for c, name in zip(capture.consumers, consumers, strict=True) if name not in served
        }
        await conn.execute(
            QUERIES["register_related_capture"], capture.capture, capture.schema, capture.table, consumers
        )
    for mirror in sorted(reread):
        await conn.execute(QUERIES["requeue_all_rows"], mirror)
        log.info("related_capture_installed_rows_requeued", mirror=mirror)
    for row in registered.values():
        if row["capture"] not in wanted:
            await _drop_triggers(conn, await _capture_triggers(conn, row["capture"], related=True))
            await conn.execute(f"DROP FUNCTION IF EXISTS {related_function_name(row['capture'])}()")
            await conn.execute(QUERIES["forget_related_capture"], row["capture"])
    return reread


async def _capture_triggers(
    conn: Connection, name: str, *, related: bool = False
) -> list[tuple[str, str, str]]:
    """(schema, table, trigger) of every trigger calling the mirror's (or, with `related`, the
    related table's) capture function."""
    function = related_function_name(name) if related else capture_function_name(name)
    rows = await conn.fetch(QUERIES["capture_triggers"], function + "()")
    return [(r["table_schema"], r["table_name"], r["trigger_name"]) for r in rows]


async def _drop_triggers(conn: Connection, triggers: list[tuple[str, str, str]]) -> None:
    for schema, table, name in triggers:
        await conn.execute(f"DROP TRIGGER {quote_ident(name)} ON {qualified(schema, table)}")


async def _remove_mirror(conn: Connection, previous: asyncpg.Record) -> None:
    """Drops the mirror's capture and forgets its state; its recorded Redis layout moves to
    removed_mirrors_v1, where `migrate --drop-data` finds it (now or later)."""
    await _drop_triggers(conn, await _capture_triggers(conn, previous["name"]))
    await conn.execute(drop_capture_function(previous["name"]))
    for query in (
        "keep_removed_layout",
        "forget_mirror_changes",
        "forget_mirror_related_changes",
        "forget_mirror_related_versions",
        "forget_mirror_versions",
        "forget_mirror_failures",
        "forget_mirror",
    ):
        await conn.execute(QUERIES[query], previous["name"])


async def capture_problem(conn: Connection, mirror: MirrorConfig) -> str | None:
    """Why the mirror's changes are not being captured, or None: its table was dropped and created
    again, or its triggers were dropped, since `migrate` installed them. A worker checks this before
    trusting the table (its writes would be lost without a word)."""
    found = {
        (schema, table, trigger) for schema, table, trigger in await _capture_triggers(conn, mirror.name)
    }
    wanted = {(mirror.schema_name, mirror.table_name, trigger_name(mirror.name, e)) for e in TRIGGER_EVENTS}
    if not wanted <= found:
        return (
            f"the capture triggers are missing on {mirror.table} (the table was dropped and created "
            "again, or its triggers dropped): changes are not captured; run `vecmirror migrate`"
        )
    return await _related_capture_problem(conn, mirror)


async def _related_capture_problem(conn: Connection, mirror: MirrorConfig) -> str | None:
    """A related table's capture must exist and serve this mirror's relation as configured."""
    gap = await uncaptured_relation(conn, mirror)
    if gap is None:
        return None
    position, related = gap
    return (
        f"related.{position}: the changes of {related.table} are not captured for this mirror "
        "as configured (the table was created again, its triggers dropped, or the config changed "
        "since); run `vecmirror migrate`"
    )


async def uncaptured_relation(conn: Connection, mirror: MirrorConfig) -> tuple[int, RelatedConfig] | None:
    """The first of the mirror's relations whose related table's capture is missing, or does not
    queue for this relation as configured (as `migrate` would install it), with its position."""
    if not mirror.related:
        return None
    registered: dict[str, asyncpg.Record] = {}
    if await conn.fetchval("SELECT to_regclass('vecmirror.related_captures_v1') IS NOT NULL"):
        registered = {r["capture"]: r for r in await conn.fetch(QUERIES["related_captures"])}
    for position, related in enumerate(mirror.related):
        capture = capture_id(related.schema_name, related.table_name)
        row = registered.get(capture)
        consumer = consumer_name(mirror.name, related.relation_id)
        found = set(await _capture_triggers(conn, capture, related=True))
        wanted = {
            (related.schema_name, related.table_name, related_trigger_name(capture, e))
            for e in TRIGGER_EVENTS
        }
        if row is None or consumer not in row["consumers"] or not wanted <= found:
            return position, related
    return None
