"""The upgrade from the key layout before hash slots (vecmirror 0.12 and earlier) to today's, in place.

Before, a mirror had one marker that every write script read, tombstones named after the document
key alone, and its config lease under two plain keys. Today each slot has its guard, tombstones
and leases are hash-tagged into their document's slot (sink/slots.py). The documents themselves do
not change, so nothing is re-embedded or rewritten: the upgrade only renames vecmirror's own keys.

Workers of the old version may still run during a rolling upgrade, and they must write nothing
once the new version has moved the tombstones (an old delete would leave a tombstone the new
writes do not see). So the first step fences them with their own lease: every old write script
begins by reading its holder, a STRING, with GET; the holder becomes a HASH, for good, so that GET
fails (WRONGTYPE) before the script writes anything, whatever config the old worker runs, one never
seen included (a new config would have taken a STRING holder over). The old worker reports its
mirror paused on that error and writes nothing more. Only then are the tombstones renamed: a write
script runs atomically, so no old write can land between the two steps. Then every slot gets its
guard from the old marker, and the marker says the upgrade is done, last.
"""

from __future__ import annotations

import redis.asyncio as redis
import structlog

from vecmirror.config import OWN_KEY_PREFIX
from vecmirror.sink.cluster import as_text
from vecmirror.sink.slots import own_key_slot
from vecmirror.sink.versioned import (
    LEASE_CURRENT,
    LEASE_EPOCH,
    MARKER_GENERATION,
    MARKER_LEGACY,
    MARKER_SLOTS,
    TOMBSTONE,
    VersionedWrites,
    lease_keys,
    legacy_lease_keys,
    marker_key,
    tombstone_key,
)

log = structlog.get_logger(__name__)
FENCE = "vecmirror-slots"  # who fenced the old lease: the upgrade to slots
FENCE_WHY = "the mirror was upgraded to the slot layout: stop workers older than it"
SCAN_COUNT = 1000


async def upgrade_to_slots(writes: VersionedWrites, mirror: str) -> bool:
    """Moves a mirror from the layout before slots to today's; False when there was nothing to do
    (a mirror marked since slots, or never marked)."""
    client = writes.client
    marker = marker_key(mirror)
    kind = as_text(await client.type(marker))
    if kind == "none" or (kind == "hash" and await client.hexists(marker, MARKER_SLOTS)):
        return False
    await _fence_old_workers(client, mirror)
    moved = await _move_tombstones(client)
    if kind == "hash":  # a STRING marker (from before generations) is marked afresh on adoption
        generation, legacy = await client.hmget(marker, [MARKER_GENERATION, MARKER_LEGACY])
        if generation is not None:
            await writes.mark_slots(as_text(generation), adopt_legacy=legacy is not None)
    log.info("layout_upgraded_to_slots", mirror=mirror, tombstones_moved=moved)
    return True


async def _fence_old_workers(client: redis.Redis, mirror: str) -> None:
    old_holder, old_seen = legacy_lease_keys(mirror)
    _, seen = lease_keys(mirror)
    configs = {as_text(k): as_text(v) for k, v in (await client.hgetall(old_seen)).items()}
    configs_run = [field for field in configs if field.startswith("seen:")]
    current = configs.get(LEASE_CURRENT)
    if current:
        configs_run.append(f"seen:{current}")
    async with client.pipeline(transaction=True) as fence:  # one key: one slot
        fence.delete(old_holder)
        fence.hset(old_holder, mapping={"fenced_by": FENCE, "why": FENCE_WHY})  # no TTL: for good
        await fence.execute()
    # The configs' history carries over, so a config seen before stays an older one.
    history = {field: "1" for field in configs_run}
    if current:
        history[LEASE_CURRENT] = current
    if LEASE_EPOCH in configs:
        history[LEASE_EPOCH] = configs[LEASE_EPOCH]
    for field, value in history.items():
        await client.hsetnx(seen, field, value)


async def _move_tombstones(client: redis.Redis) -> int:
    """Tombstones are named after their document key alone before slots; each moves to its slot's
    name with the time it has left (one that expires meanwhile is gone either way)."""
    moved = 0
    async for raw in client.scan_iter(match=f"{OWN_KEY_PREFIX}{TOMBSTONE}:*", count=SCAN_COUNT):
        old = as_text(raw)
        if own_key_slot(TOMBSTONE, old) is not None:
            continue  # already today's name
        document = old.removeprefix(f"{OWN_KEY_PREFIX}{TOMBSTONE}:")
        value, ttl = await client.get(old), await client.pttl(old)
        if value is not None:
            await client.set(tombstone_key(document), value, px=ttl if ttl > 0 else None, nx=True)
        await client.delete(old)
        moved += 1
    return moved
