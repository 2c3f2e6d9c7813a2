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

import asyncio
import json
import secrets
from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any, NamedTuple

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import ClusterCrossSlotError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from vecmirror.config import META_VERSION_FIELD, OWN_KEY_PREFIX
from vecmirror.errors import MirrorError, RedisForgotError, VecmirrorError
from vecmirror.sink.slots import SLOTS, own_key, own_key_beside, slot_of

TOMBSTONE, GUARD, SLOT_LEASE = "tombstone", "guard", "lease"

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
MARKER_SLOTS = "slots"  # of the marker: every slot has its guard (a marker without: before slots)
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

# KEYS: per group of documents (a hash slot's, see sink/slots.py), the slot's guard and lease, then
# each document's key and its tombstone's key. ARGV[1]: the tombstone TTL (ms). ARGV[2]: a JSON array
# of groups, each an array holding, per document in KEYS' order, an array of its operation (DELETE,
# HASH_UPSERT, JSON_SET or JSON_MERGE), its version and the operation's own arguments (see each
# storage's `upsert`). Every value there is a string, but for a number n, which stands for ARGV[n]:
# binary values (HASH vectors), which JSON cannot carry, come as ARGV entries of their own.
# ARGV[3]: the writer's generation, which every guard must hold. ARGV[4]: the config lease's epoch
# the writer holds ('' : it holds none), ARGV[5]: the lease (ms).
# Every group is checked before anything is written: its guard must exist (a slot without one is on
# a shard that restarted empty, or Redis was flushed) and hold the writer's generation, and no
# writer of a later epoch may have written in the slot within the lease. Then each document is
# written, and the slot's guard keeps the highest version written, its lease the writer's epoch.
# Returns APPLIED, or REFUSED where Redis holds a newer version of the same generation, per
# document in order. A document or tombstone of another generation is overwritten whatever its
# version. `stored_version` (the version and generation of a document, one read) and `upsert` come
# first, from the storage's part.
_CHUNK = f"""
local ttl, generation, epoch, lease = ARGV[1], ARGV[3], ARGV[4], tonumber(ARGV[5])
local groups = cjson.decode(ARGV[2])

local function guard_of(guard, slot_lease)
    local kind = redis.call('TYPE', guard)['ok']
    if kind ~= 'hash' then
        return redis.error_reply('{NO_MARKER}')
    end
    local marked = redis.call('HMGET', guard, '{MARKER_GENERATION}', '{MARKER_LEGACY}', '{MARKER_HIGH}')
    if marked[1] ~= generation then
        return redis.error_reply('{OTHER_GENERATION} ' .. tostring(marked[1]))
    end
    if epoch ~= '' then
        local held = redis.call('GET', slot_lease)
        if held and tonumber(held) > tonumber(epoch) then
            return redis.error_reply('{SUPERSEDED} ' .. held)
        end
    end
    return {{marked[2], tonumber(marked[3] or '0')}}
end

local heads, at = {{}}, 0
for g, documents in ipairs(groups) do
    local found = guard_of(KEYS[at + 1], KEYS[at + 2])
    if found['err'] then
        return found
    end
    heads[g] = {{at, found[1], found[2]}}
    at = at + 2 + 2 * #documents
end

local function stored(key, tombstone, legacy)
    local version, owner = stored_version(key)
    if version then
        return version, owner or legacy
    end
    local value = redis.call('GET', tombstone)
    if not value then
        return false, false
    end
    local colon = string.find(value, ':', 1, true)
    if not colon then
        return value, legacy
    end
    return string.sub(value, colon + 1), string.sub(value, 1, colon - 1)
end

local function write(key, tombstone, document, legacy)
    local operation, version = document[1], document[2]
    local held, owner = stored(key, tombstone, legacy)
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

local replies = {{}}
for g, documents in ipairs(groups) do
    local base, legacy, high = heads[g][1], heads[g][2], heads[g][3]
    local newest = high
    for index, document in ipairs(documents) do
        for i = 3, #document do
            if type(document[i]) == 'number' then
                document[i] = ARGV[document[i]]
            end
        end
        local key = base + 2 * index
        replies[#replies + 1] = write(KEYS[key + 1], KEYS[key + 2], document, legacy)
        newest = math.max(newest, tonumber(document[2]))
    end
    if newest > high then
        redis.call('HSET', KEYS[base + 1], '{MARKER_HIGH}', string.format('%.0f', newest))
    end
    if epoch ~= '' then
        redis.call('SET', KEYS[base + 2], epoch, 'PX', lease)
    end
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

# KEYS: the marker, or guards (any number, of one slot or several). ARGV: the mirror, its
# generation, "1" to adopt the documents and tombstones written without a generation into it, and
# "1" to say every slot has its guard (the marker, written last: see sink/upgrade.py). A key that
# already holds the generation is only read: marking 16,384 guards takes tens of milliseconds, and a
# mark cut short (a connection lost) goes on where it stopped when it is tried again.
# The same generation keeps its high-water version; another starts afresh (a marker from before
# generations, a STRING, is replaced).
MARK_SCRIPT = f"""
for _, key in ipairs(KEYS) do
    local held = false
    if redis.call('TYPE', key)['ok'] == 'hash' then
        held = redis.call('HGET', key, '{MARKER_GENERATION}')
    end
    if held ~= ARGV[2] then
        redis.call('DEL', key)
        redis.call('HSET', key, '{MARKER_MIRROR}', ARGV[1], '{MARKER_GENERATION}', ARGV[2])
    end
    if ARGV[3] == '1' then
        redis.call('HSET', key, '{MARKER_LEGACY}', ARGV[2])
    end
    if ARGV[4] == '1' then
        redis.call('HSET', key, '{MARKER_SLOTS}', '1')
    end
