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

Versions order the writes of one history of the table only. Each history is a generation (see
migrations/0005_generations.sql): the marker holds the mirror's, every document (`_vm_gen`) and
tombstone (`gen:version`) the one it was written in, and an older version is refused only within
one generation; a document of another one is overwritten, whatever its version. A writer whose
generation is not the marker's is refused as a whole (GenerationChangedError) and reloads it. The
marker also keeps the highest version written, which tells a Postgres that went back in time.

Every call also renews the mirror's config lease (see CLAIM_CONFIG): during a rolling update, workers
of an older mirrors file run beside workers of the new one, and must not undo their work (write
documents without a new field, or vectors of an old template). The newest config wins: a writer
whose config was seen before, while a writer of another config wrote within the lease, is refused
as a whole (SupersededError) and its mirror pauses; a config never seen before takes over at once,
and an older one takes over again only once the newer one's workers have been gone a full lease (a
rollback).

No library does versioned writes for the Query Engine, hence the scripts.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from itertools import chain
from typing import NamedTuple

import redis.asyncio as redis
from redis.exceptions import ResponseError

from vecmirror.config import META_VERSION_FIELD, OWN_KEY_PREFIX
from vecmirror.errors import MirrorError, RedisForgotError, VecmirrorError

NO_MARKER = "VECMIRROR_NO_MARKER"
OTHER_GENERATION = "VECMIRROR_GENERATION"
SUPERSEDED = "VECMIRROR_SUPERSEDED"
APPLIED, REFUSED = 1, 0
DELETE, HASH_UPSERT, JSON_SET, JSON_MERGE = "del", "hset", "JSON.SET", "JSON.MERGE"
# Every document carries the generation it was written in (see migrations/0005_generations.sql).
META_GENERATION_FIELD = "_vm_gen"
# The marker: a HASH of the mirror's name, its generation, the generation that documents and
# tombstones without one belong to (written before generations existed; adopted on upgrade), and
# the highest version written in this generation (a Postgres behind it went back in time).
MARKER_MIRROR, MARKER_GENERATION, MARKER_LEGACY, MARKER_HIGH = "mirror", "generation", "legacy", "high"
LEASE_CURRENT = "current"
# Counts the changes of the config holding the mirror: a worker whose config took the mirror back
# (a rollback) sees it moved since it prepared its index, and prepares it again.
LEASE_EPOCH = "epoch"

# The config lease: its holder, a STRING key whose TTL is the lease (`vecmirror:config_lease:<m>`),
# and the configs seen, a HASH (`vecmirror:config:<mirror>`: `current`, and `seen:<digest>`). Keys
# of their own, not marker fields: a marker is deleted with the rest of Redis' memory of the mirror,
# and that must not hand the mirror back to an old config. The key's TTL is the clock: a script that
# read the time (TIME) would need a permission the worker's ACL does not give.
# claim_config(holder key, seen key, config, lease ms) renews the lease for `config`, or takes it
# over, and returns false; or returns the digest that holds it when `config` is an older one (seen
# before) and the holder's lease runs. An empty config (a writer outside any mirrors file) never
# claims.
_CLAIM_CONFIG = f"""
local function claim_config(holder_key, seen_key, config, lease)
    if config == '' then
        return false
    end
    local holder = redis.call('GET', holder_key)
    if holder and holder ~= config and redis.call('HEXISTS', seen_key, 'seen:' .. config) == 1 then
        return holder
    end
    if redis.call('HGET', seen_key, '{LEASE_CURRENT}') ~= config then
        redis.call('HINCRBY', seen_key, '{LEASE_EPOCH}', 1)
    end
    redis.call('SET', holder_key, config, 'PX', lease)
    redis.call('HSET', seen_key, '{LEASE_CURRENT}', config)
    redis.call('HSETNX', seen_key, 'seen:' .. config, '1')
    return false
end
"""

# KEYS: the lease's holder and seen keys. ARGV: the config digest, the lease (ms). Returns the
# holder's digest when refused, else '' and the config that held the mirror before ('' when it
# was this one); then the holder changes counted so far.
CLAIM_SCRIPT = f"""{_CLAIM_CONFIG}
local before = redis.call('HGET', KEYS[2], '{LEASE_CURRENT}')
local holder = claim_config(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]))
local epoch = redis.call('HGET', KEYS[2], '{LEASE_EPOCH}') or '0'
if holder then
    return {{holder, '', epoch}}
end
if before and before ~= ARGV[1] then
    return {{'', before, epoch}}
end
return {{'', '', epoch}}
"""

