"""Related tables: their changes name the documents to read again (a mirror's `related:`).

A related table gets one capture, shared by every mirror relating to it. Its trigger queues, per
consuming mirror, only the values that name documents (the `on` columns of each changed row, or
its key for a `keys` query), before and after the change: one queue row per changed related row,
whatever number of documents it affects. The worker fans those rows out into the mirror's own
queue (`fan_out`), in one transaction with their deletion, so a crash loses nothing; the fanned-out
keys get new versions like any captured change, so a write read before the related change can
never overwrite one read after it.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import structlog

from vecmirror.config import RelatedConfig
from vecmirror.source import Connection
from vecmirror.source.sql import QUERIES
from vecmirror.source.statements import (
    KeyColumn,
    capture_settings,
    quote_ident,
    quote_literal,
    statement_triggers,
)

log = structlog.get_logger(__name__)
# Related changes fanned out per transaction: each may queue many documents.
FAN_OUT_LIMIT = 500


@dataclass(frozen=True)
class CapturedColumn:
    name: str
    sql_type: str  # format_type(): how the captured text is cast back
    attnum: int  # the capture function notices a rename or a drop by it


@dataclass(frozen=True)
class Relation:
    """One entry of a mirror's `related:`, checked against the database."""

    mirror: str
    config: RelatedConfig
    captured: tuple[CapturedColumn, ...]  # the related table's columns its capture queues, in order
    affected: str  # the keys of the documents the captured values name, as the checks prepare it
    fan_out: str  # queues them (fan_out_on / fan_out_keys)
    # For `keys`: the element type of each parameter of the user's query, to cast the text to.
    parameter_types: tuple[str, ...] = ()

    @property
    def relation_id(self) -> str:
        return self.config.relation_id


def capture_id(schema: str, table: str) -> str:
    """Names a related table's capture (function and triggers): short enough for 63-byte names."""
    return hashlib.sha256(f"{schema}.{table}".encode()).hexdigest()[:12]


def capture_function_name(capture: str) -> str:
    return f"vecmirror.{quote_ident(f'related_v1_{capture}')}"


def trigger_name(capture: str, event: str) -> str:
    return f"vecmirror_v1_rel_{capture}_{event}"


def consumer_name(mirror: str, relation_id: str) -> str:
    return f"{mirror}/{relation_id}"


def _queue_changes(affected: str, mirror: str, created_at: str) -> str:
    """Queue the `affected` row keys (a SELECT of `row_key`) as changes of the mirror, with new
    versions, as the table's own capture does; returns how many. The versions go to
    related_versions_v1, which no user transaction locks: a user's write never waits for a fan-out
    (nor deadlocks with one). Fan-outs take them in key order, so two never deadlock either."""
    return (
        f"WITH affected AS ({affected}), "
        "queued AS (INSERT INTO vecmirror.changes_v1 (mirror, row_key, created_at) "
        f"SELECT {mirror}, row_key, {created_at} FROM affected ORDER BY row_key RETURNING row_key, id), "
        "versioned AS (INSERT INTO vecmirror.related_versions_v1 (mirror, row_key, version) "
        f"SELECT {mirror}, row_key, max(id) FROM queued GROUP BY row_key ORDER BY row_key "
        "ON CONFLICT (mirror, row_key) "
        "DO UPDATE SET version = GREATEST(vecmirror.related_versions_v1.version, EXCLUDED.version) "
        "RETURNING 1) "
        "SELECT count(*) FROM queued"
    )


def _key_text(alias: str, keys: Sequence[KeyColumn]) -> str:
    return "ARRAY[" + ", ".join(f"{alias}.{quote_ident(k.name)}::text" for k in keys) + "]"


def affected_on(
    table: str, keys: Sequence[KeyColumn], on: Sequence[tuple[str, CapturedColumn]], values: str = "$3"
) -> str:
    """The keys of the documents whose `table` column equals a captured value of the related
    column, for each pair of `on`. `values`: the captured values (a JSON array of text arrays)."""
    casts = ", ".join(f"(v->>{i})::{col.sql_type} AS c{i}" for i, (_, col) in enumerate(on))
    join = " AND ".join(f"r.{quote_ident(name)} = c.c{i}" for i, (name, _) in enumerate(on))
    return (
        f"SELECT DISTINCT {_key_text('r', keys)} AS row_key FROM {table} r "
        f"JOIN (SELECT DISTINCT {casts} FROM jsonb_array_elements({values}::jsonb) AS v) AS c ON {join}"
    )


def fan_out_on(affected: str) -> str:
    """Queues the documents `affected_on` names. $1 mirror, $2 when the related change was made."""
    return _queue_changes(affected, "$1", "$2")


