"""What the capture triggers cost the user's own writes, measured in one run.

    .venv/bin/python bench/capture_overhead.py --rows 100000

Runs the same writes on two identical tables, one plain and one mirrored (triggers installed by
`vecmirror migrate`), and prints each time and the ratio mirrored/plain.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import asyncpg
from common import run_bench
from pydantic import SecretStr

from vecmirror.commands import migrate_command
from vecmirror.config import parse_config
from vecmirror.settings import Settings
from vecmirror.stack import StackUrls

MIRROR = {
    "name": "mirrored",
    "table": "mirrored",
    "index": {
        "index": {"name": "mirrored_idx", "prefix": "m", "storage_type": "hash"},
        "fields": [{"name": "body", "type": "text"}],
    },
}
Workload = Callable[[asyncpg.Connection, str, int], Awaitable[object]]


async def bulk_insert(conn: asyncpg.Connection, table: str, rows: int) -> object:
    return await conn.execute(f"INSERT INTO {table} SELECT g, 'text ' || g FROM generate_series(1, {rows}) g")


async def bulk_update(conn: asyncpg.Connection, table: str, _rows: int) -> object:
    return await conn.execute(f"UPDATE {table} SET body = body || '!'")


async def single_row_inserts(conn: asyncpg.Connection, table: str, rows: int) -> object:
    count = min(rows, 5000)
    await conn.executemany(
        f"INSERT INTO {table} VALUES ($1, 'one row')", [(rows + i,) for i in range(1, count + 1)]
    )
    return count


async def bulk_delete(conn: asyncpg.Connection, table: str, _rows: int) -> object:
    return await conn.execute(f"DELETE FROM {table}")


WORKLOADS: list[tuple[str, Workload]] = [
    ("INSERT ... SELECT (one statement)", bulk_insert),
    ("UPDATE every row", bulk_update),
    ("single-row INSERTs (≤5000 statements)", single_row_inserts),
    ("DELETE every row", bulk_delete),
]


async def measure(urls: StackUrls, rows: int) -> None:
    conn = await asyncpg.connect(urls.database_url)
    for table in ("plain", "mirrored"):
        await conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, body text)")
    settings = Settings(database_url=SecretStr(urls.database_url), redis_url=SecretStr(urls.redis_url))
    await migrate_command(settings, parse_config({"mirrors": [MIRROR]}))
    print(f"{'workload':42} {'plain s':>9} {'mirrored s':>11} {'ratio':>7}")
    for name, workload in WORKLOADS:
        plain = await _timed(workload, conn, "plain", rows)
        mirrored = await _timed(workload, conn, "mirrored", rows)
        print(f"{name:42} {plain:9.3f} {mirrored:11.3f} {mirrored / plain:7.2f}")
    await conn.close()


async def _timed(workload: Workload, conn: asyncpg.Connection, table: str, rows: int) -> float:
    started = time.perf_counter()
    await workload(conn, table, rows)
    return time.perf_counter() - started


def main() -> None:
    run_bench("Capture trigger overhead on the user's writes.", 100_000, measure)


if __name__ == "__main__":
    main()