# KEYS: the marker, the config lease's two keys, then each document's key and its tombstone's key.
# ARGV[1]: the tombstone TTL (ms). ARGV[2]: a JSON array holding, per document in KEYS' order, an
# array of its operation (DELETE, HASH_UPSERT, JSON_SET or JSON_MERGE), its version and the
# operation's own arguments (see each storage's `upsert`). Every value there is a string, but for a
# number n, which stands for ARGV[n]: binary values (HASH vectors), which JSON cannot carry, come as
# ARGV entries of their own. ARGV[3]: the writer's generation, which the marker must hold.
# ARGV[4], ARGV[5]: the writer's config digest and lease (ms), see claim_config.
# Returns APPLIED, or REFUSED where Redis holds a newer version of the same generation, per
# document in order. A document or tombstone of another generation is overwritten whatever its
# version. `stored_version` (the version and generation of a document, one read) and `upsert` come
# first, from the storage's part.
_CHUNK = f"""{_CLAIM_CONFIG}
local ttl, generation = ARGV[1], ARGV[3]
local holder = claim_config(KEYS[2], KEYS[3], ARGV[4], tonumber(ARGV[5]))
if holder then
    return redis.error_reply('{SUPERSEDED} ' .. holder)
end
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then
    return redis.error_reply('{NO_MARKER}')
end
local marked = {{false, false, false}}
if kind == 'hash' then
    marked = redis.call('HMGET', KEYS[1], '{MARKER_GENERATION}', '{MARKER_LEGACY}', '{MARKER_HIGH}')
end
if marked[1] ~= generation then
    return redis.error_reply('{OTHER_GENERATION} ' .. tostring(marked[1]))
end
local legacy, high = marked[2], tonumber(marked[3] or '0')

local function stored(key, tombstone)
    local version, owner = stored_version(key)
    if version then
        return version, owner or legacy
    end
    local value = redis.call('GET', tombstone)
    if not value then
        return false, false
    end
    local at = string.find(value, ':', 1, true)
    if not at then
        return value, legacy
    end
    return string.sub(value, at + 1), string.sub(value, 1, at - 1)
end

local function write(key, tombstone, document)
    local operation, version = document[1], document[2]
    local held, owner = stored(key, tombstone)
    if held and owner == generation and tonumber(held) > tonumber(version) then
        if operation == '{DELETE}' and redis.call('EXISTS', key) == 0 then
            return {APPLIED}  -- already deleted, by a newer delete: nothing to do
        end
        return {REFUSED}
    end
    if operation == '{DELETE}' then
        redis.call('DEL', key)
        redis.call('SET', tombstone, generation .. ':' .. version, 'PX', ttl)
        return {APPLIED}
    end
    redis.call('DEL', tombstone)
    upsert(key, document)
    return {APPLIED}
end

local replies, newest = {{}}, high
for index, document in ipairs(cjson.decode(ARGV[2])) do
    for i = 3, #document do
        if type(document[i]) == 'number' then
            document[i] = ARGV[document[i]]
        end
    end
    replies[index] = write(KEYS[2 * index + 2], KEYS[2 * index + 3], document)
    newest = math.max(newest, tonumber(document[2]))
end
if newest > high then
    redis.call('HSET', KEYS[1], '{MARKER_HIGH}', string.format('%.0f', newest))
end
return replies
"""

# HASH arguments: the number of field/value pairs to set, the pairs, then the fields to delete.
HASH_SCRIPT = f"""
local function stored_version(key)
    local found = redis.call('HMGET', key, '{META_VERSION_FIELD}', '{META_GENERATION_FIELD}')
    return found[1], found[2]
end

local function upsert(key, document)
    local pairs_end = 3 + 2 * tonumber(document[3])
    redis.call('HSET', key, unpack(document, 4, pairs_end))
    if #document > pairs_end then
        redis.call('HDEL', key, unpack(document, pairs_end + 1))
    end
end
{_CHUNK}"""

