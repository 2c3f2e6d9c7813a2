"""When a mirror must be synced again from scratch, and in which generation.

Redis may forget a mirror (restarted empty, flushed: no marker; an index dropped by hand), and a
mirror's history may start again (see source/generations.py): re-registered, its table replaced,
Postgres gone back in time. Either way every key Redis holds and every row are queued again (a
TRUNCATE marker and a new backfill walk), in Postgres' generation, and the marker says so last.
"""

from __future__ import annotations

import structlog

from vecmirror.config import MirrorConfig
from vecmirror.index.manage import ensure_index, index_info
from vecmirror.sink.observe import document_count
from vecmirror.sink.slots import SLOTS
from vecmirror.sink.upgrade import upgrade_to_slots
from vecmirror.sink.versioned import Marker, is_cluster_client
from vecmirror.sink.writer import RedisSink
from vecmirror.source import Connection, changes, generations

log = structlog.get_logger(__name__)


class MirrorResync:
    def __init__(self, mirror: MirrorConfig, sink: RedisSink) -> None:
        self.mirror, self._sink = mirror, sink
        self.name = mirror.name

    async def if_forgotten(self, conn: Connection, *, index_created: bool) -> bool:
        """A Redis without the mirror's marker (restarted empty, flushed) or without its index
        (dropped by hand), or whose marker holds another generation than Postgres (the mirror's
        history started again: re-registered, its table replaced, Postgres restored), gets the index
        back and every row and key queued again, in Postgres' generation; writes are refused until
        then. Cheap (a query and three reads), so the idle worker looks on every wake-up. A mirror
        never synced before is simply initialised: its first backfill queues every row."""
        marker, generation = await self._settle_generation(conn)
        indexed = await index_info(self._sink.client, self._sink.index_name) is not None
        forgotten = await self._slots_forgotten() if marker is not None else []
        known = marker is not None and marker.generation == generation and not forgotten
        if known and indexed and not index_created:
            self._sink.versioned.generation = generation
            return False
        if marker is None and await self._first_sync_into_empty_index(conn):
            await self._sink.versioned.mark(generation)
            log.info("mirror_initialised", mirror=self.name, generation=generation)
            return True
        if marker is None:
            reason = "no marker key in Redis"
        elif marker.generation != generation:
            reason = f"the mirror's generation changed from {marker.generation} to {generation}"
        elif forgotten:
            reason = (
                f"hash slots {_slots_text(forgotten)} lost the mirror's guard: "
                "a shard restarted empty, or was flushed"
            )
        else:
            reason = "the index is gone"
        await self._resync(conn, generation, reason)
        return True

    async def _settle_generation(self, conn: Connection) -> tuple[Marker | None, str]:
        """The marker and Postgres' generation, renewed first where Postgres says the history
        started again behind its back: the table's OID changed (dropped and created again without
        `migrate`, or restored), or Redis holds versions Postgres never handed out (it went back in
        time). A marker from before generations adopts Postgres' (the upgrade: no resync)."""
        await upgrade_to_slots(self._sink.versioned, self.name)
        marker = await self._sink.versioned.read_marker()
        state = await generations.load(conn, self.name)
        generation, reason = state.generation, None
        if state.replaced_table():
            reason = "the table was replaced"
        elif marker is not None and marker.generation == generation and state.went_back(marker.high):
            reason = (
                f"Postgres went back: Redis holds version {marker.high}, the newest is {state.last_change_id}"
            )
        elif state.table_oid is None and state.current_oid is not None:
            await generations.record_table_oid(conn, self.name, state.current_oid)
        if reason is not None:
            generation = await generations.renew(conn, self.name, generation, table_oid=state.current_oid)
            log.warning("generation_renewed", mirror=self.name, generation=generation, reason=reason)
        if marker is not None and marker.generation is None:
            await self._sink.versioned.mark(generation, adopt_legacy=True)
            log.info("generation_adopted", mirror=self.name, generation=generation)
            marker = Marker(generation, generation)
        return marker, generation

    async def _slots_forgotten(self) -> list[int]:
        """The sampled slots whose guard is gone: a shard of a sharded Redis restarted empty while
        the marker, on another shard, survived."""
        return await self._sink.versioned.slots_forgotten(sample_slots(self._sink.client))

    async def _first_sync_into_empty_index(self, conn: Connection) -> bool:
        """A first sync has nothing to re-check when its index holds no document yet: the first
        backfill queues every row. An index already holding documents (of an earlier mirror by
        that name, say) is resynced, so documents of rows deleted meanwhile go."""
        if not await changes.is_first_sync(conn, self.name):
            return False
        await ensure_index(self._sink.client, self.mirror)
        info = await index_info(self._sink.client, self.mirror.index.index.name)
        return info is not None and await document_count(self._sink.client, info) == 0

    async def after_refusal(self, conn: Connection, reason: str) -> None:
        """After a write was refused for want of a marker, an index, or of this writer's generation.
        Where a peer already resynced the mirror in Postgres' generation, this writer only adopts
        it; otherwise every key and row is queued again, in that generation."""
        marker, generation = await self._settle_generation(conn)
        if (
            marker is not None
            and marker.generation == generation != self._sink.versioned.generation
            and await index_info(self._sink.client, self._sink.index_name) is not None
        ):
            self._sink.versioned.generation = generation
            log.info("generation_reloaded", mirror=self.name, generation=generation)
            return
        await self._resync(conn, generation, reason)

    async def _resync(self, conn: Connection, generation: str, reason: str) -> None:
        await ensure_index(self._sink.client, self.mirror)
        async with conn.transaction():
            await changes.queue_resync(conn, self.name)
        await self._sink.versioned.mark(generation)
        log.warning("mirror_resync_queued", mirror=self.name, reason=reason, generation=generation)


SLOT_SAMPLE_STEP = 64  # slots checked on every wake-up: every 64th, and the first of each shard


def sample_slots(client: object) -> list[int]:
    """Slots whose guards tell a shard that forgot: every SLOT_SAMPLE_STEP-th (a proxy endpoint
    hides its shards, which own ranges of thousands of slots), and on a cluster the first slot each
    primary owns."""
    sample = set(range(0, SLOTS, SLOT_SAMPLE_STEP))
    if is_cluster_client(client):
        owners = client.nodes_manager.slots_cache  # type: ignore[attr-defined]
        firsts: dict[str, int] = {}
        for slot in sorted(owners):
            firsts.setdefault(owners[slot][0].name, slot)
        sample |= set(firsts.values())
    return sorted(sample)


def _slots_text(slots: list[int]) -> str:
    shown = ", ".join(map(str, slots[:5]))
    return f"{shown} and {len(slots) - 5} more" if len(slots) > 5 else shown
