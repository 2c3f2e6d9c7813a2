"""Checks a mirror's `related:` against the database and prepares each relation's statements.

Problems name the mirror's key path (`related.1.on.category_id`), like every other config check.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import asyncpg

from vecmirror.config import MirrorConfig, RelatedConfig
from vecmirror.source import Connection
from vecmirror.source.related import (
    CapturedColumn,
    Relation,
    affected_keys,
    affected_on,
    fan_out_keys,
    fan_out_on,
)
from vecmirror.source.sql import QUERIES
from vecmirror.source.statements import KeyColumn


@dataclass(frozen=True)
class MirrorTable:
    """The mirror's side of its relations: its table, checked."""

    mirror: MirrorConfig
    qualified_table: str
    columns: Collection[str]
    keys: Sequence[KeyColumn]


async def inspect_relations(conn: Connection, table: MirrorTable) -> tuple[tuple[Relation, ...], list[str]]:
    relations: list[Relation] = []
    problems: list[str] = []
    for position, related in enumerate(table.mirror.related):
        where = f"related.{position}"
        relation, found = await _inspect_relation(conn, table, related, where)
        if relation is not None and not found:
            found = await _comparable(conn, relation, where)
        problems += found
        if relation is not None:
            relations.append(relation)
    return tuple(relations), problems


async def _inspect_relation(
    conn: Connection, table: MirrorTable, related: RelatedConfig, where: str
) -> tuple[Relation | None, list[str]]:
    theirs = await _columns(conn, related)
    problem = (
        await _shape_problem(conn, related, where)
        if theirs
        else f"{where}.table: {related.table} does not exist"
    )
    if problem is not None:
        return None, [problem]
    if related.on is not None:
        return _on_relation(table, related, where, theirs)
    return await _keys_relation(conn, table, related, where, theirs)


async def _columns(conn: Connection, related: RelatedConfig) -> dict[str, CapturedColumn]:
    rows = await conn.fetch(QUERIES["table_columns"], related.schema_name, related.table_name)
    return {r["name"]: CapturedColumn(r["name"], r["type"], r["attnum"]) for r in rows}


async def _shape_problem(conn: Connection, related: RelatedConfig, where: str) -> str | None:
    """Statement triggers see this one table's writes: a view or a partitioned table has none."""
    shape = await conn.fetchrow(QUERIES["table_shape"], related.schema_name, related.table_name)
    if shape is None or shape["kind"] != "r":
        return f"{where}.table: {related.table} is not a plain table, whose writes triggers capture"
    return None


def _on_relation(
    table: MirrorTable, related: RelatedConfig, where: str, theirs: dict[str, CapturedColumn]
) -> tuple[Relation | None, list[str]]:
    assert related.on is not None
    mirror = table.mirror
    problems = [
        f"{where}.on: no column {mine!r} in {mirror.table}"
        for mine in related.on
        if mine not in table.columns
    ]
    problems += [
        f"{where}.on.{mine}: no column {other!r} in {related.table}"
        for mine, other in related.on.items()
        if other not in theirs
    ]
    if problems:
        return None, problems
    pairs = [(mine, theirs[other]) for mine, other in related.on.items()]
    checked = affected_on(table.qualified_table, table.keys, pairs, values="$1")
    statement = fan_out_on(affected_on(table.qualified_table, table.keys, pairs))
    return Relation(mirror.name, related, tuple(col for _, col in pairs), checked, statement), []


async def _comparable(conn: Connection, relation: Relation, where: str) -> list[str]:
    """The documents a change names must be found: an `on` pair of types with no `=` between them,
    or a `keys` query returning what is no key, fails here (only the user's tables are read, so it
    holds before the first `migrate` too)."""
    try:
        await _prepared(conn, relation.affected)
    except asyncpg.PostgresError as exc:
        what = "on" if relation.config.on is not None else "keys"
        return [f"{where}.{what}: the documents it names cannot be found: {one_line(exc)}"]
    return []


async def _prepared(conn: Connection, query: str) -> asyncpg.prepared_stmt.PreparedStatement[asyncpg.Record]:
    """The statement prepared in a savepoint: a failure must not abort `migrate`'s transaction,
    whose next checks would all fail (the next relation's, for one)."""
    async with conn.transaction():
        return await conn.prepare(query)


def one_line(error: asyncpg.PostgresError) -> str:
    """Postgres' message with its DETAIL and HINT lines joined: a problem is one line."""
    return f"{type(error).__name__}: " + " ".join(str(error).split())


async def _keys_relation(
    conn: Connection,
    table: MirrorTable,
    related: RelatedConfig,
    where: str,
    theirs: dict[str, CapturedColumn],
) -> tuple[Relation | None, list[str]]:
    assert related.keys is not None
    mirror, keys = table.mirror, table.keys
    key_names = related.key or await _primary_key(conn, related)
    if not key_names:
        return None, [f"{where}.key: {related.table} has no primary key; set `key:` to its key column(s)"]
    missing = [f"{where}.key: no column {k!r} in {related.table}" for k in key_names if k not in theirs]
    if missing:
        return None, missing
    try:
        query = await _prepared(conn, related.keys)
    except asyncpg.PostgresError as exc:
        return None, [f"{where}.keys: {one_line(exc)}"]
    parameters, returned = query.get_parameters(), query.get_attributes()
    problems = []
    if len(parameters) != len(key_names) or any(p.kind != "array" for p in parameters):
        problems.append(
            f"{where}.keys: takes {len(parameters)} parameter(s); expected {len(key_names)} "
            f"array(s), one per key column of {related.table} ({', '.join(key_names)}), as $1.."
        )
    if len(returned) != len(keys):
        problems.append(
            f"{where}.keys: returns {len(returned)} column(s); expected the {len(keys)} key column(s) "
            f"of {mirror.table}"
        )
    if problems:
        return None, problems
    types = await conn.fetch(QUERIES["array_element_types"], [p.oid for p in parameters])
    element_types = tuple(r["element_type"] for r in types)
    captured = tuple(theirs[k] for k in key_names)
    problems = [
        f"{where}.keys: ${position} takes {parameter}[], which the key column {column.name!r} of "
        f"{related.table} ({column.sql_type}) does not convert to; compare with that type"
        for position, (column, parameter) in enumerate(zip(captured, element_types, strict=True), start=1)
        if not await conn.fetchval(QUERIES["converts_implicitly"], column.sql_type, parameter)
    ]
    if problems:
        return None, problems
    affected = affected_keys(related.keys, keys)
    statement = fan_out_keys(affected, len(parameters))
    return Relation(mirror.name, related, captured, affected, statement, element_types), []


async def _primary_key(conn: Connection, related: RelatedConfig) -> tuple[str, ...]:
    rows = await conn.fetch(QUERIES["primary_key_columns"], related.schema_name, related.table_name)
    return tuple(r["name"] for r in rows)
