"""Versioned writes that keep to hash slots (sink/versioned.py, sink/slots.py), on a single Redis,
on a one-node cluster reached through a plain client (what a proxy endpoint of a sharded database
looks like), and on three masters: each document's tombstone, guard and lease sit in its slot, a
slot whose guard is gone refuses its documents, and a Redis written by vecmirror before slots is
upgraded in place, its old workers fenced."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import redis
import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster

from vecmirror.errors import RedisForgotError
from vecmirror.sink.slots import SLOTS, own_key_slot, slot_of
from vecmirror.sink.upgrade import FENCE, upgrade_to_slots
from vecmirror.sink.versioned import (
    MARKER_SLOTS,
    SupersededError,
    Value,
    VersionedWrites,
    Write,
    guard_key,
    lease_keys,
    legacy_lease_keys,
    marker_key,
    slot_lease_key,
    tombstone_key,
)

KEYS = ["doc:a42", "doc:{x}:1", "doc:}a{", "{}doc", *(f"doc:{n}" for n in range(200))]


@asynccontextmanager
async def _writes(url: str, *, cluster: bool, config: str = "") -> AsyncIterator[VersionedWrites]:
    client: aredis.Redis = RedisCluster.from_url(url) if cluster else aredis.Redis.from_url(url)  # type: ignore[assignment]
    try:
        yield VersionedWrites(client, "m", json=False, tombstone_ttl=60, config=config)
    finally:
        await client.aclose()


def _upserts(writes: VersionedWrites, generation: str, version: int, keys: list[str]) -> list[Write]:
    fields: dict[str, Value] = {"t": "text", "_vm_version": version, "_vm_gen": generation}
    return [writes.hash_upsert(key, version, {**fields, "_vm_key": key}, []) for key in keys]


async def _write_and_delete(writes: VersionedWrites) -> str:
    generation = await writes.mark()
    assert all(await writes.apply(_upserts(writes, generation, 5, KEYS)))
    assert all(await writes.apply([writes.delete(key, 6) for key in KEYS[:3]]))
    # an older upsert of a deleted document stays out: its tombstone, in its slot, says so
    assert await writes.apply(_upserts(writes, generation, 5, KEYS[:3])) == [False] * 3
    return generation


async def test_a_single_redis_takes_calls_across_slots(redis_url: str) -> None:
    async with _writes(redis_url, cluster=False) as writes:
        await _write_and_delete(writes)
        assert not writes.one_slot
    client = redis.Redis.from_url(redis_url)
    assert all(client.exists(tombstone_key(key)) for key in KEYS[:3])
    assert not any(client.exists(key) for key in KEYS[:3])
    assert all(client.exists(guard_key("m", slot)) for slot in (0, 8000, SLOTS - 1))


async def test_a_proxy_endpoint_s_crossslot_refusal_turns_calls_into_one_slot_each(cluster1_url: str) -> None:
    async with _writes(cluster1_url, cluster=False) as writes:
        assert not writes.one_slot
        await _write_and_delete(writes)
        assert writes.one_slot
    client = redis.Redis.from_url(cluster1_url)
    assert [int(client.hget(key, "_vm_version") or 0) for key in KEYS[3:]] == [5] * (len(KEYS) - 3)
    assert all(client.exists(tombstone_key(key)) for key in KEYS[:3])


async def test_on_three_masters_each_document_s_own_keys_are_on_its_shard(
    cluster3_url: str, cluster3_nodes: list[str]
) -> None:
    async with _writes(cluster3_url, cluster=True) as writes:
        await _write_and_delete(writes)
    documents_seen: list[str] = []
    for url in cluster3_nodes:
        node = redis.Redis.from_url(url)
        keys, owned = [_text(key) for key in node.keys("*")], _owned(node)
        tombstones = [own_key_slot("tombstone", key) for key in keys]
        # a tombstone names its document, and sits in its slot: on the node the document was on
        assert sorted(t[1] for t in tombstones if t) == sorted(k for k in KEYS[:3] if slot_of(k) in owned)
        assert {slot_of(key) for key in keys if own_key_slot("guard", key)} == owned
        documents_seen += [key for key in keys if key in KEYS]
    assert sorted(documents_seen) == sorted(KEYS[3:])


def _owned(node: redis.Redis) -> set[int]:
    """The slots the node serves (its own line of CLUSTER NODES lists their ranges)."""
    lines = node.execute_command("CLUSTER", "NODES").decode().splitlines()  # type: ignore[no-untyped-call]
    ranges = [part.partition("-") for part in next(line for line in lines if "myself" in line).split()[8:]]
    return {slot for first, _, last in ranges for slot in range(int(first), int(last or first) + 1)}


@pytest.mark.parametrize("cluster", [False, True], ids=["single", "cluster"])
async def test_a_slot_without_its_guard_refuses_its_documents_and_is_found(
    redis_url: str, cluster1_url: str, cluster: bool
) -> None:
    url = cluster1_url if cluster else redis_url
    async with _writes(url, cluster=cluster) as writes:
        generation = await writes.mark()
        lost = slot_of("doc:lost")
        await writes.client.delete(guard_key("m", lost))
        assert await writes.slots_forgotten([0, lost, SLOTS - 1]) == [lost]
        with pytest.raises(RedisForgotError):
            await writes.apply(_upserts(writes, generation, 5, ["doc:lost", "doc:kept"]))
        assert not await writes.client.exists("doc:lost")


async def test_a_writer_of_an_older_lease_epoch_is_refused_where_a_newer_one_wrote(redis_url: str) -> None:
    async with (
        _writes(redis_url, cluster=False, config="old") as old,
        _writes(redis_url, cluster=False, config="new") as new,
    ):
        generation = await old.mark()
        new.generation = generation
        await old.claim_config()  # the old config holds the mirror...
        await new.claim_config()  # ...and a new one takes it over: a rolling update
        assert all(await new.apply(_upserts(new, generation, 5, ["doc:1"])))
        client = redis.Redis.from_url(redis_url)
        assert client.get(slot_lease_key("m", slot_of("doc:1"))) == str(new.lease_epoch).encode()
        with pytest.raises(SupersededError):
            await old.apply(_upserts(old, generation, 6, ["doc:1"]))
        assert client.hget("doc:1", "_vm_version") == b"5"


# How vecmirror 0.12 claimed its lease in every write script, before slots: an old worker still
# running during the upgrade runs this.
OLD_CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] and redis.call('HEXISTS', KEYS[2], 'seen:' .. ARGV[1]) == 1 then
    return holder
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', 60000)
redis.call('HSET', KEYS[2], 'current', ARGV[1])
redis.call('HSETNX', KEYS[2], 'seen:' .. ARGV[1], '1')
return false
"""