def affected_keys(query: str, keys: Sequence[KeyColumn]) -> str:
    """The keys of the documents the user's query returns ($1..$n its own parameters: an array per
    key column of the related table). Each returned value is read as the key column's type first,
    so its text is the key's own (`1.0` or `' 2'` returned for an integer key names the row `1` or
    `2`); a row with a NULL names nothing."""
    columns = [f"c{i}" for i in range(len(keys))]
    key_text = (
        "ARRAY[" + ", ".join(f"k.{c}::{k.sql_type}::text" for c, k in zip(columns, keys, strict=True)) + "]"
    )
    present = " AND ".join(f"k.{c} IS NOT NULL" for c in columns)
    return f"SELECT DISTINCT {key_text} AS row_key FROM ({query}) AS k({', '.join(columns)}) WHERE {present}"


def fan_out_keys(affected: str, parameters: int) -> str:
    """Queues the documents `affected_keys` names. After the query's own parameters: the mirror
    and when the related change was made."""
    return _queue_changes(affected, f"${parameters + 1}", f"${parameters + 2}")


def fan_out_all(table: str, keys: Sequence[KeyColumn]) -> str:
    """Every document: a related table was truncated (or its capture lost a column, or a relation
    left the config with changes queued). $1 mirror, $2 when."""
    return _queue_changes(f"SELECT {_key_text('r', keys)} AS row_key FROM {table} r", "$1", "$2")


def typed_parameters(captured: Sequence[CapturedColumn], types: Sequence[str]) -> str:
    """The captured key texts as the arrays a `keys` query takes, read as the key columns' types
    first. $1: a JSON array of text arrays."""
    arrays = ", ".join(
        f"ARRAY(SELECT (v->>{i})::{column.sql_type}::{t} FROM jsonb_array_elements($1::jsonb) AS v) AS p{i}"
        for i, (column, t) in enumerate(zip(captured, types, strict=True))
    )
    return f"SELECT {arrays}"


# -- The capture ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Consumer:
    mirror: str
    relation_id: str
    columns: tuple[str, ...]  # of the related table, in the order their values are queued


def _values(consumer: Consumer, source: str) -> str:
    array = "ARRAY[" + ", ".join(f"{quote_ident(c)}::text" for c in consumer.columns) + "]"
    names = f"{quote_literal(consumer.mirror)}, {quote_literal(consumer.relation_id)}"
    return f"SELECT {names}, {array} FROM {source}"


def _insert(consumers: Sequence[Consumer], changed: str) -> str:
    """One INSERT for every consumer; `changed` is new, old or both transition tables."""
    selects = []
    for consumer in consumers:
        if changed == "both":
            selects.append(f"{_values(consumer, 'vecmirror_new')} UNION {_values(consumer, 'vecmirror_old')}")
        else:
            selects.append(_values(consumer, changed).replace("SELECT ", "SELECT DISTINCT ", 1))
    body = " UNION ALL ".join(f"({s})" for s in selects)
    return f"INSERT INTO vecmirror.related_changes_v1 (mirror, relation, row_values) {body}"


def _every_document(consumers: Sequence[Consumer]) -> str:
    values = ", ".join(
        f"({quote_literal(c.mirror)}, {quote_literal(c.relation_id)}, NULL)" for c in consumers
    )
    return f"INSERT INTO vecmirror.related_changes_v1 (mirror, relation, row_values) VALUES {values}"


def _columns_unchanged(columns: Sequence[CapturedColumn]) -> str:
    """True while every captured column has the name and attnum the static SQL was made with."""
    by_attnum = sorted({c.attnum: c for c in columns}.values(), key=lambda c: c.attnum)
    attnums = ",".join(str(c.attnum) for c in by_attnum)
    names = ", ".join(quote_literal(c.name) for c in by_attnum)
    return (
        "ARRAY(SELECT attname::text FROM pg_attribute WHERE attrelid = TG_RELID "
        f"AND attnum = ANY ('{{{attnums}}}'::int2[]) ORDER BY attnum) = ARRAY[{names}]"
    )


def related_capture_function(
    capture: str, consumers: Sequence[Consumer], columns: Sequence[CapturedColumn]
) -> str:
    """The shared trigger function of a related table. Static SQL, planned once per session; a
    user's write never fails because of it: a captured column renamed or dropped since `migrate`
    queues a re-read of every document (and warns) instead of running SQL that names it."""
    return f"""
CREATE OR REPLACE FUNCTION {capture_function_name(capture)}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp {capture_settings()}
AS $vecmirror$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        {_every_document(consumers)};
    ELSIF NOT ({_columns_unchanged(columns)}) THEN
        RAISE WARNING 'vecmirror: a column of %.% that related mirrors read was renamed or dropped; '
            'their documents are all read again', TG_TABLE_SCHEMA, TG_TABLE_NAME
            USING HINT = 'Update the mirrors'' related: and run vecmirror migrate.';
        {_every_document(consumers)};
    ELSIF TG_OP = 'INSERT' THEN
        {_insert(consumers, "vecmirror_new")};
    ELSIF TG_OP = 'UPDATE' THEN
        {_insert(consumers, "both")};
    ELSE
        {_insert(consumers, "vecmirror_old")};
    END IF;
    -- No payload: NOTIFY only wakes workers, the queue table is the truth.
    PERFORM pg_notify('vecmirror_changes_v1', '');
    RETURN NULL;
END;
$vecmirror$"""


