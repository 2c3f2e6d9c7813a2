"""`vecmirror verify [MIRROR] [--repair]`: compare every table with its Redis documents.

Walks the table in key order and the mirror's keys in Redis, and reports drift: rows with no
document (missing), documents with no row (extra), and documents that differ from what the row
would produce now (stale: the version, a field, the content hash, the vector's length). `--repair`
queues every drifted key as an ordinary change; the worker then rewrites or deletes it.

Documents are what the index holds: the keys of the mirror's type (HASH or JSON) under its prefix,
the count `status` shows as DOCUMENTS. Keys there that vecmirror did not write are foreign: one of
another type (a STRING `doc:zzz` under a HASH mirror) is no document (the index skips it, no count
includes it); one of the mirror's type without `_vm_key` is a document of the index (queries find
it). Both are reported, never repaired: vecmirror deletes only what it wrote.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as redis
import structlog

from vecmirror.config import META_HASH_FIELD, META_KEY_FIELD, META_VERSION_FIELD, MirrorConfig
from vecmirror.errors import RowError
from vecmirror.index.manage import index_info
from vecmirror.index.vectors import served_vector
from vecmirror.ops.verify_expected import AHEAD, CHUNK_REASONS, Expected, as_document, is_int
from vecmirror.pipeline.documents import DocumentBuilder, RowKey
from vecmirror.sink.cluster import get_many, scan_pages
from vecmirror.sink.keys import key_pattern
from vecmirror.sink.versioned import META_GENERATION_FIELD, parse_tombstone, tombstone_key
from vecmirror.sink.writer import RedisSink
from vecmirror.source import Connection, changes, generations
from vecmirror.source.backfill import count_rows
from vecmirror.source.rows import LoadedRows, load_rows
from vecmirror.source.tables import SourceTable

log = structlog.get_logger(__name__)
PAGE = 1000
FOREIGN_SHOWN = 5  # foreign keys named in verify's text output
Held = tuple[str | None, int, bool]  # a key's generation and version in Redis; whether a document
JSON_TYPE = "ReJSON-RL"  # what TYPE says of a JSON key


@dataclass(frozen=True)
class CountCheck:
    """The cheap check `run` repeats: row and document counts, judged only when nothing is queued."""

    mirror: str
    rows: int
    documents: int
    failed: int
    pending: int

    @property
    def drifted(self) -> bool:
        return self.pending == 0 and self.rows != self.documents + self.failed


async def count_check(conn: Connection, table: SourceTable, sink: RedisSink) -> CountCheck:
    return CountCheck(
        mirror=table.mirror,
        pending=await changes.pending(conn, table.mirror),
        rows=await count_rows(conn, table),
        failed=await changes.failed_rows(conn, table.mirror),
        documents=await sink.document_count(),
    )


@dataclass
class Drift:
    mirror: str
    rows: int = 0
    documents: int = 0
    missing: list[RowKey] = field(default_factory=list)
    extra: list[RowKey] = field(default_factory=list)
    stale: dict[RowKey, str] = field(default_factory=dict)
    foreign: dict[str, str] = field(default_factory=dict)  # Redis key → its type ("string", "json", …)
    # Keys whose document or tombstone holds a newer version than Postgres', in the same generation:
    # Postgres went back (a restore). Only a new generation lets the older versions be written.
    ahead: list[RowKey] = field(default_factory=list)
    generation: str | None = None  # the mirror's generation in Postgres when verified

    @property
    def clean(self) -> bool:
        return not (self.missing or self.extra or self.stale or self.foreign)

    def keys(self) -> list[RowKey]:
        return [*self.missing, *self.extra, *self.stale]

    def as_dict(self) -> dict[str, Any]:
        return {
            "mirror": self.mirror,
            "rows": self.rows,
            "documents": self.documents,
            "missing": [list(k) for k in self.missing],
            "extra": [list(k) for k in self.extra],
            "stale": [{"key": list(k), "reason": reason} for k, reason in self.stale.items()],
            "foreign": [{"key": key, "type": kind} for key, kind in sorted(self.foreign.items())],
            "ahead": [list(k) for k in self.ahead],
        }

    def lines(self, shown: int = 20) -> list[str]:
        """`vecmirror verify`'s text: a summary line, then the stale keys and foreign keys."""
        state = "in sync" if self.clean else "DRIFTED"
        out = [
            f"{self.mirror}: {state}: {self.rows} rows, {self.documents} documents, "
            f"{len(self.missing)} missing, {len(self.extra)} extra, {len(self.stale)} stale"
        ]
        out += [f"  stale {list(key)}: {reason}" for key, reason in list(self.stale.items())[:shown]]
        if self.ahead:
            out.append(
                f"  ahead of Postgres: {len(self.ahead)} key(s), e.g. {list(self.ahead[0])} (Postgres went "
                "back in time; --repair starts a new generation and the worker resyncs the mirror)"
            )
        if self.foreign:
            examples = ", ".join(f"{k} ({t})" for k, t in sorted(self.foreign.items())[:FOREIGN_SHOWN])
            out.append(
                f"  foreign keys under the prefix: {len(self.foreign)}, e.g. {examples} "
                "(not written by vecmirror; one of another type is not a document and is not counted)"
            )
        return out


