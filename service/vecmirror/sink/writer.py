"""Writes a batch of documents to Redis as versioned writes in MULTI/EXEC pipelines and checks they
were indexed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import redis.asyncio as redis
import structlog
from redis.exceptions import ResponseError

from vecmirror.config import META_HASH_FIELD, META_KEY_FIELD, MirrorConfig
from vecmirror.errors import RedisForgotError
from vecmirror.pipeline.documents import Document, RowKey
from vecmirror.sink.encode import HashEncoder, JsonEncoder
from vecmirror.sink.keys import document_key, key_pattern
from vecmirror.sink.versioned import APPLIED, VersionedWrites

log = structlog.get_logger(__name__)
WRITE_CHUNK = 100


class RedisSink:
    def __init__(self, client: redis.Redis, mirror: MirrorConfig, *, tombstone_ttl: float = 86400.0) -> None:
        self._redis = client
        self._mirror = mirror
        self._is_json = mirror.storage == "json"
        self._hash = HashEncoder(mirror)
        self._json = JsonEncoder(mirror)
        self.versioned = VersionedWrites(client, mirror.name, json=self._is_json, tombstone_ttl=tombstone_ttl)
        self.index_name = mirror.index.index.name

    @property
    def client(self) -> redis.Redis:
        return self._redis

    def key(self, row_key: RowKey) -> str:
        return document_key(self._mirror, row_key)

    async def stored_text_hashes(self, keys: Sequence[RowKey]) -> list[str | None]:
        """The content hash kept with each document, None where there is no document yet."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for row_key in keys:
                if self._is_json:
                    pipe.execute_command("JSON.GET", self.key(row_key), f"$.{META_HASH_FIELD}")
                else:
                    pipe.hget(self.key(row_key), META_HASH_FIELD)
            replies = await pipe.execute()
        return [self._decode_meta(reply) for reply in replies]

    async def write(
        self,
        upserts: Sequence[Document],
        deletes: Sequence[tuple[RowKey, int]],
        *,
        keep_vector: set[RowKey],
    ) -> list[RowKey]:
        """Versioned writes in MULTI/EXEC transactions of at most WRITE_CHUNK documents: the index
        never sees half a document, and Redis is never blocked by a whole batch (2,000 HNSW inserts
        in one transaction took over 5 s here, stalling every query meanwhile). `keep_vector`
        documents carry no vector because their text is unchanged; their stored vector stays.
        Deletes are (row key, version). Returns the keys Redis refused because it holds a newer
        version (a worker that was frozen past its claim)."""
        refused: list[RowKey] = []
        for start in range(0, len(upserts), WRITE_CHUNK):
            chunk = upserts[start : start + WRITE_CHUNK]
            async with self._redis.pipeline(transaction=True) as pipe:
                for document in chunk:
                    self._queue_upsert(pipe, document, partial=document.key in keep_vector)
                replies = await self._execute(pipe)
            refused += [d.key for d, reply in zip(chunk, replies, strict=True) if reply != APPLIED]
        for start in range(0, len(deletes), WRITE_CHUNK):
            gone = deletes[start : start + WRITE_CHUNK]
            async with self._redis.pipeline(transaction=True) as pipe:
                for row_key, version in gone:
                    self.versioned.delete(pipe, self.key(row_key), version)
                replies = await self._execute(pipe)
            refused += [k for (k, _), reply in zip(gone, replies, strict=True) if reply != APPLIED]
        return refused

    async def _execute(self, pipe: Any) -> list[Any]:
        try:
            return list(await pipe.execute())
        except ResponseError as exc:
            self.versioned.check_reply(exc)
            raise

    def _queue_upsert(self, pipe: Any, document: Document, *, partial: bool) -> None:
        key = self.key(document.key)
        if self._is_json:
            body = self._json.document(document, with_nulls=partial)
            self.versioned.json_upsert(
                pipe, key, document.version, json.dumps(body, ensure_ascii=False), merge=partial
            )
            return
        self.versioned.hash_upsert(
            pipe, key, document.version, self._hash.mapping(document), self._hash.removed(document)
        )

    async def indexing_failures(self) -> tuple[int, str | None]:
        """FT.INFO's count of documents the index refused, and its last reason when it says one."""
        info = await self._index_info()
        errors = info.get("Index Errors") or {}
        last = errors.get("last indexing error") if isinstance(errors, dict) else None
        return int(info["hash_indexing_failures"]), (str(last) if last and last != "N/A" else None)

    async def document_count(self) -> int:
        return int((await self._index_info())["num_docs"])

    async def _index_info(self) -> dict[str, Any]:
        try:
            info = await self._redis.ft(self.index_name).info()  # type: ignore[no-untyped-call]
        except ResponseError as exc:
            if "unknown index" in str(exc).lower() or "no such index" in str(exc).lower():
                raise RedisForgotError(self._mirror.name) from exc
            raise
        return dict(info)

    async def not_indexed(self, keys: Sequence[RowKey]) -> list[RowKey]:
        """Which of these written documents the index refused (INKEYS limits the search to them)."""
        if not keys:
            return []
        by_key = {self.key(k): k for k in keys}
        reply = await self._redis.execute_command(  # type: ignore[no-untyped-call]
            "FT.SEARCH",
            self.index_name,
            "*",
            "INKEYS",
            len(by_key),
            *by_key,
            "NOCONTENT",
            "LIMIT",
            0,
            len(by_key),
        )
        found = set(search_result_ids(reply))
        return [row_key for key, row_key in by_key.items() if key not in found]

    async def scan_row_keys(self, page: int = 1000) -> AsyncIterator[list[RowKey]]:
        """Row keys of every document under the mirror's prefix, a page at a time."""
        cursor = 0
        while True:
            cursor, keys = await self._redis.scan(cursor, match=key_pattern(self._mirror), count=page)
            if keys:
                yield await self._row_keys_of([_text(k) for k in keys])
            if cursor == 0:
                return

    async def _row_keys_of(self, keys: list[str]) -> list[RowKey]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                if self._is_json:
                    pipe.execute_command("JSON.GET", key, f"$.{META_KEY_FIELD}")
                else:
                    pipe.hget(key, META_KEY_FIELD)
            replies = await pipe.execute()
        row_keys = []
        for key, reply in zip(keys, replies, strict=True):
            parsed = self._decode_meta(reply)
            if parsed is None:
                log.warning("foreign_key_under_prefix", mirror=self._mirror.name, key=key)
                continue
            row_keys.append(tuple(parsed if isinstance(parsed, list) else json.loads(parsed)))
        return row_keys

    def _decode_meta(self, reply: Any) -> Any:
        if reply is None:
            return None
        text = _text(reply)
        if not self._is_json:
            return text
        values = json.loads(text)
        return values[0] if values else None


def search_result_ids(reply: Any) -> list[str]:
    """Document ids of an FT.SEARCH reply, in RESP3 (a map) or RESP2 (a flat list) form."""
    if isinstance(reply, dict):
        results: list[dict[Any, Any]] = reply.get(b"results", reply.get("results")) or []
        return [_text(r[b"id"] if b"id" in r else r["id"]) for r in results]
    return [_text(k) for k in reply[1:]]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
