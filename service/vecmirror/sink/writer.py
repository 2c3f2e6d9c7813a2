"""Writes a batch of documents to Redis as versioned writes, a script call per chunk, and checks they
were indexed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import redis.asyncio as redis
import structlog
from redis.exceptions import ResponseError

from vecmirror.config import META_HASH_FIELD, META_KEY_FIELD, MirrorConfig
from vecmirror.config.model import chunk_vector_key
from vecmirror.errors import RedisForgotError
from vecmirror.pipeline.documents import Document, RowKey
from vecmirror.sink.cluster import keys_the_index_sees
from vecmirror.sink.encode import CHUNKS_FIELD, HashEncoder, JsonEncoder, vector_from_bytes
from vecmirror.sink.keys import KeyLayout, delete_old_keys, document_key, key_id, key_pattern
from vecmirror.sink.observe import document_count
from vecmirror.sink.versioned import (
    META_GENERATION_FIELD,
    GenerationChangedError,
    VersionedWrites,
    Write,
    plan_calls,
    run_script_calls,
)

log = structlog.get_logger(__name__)
READ_CHUNK = 1000

# KEYS: documents. ARGV[1]: one of vecmirror's own fields. Returns the field of each document (JSON:
# JSON.GET's array of matches), false (nil to the client) where there is no document.
_READ = """
local values = {}
for i, key in ipairs(KEYS) do
    values[i] = read(key, ARGV[1])
