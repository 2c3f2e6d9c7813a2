"""Index changes applied online: a new index generation beside the one users query, then a switch.

When the mirrors file changes a mirror's index in a way its documents can follow in place (fields
added, removed or changed, a TAG separator, flags, the vector algorithm or its parameters: anything
but the storage, the prefix, or the vector's field, dims and type), the index is not dropped:

1. a new index is created beside it, over the same prefix, under a physical name of its own
   (`<index.name>__<digest of its definition>`, the same for every worker with that file);
2. every row of the mirror is read again, so each document gets the new fields (its text did not
   change, so its vector is kept: no model call);
3. once that walk and the queue are drained and Redis has indexed every document, `index.name`
   becomes an alias of the new index, in one command users never see half of, and the old index is
   dropped without its documents.

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
from redisvl.schema import IndexSchema

from vecmirror.config import RESERVED_PREFIX, MirrorConfig
from vecmirror.index.manage import (
    create_index,
    different_index_error,
    index_differences,
    index_identifiers,
    index_info,
)

log = structlog.get_logger(__name__)
# What in a difference of the vector field means other vectors, not another index over them.
VECTOR_CHANGES = (" dim is", " data_type is", "identifier", "not in the")


def generation_name(mirror: MirrorConfig) -> str:
    """The physical name of the index this config defines: a digest of its definition, so workers
    with the same file agree, and workers with another file build another one."""
    definition = json.dumps(mirror.index.to_dict(), sort_keys=True, default=str)
    return f"{mirror.index.index.name}__{hashlib.sha256(definition.encode()).hexdigest()[:10]}"


def physical_schema(mirror: MirrorConfig, name: str) -> IndexSchema:
    schema = mirror.index.model_copy(deep=True)
    schema.index.name = name
    return schema


def blocking_differences(mirror: MirrorConfig, differences: list[str]) -> list[str]:
    """The differences documents cannot follow in place: another storage or prefix means other
    keys; another vector field, dims or type means other vectors (a re-embedding)."""
    vector = mirror.vector_field.name if mirror.vector_field is not None else None

    def blocks(difference: str) -> bool:
        if difference.startswith(("storage_type", "prefix")):
            return True
        if vector is not None and difference.startswith(f"field {vector!r}:"):
            return any(
                part in difference for part in (" dim is", " data_type is", "identifier", "not in the")
            )
        return False

    return [d for d in differences if blocks(d)]


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
    created: bool = False  # nothing answered for the name: the index was created now
    rebuild_into: str | None = None  # a new generation to fill, then switch to
    dropped_fields: tuple[str, ...] = ()  # fields of the queried index the config no longer has


async def prepare_index(client: redis.Redis, mirror: MirrorConfig) -> IndexPlan:
    """Creates the mirror's index when nothing answers for its name, or, when the index users
    query differs from the config in a way documents can follow in place, the new index generation
    beside it (to switch to once filled). Other differences stop start-up."""
    info = await index_info(client, mirror.index.index.name)
    if info is None:
        await create_index(client, mirror.index)
        log.info("index_created", mirror=mirror.name, index=mirror.index.index.name)
        return IndexPlan(created=True)
    differences = index_differences(mirror.index, info)
    if not differences:
        return IndexPlan()
    blocking = blocking_differences(mirror, differences)
    if blocking:
        raise different_index_error(mirror, blocking)
    target = generation_name(mirror)
    if await index_info(client, target) is None:
        await create_index(client, physical_schema(mirror, target))
        log.info("index_rebuild_started", mirror=mirror.name, index=target, differences=differences)
    return IndexPlan(rebuild_into=target, dropped_fields=_dropped_fields(mirror, info))


def _dropped_fields(mirror: MirrorConfig, info: dict[str, Any]) -> tuple[str, ...]:
    """What documents hold for the queried index that the config no longer writes: HSET leaves a
    field it is not given, so the fill deletes these (HASH field names; JSON top-level paths)."""
    wanted = {f.path if mirror.storage == "json" else f.name for f in mirror.index.fields.values()}
    identifiers = {str(identifier) for identifier in index_identifiers(info)}
    own = {i for i in identifiers if i.removeprefix("$.").startswith(RESERVED_PREFIX)}  # never ours to drop
    return tuple(sorted(identifiers - wanted - own))


EMBEDDING_FIELD = "embedding"  # of the marker HASH: a digest of what the stored vectors were made from


def embedding_digest(mirror: MirrorConfig) -> str | None:
    """What a mirror's vectors are made from (model, backend, template); None without a model. The
    content hash of each document changes with it too, so rows read again are re-embedded."""
    if mirror.embed is None:
        return None
    made_from = [mirror.embed.model, mirror.embed.backend, mirror.embed.template]
    return hashlib.sha256(json.dumps(made_from, default=str).encode()).hexdigest()[:16]


async def embedding_changed(client: redis.Redis, marker: str, mirror: MirrorConfig) -> bool:
    """True once when the mirror's vectors were made from another model, backend or template than
    the config's (recorded with the marker); the caller then reads every row again. A marker with
    no record yet (new, or from before this record) takes the config's without a re-read."""
    digest = embedding_digest(mirror)
    if digest is None:
        return False
    stored = await client.hget(marker, EMBEDDING_FIELD)
    if stored is not None and (stored.decode() if isinstance(stored, bytes) else str(stored)) == digest:
        return False
    if not await client.exists(marker):
        return False  # nothing synced yet: the first sync embeds with this config anyway
    await client.hset(marker, EMBEDDING_FIELD, digest)
    if stored is not None:
        log.info("embedding_changed_rows_requeued", mirror=mirror.name)
    return stored is not None
