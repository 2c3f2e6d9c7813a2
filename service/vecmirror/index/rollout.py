"""Index changes applied online: a new index generation beside the one users query, then a switch.

When the mirrors file changes a mirror's index (fields added, removed or changed, a TAG separator,
flags, the vector algorithm or its parameters) or its vectors (the template, model or backend that
make them, the vector field's name, dims or type), the index is not dropped (another prefix or
storage means other keys: index/rekey.py, the same steps over new keys):

1. a new index is created beside it, over the same prefix, under a physical name of its own
   (`<index.name>__<digest of its definition>`, the same for every worker with that file);
2. every row of the mirror is read again, so each document gets the new fields. Its vector is
   kept where its text did not change; other vectors are made beside the old ones, in each
   document at `<field>__<digest>`, which the new index reads `AS <field>` (place_vectors), so the
   old index keeps answering from the old vectors meanwhile (blue/green);
3. once that walk and the queue are drained and Redis has indexed every document, `index.name`
   becomes an alias of the new index, in one command users never see half of, and the old index is
   dropped without its documents; then the old vectors are deleted (index/vectors.py).

Users keep querying `index.name` all along (an alias answers FT.SEARCH, FT.INFO and FT.AGGREGATE as
the index does). Measured on this Redis (see the closing notes of issue 12): the switch took under a
millisecond and readers looping on the name saw no error and no missing document.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
import structlog
from redis.exceptions import ResponseError

from vecmirror.config import RESERVED_PREFIX, MirrorConfig
from vecmirror.index.manage import (
    create_index,
    different_index_error,
    index_differences,
    index_identifiers,
    index_info,
    physical_schema,
)
from vecmirror.index.rekey import delete_documents, rekey_problem, served_layout, settle_keys
from vecmirror.index.vectors import (
    copyable,
    delete_from_documents,
    place_vectors,
    served_vector,
    settle_vectors,
)
from vecmirror.sink.cluster import index_names
from vecmirror.sink.keys import KeyLayout, recorded_layout

log = structlog.get_logger(__name__)


def generation_name(mirror: MirrorConfig) -> str:
    """The physical name of the index this config defines (where it reads vectors from included): a
    digest of its definition, so workers with the same file agree, and workers with another file
    build another one."""
    schema = physical_schema(mirror, mirror.index.index.name)
    definition = json.dumps(schema.to_dict(), sort_keys=True, default=str)
    return f"{mirror.index.index.name}__{hashlib.sha256(definition.encode()).hexdigest()[:10]}"


def blocking_differences(differences: list[str]) -> list[str]:
    """The differences documents cannot follow in place: another storage or prefix means other
    keys. (Other vectors are made beside the old ones: see place_vectors.)"""
    return [d for d in differences if d.startswith(("storage_type", "prefix"))]


def queried_index(info: dict[str, Any]) -> str:
    """The real index behind a name FT.INFO answered for (itself, or an alias's target)."""
    name = info.get("index_name")
    return name.decode() if isinstance(name, bytes) else str(name)


async def switch(client: redis.Redis, name: str, target: str) -> None:
    """Makes `name` answer from `target`, then drops the index it answered from before (not its
    documents). An alias may share its name with a live index, hidden until that index is dropped:
    adding it first makes the drop itself the switch, so no query ever finds no index. Workers
    switching at once end the same way: the one that finds it done stops there."""
    before = await answering_index(client, name)
    if before == target:
        return
    try:
        if before is None or before == name:
            await client.execute_command("FT.ALIASADD", name, target)  # type: ignore[no-untyped-call]
        else:
            await client.execute_command("FT.ALIASUPDATE", name, target)  # type: ignore[no-untyped-call]
        if before is not None:
            await client.execute_command("FT.DROPINDEX", before)  # type: ignore[no-untyped-call]
    except ResponseError:
        if await answering_index(client, name) != target:
            raise
        return  # a peer switched meanwhile
    log.info("index_switched", index=name, to=target, dropped=before)


async def answering_index(client: redis.Redis, name: str) -> str | None:
    """The real index that answers for `name` (itself, or an alias's target); None: nothing does."""
    info = await index_info(client, name)
    return None if info is None else queried_index(info)


@dataclass(frozen=True)
class IndexPlan:
    mirror: MirrorConfig  # the config, its vectors placed (index/vectors.py)
    created: bool = False  # nothing answered for the name: the index was created now
    rebuild_into: str | None = None  # a new generation to fill, then switch to
    dropped_fields: tuple[str, ...] = ()  # fields of the queried index the config no longer has
    vectors_left_at: str | None = None  # where the queried index reads the old vectors, kept till the switch
    # The type of the old vectors when they can be copied where the text is the same (None: they
    # cannot: other dims, or a type less precise than the new one).
    vectors_reusable: str | None = None
    # A rollout abandoned (rolled back) was dropped: the documents it rewrote hold its hashes, so
    # every row is read again (those rows are embedded again, the others kept).
    abandoned: bool = False
    keys_left: KeyLayout | None = None  # a prefix or storage change: the old keys (index/rekey.py)


async def prepare_index(
    client: redis.Redis, mirror: MirrorConfig, marker: str, generation: str | None = None
) -> IndexPlan:
    """Creates the mirror's index when nothing answers for its name, or, when the index users
    query differs from the config, the new index generation beside it, to switch to once filled:
    new vectors are made beside the old ones (place_vectors), documents under another prefix or
    storage are new keys (index/rekey.py). A change that cannot run online stops start-up, naming
    why. `generation`: the mirror's, once loaded (the old keys of a move are its documents)."""
    info = await index_info(client, mirror.index.index.name)
    keys_left, problem = await key_move(client, marker, mirror, info)
    if problem is not None:
        raise different_index_error(mirror, [problem])
    placed = mirror if keys_left is not None else await place_vectors(client, marker, mirror, info)
    if info is None:
        await create_index(client, physical_schema(placed, placed.index.index.name))
        log.info("index_created", mirror=mirror.name, index=mirror.index.index.name)
        await settle(client, marker, placed, generation)
        return IndexPlan(placed, created=True)
    differences = index_differences(physical_schema(placed, placed.index.index.name), info)
    if not differences:
        abandoned = await drop_abandoned_generations(client, placed, info, keep=None, generation=generation)
        await settle(client, marker, placed, generation)
        return IndexPlan(placed, abandoned=abandoned)
    blocking = [] if keys_left is not None else blocking_differences(differences)
    if blocking:
        raise different_index_error(mirror, blocking)
    target = generation_name(placed)
    abandoned = await drop_abandoned_generations(client, placed, info, keep=target, generation=generation)
    if await index_info(client, target) is None:
        await create_index(client, physical_schema(placed, target))
        log.info("index_rebuild_started", mirror=mirror.name, index=target, differences=differences)
    served = served_vector(info)
    left_at = served.at if served is not None and placed.vector_at not in (None, served.at) else None
    return IndexPlan(
        placed,
        rebuild_into=target,
        dropped_fields=_dropped_fields(placed, info, keep=left_at),
        vectors_left_at=left_at,
        vectors_reusable=copyable(placed, served) if left_at is not None else None,
        abandoned=abandoned,
        keys_left=keys_left,
    )


async def key_move(
    client: redis.Redis, marker: str, mirror: MirrorConfig, info: dict[str, Any] | None
) -> tuple[KeyLayout | None, str | None]:
    """The keys the index users query reads when the config's documents are other keys (another
    prefix or storage, index/rekey.py), and why that move cannot run online (None: it can)."""
    if info is None:
        return None, None
    layout = KeyLayout.of(mirror)
    recorded = await recorded_layout(client, marker)
    served = served_layout(info, recorded.separator if recorded is not None else layout.separator)
    if layout.same_keys(served):
        return None, None
    return served, rekey_problem(layout, served)


async def settle(client: redis.Redis, marker: str, mirror: MirrorConfig, generation: str | None) -> None:
    """Once the index users query is the config's: the documents left under old keys go
    (index/rekey.py), then the old vectors (settle_vectors); the marker records both."""
    keys = await settle_keys(client, marker, mirror, generation)
    if keys != "pending":
        # Documents that moved were written whole under new keys: they hold no old vector.
        await settle_vectors(client, marker, mirror, walk=keys == "same")


async def drop_abandoned_generations(
    client: redis.Redis,
    mirror: MirrorConfig,
    info: dict[str, Any],
    *,
    keep: str | None,
    generation: str | None,
) -> bool:
    """Index generations (`<index.name>__…`) that neither answer for the name nor are this config's
    to fill: a rollout abandoned (its file rolled back or replaced before it switched). Redis would
    index every write into them forever. Dropped without their documents; the vectors only they
    read are deleted from the documents, and the documents of `generation` under keys only they
    read (a move to a new prefix, index/rekey.py). Called only by the config holding the mirror's
    lease. True when one was dropped."""
    name, answering = mirror.index.index.name, queried_index(info)
    served = served_vector(info)
    in_use = {mirror.vector_at, served.at if served is not None else None}
    dropped = False
    for other in sorted(await index_names(client)):  # on a cluster, every primary's
        if not other.startswith(f"{name}__") or other in (answering, keep):
            continue
        other_info = await index_info(client, other)
        if other_info is None:
            continue  # a peer dropped it meanwhile
        abandoned = served_vector(other_info)
        await _drop_abandoned_keys(client, mirror, info, other_info, generation)
        try:
            await client.execute_command("FT.DROPINDEX", other)  # type: ignore[no-untyped-call]
        except ResponseError as exc:
            if "unknown index" not in str(exc).lower():
                raise
            continue  # a peer dropped it meanwhile
        dropped = True
        log.warning("abandoned_index_dropped", mirror=mirror.name, index=other)
        if abandoned is not None and abandoned.at not in in_use:
            removed = await delete_from_documents(client, mirror, abandoned.at)
            log.info("old_vectors_removed", mirror=mirror.name, at=abandoned.at, documents=removed)
    return dropped


async def _drop_abandoned_keys(
    client: redis.Redis,
    mirror: MirrorConfig,
    info: dict[str, Any],
    abandoned: dict[str, Any],
    generation: str | None,
) -> None:
    """The documents an abandoned move wrote under its new keys (neither the served nor the
    config's), of the mirror's generation."""
    separator = mirror.index.index.key_separator
    layout = served_layout(abandoned, separator)
    if generation is None or any(
        layout.same_keys(other) for other in (KeyLayout.of(mirror), served_layout(info, separator))
    ):
        return
    removed = await delete_documents(client, layout, generation)
    log.info("old_keys_removed", mirror=mirror.name, prefixes=list(layout.prefixes), documents=removed)


def _dropped_fields(mirror: MirrorConfig, info: dict[str, Any], *, keep: str | None) -> tuple[str, ...]:
    """What documents hold for the queried index that the config no longer writes: HSET leaves a
    field it is not given, so the fill deletes these (HASH field names; JSON top-level paths). The
    old vectors (`keep`) serve until the switch, and go after it (settle_vectors)."""
    wanted = {f.path if mirror.storage == "json" else f.name for f in mirror.value_fields}
    wanted |= {mirror.vector_at} if mirror.vector_at is not None else set()
    identifiers = {str(identifier) for identifier in index_identifiers(info)}
    own = {i for i in identifiers if i.removeprefix("$.").startswith(RESERVED_PREFIX)}  # never ours to drop
    return tuple(sorted(identifiers - wanted - own - {keep}))