# JSON arguments: the document (JSON_SET) or the patch (JSON_MERGE), as JSON, then the paths a
# JSON_SET keeps from the stored document (the old vectors during an online re-embedding). A path
# JSON.GET answers for is one match, `[value]`: the value is that text without its brackets.
JSON_SCRIPT = f"""
local function first(values)
    if type(values) == 'table' and values[1] ~= nil then
        return tostring(values[1])
    end
    return false
end

local function stored_version(key)
    local raw = redis.call('JSON.GET', key, '$.{META_VERSION_FIELD}', '$.{META_GENERATION_FIELD}')
    if not raw then
        return false, false
    end
    local values = cjson.decode(raw)
    return first(values['$.{META_VERSION_FIELD}']), first(values['$.{META_GENERATION_FIELD}'])
end

local function upsert(key, document)
    local kept = {{}}
    for i = 4, #document do
        local found = redis.call('JSON.GET', key, document[i])
        if found and found ~= '[]' then
            kept[#kept + 1] = {{document[i], string.sub(found, 2, -2)}}
        end
    end
    redis.call(document[1], key, '$', document[3])
    for _, path_value in ipairs(kept) do
        redis.pcall('JSON.SET', key, path_value[1], path_value[2])
    end
end
{_CHUNK}"""

# KEYS[1]: the marker. ARGV: the mirror, its generation, and "1" to adopt the documents and
# tombstones written without a generation into it. The same generation keeps its high-water
# version; another starts afresh (a marker from before generations, a STRING, is replaced).
MARK_SCRIPT = f"""
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'hash' or redis.call('HGET', KEYS[1], '{MARKER_GENERATION}') ~= ARGV[2] then
    redis.call('DEL', KEYS[1])
end
redis.call('HSET', KEYS[1], '{MARKER_MIRROR}', ARGV[1], '{MARKER_GENERATION}', ARGV[2])
if ARGV[3] == '1' then
    redis.call('HSET', KEYS[1], '{MARKER_LEGACY}', ARGV[2])
end
return 1
"""


class GenerationChangedError(RedisForgotError):
    """The marker holds another generation than this writer's: the mirror's history started again
    (re-registered, its table replaced, Postgres restored) and the writer must reload it."""

    def __init__(self, mirror: str, held: str | None) -> None:
        self.mirror, self.held = mirror, held
        problem = f"Redis holds generation {held or 'none'}, not the writer's"
        VecmirrorError.__init__(self, f"mirror {mirror!r}: {problem}")


class SupersededError(MirrorError):
    """Workers of another config of this mirror hold its lease, and this writer's config is older:
    a rolling update left this worker behind. Its mirror pauses; nothing it holds is written. The
    mirror itself is fine (the newer workers sync it), so `status` does not show it paused."""

    of_the_mirror = False

    def __init__(self, mirror: str, holder: str, config: str, lease_seconds: float) -> None:
        self.holder, self.config = holder, config
        super().__init__(
            mirror,
            f"superseded: a worker of another config of this mirror ({holder}) wrote within the "
            f"last {lease_seconds:g}s, and this worker's config ({config}) is an older one. It waits: "
            "stop it (to roll back instead, stop the newer workers: it takes over a lease later)",
        )


class Marker(NamedTuple):
    """What the mirror's marker says. generation None: a marker from before generations."""

    generation: str | None
    legacy: str | None = None
    high: int = 0


def marker_key(mirror: str) -> str:
    return f"{OWN_KEY_PREFIX}marker:{mirror}"


def lease_keys(mirror: str) -> list[str]:
    """The config lease's holder (a TTL'd STRING) and the configs seen (a HASH)."""
    return [f"{OWN_KEY_PREFIX}config_lease:{mirror}", f"{OWN_KEY_PREFIX}config:{mirror}"]


def tombstone_key(document_key: str) -> str:
    return f"{OWN_KEY_PREFIX}tombstone:{document_key}"