end
return 1
"""

# KEYS[1]: the marker. ARGV: a generation and a version: the marker keeps the highest version
# written in its generation (the guards keep their slot's, in the same call as the writes; the
# marker's is read on every wake-up, so it is raised once per batch, after the writes).
RAISE_HIGH_SCRIPT = f"""
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then
    return 0
end
if redis.call('HGET', KEYS[1], '{MARKER_GENERATION}') ~= ARGV[1] then
    return 0
end
if tonumber(redis.call('HGET', KEYS[1], '{MARKER_HIGH}') or '0') < tonumber(ARGV[2]) then
    redis.call('HSET', KEYS[1], '{MARKER_HIGH}', ARGV[2])
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
    """The mirror's marker: a HASH of its generation and its index's layout (index/), one key."""
    return f"{OWN_KEY_PREFIX}marker:{mirror}"


def lease_keys(mirror: str) -> list[str]:
    """The config lease's holder (a TTL'd STRING) and the configs seen (a HASH), in one slot."""
    slot = slot_of(mirror)
    return [own_key("config_lease", slot, mirror), own_key("config", slot, mirror)]


def legacy_lease_keys(mirror: str) -> list[str]:
    """The lease's keys before slots (vecmirror <= 0.12): kept fenced so that workers of that
    version, still running during an upgrade, write nothing (see upgrade.py)."""
    return [f"{OWN_KEY_PREFIX}config_lease:{mirror}", f"{OWN_KEY_PREFIX}config:{mirror}"]


def tombstone_key(document_key: str) -> str:
    """A deleted document's tombstone, in the document's slot."""
    return own_key_beside(TOMBSTONE, document_key)


def legacy_tombstone_key(document_key: str) -> str:
    return f"{OWN_KEY_PREFIX}{TOMBSTONE}:{document_key}"


def guard_key(mirror: str, slot: int) -> str:
    """A slot's guard of the mirror (a HASH: its generation, legacy, high), written for every slot
    when the mirror is marked: a slot without one is on a shard that forgot (restarted empty)."""
    return own_key(GUARD, slot, mirror)


def slot_lease_key(mirror: str, slot: int) -> str:
    """The config lease's epoch last written in a slot (a TTL'd STRING, see CLAIM_CONFIG)."""
    return own_key(SLOT_LEASE, slot, mirror)


def own_slot_keys(mirror: str) -> list[str]:
    """Every guard and slot lease key the mirror may have (2 x 16,384 names)."""
    return [key for slot in range(SLOTS) for key in (guard_key(mirror, slot), slot_lease_key(mirror, slot))]