end
return values
"""
HASH_READ_SCRIPT = "local function read(key, field) return redis.call('HGET', key, field) end" + _READ
JSON_READ_SCRIPT = (
    "local function read(key, field) return redis.call('JSON.GET', key, '$.' .. field) end" + _READ
)


class RedisSink:
    def __init__(
        self,
        client: redis.Redis,
        mirror: MirrorConfig,
        *,
        tombstone_ttl: float = 86400.0,
        config_lease: float = 120.0,
    ) -> None:
        self._redis = client
        self._mirror = mirror
        self._is_json = mirror.storage == "json"
        self._hash = HashEncoder(mirror)
        self._json = JsonEncoder(mirror)
        self.versioned = VersionedWrites(
            client,
            mirror.name,
            json=self._is_json,
            tombstone_ttl=tombstone_ttl,
            config=mirror.digest,
            config_lease=config_lease,
        )
        self._read_script = client.register_script(JSON_READ_SCRIPT if self._is_json else HASH_READ_SCRIPT)
        self.index_name = mirror.index.index.name
        # Fields the index users query had and the config dropped (an online rebuild): deleted from
        # every document written, since an upsert leaves a field it is not given.
        self.dropped_fields: tuple[str, ...] = ()
        # Where the index users query reads the old vectors while new ones are made beside them (a
        # JSON document written whole keeps that path: index/rollout.py).
        self.vectors_left_at: str | None = None
        # The keys the index users query reads while documents move to new ones (index/rekey.py):
        # a row deleted meanwhile loses its old key too.
        self.keys_left: KeyLayout | None = None

    def follow(
        self,
        mirror: MirrorConfig,
        dropped_fields: tuple[str, ...] = (),
        vectors_left_at: str | None = None,
        keys_left: KeyLayout | None = None,
    ) -> None:
        """Writes as an index plan says (index/rollout.py): vectors where `mirror` places them, and
        during a rollout, what the documents drop and keep, and the old keys of a move."""
        self._mirror = mirror
        self._hash, self._json = HashEncoder(mirror), JsonEncoder(mirror)
        self.dropped_fields, self.vectors_left_at, self.keys_left = dropped_fields, vectors_left_at, keys_left

    @property
    def client(self) -> redis.Redis:
        return self._redis

    def key(self, row_key: RowKey) -> str:
        return document_key(self._mirror, row_key)

    async def foreign_keys(self, keys: Sequence[RowKey]) -> dict[str, str]:
        """Which of these rows' Redis keys hold another type than the mirror's documents (a key
        someone else wrote under the prefix), with that type."""
        wanted = "ReJSON-RL" if self._is_json else "hash"
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.type(self.key(key))
            types = await pipe.execute()
        found = {
            self.key(k): t.decode() if isinstance(t, bytes) else str(t)
            for k, t in zip(keys, types, strict=True)
        }
        return {key: kind for key, kind in found.items() if kind not in (wanted, "none")}

    async def stored_text_hashes(self, keys: Sequence[RowKey]) -> list[str | None]:
        """The content hash kept with each document, None where there is no document yet."""
        replies = await self._own_field([self.key(k) for k in keys], META_HASH_FIELD)
        return [self._decode_meta(reply) for reply in replies]

    async def stored_vectors(
        self, keys: Sequence[RowKey], at: str, datatype: str
    ) -> list[npt.NDArray[Any] | None]:
        """The vector each document holds at `at` (a HASH field, a top-level JSON path), stored as
        `datatype`; None where it holds none."""
        replies = await self._own_field([self.key(k) for k in keys], at.removeprefix("$."))
        return [self._decode_vector(reply, datatype) for reply in replies]

    async def stored_chunk_vectors(self, keys: Sequence[RowKey]) -> list[dict[str, npt.NDArray[Any]]]:
        """A chunked mirror's documents: each chunk's vector by the chunk's content hash (an
        unchanged chunk keeps its vector), {} where there is no document."""
        replies = await self._own_field([self.key(k) for k in keys], CHUNKS_FIELD)
        at = self._mirror.vector_at
        name = chunk_vector_key(at)
        found: list[dict[str, npt.NDArray[Any]]] = []
        for reply in replies:
            matches = json.loads(_text(reply)) if reply is not None and reply is not False else []
            chunks = matches[0] if matches and isinstance(matches[0], list) else []
            found.append(
                {
                    c["hash"]: np.asarray(c[name], dtype=np.float64)
                    for c in chunks
                    if "hash" in c and name in c
                }
            )
        return found

    def _decode_vector(self, reply: Any, datatype: str) -> npt.NDArray[Any] | None:
        if reply is None or reply is False:
            return None
        if self._is_json:
            values = json.loads(_text(reply))
            return np.asarray(values[0], dtype=np.float64) if values else None
        return vector_from_bytes(reply, datatype)

    async def _own_field(self, keys: Sequence[str], field: str) -> list[Any]:
        """One of vecmirror's own fields of each document as Redis returns it (JSON: JSON.GET's
        array), None where there is no document (False over RESP3): script calls of READ_CHUNK keys
        at most (a slot's keys only, where the server asks for that), in one pipeline, because a
        command per key costs more Python in redis-py than Redis spends answering."""
        while True:
            calls = plan_calls(keys, one_slot=self.versioned.one_slot, size=READ_CHUNK)
            positions = [[p for _, part in call for p in part] for call in calls]
            arguments = [([keys[p] for p in ps], [field]) for ps in positions]
            replies = await run_script_calls(self._redis, self._read_script, arguments)
            refused = next((r for r in replies if isinstance(r, Exception)), None)
            if refused is None:
                break
            self.versioned.learn_one_slot(refused)  # type: ignore[arg-type]
        values: list[Any] = [None] * len(keys)
        for ps, reply in zip(positions, replies, strict=True):
            for p, value in zip(ps, reply, strict=True):
                values[p] = value
        return values

    async def write(
        self,
        upserts: Sequence[Document],
        deletes: Sequence[tuple[RowKey, int]],
        *,
        keep_vector: set[RowKey],
    ) -> list[RowKey]:
        """Versioned writes (sink/versioned.py), atomic script calls of CALL_SIZE documents at most,
        grouped by hash slot: the index never sees half a document, and Redis is never blocked by a
        whole batch (2,000 HNSW inserts in one transaction took over 5 s here, stalling every query
        meanwhile). `keep_vector` documents carry no vector because their text is unchanged; their
        stored vector stays. Deletes are (row key, version). Returns the keys Redis refused because
        it holds a newer version (a worker that was frozen past its claim)."""
        generation = self.versioned.generation  # once: the documents carry the one they are written in
        if generation is None:
            raise GenerationChangedError(self._mirror.name, None)
        writes = [(d.key, self._upsert(d, generation, partial=d.key in keep_vector)) for d in upserts]
        writes += [(row_key, self.versioned.delete(self.key(row_key), v)) for row_key, v in deletes]
        applied = await self.versioned.apply([write for _, write in writes], generation)
        refused = [row_key for (row_key, _), ok in zip(writes, applied, strict=True) if not ok]
        if self.keys_left is not None:
            old = [key_id(row_key) for row_key, _ in deletes]
            await delete_old_keys(self._redis, self.keys_left, old, generation)
        return refused

    def _upsert(self, document: Document, generation: str, *, partial: bool) -> Write:
        key = self.key(document.key)
        if self._is_json:
            body = self._json.document(document, with_nulls=partial)
            body[META_GENERATION_FIELD] = generation
            if partial:  # a merge keeps what it is not given; a full JSON.SET replaces everything
                body.update(_json_nulls(self.dropped_fields))
            # A chunked document's chunks are rewritten whole: no old vector is kept beside them.
            kept = (
                ()
                if partial or self.vectors_left_at is None or self._mirror.chunked
                else (self.vectors_left_at,)
            )
            return self.versioned.json_upsert(
                key, document.version, json.dumps(body, ensure_ascii=False), merge=partial, kept=kept
            )
        mapping = self._hash.mapping(document)
        mapping[META_GENERATION_FIELD] = generation
        removed = [*self._hash.removed(document), *self.dropped_fields]
        return self.versioned.hash_upsert(key, document.version, mapping, removed)

    async def indexing_failures(self) -> tuple[int, str | None]:
        """FT.INFO's count of documents the index refused, and its last reason when it says one."""
        info = await self._index_info()
        errors = info.get("Index Errors") or {}
        last = errors.get("last indexing error") if isinstance(errors, dict) else None
        return int(info["hash_indexing_failures"]), (str(last) if last and last != "N/A" else None)

    async def document_count(self) -> int:
        return await document_count(self._redis, await self._index_info())

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
        # Where each shard indexes alone, the index sees its own shard's documents only (sink/cluster.py).
        seen = set(await keys_the_index_sees(self._redis, self.index_name, [self.key(k) for k in keys]))
        by_key = {self.key(k): k for k in keys if self.key(k) in seen}
        if not by_key:
            return []
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
        """Row keys of every document under the mirror's prefix, a page at a time (on a cluster
        scan_iter walks every primary in turn)."""
        keys: list[str] = []
        async for key in self._redis.scan_iter(match=key_pattern(self._mirror), count=page):
            keys.append(_text(key))
            if len(keys) == page:
                yield await self._row_keys_of(keys)
                keys = []
        if keys:
            yield await self._row_keys_of(keys)

    async def _row_keys_of(self, keys: list[str]) -> list[RowKey]:
        replies = await self._own_field(keys, META_KEY_FIELD)
        row_keys = []
        for key, reply in zip(keys, replies, strict=True):
            parsed = self._decode_meta(reply)
            if parsed is None:
                log.warning("foreign_key_under_prefix", mirror=self._mirror.name, key=key)
                continue
            row_keys.append(tuple(parsed if isinstance(parsed, list) else json.loads(parsed)))
        return row_keys

    def _decode_meta(self, reply: Any) -> Any:
        if reply is None or reply is False:  # the read script's false: nil in RESP2, false in RESP3
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


def _json_nulls(paths: Sequence[str]) -> dict[str, None]:
    """JSON.MERGE deletes a key given as null: the top-level ones of the dropped paths."""
    return {path.removeprefix("$."): None for path in paths if path.count(".") == 1 and "[" not in path}
