"""Checks a mirror's table against the config and prepares the statements that read it."""

from __future__ import annotations

from dataclasses import dataclass

from vecmirror.config import MirrorConfig, template_columns
from vecmirror.errors import StartupError
from vecmirror.source import Connection
from vecmirror.source.sql import QUERIES
from vecmirror.source.statements import KeyColumn, TableStatements, qualified, select_list

VECTOR_COLUMN_TYPES = {"_float4", "_float8", "_numeric", "bytea", "vector"}


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str
    base_type: str  # pg_type.typname: _float4 for real[], vector for pgvector, ...


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
    schema, table = mirror.schema_name, mirror.table_name
    rows = await conn.fetch(QUERIES["table_columns"], schema, table)
    if not rows:
        raise StartupError(f"mirror {mirror.name!r}: table: {mirror.table} does not exist")
    columns = {r["name"]: Column(r["name"], r["type"], r["base_type"]) for r in rows}
    key_names = mirror.key or tuple(
        r["name"] for r in await conn.fetch(QUERIES["primary_key_columns"], schema, table)
    )
    problems = _column_problems(mirror, columns, key_names)
    if problems:
        raise StartupError("\n".join(f"mirror {mirror.name!r}: {p}" for p in problems))
    keys = tuple(KeyColumn(name, columns[name].sql_type) for name in key_names)
    values = [(name, columns[name].base_type) for name in mirror.columns_needed()]
    statements = TableStatements(qualified(schema, table), keys, select_list(values))
    return SourceTable(mirror.name, columns, statements)


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