async def test_a_redis_written_before_slots_is_upgraded_in_place_and_its_old_workers_fenced(
    redis_url: str,
) -> None:
    client = redis.Redis.from_url(redis_url)
    # What vecmirror 0.12 left: a marker without slots, a document, a tombstone named after its
    # document alone, and the lease of the config it ran.
    client.hset(marker_key("m"), mapping={"mirror": "m", "generation": "g1", "high": "9"})
    client.hset("doc:1", mapping={"t": "kept", "_vm_version": "7", "_vm_gen": "g1", "_vm_key": "doc:1"})
    client.set("vecmirror:tombstone:doc:2", "g1:9", px=50_000)
    old_claim = client.register_script(OLD_CLAIM)
    assert old_claim(keys=legacy_lease_keys("m"), args=["cfg"]) is None

    async with _writes(redis_url, cluster=False, config="cfg") as writes:
        assert await upgrade_to_slots(writes, "m")
        assert not await upgrade_to_slots(writes, "m")  # once
        # An old worker's script fails from now on, before it writes, whatever config it runs: one
        # never seen before too, which would have taken a lease over.
        for config in ("cfg", "a-config-never-seen"):
            with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
                old_claim(keys=legacy_lease_keys("m"), args=[config])
        assert client.hget(legacy_lease_keys("m")[0], "fenced_by") == FENCE.encode()
        assert client.ttl(legacy_lease_keys("m")[0]) == -1
        # The tombstone moved with the time it had left; guards came from the marker.
        assert not client.exists("vecmirror:tombstone:doc:2")
        assert client.get(tombstone_key("doc:2")) == b"g1:9"
        assert 40_000 < client.pttl(tombstone_key("doc:2")) <= 50_000
        assert client.hget(marker_key("m"), MARKER_SLOTS) == b"1"
        assert all(client.hget(guard_key("m", slot), "generation") == b"g1" for slot in (0, 9000))
        # The config's history came along: the config still holds the mirror, at once.
        assert client.hget(lease_keys("m")[1], "seen:cfg") == b"1"
        writes.generation = "g1"
        assert await writes.apply(_upserts(writes, "g1", 5, ["doc:1", "doc:2"])) == [False, False]
        assert client.hget("doc:1", "t") == b"kept"
        assert not client.exists("doc:2")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