Value = str | bytes | int | float
FIRST_BINARY = 6  # binary values follow the TTL, the JSON, the generation and the config lease in ARGV


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

    def __init__(
        self,
        client: redis.Redis,
        mirror: str,
        *,
        json: bool,
        tombstone_ttl: float,
        config: str = "",
        config_lease: float = 120.0,
    ) -> None:
        self._client = client
        # redis-py's Script runs EVALSHA, and loads the script when Redis answers NOSCRIPT.
        self._script = client.register_script(JSON_SCRIPT if json else HASH_SCRIPT)
        self._mark = client.register_script(MARK_SCRIPT)
        self._claim = client.register_script(CLAIM_SCRIPT)
        self._mirror = mirror
        self._marker = marker_key(mirror)
        self._lease = lease_keys(mirror)
        self._ttl_ms = max(1, int(tombstone_ttl * 1000))
        # The digest of the mirror's config this writer runs ('' : none, it never claims the lease).
        self.config = config
        self.config_lease = config_lease
        # The generation this writer writes in: loaded from Postgres (see MirrorSync), None until then.
        self.generation: str | None = None
        self.lease_epoch: int | None = None  # see claim_config

    async def mark(self, generation: str | None = None, *, adopt_legacy: bool = False) -> str:
        """Written once the mirror's index exists and a full resync is queued: from now on writes
        of this generation apply. Without a generation: this writer's, or a new one. Returns it."""
        generation = generation or self.generation or secrets.token_hex(6)
        await self._mark(keys=[self._marker], args=[self._mirror, generation, "1" if adopt_legacy else "0"])
        self.generation = generation
        return generation

    async def claim_config(self) -> str | None:
        """Renews this writer's config lease, or takes it over (see CLAIM_CONFIG); raises
        SupersededError when a newer config holds it. Returns the config it took over from;
        `lease_epoch` then counts the holder's changes so far."""
        holder, before, epoch = await self._claim(keys=self._lease, args=[self.config, self._lease_ms])
        if holder:
            raise SupersededError(self._mirror, _text(holder), self.config, self.config_lease)
        self.lease_epoch = int(_text(epoch) or 0)
        return _text(before) or None

    @property
    def _lease_ms(self) -> int:
        return max(1, int(self.config_lease * 1000))

    async def read_marker(self) -> Marker | None:
        """The marker, None when Redis has none (restarted empty, flushed, never synced)."""
        kind = _text(await self._client.type(self._marker))
        if kind == "none":
            return None
        if kind != "hash":
            return Marker(None)
        raw = await self._client.hmget(self._marker, [MARKER_GENERATION, MARKER_LEGACY, MARKER_HIGH])
        generation, legacy, high = (None if v is None else _text(v) for v in raw)
        return Marker(generation, legacy, int(float(high)) if high else 0)

    @staticmethod
    def hash_upsert(key: str, version: int, mapping: Mapping[str, Value], removed: Sequence[str]) -> Write:
        return Write(
            key, HASH_UPSERT, version, (len(mapping), *chain.from_iterable(mapping.items()), *removed)
        )

    @staticmethod
    def json_upsert(key: str, version: int, body: str, *, merge: bool, kept: tuple[str, ...] = ()) -> Write:
        """`kept`: paths a whole-document JSON.SET keeps from the stored document."""
        return Write(key, JSON_MERGE if merge else JSON_SET, version, (body, *kept))

    @staticmethod
    def delete(key: str, version: int) -> Write:
        return Write(key, DELETE, version)

    async def apply(self, writes: Sequence[Write], generation: str | None = None) -> list[bool]:
        """Applies the writes in one atomic script call, in `generation` (by default this writer's,
        which the upserts' documents must carry); whether each was applied, in order. The caller
        keeps a call small (Redis answers BUSY to everyone once a script runs past its
        busy-reply-threshold, 5 s by default). Raises RedisForgotError when the marker is gone, and
        GenerationChangedError when it holds another generation."""
        generation = generation or self.generation
        if not writes:
            return []
        if generation is None:
            raise GenerationChangedError(self._mirror, None)
        keys = [self._marker, *self._lease]
        for write in writes:
            keys += (write.key, tombstone_key(write.key))
        documents, binary = encode_chunk(writes)
        args: list[Value] = [self._ttl_ms, documents, generation, self.config, self._lease_ms, *binary]
        try:
            replies = await self._script(keys=keys, args=args)
        except ResponseError as exc:
            if SUPERSEDED in str(exc):
                holder = str(exc).split(SUPERSEDED, 1)[1].strip()
                raise SupersededError(self._mirror, holder, self.config, self.config_lease) from exc
            if NO_MARKER in str(exc):
                raise RedisForgotError(self._mirror) from exc
            if OTHER_GENERATION in str(exc):
                held = str(exc).split(OTHER_GENERATION, 1)[1].strip()
                raise GenerationChangedError(self._mirror, None if held == "false" else held) from exc
            raise
        return [reply == APPLIED for reply in replies]


def parse_tombstone(value: bytes | str, legacy: str | None) -> tuple[str | None, int]:
    """A tombstone's generation and version (`gen:version`; a bare version is of `legacy`)."""
    generation, _, version = _text(value).rpartition(":")
    return (generation or legacy), int(version)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
