"""Checks a mirror's table against the config and prepares the statements that read it."""

from __future__ import annotations

from dataclasses import dataclass

from vecmirror.config import MirrorConfig, template_columns
from vecmirror.errors import StartupError
from vecmirror.source import Connection
from vecmirror.source.sql import QUERIES
from vecmirror.source.statements import KeyColumn, TableStatements, qualified, select_list

VECTOR_COLUMN_TYPES = {"_float4", "_float8", "_numeric", "bytea", "vector"}


# What pg_class.relkind says a relation is, for the message refusing one that is not a plain table.
RELATION_KINDS = {
    "v": "a view",
    "m": "a materialized view",
    "f": "a foreign table",
    "p": "a partitioned table",
}


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str
    base_type: str  # pg_type.typname: _float4 for real[], vector for pgvector, ...
    attnum: int = 0
    not_null: bool = False


@dataclass(frozen=True)
class SourceTable:
    mirror: str
    columns: dict[str, Column]
    statements: TableStatements

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.statements.key_columns)


async def inspect_table(conn: Connection, mirror: MirrorConfig) -> SourceTable:
    """Everything the config says about the table must hold, or start-up stops here."""
    columns, key_names, problems = await _inspect(conn, mirror)
    if problems:
        raise StartupError(f"mirror {mirror.name!r}: " + "; ".join(problems))  # one line: see cli.py
    keys = tuple(KeyColumn(name, columns[name].sql_type, columns[name].attnum) for name in key_names)
    values = [(name, columns[name].base_type) for name in mirror.columns_needed()]
    statements = TableStatements(qualified(mirror.schema_name, mirror.table_name), keys, select_list(values))
    return SourceTable(mirror.name, columns, statements)


async def _inspect(
    conn: Connection, mirror: MirrorConfig
) -> tuple[dict[str, Column], tuple[str, ...], list[str]]:
    rows = await conn.fetch(QUERIES["table_columns"], mirror.schema_name, mirror.table_name)
    if not rows:
        return {}, (), [f"table: {mirror.table} does not exist"]
    columns = {
        r["name"]: Column(r["name"], r["type"], r["base_type"], r["attnum"], r["not_null"]) for r in rows
    }
    key_names = await _key_names(conn, mirror)
    problems = await _shape_problems(conn, mirror) or _column_problems(mirror, columns, key_names)
    if not problems:
        problems = await _key_problems(conn, mirror, columns, key_names)
    return columns, key_names, problems


async def _key_names(conn: Connection, mirror: MirrorConfig) -> tuple[str, ...]:
    if mirror.key:
        return tuple(mirror.key)
    rows = await conn.fetch(QUERIES["primary_key_columns"], mirror.schema_name, mirror.table_name)
    return tuple(r["name"] for r in rows)


async def _shape_problems(conn: Connection, mirror: MirrorConfig) -> list[str]:
    """Triggers capture the statements on this one table only: writes made to a partition directly,
    ATTACH/DETACH PARTITION and writes to an inheritance child would all go unseen."""
    shape = await conn.fetchrow(QUERIES["table_shape"], mirror.schema_name, mirror.table_name)
    if shape is None:
        return [f"table: {mirror.table} does not exist"]
    what = f"table: {mirror.table} is"
    if shape["kind"] != "r":
        kind = RELATION_KINDS.get(shape["kind"], f"not a table (relkind {shape['kind']!r})")
        return [f"{what} {kind}; vecmirror mirrors plain tables only, whose writes its triggers see"]
    if shape["is_partition"]:
        return [
            f"{what} a partition; writes through its parent and ATTACH/DETACH are not captured: "
            "mirror a plain table (or DETACH it for good)"
        ]
    if shape["has_parents"] or shape["has_children"]:
        role = "inherits from another table" if shape["has_parents"] else "has inheritance children"
        return [
            f"{what} in an inheritance tree ({role}); writes to the other tables of the tree are not "
            "captured: mirror a plain table (ALTER TABLE ... NO INHERIT)"
        ]
    return []


async def _key_problems(
    conn: Connection, mirror: MirrorConfig, columns: dict[str, Column], key_names: tuple[str, ...]
) -> list[str]:
    """Each row must have exactly one key, and no two rows one key: a NULL key has no document to
    own, and two rows with one key would share one document."""
    problems = [
        f"key: column {name!r} of {mirror.table} allows NULL, and a row with a NULL key cannot have a "
        f"document; make it NOT NULL (ALTER TABLE {mirror.table} ALTER COLUMN {name} SET NOT NULL) "
        "or choose other key columns"
        for name in key_names
        if not columns[name].not_null
    ]
    index = await conn.fetchval(
        QUERIES["unique_key_index"], mirror.schema_name, mirror.table_name, list(key_names)
    )
    if index is None:
        listed = ", ".join(key_names)
        problems.append(
            f"key: ({listed}) is not unique in {mirror.table}: no primary key or unique index on these "
            "columns (or some of them) without a WHERE clause or expressions, so two rows could share "
            f"one document; add one (CREATE UNIQUE INDEX ON {mirror.table} ({listed})) or choose "
            "other key columns"
        )
    return problems


def _column_problems(
    mirror: MirrorConfig, columns: dict[str, Column], key_names: tuple[str, ...]
) -> list[str]:
    problems: list[str] = []
    if not key_names:
        problems.append(f"key: {mirror.table} has no primary key; set `key:` to its key column(s)")
    problems += [f"key: column {k!r} does not exist in {mirror.table}" for k in key_names if k not in columns]
    for field in mirror.value_fields:
        if field.name not in columns:
            problems.append(f"index.fields.{field.name}: no column {field.name!r} in {mirror.table}")
    if mirror.embed is not None:
        problems += [
            f"embed.template: placeholder {{{c}}} is not a column of {mirror.table}"
            for c in _template_columns(mirror)
            if c not in columns
        ]
    problems += _vector_column_problems(mirror, columns)
    return problems


def _template_columns(mirror: MirrorConfig) -> list[str]:
    return template_columns(mirror.embed.template) if mirror.embed else []


def _vector_column_problems(mirror: MirrorConfig, columns: dict[str, Column]) -> list[str]:
    name = mirror.vector_column
    if name is None:
        return []
    if name not in columns:
        return [f"vector_column: no column {name!r} in {mirror.table}"]
    column = columns[name]
    if column.base_type not in VECTOR_COLUMN_TYPES:
        return [
            f"vector_column: column {name!r} has type {column.sql_type}; expected real[], "
            "double precision[], numeric[], bytea or vector (pgvector)"
        ]
    return []
