"""Sharded Redis: where a command goes, and what a shard alone can answer.

A cluster client (redis.asyncio.cluster.RedisCluster, typed as redis.asyncio.Redis elsewhere: see
connections.py) routes a command that names keys to the primary owning their slot. What names no key
needs saying where it goes: SCAN lists one node's keys, FT._LIST one node's indexes.

The Query Engine's coordinator (Redis 8 in cluster mode) makes the index one thing: FT.CREATE on any
node defines it on every shard, FT.SEARCH and FT.INFO ask every shard and merge. Without it
(RediSearch builds without the coordinator, such as this stack's 2.10) every FT.* command names the
index as its key: the index lives on the primary owning its name's slot, indexes that primary's
documents only, and FT.ALIASADD of an alias in another slot is CROSSSLOT. vecmirror still writes
there (documents, versions, tombstones are per slot), but a search would answer with one shard's
documents as if they were all, so it is refused (`refuse_partial_search`). A one-node cluster owns
every slot and behaves like a standalone Redis in all this.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from weakref import WeakKeyDictionary

import redis.asyncio as redis
import structlog
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import NoPermissionError, ResponseError

from vecmirror.errors import ShardedRedisError
from vecmirror.sink.slots import slot_of

log = structlog.get_logger(__name__)

# Registered by the Query Engine's coordinator only (Redis 8 in cluster mode; Redis Stack builds
# made with COORD=oss): RediSearch's own cluster tests read `num_partitions` from it.
COORDINATOR_PROBE = "SEARCH.CLUSTERINFO"
_coordinators: WeakKeyDictionary[Any, bool] = WeakKeyDictionary()


class PartialSearchError(ShardedRedisError):
    """A cluster whose Query Engine has no coordinator: each shard answers for its own keys only."""


@dataclass(frozen=True)
class Primary:
    """One primary of a cluster (or a plain client's one server), to send a command to."""

    name: str
    client: redis.Redis
    node: ClusterNode | None = None

    async def execute(self, *command: Any) -> Any:
        if self.node is None:
            return await self.client.execute_command(*command)  # type: ignore[no-untyped-call]
        return await self.client.execute_command(*command, target_nodes=self.node)  # type: ignore[no-untyped-call]


def is_cluster(client: redis.Redis) -> bool:
    return isinstance(client, RedisCluster)


def primaries(client: redis.Redis) -> list[Primary]:
    """Every primary of a cluster; a plain client's server is its only one."""
    if not is_cluster(client):
        return [Primary("", client)]
    cluster = cast(RedisCluster, client)
    return [Primary(node.name, client, node) for node in cluster.get_primaries()]


async def on_every_primary(client: redis.Redis, *command: Any) -> dict[str, Any]:
    """The command on every primary at once; each primary's reply by its name."""
    targets = primaries(client)
    replies = await asyncio.gather(*(p.execute(*command) for p in targets))
    return {p.name: reply for p, reply in zip(targets, replies, strict=True)}


async def scan_pages(client: redis.Redis, match: str, count: int) -> AsyncIterator[list[str]]:
    """The keys matching `match`, a SCAN page at a time, primary after primary on a cluster."""
    for primary in primaries(client):
        async for page in _node_pages(primary, match, count):
            yield page


async def scan_keys(client: redis.Redis, match: str, count: int = 1000) -> AsyncIterator[str]:
    """The keys matching `match`, on every primary."""
    async for page in scan_pages(client, match, count):
        for key in page:
            yield key


async def _node_pages(primary: Primary, match: str, count: int) -> AsyncIterator[list[str]]:
    cursor: Any = 0
    while True:
        if primary.node is None:
            cursor, keys = await primary.client.scan(cursor, match=match, count=count)
        else:
            # a cluster client's SCAN answers {node name: cursor} beside the keys
            reply: Any = await primary.client.scan(
                cursor, match=match, count=count, target_nodes=primary.node
            )
            cursor, keys = reply[0][primary.name], reply[1]
        if keys:
            yield [as_text(k) for k in keys]
        if int(cursor) == 0:
            return


async def has_coordinator(client: redis.Redis) -> bool:
    """Whether the cluster's Query Engine runs its coordinator (asked once per client). A plain
    client needs none: one server, or a proxy endpoint that coordinates itself."""
    if not is_cluster(client):
        return True
    if client not in _coordinators:
        _coordinators[client] = await _ask_coordinator(primaries(client)[0])
    return _coordinators[client]


async def _ask_coordinator(primary: Primary) -> bool:
    try:
        await primary.execute(COORDINATOR_PROBE)
    except NoPermissionError:
        # Redis 8, the only cluster with a Query Engine most users meet, has one.
        log.warning("redis_coordinator_probe_refused", command=COORDINATOR_PROBE, assumed="coordinator")
        return True
    except ResponseError as exc:
        if str(exc).lower().startswith("unknown command"):
            return False
        raise
    return True


async def shards_index_alone(client: redis.Redis) -> bool:
    """True where each primary indexes only its own keys: several primaries, no coordinator."""
    return is_cluster(client) and len(primaries(client)) > 1 and not await has_coordinator(client)


async def refuse_partial_search(client: redis.Redis, index: str) -> None:
    """Searching such a cluster would answer with one shard's documents as if they were all."""
    if await shards_index_alone(client):
        raise PartialSearchError(partial_search_error(index, len(primaries(client))))


def partial_search_error(index: str, shards: int) -> str:
    return (
        f"cannot search {index!r}: Redis is a cluster of {shards} primaries whose Query Engine has no "
        "coordinator, so each shard would answer with its own documents only; use Redis 8 (its "
        "search module coordinates a cluster) or a proxy endpoint"
    )


async def index_names(client: redis.Redis) -> set[str]:
    """FT._LIST, which names no key and answers for its own node only: on a cluster, the union
    over the primaries (without the coordinator each index is on one of them only)."""
    replies = await on_every_primary(client, "FT._LIST")
    return set().union(*(_names(reply) for reply in replies.values()))


def index_owner(client: redis.Redis, index: str) -> str:
    """The primary that runs FT.* commands for `index` where each shard indexes alone: FT.* name the
    index as their key there, so the owner of its slot holds it (and only its own documents)."""
    cluster = cast(RedisCluster, client)
    return str(cluster.nodes_manager.get_node_from_slot(slot_of(index)).name)


async def primaries_lacking(client: redis.Redis, index: str) -> list[str]:
    """The primaries (by name) that should hold the definition of `index` (an index's own name, not
    an alias: FT._LIST lists no alias) and do not: a shard restarted empty forgets it, while the
    coordinator's FT.INFO still answers from the others. Every primary holds a copy where the
    coordinator runs; where each shard indexes alone, only the owner of the name's slot."""
    holders = primaries(client)
    if await shards_index_alone(client):
        owner = index_owner(client, index)
        holders = [p for p in holders if p.name == owner]
    listed = await asyncio.gather(*(p.execute("FT._LIST") for p in holders))
    return [p.name for p, names in zip(holders, listed, strict=True) if index not in _names(names)]


async def keys_the_index_sees(client: redis.Redis, index: str, keys: Sequence[str]) -> list[str]:
    """Those of `keys` whose indexing `index` can show (FT.SEARCH INKEYS): all of them, except where
    each shard indexes alone: there the index lives on one primary and sees that primary's keys."""
    if not await shards_index_alone(client):
        return list(keys)
    cluster = cast(RedisCluster, client)
    owner = index_owner(client, index)
    return [k for k in keys if cluster.nodes_manager.get_node_from_slot(slot_of(k)).name == owner]


async def get_many(client: redis.Redis, keys: Sequence[str]) -> list[Any]:
    """GET of each key, in order: a pipeline of single-key GETs, which a cluster client sends to
    each key's primary and a proxy endpoint accepts (an MGET over several slots is CROSSSLOT)."""
    if not keys:
        return []
    async with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.get(key)
        return list(await pipe.execute())


async def unlink_keys(client: redis.Redis, keys: Iterable[str]) -> int:
    """UNLINK the keys, one command per hash slot (all in one pipeline): a multi-key UNLINK over
    several slots is CROSSSLOT on a proxy endpoint. How many existed."""
    by_slot: dict[int, list[str]] = defaultdict(list)
    for key in keys:
        by_slot[slot_of(key)].append(key)
    if not by_slot:
        return 0
    async with client.pipeline(transaction=False) as pipe:
        for same_slot in by_slot.values():
            pipe.execute_command("UNLINK", *same_slot)
        return sum(int(n) for n in await pipe.execute())


def _names(reply: Any) -> set[str]:
    return {as_text(n) for n in reply or []}


def as_text(value: Any) -> str:
    """A reply as text: redis-py answers bytes unless told to decode."""
    return value.decode() if isinstance(value, bytes) else str(value)