Value = str | bytes | int | float
FIRST_BINARY = 6  # binary values follow the TTL, the JSON, the generation and the config lease in ARGV
CALL_SIZE = 100  # documents per script call at most: Redis answers nobody else while one runs
GUARDS_PER_CALL = 256  # guards marked per call where one call may touch several slots (~1 ms)
MARK_ATTEMPTS = 3


class Write(NamedTuple):
    """One document's versioned write, in the script's terms."""

    key: str
    operation: str
    version: int
    arguments: tuple[Value, ...] = ()


def encode_call(groups: Sequence[Sequence[Write]]) -> tuple[str, list[bytes]]:
    """ARGV[2]'s JSON for these groups of writes, and the binary values that follow it in ARGV. One
    argument for the call rather than one per value: redis-py packs each argument in Python (about
    1.3 µs apiece, redis/redis-py#4176), which with ~27 a document made the call 1.37 times as slow
    as a pipeline of HSETs of two fields, against 1.19 times this way."""
    binary: list[bytes] = []

    def encoded(value: Value) -> str | int:
        if isinstance(value, str):
            return value
        if isinstance(value, bytes):
            binary.append(value)
            return FIRST_BINARY + len(binary) - 1
        return str(value)  # an int or a float, as redis-py sends one (its repr, which is its str)

    def document(write: Write) -> list[str | int]:
        return [write.operation, str(write.version), *map(encoded, write.arguments)]

    documents = [[document(write) for write in group] for group in groups]
    return json.dumps(documents, ensure_ascii=False), binary


def by_slot(keys: Sequence[str]) -> dict[int, list[int]]:
    """The keys' positions, grouped by their hash slot, in order."""
    groups: dict[int, list[int]] = {}
    for position, key in enumerate(keys):
        groups.setdefault(slot_of(key), []).append(position)
    return groups


Call = list[tuple[int, list[int]]]  # a script call's groups: (slot, positions of its keys)


def plan_calls(keys: Sequence[str], *, one_slot: bool, size: int = CALL_SIZE) -> list[Call]:
    """The script calls for these keys: each a list of (slot, positions) groups, `size` keys at
    most. `one_slot`: a call holds one slot's keys (a sharded Redis, or a proxy endpoint, refuses a
    script whose keys are in several); otherwise groups share calls, which on a single Redis keeps
    a call's fixed cost spread over `size` keys."""
    calls: list[Call] = []
    filled = size
    for slot, positions in by_slot(keys).items():
        for start in range(0, len(positions), size):
            part = positions[start : start + size]
            if one_slot or filled + len(part) > size:
                calls.append([])
                filled = 0
            calls[-1].append((slot, part))
            filled += len(part)
    return calls