class Verifier:
    def __init__(
        self, mirror: MirrorConfig, table: SourceTable, client: redis.Redis, *, max_text_length: int = 100_000
    ) -> None:
        self._mirror, self._table, self._redis = mirror, table, client
        self._sink = RedisSink(client, mirror)
        self._max_text_length = max_text_length
        self._builder = DocumentBuilder(mirror, max_text_length=max_text_length)
        self._expected = Expected(mirror)
        self._generations: tuple[str | None, str | None] = (None, None)  # Postgres', the marker's legacy

    async def _read_vectors_where_served(self) -> None:
        """Vectors are checked where the index users query reads them (an online re-embedding may
        have moved them: index/rollout.py)."""
        served = served_vector(await index_info(self._redis, self._mirror.index.index.name))
        if served is not None and served.name == getattr(self._mirror.vector_field, "name", None):
            self._mirror = self._mirror.with_vector_at(served.at)
            self._builder = DocumentBuilder(self._mirror, max_text_length=self._max_text_length)
            self._expected = Expected(self._mirror)

    async def verify(self, conn: Connection) -> Drift:
        await self._read_vectors_where_served()
        drift = Drift(self._mirror.name)
        drift.generation = (await generations.load(conn, self._mirror.name)).generation
        marker = await self._sink.versioned.read_marker()
        self._generations = (drift.generation, marker.legacy if marker is not None else None)
        seen: set[RowKey] = set()
        cursor: list[str] | None = None
        while True:
            statement = self._table.statements.key_page(after_cursor=cursor is not None)
            rows = await conn.fetch(statement, PAGE, self._mirror.name, *(cursor or []))
            if not rows:
                break
            page = {tuple(r["_vm_key"]): {k: v for k, v in dict(r).items() if k != "_vm_key"} for r in rows}
            seen.update(page)
            await self._compare_page(page, drift)
            cursor = list(rows[-1]["_vm_key"])
        drift.rows = len(seen)
        async for keys in self._scan_prefix():
            await self._classify(keys, seen, drift)
        # A row without a document whose tombstone is newer, or a document whose row is gone and
        # newer than Postgres' version of it, cannot be fixed by writing the older version: Postgres
        # went back, or the row changed without capture (triggers disabled).
        drift.ahead += await self._confirmed_ahead(conn, [*drift.missing, *drift.extra])
        return drift

    async def repair(self, conn: Connection, drift: Drift) -> int:
        """Queues every drifted key. Versions ahead of Postgres' cannot be written over in their
        generation: a new one starts, and the worker resyncs the whole mirror in it."""
        ahead = await self._confirmed_ahead(conn, drift.ahead)
        if ahead and drift.generation is not None:
            renewed = await generations.renew(conn, self._mirror.name, drift.generation)
            log.warning(
                "generation_renewed",
                mirror=self._mirror.name,
                generation=renewed,
                reason=f"verify found {len(ahead)} key(s) ahead of Postgres, e.g. {list(ahead[0])}",
            )
        keys = drift.keys()
        await self._forget_chunk_hashes(drift)
        if keys:
            await changes.enqueue(conn, self._mirror.name, keys)
        return len(keys)

    async def _forget_chunk_hashes(self, drift: Drift) -> None:
        """A chunked document whose chunks drifted still holds its text's hash, with which the
        worker keeps its chunks as they are: without it, they are written again, and each chunk's
        vector made again unless that chunk still holds the right one."""
        if not self._mirror.chunked:
            return
        broken = [key for key, reason in drift.stale.items() if reason.startswith(CHUNK_REASONS)]
        if broken:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in broken:
                    pipe.execute_command("JSON.DEL", self._sink.key(key), f"$.{META_HASH_FIELD}")
                await pipe.execute()

    async def _confirmed_ahead(self, conn: Connection, keys: list[RowKey]) -> list[RowKey]:
        """The keys whose Redis version is newer than Postgres' for them, in the mirror's own
        generation, read Redis, then Postgres, then Redis again. A key's versions only grow within
        one history, so this is no race with a worker that synced a newer row meanwhile, nor with
        a delete synced meanwhile (its row's version is then forgotten, but its document is gone
        by the second read). A row that is gone may keep a newer tombstone: only a document of it
        counts."""
        ahead: list[RowKey] = []
        for start in range(0, len(keys), PAGE):
            page = keys[start : start + PAGE]
            before = await self._held_versions(page)
            loaded = await load_rows(conn, self._table, page)
            after = await self._held_versions(page)
            ahead += [key for key in page if before[key] == after[key] and self._is_ahead(key, after, loaded)]
        return ahead

    def _is_ahead(self, key: RowKey, held: dict[RowKey, Held], loaded: LoadedRows) -> bool:
        owner, version, is_document = held[key]
        if owner != self._generations[0] or not (is_document or key in loaded.rows):
            return False
        return version > loaded.versions.get(key, 0)

    async def _held_versions(self, keys: list[RowKey]) -> dict[RowKey, Held]:
        """The generation and version of each key's document, or else of its tombstone (-1: none),
        and whether it is a document."""
        legacy = self._generations[1]
        redis_keys = [self._sink.key(k) for k in keys]
        documents = await self._stored(redis_keys)
        stones = await get_many(self._redis, [tombstone_key(k) for k in redis_keys])  # several slots
        held: dict[RowKey, Held] = {}
        for key, document, stone in zip(keys, documents, stones, strict=True):
            if document is not None and is_int(document.get(META_VERSION_FIELD)):
                owner = document.get(META_GENERATION_FIELD) or legacy
                held[key] = (owner, int(str(document[META_VERSION_FIELD])), True)
            elif document is None and stone is not None:
                held[key] = (*parse_tombstone(stone, legacy), False)
            else:
                held[key] = (None, -1, False)
        return held

    async def _scan_prefix(self) -> AsyncIterator[list[str]]:
        async for keys in scan_pages(self._redis, key_pattern(self._mirror), PAGE):
            yield keys

    async def _classify(self, keys: list[str], seen: set[RowKey], drift: Drift) -> None:
        """Each key is a document (extra if its row is gone) or foreign; one TYPE and one read of
        `_vm_key` per key, errors returned, not raised (HGET of a STRING is one)."""
        is_json = self._mirror.storage == "json"
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.type(key)
                if is_json:
                    pipe.execute_command("JSON.GET", key, f"$.{META_KEY_FIELD}")
                else:
                    pipe.hget(key, META_KEY_FIELD)
            replies = await pipe.execute(raise_on_error=False)
        own = JSON_TYPE if is_json else "hash"
        for key, kind, meta in zip(keys, map(_text, replies[::2]), replies[1::2], strict=True):
            row_key = _row_key(meta, is_json=is_json) if kind == own else None
            if kind == own:
                drift.documents += 1
            if row_key is not None and row_key not in seen:
                drift.extra.append(row_key)
            elif row_key is None and kind != "none":  # "none": deleted since the SCAN
                drift.foreign[key] = "json" if kind == JSON_TYPE else kind

    async def _compare_page(self, page: dict[RowKey, dict[str, Any]], drift: Drift) -> None:
        stored = await self._stored([self._sink.key(k) for k in page])
        for (key, row), document in zip(page.items(), stored, strict=True):
            reason = self._difference(key, row, document)
            if reason == "missing":
                drift.missing.append(key)
            elif reason is not None:
                drift.stale[key] = reason
                if reason.startswith(AHEAD):
                    drift.ahead.append(key)

    def _difference(self, key: RowKey, row: dict[str, Any], stored: dict[str, Any] | None) -> str | None:
        version = row.pop("_vm_version")
        try:
            expected = self._builder.build(key, row)
            expected.version = version
        except RowError as exc:  # a failed row must have no document
            return (
                None if stored is None else f"the row fails ({exc.field}: {exc.problem}) but has a document"
            )
        if stored is None:
            return "missing"
        return self._expected.difference(expected, stored, *self._generations)

    async def _stored(self, keys: list[str]) -> list[dict[str, Any] | None]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                if self._mirror.storage == "json":
                    pipe.execute_command("JSON.GET", key)
                else:
                    pipe.hgetall(key)
            # A foreign key at a row's key (a STRING doc:1) answers an error: that row has no document.
            replies = [
                None if isinstance(r, Exception) else r for r in await pipe.execute(raise_on_error=False)
            ]
        name = self._mirror.vector_at
        return [as_document(reply, self._mirror.storage == "json", name) for reply in replies]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _row_key(meta: Any, *, is_json: bool) -> RowKey | None:
    """The row key kept in a document's `_vm_key` (HASH: JSON text; JSON: JSON.GET's array of it)."""
    if meta is None or isinstance(meta, Exception):
        return None
    try:
        value = json.loads(_text(meta))
        if isinstance(value, list) and is_json:
            value = value[0] if value else None
        if isinstance(value, str):
            value = json.loads(value)
    except ValueError:  # not vecmirror's
        return None
    return tuple(str(part) for part in value) if isinstance(value, list) else None
