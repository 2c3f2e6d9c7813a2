"""Compare-and-set writes: a document lands only if its version is not older than what Redis holds.

One Lua script writes a whole chunk of documents, upserts and deletes: reading each stored version
and writing happen atomically, so the index never sees half a document, and Redis is blocked for
one chunk at most. A call per chunk, its documents in one JSON argument, because redis-py's Python
costs per command (about 30 µs to pack and parse one) and per argument (about 1.3 µs to pack one)
added up to as much as Redis spends re-indexing a document.

A delete leaves a tombstone (the deleted version, with a TTL) under vecmirror's own keys, so a late
upsert of an older version cannot bring the document back. A replayed write carries the same version
and is applied again unchanged. Every call first checks the mirror's marker key: a Redis that lost
it (restarted empty, flushed) refuses writes until the mirror is resynced.

No library does versioned writes for the Query Engine, hence the scripts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from itertools import chain
from typing import NamedTuple

import redis.asyncio as redis
from redis.exceptions import ResponseError

from vecmirror.config import META_VERSION_FIELD, OWN_KEY_PREFIX
from vecmirror.errors import RedisForgotError

NO_MARKER = "VECMIRROR_NO_MARKER"
APPLIED, REFUSED = 1, 0
DELETE, HASH_UPSERT, JSON_SET, JSON_MERGE = "del", "hset", "JSON.SET", "JSON.MERGE"

# KEYS: the marker, then each document's key and its tombstone's key.
# ARGV[1]: the tombstone TTL (ms). ARGV[2]: a JSON array holding, per document in KEYS' order, an
# array of its operation (DELETE, HASH_UPSERT, JSON_SET or JSON_MERGE), its version and the
# operation's own arguments (see each storage's `upsert`). Every value there is a string, but for a
# number n, which stands for ARGV[n]: binary values (HASH vectors), which JSON cannot carry, come as
# ARGV entries of their own. Returns APPLIED, or REFUSED where Redis holds a newer version, per
# document in order. `stored_version` and `upsert` come first, from the storage's part.
_CHUNK = f"""
local ttl = ARGV[1]

local function write(key, tombstone, document)
    local operation, version = document[1], document[2]
    local stored = stored_version(key) or redis.call('GET', tombstone)
    if stored and tonumber(stored) > tonumber(version) then
        if operation == '{DELETE}' and redis.call('EXISTS', key) == 0 then
            return {APPLIED}  -- already deleted, by a newer delete: nothing to do
        end
        return {REFUSED}
    end
    if operation == '{DELETE}' then
        redis.call('DEL', key)
        redis.call('SET', tombstone, version, 'PX', ttl)
        return {APPLIED}
    end
    redis.call('DEL', tombstone)
    upsert(key, document)
    return {APPLIED}
end

if redis.call('EXISTS', KEYS[1]) == 0 then
    return redis.error_reply('{NO_MARKER}')
end
local replies = {{}}
for index, document in ipairs(cjson.decode(ARGV[2])) do
    for i = 3, #document do
        if type(document[i]) == 'number' then
            document[i] = ARGV[document[i]]
        end
    end
    replies[index] = write(KEYS[2 * index], KEYS[2 * index + 1], document)
end
return replies
"""

# HASH arguments: the number of field/value pairs to set, the pairs, then the fields to delete.
HASH_SCRIPT = f"""
local function stored_version(key)
    return redis.call('HGET', key, '{META_VERSION_FIELD}')
end

local function upsert(key, document)
    local pairs_end = 3 + 2 * tonumber(document[3])
    redis.call('HSET', key, unpack(document, 4, pairs_end))
    if #document > pairs_end then
        redis.call('HDEL', key, unpack(document, pairs_end + 1))
    end
