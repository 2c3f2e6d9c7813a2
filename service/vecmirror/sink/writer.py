"""Writes a batch of documents to Redis in one MULTI/EXEC pipeline and checks they were indexed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import redis.asyncio as redis
import structlog

from vecmirror.config import META_HASH_FIELD, META_KEY_FIELD, MirrorConfig
from vecmirror.pipeline.documents import Document, RowKey
from vecmirror.sink.encode import HashEncoder, JsonEncoder
from vecmirror.sink.keys import document_key, key_pattern

log = structlog.get_logger(__name__)
WRITE_CHUNK = 100


class RedisSink:
    def __init__(self, client: redis.Redis, mirror: MirrorConfig) -> None:
        self._redis = client
        self._mirror = mirror
        self._is_json = mirror.storage == "json"
        self._hash = HashEncoder(mirror)
        self._json = JsonEncoder(mirror)
        self.index_name = mirror.index.index.name

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
        self, upserts: Sequence[Document], deletes: Sequence[RowKey], *, keep_vector: set[RowKey]
    ) -> None:
        """MULTI/EXEC transactions of at most WRITE_CHUNK documents: the index never sees half a
        document, and Redis is never blocked by a whole batch (2,000 HNSW inserts in one
        transaction took over 5 s here, stalling every query meanwhile). `keep_vector` documents
        carry no vector because their text is unchanged; their stored vector stays as it is."""
        for start in range(0, len(upserts), WRITE_CHUNK):
            async with self._redis.pipeline(transaction=True) as pipe:
                for document in upserts[start : start + WRITE_CHUNK]:
                    self._queue_upsert(pipe, document, partial=document.key in keep_vector)
                await pipe.execute()
        for start in range(0, len(deletes), WRITE_CHUNK):
            await self._redis.delete(*(self.key(k) for k in deletes[start : start + WRITE_CHUNK]))

    def _queue_upsert(self, pipe: Any, document: Document, *, partial: bool) -> None:
        key = self.key(document.key)
        if self._is_json:
            command = "JSON.MERGE" if partial else "JSON.SET"
            body = self._json.document(document, with_nulls=partial)
            pipe.execute_command(command, key, "$", json.dumps(body, ensure_ascii=False))
            return
        pipe.hset(key, mapping=self._hash.mapping(document))
        removed = self._hash.removed(document)
        if removed:
            pipe.hdel(key, *removed)

    async def indexing_failures(self) -> tuple[int, str | None]:
        """FT.INFO's count of documents the index refused, and its last reason when it says one."""
        info = await self._redis.ft(self.index_name).info()  # type: ignore[no-untyped-call]
        errors = info.get("Index Errors") or {}
        last = errors.get("last indexing error") if isinstance(errors, dict) else None
        return int(info["hash_indexing_failures"]), (str(last) if last and last != "N/A" else None)

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