def create_related_triggers(capture: str, qualified_table: str) -> list[str]:
    return statement_triggers(
        lambda event: trigger_name(capture, event), capture_function_name(capture), qualified_table
    )


@dataclass(frozen=True)
class RelatedCapture:
    """What one related table's capture serves: every mirror relating to it."""

    capture: str
    schema: str
    table: str
    consumers: tuple[Consumer, ...]
    columns: tuple[CapturedColumn, ...]


def wanted_captures(relations: Sequence[Relation]) -> list[RelatedCapture]:
    """One capture per related table of the config, with every consumer of it."""
    by_table: dict[tuple[str, str], list[Relation]] = defaultdict(list)
    for relation in relations:
        by_table[(relation.config.schema_name, relation.config.table_name)].append(relation)
    captures = []
    for (schema, table), related in sorted(by_table.items()):
        consumers = tuple(
            Consumer(r.mirror, r.relation_id, tuple(c.name for c in r.captured)) for r in related
        )
        columns = tuple({c.attnum: c for r in related for c in r.captured}.values())
        captures.append(RelatedCapture(capture_id(schema, table), schema, table, consumers, columns))
    return captures


# -- The fan-out ------------------------------------------------------------------------------


class FanOutFailed(Exception):
    """Postgres refused a relation's fan-out: whose fault it is, the worker decides (run/faults.py)
    from `error`; the message names the related table."""

    def __init__(self, table: str, error: asyncpg.PostgresError) -> None:
        self.table = table
        self.error = error
        super().__init__(
            f"related table {table}: its changes could not be fanned out to documents: "
            f"{type(error).__name__}: {error}"
        )


@dataclass
class FanOut:
    related_changes: int = 0
    documents: int = 0


async def fan_out(
    conn: Connection,
    mirror: str,
    relations: Sequence[Relation],
    everything: str,
    limit: int = FAN_OUT_LIMIT,
) -> FanOut:
    """Claims up to `limit` of the mirror's related changes, queues the documents the oldest one's
    relation names (with every claimed change of that relation) and deletes those, in the caller's
    transaction: one statement per transaction, whose versions are taken in key order, so two
    fan-outs never deadlock. `everything` queues every document, for a TRUNCATE and for changes
    of a relation the config no longer has; it settles every change claimed."""
    rows = await conn.fetch(QUERIES["claim_related_changes"], mirror, limit)
    if not rows:
        return FanOut()
    known = {r.relation_id: r for r in relations}

    def relation_of(row: asyncpg.Record) -> str | None:
        return str(row["relation"]) if row["relation"] in known and row["row_values"] is not None else None

    if any(relation_of(row) is None for row in rows):
        # Every document is read again: the other changes would only queue some of them twice.
        settled = list(rows)
        when = min(row["created_at"] for row in settled)
        documents = int(await conn.fetchval(everything, mirror, when))
    else:
        first = relation_of(rows[0])
        assert first is not None
        settled = [row for row in rows if relation_of(row) == first]
        when = min(row["created_at"] for row in settled)
        values = [row["row_values"] for row in settled]
        documents = await _fan_out_relation(conn, known[first], values, when)
    await conn.execute(QUERIES["delete_related_changes"], mirror, [row["id"] for row in settled])
    log.info("related_changes_fanned_out", mirror=mirror, related_changes=len(settled), queued=documents)
    return FanOut(related_changes=len(settled), documents=documents)


async def _fan_out_relation(
    conn: Connection, relation: Relation, values: list[list[str | None]], when: datetime
) -> int:
    """Queues the documents one relation's changes name; a statement that fails names the relation
    (the changes stay queued)."""
    try:
        return await _queue_named_documents(conn, relation, values, when)
    except asyncpg.PostgresError as exc:
        raise FanOutFailed(relation.config.table, exc) from exc


async def _queue_named_documents(
    conn: Connection, relation: Relation, values: list[list[str | None]], when: datetime
) -> int:
    captured = json.dumps(values)
    if relation.config.on is not None:
        return int(await conn.fetchval(relation.fan_out, relation.mirror, when, captured))
    typed = await conn.fetchrow(typed_parameters(relation.captured, relation.parameter_types), captured)
    assert typed is not None
    return int(await conn.fetchval(relation.fan_out, *typed.values(), relation.mirror, when))
