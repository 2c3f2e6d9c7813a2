"""Re-reads the current state of claimed rows: the queue says which keys, the table says what."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vecmirror.source import Connection
from vecmirror.source.changes import RowKey
from vecmirror.source.tables import SourceTable

Row = dict[str, Any]


async def load_rows(conn: Connection, table: SourceTable, keys: Sequence[RowKey]) -> dict[RowKey, Row]:
    """Rows by key; a key absent from the result was deleted (or never existed)."""
    if not keys:
        return {}
    columns = [list(parts) for parts in zip(*keys, strict=True)]
    records = await conn.fetch(table.statements.load_rows(), *columns)
    rows: dict[RowKey, Row] = {}
    for record in records:
        row = dict(record)
        rows[tuple(row.pop("_vm_key"))] = row
    return rows