class VersionedWrites:
    """Versioned upserts and deletes of one mirror's documents, script calls grouped by hash slot."""

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
        self._raise_high = client.register_script(RAISE_HIGH_SCRIPT)
        self._claim = client.register_script(CLAIM_SCRIPT)
        self._mirror = mirror
        self._marker = marker_key(mirror)
        self._lease = lease_keys(mirror)
        self._ttl_ms = max(1, int(tombstone_ttl * 1000))
        # Whether a script call may touch one slot only: a cluster client says so; a proxy endpoint
        # of a sharded database looks like a single Redis and says so with its first CROSSSLOT.
        self.one_slot = is_cluster_client(client)
        # The digest of the mirror's config this writer runs ('' : none, it never claims the lease).
        self.config = config
        self.config_lease = config_lease
        # The generation this writer writes in: loaded from Postgres (see MirrorSync), None until then.
        self.generation: str | None = None
        self.lease_epoch: int | None = None  # see claim_config

    async def mark(self, generation: str | None = None, *, adopt_legacy: bool = False) -> str:
        """Written once the mirror's index exists and a full resync is queued: from now on writes
        of this generation apply. Without a generation: this writer's, or a new one. Every slot's
        guard first, the marker last (which says the mirror is known). Returns the generation."""
        generation = generation or self.generation or secrets.token_hex(6)
        adopt = "1" if adopt_legacy else "0"
        await self._mark_guards([self._mirror, generation, adopt, "0"])
        await self._mark(keys=[self._marker], args=[self._mirror, generation, adopt, "1"])
        self.generation = generation
        return generation

    async def mark_slots(self, generation: str, *, adopt_legacy: bool) -> None:
        """Every slot's guard, as the marker (of `generation`) says: the upgrade from before slots."""
        await self._mark_guards([self._mirror, generation, "1" if adopt_legacy else "0", "0"])
        await self._client.hset(self._marker, MARKER_SLOTS, "1")

    @property
    def client(self) -> redis.Redis:
        return self._client

    async def _mark_guards(self, args: list[str]) -> None:
        guards = [guard_key(self._mirror, slot) for slot in range(SLOTS)]
        if not self.one_slot:
            try:
                for start in range(0, SLOTS, GUARDS_PER_CALL):
                    await self._mark_part(guards[start : start + GUARDS_PER_CALL], args)
                return
            except ResponseError as exc:
                self.learn_one_slot(exc)
        calls = [([guard], args) for guard in guards]
        for reply in await run_script_calls(self._client, self._mark, calls):
            if isinstance(reply, Exception):
                raise reply

    async def _mark_part(self, guards: list[str], args: list[str]) -> None:
        """One call of the guards' mark, tried again where its connection dropped: a mark is
        idempotent, and one cut short every time (a flaky network) would never reach its end."""
        for attempt in range(MARK_ATTEMPTS):
            try:
                await self._mark(keys=guards, args=args)
                return
            except RedisConnectionError:
                if attempt == MARK_ATTEMPTS - 1:
                    raise

    def learn_one_slot(self, error: ResponseError) -> None:
        """A CROSSSLOT refusal (before the script ran: nothing was written) from what looked like a
        single Redis: a proxy endpoint of a sharded database. Calls hold one slot from now on."""
        if self.one_slot or not is_crossslot(error):
            raise error
        self.one_slot = True

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

    async def slots_forgotten(self, slots: Sequence[int]) -> list[int]:
        """Which of these slots have no guard of the mirror: their shard restarted empty (or lost
        them otherwise) since the mirror was marked."""
        async with self._client.pipeline(transaction=False) as pipe:
            for slot in slots:
                pipe.execute_command("EXISTS", guard_key(self._mirror, slot))
            found = await pipe.execute()
        return [slot for slot, exists in zip(slots, found, strict=True) if not exists]

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
        """Applies the writes in `generation` (by default this writer's, which the upserts'
        documents must carry): the config lease renewed first, then script calls of CALL_SIZE
        documents at most, grouped by slot, in one pipeline. Each call is atomic (the index never
        sees half a document); the caller may hold each key once only. Returns whether each write
        was applied, in order. Raises RedisForgotError when a slot's guard is gone,
        GenerationChangedError when it holds another generation, SupersededError when a newer
        config holds the lease or wrote in a slot since."""
        generation = generation or self.generation
        if not writes:
            return []
        if generation is None:
            raise GenerationChangedError(self._mirror, None)
        if self.config:
            await self.claim_config()
        replies = await self._calls(writes, generation)
        applied = [False] * len(writes)
        for positions, reply in replies:
            self._raise_refusal(reply)
            for position, answer in zip(positions, reply, strict=True):
                applied[position] = answer == APPLIED
        newest = max(write.version for write in writes)
        await self._raise_high(keys=[self._marker], args=[generation, newest])
        return applied

    async def _calls(self, writes: Sequence[Write], generation: str) -> list[tuple[list[int], Any]]:
        """Each call's write positions and reply (an error for a refused call). A CROSSSLOT reply
        from what looked like a single Redis sends them all again, a slot per call: a call refused
        so wrote nothing, and the others rewrite the same versions."""
        while True:
            calls = plan_calls([write.key for write in writes], one_slot=self.one_slot)
            arguments = [self._call(writes, call, generation) for call in calls]
            replies = await run_script_calls(self._client, self._script, arguments)
            crossslot = [reply for reply in replies if is_crossslot(reply)]
            if not crossslot:
                positions = [[p for _, part in call for p in part] for call in calls]
                return list(zip(positions, replies, strict=True))
            self.learn_one_slot(crossslot[0])

    def _call(self, writes: Sequence[Write], call: Call, generation: str) -> tuple[list[str], list[Value]]:
        keys: list[str] = []
        for slot, positions in call:
            keys += (guard_key(self._mirror, slot), slot_lease_key(self._mirror, slot))
            for position in positions:
                keys += (writes[position].key, tombstone_key(writes[position].key))
        groups = [[writes[p] for p in positions] for _, positions in call]
        documents, binary = encode_call(groups)
        epoch = "" if not self.config or self.lease_epoch is None else str(self.lease_epoch)
        return keys, [self._ttl_ms, documents, generation, epoch, self._lease_ms, *binary]

    def _raise_refusal(self, reply: Any) -> None:
        if not isinstance(reply, Exception):
            return
        text = str(reply)
        if SUPERSEDED in text:
            epoch = text.split(SUPERSEDED, 1)[1].strip()
            raise SupersededError(self._mirror, f"epoch {epoch}", self.config, self.config_lease) from reply
        if NO_MARKER in text:
            raise RedisForgotError(self._mirror) from reply
        if OTHER_GENERATION in text:
            held = text.split(OTHER_GENERATION, 1)[1].strip()
            raise GenerationChangedError(self._mirror, None if held == "false" else held) from reply
        raise reply


