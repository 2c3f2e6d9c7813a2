"""Re-reads the current state of claimed rows: the queue says which keys, the table says what."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vecmirror.source import Connection
from vecmirror.source.changes import RowKey
from vecmirror.source.tables import SourceTable

Row = dict[str, Any]


@dataclass(frozen=True)
class LoadedRows:
    rows: dict[RowKey, Row]  # a key absent here was deleted (or never existed)
    versions: dict[RowKey, int]  # every key asked for, deleted ones included
    # Keys a documents view returned several rows for, and how many: each is a failed row.
    duplicated: dict[RowKey, int] = field(default_factory=dict)


async def load_rows(conn: Connection, table: SourceTable, keys: Sequence[RowKey]) -> LoadedRows:
    """Rows and their versions by key, from one snapshot."""
    if not keys:
        return LoadedRows({}, {})
    columns = [list(parts) for parts in zip(*keys, strict=True)]
    records = await conn.fetch(table.statements.load_rows(), *columns, table.mirror)
    loaded = LoadedRows({}, {})
    for record in records:
        row = dict(record)
        key = tuple(row.pop("_vm_key"))
        loaded.versions[key] = row.pop("_vm_version")
        if row.pop("_vm_found"):
            if key in loaded.rows:
                loaded.duplicated[key] = loaded.duplicated.get(key, 1) + 1
            loaded.rows[key] = row
    return loaded
