"""Checks a mirror's table against the config and prepares the statements that read it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from vecmirror.config import MirrorConfig, template_columns
from vecmirror.errors import StartupError
from vecmirror.source import Connection
from vecmirror.source.related import Relation
from vecmirror.source.related_checks import MirrorTable, inspect_relations
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
    # Where the values are read: the documents view's columns, or the table's.
    value_columns: dict[str, Column] = field(default_factory=dict)
    # Where documents are read, as mirrors_v1 records it: the view's name and a digest of its
    # definition (CREATE OR REPLACE VIEW fires no trigger, yet changes what every document reads).
    documents_state: str | None = None
    relations: tuple[Relation, ...] = ()

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.statements.key_columns)


async def inspect_table(conn: Connection, mirror: MirrorConfig) -> SourceTable:
    """Everything the config says about the table must hold, or start-up stops here."""
    columns, key_names, problems = await _inspect(conn, mirror)
    values, definition = columns, None
    if not problems and mirror.documents is not None:
        values, definition, problems = await _inspect_documents(conn, mirror, columns, key_names)
    keys = tuple(KeyColumn(name, columns[name].sql_type, columns[name].attnum) for name in key_names)
    qualified_table = qualified(mirror.schema_name, mirror.table_name)
    relations: tuple[Relation, ...] = ()
    if not problems and mirror.related:
        relations, problems = await inspect_relations(
            conn, MirrorTable(mirror, qualified_table, columns, keys)
        )
    if problems:
        raise StartupError(f"mirror {mirror.name!r}: " + "; ".join(problems))  # one line: see cli.py
    read = select_list([(name, values[name].base_type) for name in mirror.columns_needed()])
    documents = qualified(*mirror.documents_source) if mirror.documents is not None else None
    statements = TableStatements(qualified_table, keys, read, documents)
    return SourceTable(mirror.name, columns, statements, values, definition, relations)


async def _inspect_documents(
    conn: Connection, mirror: MirrorConfig, columns: dict[str, Column], key_names: tuple[str, ...]
) -> tuple[dict[str, Column], str | None, list[str]]:
    """The documents view must have the table's key columns and every column the mirror reads."""
    schema, name = mirror.documents_source
    rows = await conn.fetch(QUERIES["table_columns"], schema, name)
    if not rows:
        return {}, None, [f"documents: {mirror.documents} does not exist"]
    view = {r["name"]: Column(r["name"], r["type"], r["base_type"], r["attnum"]) for r in rows}
    problems = [
        f"documents: {mirror.documents} has no key column {k!r} of {mirror.table}"
        for k in key_names
        if k not in view
    ]
    # The view is joined to the table by its key columns, whose text names the documents.
    problems += [
        f"documents: key column {k!r} is {view[k].sql_type} in {mirror.documents} but "
        f"{columns[k].sql_type} in {mirror.table}; give the view the table's type"
        for k in key_names
        if k in view and view[k].sql_type != columns[k].sql_type
    ]
    problems += _value_problems(mirror, view, mirror.documents or mirror.table)
    return view, await documents_state(conn, mirror), problems


async def documents_state(conn: Connection, mirror: MirrorConfig) -> str | None:
    """Where the mirror's documents are read, as mirrors_v1 records it: the view's name and a
    digest of its definition (CREATE OR REPLACE VIEW fires no trigger, yet changes what every
    document reads); None without a documents view."""
    if mirror.documents is None:
        return None
    schema, name = mirror.documents_source
    state = f"{schema}.{name}"
    definition = await conn.fetchval(QUERIES["view_definition"], schema, name)
    if definition is not None:
        state += "@" + hashlib.sha256(definition.encode()).hexdigest()[:12]
    return state


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
    if mirror.documents is None:
        problems += _value_problems(mirror, columns, mirror.table)
    return problems


def _value_problems(mirror: MirrorConfig, columns: dict[str, Column], source: str) -> list[str]:
    """Every field, template column and vector column must be a column of `source`."""
    problems: list[str] = []
    for index_field in mirror.value_fields:
        if index_field.name not in columns:
            problems.append(f"index.fields.{index_field.name}: no column {index_field.name!r} in {source}")
    if mirror.embed is not None:
        problems += [
            f"embed.template: placeholder {{{c}}} is not a column of {source}"
            for c in _template_columns(mirror)
            if c not in columns
        ]
    problems += _vector_column_problems(mirror, columns, source)
    return problems


def _template_columns(mirror: MirrorConfig) -> list[str]:
    return template_columns(mirror.embed.template) if mirror.embed else []


def _vector_column_problems(mirror: MirrorConfig, columns: dict[str, Column], source: str) -> list[str]:
    name = mirror.vector_column
    if name is None:
        return []
    if name not in columns:
        return [f"vector_column: no column {name!r} in {source}"]
    column = columns[name]
    if column.base_type not in VECTOR_COLUMN_TYPES:
        return [
            f"vector_column: column {name!r} has type {column.sql_type}; expected real[], "
            "double precision[], numeric[], bytea or vector (pgvector)"
        ]
    return []