def is_crossslot(reply: Any) -> bool:
    """A refusal of a command whose keys are in several slots (redis-py raises this class for the
    CROSSSLOT reply, and takes the word out of its message)."""
    return isinstance(reply, ClusterCrossSlotError) or (
        isinstance(reply, ResponseError) and str(reply).startswith("CROSSSLOT")
    )


def is_cluster_client(client: Any) -> bool:
    return isinstance(client, RedisCluster)


ScriptCall = tuple[Sequence[str], Sequence[Value]]  # a call's keys and arguments
PIPELINE_KEYS = 2 * CALL_SIZE + 2  # keys per pipeline: one call of CALL_SIZE documents, or many small
PIPELINES_IN_FLIGHT = 4  # sent before the first reply, one connection each


async def run_script_calls(
    client: redis.Redis, script: AsyncScript, calls: Sequence[ScriptCall]
) -> list[Any]:
    """Calls of one script in non-transactional pipelines of PIPELINE_KEYS keys (a cluster client
    sends each node its part), several in flight; each call's reply, in order, an exception where
    it failed. A pipeline stays small because redis-py sends a pipeline again whole when its
    connection drops: a long one could be cut short every time. Redis re-indexes one pipeline's
    documents while the next is encoded."""
    in_flight = asyncio.Semaphore(PIPELINES_IN_FLIGHT)

    async def run(part: Sequence[ScriptCall]) -> list[Any]:
        async with in_flight:
            return await _pipeline(client, script, part)

    replies = await asyncio.gather(*map(run, _pipelines(calls)))
    return [reply for part in replies for reply in part]


def _pipelines(calls: Sequence[ScriptCall]) -> list[list[ScriptCall]]:
    parts: list[list[ScriptCall]] = []
    size = PIPELINE_KEYS
    for call in calls:
        if size + len(call[0]) > PIPELINE_KEYS:
            parts.append([])
            size = 0
        parts[-1].append(call)
        size += len(call[0])
    return parts


async def _pipeline(client: redis.Redis, script: AsyncScript, calls: Sequence[ScriptCall]) -> list[Any]:
    """A node that does not know the script (restarted, flushed, failed over) gets it and the calls
    go again: redis-py loads a missing script for a single Redis's pipeline, not for a cluster's,
    and the calls are idempotent (versioned writes, marks, reads)."""
    for attempt in range(2):
        async with client.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        if attempt or not any(isinstance(reply, NoScriptError) for reply in replies):
            return replies
        await client.script_load(script.script)  # on a cluster: on every primary
    raise AssertionError("unreachable")  # pragma: no cover


def parse_tombstone(value: bytes | str, legacy: str | None) -> tuple[str | None, int]:
    """A tombstone's generation and version (`gen:version`; a bare version is of `legacy`)."""
    generation, _, version = _text(value).rpartition(":")
    return (generation or legacy), int(version)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