end
{_CHUNK}"""

# JSON arguments: the document (JSON_SET) or the patch (JSON_MERGE), as JSON.
JSON_SCRIPT = f"""
local function stored_version(key)
    local raw = redis.call('JSON.GET', key, '$.{META_VERSION_FIELD}')
    if not raw then
        return false
    end
    local values = cjson.decode(raw)
    return values[1] or false
end

local function upsert(key, document)
    redis.call(document[1], key, '$', document[3])
end
{_CHUNK}"""


def marker_key(mirror: str) -> str:
    return f"{OWN_KEY_PREFIX}marker:{mirror}"


def tombstone_key(document_key: str) -> str:
    return f"{OWN_KEY_PREFIX}tombstone:{document_key}"


Value = str | bytes | int | float
FIRST_BINARY = 3  # binary values follow the TTL and the JSON in ARGV


class Write(NamedTuple):
    """One document's versioned write, in the script's terms."""

    key: str
    operation: str
    version: int
    arguments: tuple[Value, ...] = ()


def encode_chunk(writes: Sequence[Write]) -> tuple[str, list[bytes]]:
    """ARGV[2]'s JSON for these writes, and the binary values that follow it in ARGV. One argument
    for the chunk rather than one per value: redis-py packs each argument in Python (about 1.3 µs
    apiece, redis/redis-py#4176), which with ~27 a document made the call 1.37 times as slow as a
    pipeline of HSETs of two fields, against 1.19 times this way."""
    binary: list[bytes] = []

    def encoded(value: Value) -> str | int:
        if isinstance(value, str):
            return value
        if isinstance(value, bytes):
            binary.append(value)
            return FIRST_BINARY + len(binary) - 1
        return str(value)  # an int or a float, as redis-py sends one (its repr, which is its str)

    documents = [[w.operation, str(w.version), *map(encoded, w.arguments)] for w in writes]
    return json.dumps(documents, ensure_ascii=False), binary


class VersionedWrites:
    """Versioned upserts and deletes of one mirror's documents, a chunk per script call."""

    def __init__(self, client: redis.Redis, mirror: str, *, json: bool, tombstone_ttl: float) -> None:
        self._client = client
        # redis-py's Script runs EVALSHA, and loads the script when Redis answers NOSCRIPT.
        self._script = client.register_script(JSON_SCRIPT if json else HASH_SCRIPT)
        self._mirror = mirror
        self._marker = marker_key(mirror)
        self._ttl_ms = max(1, int(tombstone_ttl * 1000))

    async def mark(self) -> None:
        """Written once the mirror's index exists and a full resync is queued."""
        await self._client.set(self._marker, self._mirror)

    async def is_marked(self) -> bool:
        return bool(await self._client.exists(self._marker))

    @staticmethod
    def hash_upsert(key: str, version: int, mapping: Mapping[str, Value], removed: Sequence[str]) -> Write:
        return Write(
            key, HASH_UPSERT, version, (len(mapping), *chain.from_iterable(mapping.items()), *removed)
        )

    @staticmethod
    def json_upsert(key: str, version: int, body: str, *, merge: bool) -> Write:
        return Write(key, JSON_MERGE if merge else JSON_SET, version, (body,))

    @staticmethod
    def delete(key: str, version: int) -> Write:
        return Write(key, DELETE, version)

    async def apply(self, writes: Sequence[Write]) -> list[bool]:
        """Applies the writes in one atomic script call; whether each was applied, in order. The
        caller keeps a call small (Redis answers BUSY to everyone once a script runs past its
        busy-reply-threshold, 5 s by default). Raises RedisForgotError when the marker is gone."""
        if not writes:
            return []
        keys = [self._marker]
        for write in writes:
            keys += (write.key, tombstone_key(write.key))
        documents, binary = encode_chunk(writes)
        try:
            replies = await self._script(keys=keys, args=[self._ttl_ms, documents, *binary])
        except ResponseError as exc:
            if NO_MARKER in str(exc):
                raise RedisForgotError(self._mirror) from exc
            raise
        return [reply == APPLIED for reply in replies]
