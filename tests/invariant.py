"""Invariant P, checked once the queue has drained: Redis is exactly a projection of the table.

- the queue of the mirror is empty and nothing is left claimed;
- the keys under the prefix are exactly the rows in scope (the table minus the poison rows);
- every field equals its column, the content hash matches the text, vectors have `dims` values
  (vecmirror's own `verify` compares those; it has tests of its own that it finds each drift);
- every stored version equals the row's latest version in Postgres (read here independently);
- the index counts one document per row in scope and refused no more documents than before;
- the dead-letter table holds exactly the poison rows, each out of attempts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import asyncpg
import redis
import redis.asyncio as aredis

from vecmirror.config import META_VERSION_FIELD, MirrorConfig
from vecmirror.ops.verify import Verifier
from vecmirror.sink.keys import document_key, key_pattern
from vecmirror.source.tables import inspect_table

RowKey = tuple[str, ...]


async def assert_invariant(
    pg: asyncpg.Connection,
    redis_url: str,
    mirror: MirrorConfig,
    *,
    poison: Iterable[RowKey] = (),
    failures_before: int = 0,
    max_text_length: int = 100_000,
) -> None:
    poison = set(poison)
    await _assert_queue_empty(pg, mirror.name)
    table = await inspect_table(pg, mirror)
    versions = await _row_versions(
        pg, mirror, table.statements.qualified_table, table.statements.key_expression
    )
    in_scope = {k: v for k, v in versions.items() if k not in poison}
    client = redis.Redis.from_url(redis_url)
    try:
        stored = {k.decode() for k in client.scan_iter(match=key_pattern(mirror), count=1000)}
        expected = {document_key(mirror, k): k for k in in_scope}
        assert stored == set(expected), _key_difference(stored, set(expected))
        _assert_versions(client, mirror, expected, in_scope)
        _assert_index_counts(client, mirror, len(in_scope), failures_before)
    finally:
        client.close()
    await _assert_verify_clean(pg, redis_url, mirror, table, max_text_length)
    await _assert_dead_letters(pg, mirror.name, poison)


async def _assert_queue_empty(pg: asyncpg.Connection, mirror: str) -> None:
    queued = await pg.fetchval("SELECT count(*) FROM vecmirror.changes_v1 WHERE mirror = $1", mirror)
    assert queued == 0, f"{queued} changes of {mirror!r} still queued"
    locks = await pg.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
    assert locks == 0, f"{locks} advisory locks still held: a claim was left behind"


async def _row_versions(
    pg: asyncpg.Connection, mirror: MirrorConfig, qualified_table: str, key_expression: str
) -> dict[RowKey, int]:
    # Postgres' own view of each row's latest version (0: unchanged since capture began).
    rows = await pg.fetch(
        f"SELECT {key_expression} AS k, coalesce(v.version, 0) AS version FROM {qualified_table} "
        "LEFT JOIN vecmirror.versions_v1 v ON v.mirror = $1 AND v.row_key = " + key_expression,
        mirror.name,
    )
    return {tuple(r["k"]): r["version"] for r in rows}


def _key_difference(stored: set[str], expected: set[str]) -> str:
    return f"missing {sorted(expected - stored)[:10]}, extra {sorted(stored - expected)[:10]}"


def _assert_versions(
    client: redis.Redis, mirror: MirrorConfig, keys: dict[str, RowKey], versions: dict[RowKey, int]
) -> None:
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            if mirror.storage == "json":
                pipe.execute_command("JSON.GET", key, f"$.{META_VERSION_FIELD}")
            else:
                pipe.hget(key, META_VERSION_FIELD)
        replies = pipe.execute()
    for (key, row_key), reply in zip(keys.items(), replies, strict=True):
        held = json.loads(reply)[0] if mirror.storage == "json" else int(reply)
        assert held == versions[row_key], (
            f"{key}: Redis holds version {held}, the row is at {versions[row_key]}"
        )


def _assert_index_counts(client: redis.Redis, mirror: MirrorConfig, rows: int, failures_before: int) -> None:
    info: Any = client.ft(mirror.index.index.name).info()
    assert int(info["num_docs"]) == rows, f"index has {info['num_docs']} documents, {rows} rows in scope"
    failures = int(info["hash_indexing_failures"])
    assert failures <= failures_before, f"indexing failures grew from {failures_before} to {failures}"


async def _assert_verify_clean(
    pg: asyncpg.Connection, redis_url: str, mirror: MirrorConfig, table: Any, max_text_length: int
) -> None:
    client = aredis.Redis.from_url(redis_url)
    try:
        drift = await Verifier(mirror, table, client, max_text_length=max_text_length).verify(pg)
    finally:
        await client.aclose()
    assert drift.clean, drift.as_dict()


async def _assert_dead_letters(pg: asyncpg.Connection, mirror: str, poison: set[RowKey]) -> None:
    rows = await pg.fetch(
        "SELECT row_key, retry_at, error FROM vecmirror.failed_v1 WHERE mirror = $1", mirror
    )
    assert {tuple(r["row_key"]) for r in rows} == poison, [dict(r) for r in rows]
    assert all(r["retry_at"] is None for r in rows), "a poison row still has attempts left"
