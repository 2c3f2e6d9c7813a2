"""Compare-and-set writes: a document lands only if its version is not older than what Redis holds.

Each write is one Lua script, so reading the stored version and writing happen atomically. A delete
leaves a tombstone (the deleted version, with a TTL) under vecmirror's own keys, so a late upsert of
an older version cannot bring the document back. A replayed write carries the same version and is
applied again unchanged. Every script first checks the mirror's marker key: a Redis that lost it
(restarted empty, flushed) refuses writes until the mirror is resynced.

No library does versioned writes for the Query Engine, hence the scripts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as redis
from redis.exceptions import ResponseError

from vecmirror.config import META_VERSION_FIELD, OWN_KEY_PREFIX
from vecmirror.errors import RedisForgotError

NO_MARKER = "VECMIRROR_NO_MARKER"
APPLIED, REFUSED = 1, 0

# KEYS: document, tombstone, marker. ARGV: operation, version, tombstone TTL (ms), then the
# operation's own arguments. Returns 1 when applied, 0 when Redis holds a newer version.
_PROLOGUE = f"""
if redis.call('EXISTS', KEYS[3]) == 0 then
    return redis.error_reply('{NO_MARKER}')
end
local version = tonumber(ARGV[2])
local stored = stored_version(KEYS[1]) or redis.call('GET', KEYS[2])
if stored and tonumber(stored) > version then
    if ARGV[1] == 'del' and redis.call('EXISTS', KEYS[1]) == 0 then
        return {APPLIED}  -- already deleted, by a newer delete: nothing to do
    end
    return {REFUSED}
end
if ARGV[1] == 'del' then
    redis.call('DEL', KEYS[1])
    redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
    return {APPLIED}
end
redis.call('DEL', KEYS[2])
"""

# HASH: ARGV[4] = number of field/value pairs to set, then the pairs, then fields to delete.
HASH_SCRIPT = f"""
local function stored_version(key)
    return redis.call('HGET', key, '{META_VERSION_FIELD}')
end
{_PROLOGUE}
local pairs_end = 4 + 2 * tonumber(ARGV[4])
redis.call('HSET', KEYS[1], unpack(ARGV, 5, pairs_end))
if #ARGV > pairs_end then
    redis.call('HDEL', KEYS[1], unpack(ARGV, pairs_end + 1))
end
return {APPLIED}
"""

# JSON: ARGV[1] is JSON.SET or JSON.MERGE, ARGV[4] the document (or the patch) as JSON.
JSON_SCRIPT = f"""
local function stored_version(key)
    local raw = redis.call('JSON.GET', key, '$.{META_VERSION_FIELD}')
    if not raw then
        return false
    end
    local values = cjson.decode(raw)
    return values[1] or false
end
{_PROLOGUE}
redis.call(ARGV[1], KEYS[1], '$', ARGV[4])
return {APPLIED}
"""


def marker_key(mirror: str) -> str:
    return f"{OWN_KEY_PREFIX}marker:{mirror}"


def tombstone_key(document_key: str) -> str:
    return f"{OWN_KEY_PREFIX}tombstone:{document_key}"


class VersionedWrites:
    """Queues versioned upserts and deletes of one mirror's documents on a pipeline."""

    def __init__(self, client: redis.Redis, mirror: str, *, json: bool, tombstone_ttl: float) -> None:
        self._client = client
        self._script = client.register_script(JSON_SCRIPT if json else HASH_SCRIPT)
        self._mirror = mirror
        self._marker = marker_key(mirror)
        self._ttl_ms = max(1, int(tombstone_ttl * 1000))

    async def mark(self) -> None:
        """Written once the mirror's index exists and a full resync is queued."""
        await self._client.set(self._marker, self._mirror)

    async def is_marked(self) -> bool:
        return bool(await self._client.exists(self._marker))

    def hash_upsert(
        self, pipe: Any, key: str, version: int, mapping: dict[str, Any], removed: Sequence[str]
    ) -> None:
        pairs = [item for name, value in mapping.items() for item in (name, value)]
        self._queue(pipe, key, "hset", version, len(mapping), *pairs, *removed)

    def json_upsert(self, pipe: Any, key: str, version: int, body: str, *, merge: bool) -> None:
        self._queue(pipe, key, "JSON.MERGE" if merge else "JSON.SET", version, body)

    def delete(self, pipe: Any, key: str, version: int) -> None:
        self._queue(pipe, key, "del", version)

    def _queue(self, pipe: Any, key: str, operation: str, version: int, *args: Any) -> None:
        # What AsyncScript.__call__ does for a pipeline, without its coroutine: the pipeline loads
        # the script before MULTI when Redis does not know it yet.
        keys = [key, tombstone_key(key), self._marker]
        pipe.scripts.add(self._script)
        pipe.evalsha(self._script.sha, len(keys), *keys, operation, version, self._ttl_ms, *args)

    def check_reply(self, error: ResponseError) -> None:
        """A missing marker becomes RedisForgotError; any other error is not ours to interpret."""
        if NO_MARKER in str(error):
            raise RedisForgotError(self._mirror) from error
