"""A mirror's generation in Postgres: which history of its table the versions belong to.

A version (a change id) orders one key's writes within one history only. A history starts again
when the mirror is registered (a new mirrors_v1 row: first install, added back, renamed), when its
table is replaced (DROP + CREATE: another OID), and when Postgres goes back in time (a restore: the
change-id sequence behind the highest version Redis holds). Each start is a new random generation,
kept in mirrors_v1; Redis compares versions only within a generation (see sink/versioned.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from vecmirror.errors import NotMigratedError
from vecmirror.source import Connection
from vecmirror.source.sql import QUERIES


@dataclass(frozen=True)
class GenerationState:
    generation: str
    table_oid: int | None  # the table the mirror was registered with (None: before 0005)
    current_oid: int | None  # the table its name gives now (None: no such table)
    last_change_id: int  # the newest change id handed out

    def replaced_table(self) -> bool:
        return None not in (self.table_oid, self.current_oid) and self.table_oid != self.current_oid

    def went_back(self, high: int) -> bool:
        """Redis holds a version Postgres never handed out: Postgres went back (a restore)."""
        return high > self.last_change_id


async def load(conn: Connection, mirror: str) -> GenerationState:
    row = await conn.fetchrow(QUERIES["mirror_generation"], mirror)
    if row is None:
        raise NotMigratedError(f"mirror {mirror!r} is not installed: run `vecmirror migrate` first")
    return GenerationState(row["generation"], row["table_oid"], row["current_oid"], row["last_change_id"])


async def renew(conn: Connection, mirror: str, old: str, *, table_oid: int | None = None) -> str:
    """Starts a new generation unless a peer did since `old` was read; returns the one in place."""
    generation: str = await conn.fetchval(QUERIES["renew_generation"], mirror, old, table_oid)
    return generation


async def record_table_oid(conn: Connection, mirror: str, table_oid: int) -> None:
    await conn.execute(QUERIES["record_table_oid"], mirror, table_oid)
