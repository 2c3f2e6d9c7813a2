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
   dropped without its documents; then the old vectors are deleted (settle_vectors).

Users keep querying `index.name` all along (an alias answers FT.SEARCH, FT.INFO and FT.AGGREGATE as
the index does). Measured on this Redis (see the closing notes of issue 12): the switch took under a
millisecond and readers looping on the name saw no error and no missing document.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
import structlog
from redis.exceptions import ResponseError

from vecmirror.config import RESERVED_PREFIX, MirrorConfig
from vecmirror.index.manage import (
    create_index,
    different_index_error,
    index_attributes,
    index_differences,
    index_identifiers,
    index_info,
    physical_schema,
)
from vecmirror.index.rekey import delete_documents, rekey_problem, served_layout, settle_keys
from vecmirror.pipeline.template import EXACT_BACKENDS
from vecmirror.sink.keys import KeyLayout, key_pattern, recorded_layout

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
    mirror: MirrorConfig  # the config, its vectors placed (see place_vectors)
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
    for other in sorted(_text(n) or "" for n in await client.execute_command("FT._LIST")):  # type: ignore[no-untyped-call]
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


# Of the marker HASH: a digest of what the stored vectors were made from, and where they are.
EMBEDDING_FIELD, VECTOR_AT_FIELD = "embedding", "vector_at"


def embedding_digest(mirror: MirrorConfig) -> str | None:
    """What a mirror's vectors are made from: the model, backend and template, or the column they
    come from; None without either. The backends that give torch's vectors count as none (an unset
    one is one of them)."""
    if mirror.embed is not None:
        backend = None if mirror.embed.backend in EXACT_BACKENDS else mirror.embed.backend
        made_from: list[str | None] = [mirror.embed.model, backend, mirror.embed.template]
    elif mirror.vector_column is not None:
        made_from = ["column", mirror.vector_column]
    else:
        return None
    return hashlib.sha256(json.dumps(made_from, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ServedVector:
    """The vector field of the index users query, as FT.INFO shows it."""

    name: str
    at: str  # its identifier: a HASH field, a JSON path
    dims: int
    datatype: str


def served_vector(info: dict[str, Any] | None) -> ServedVector | None:
    if info is None:
        return None
    for attributes in index_attributes(info):
        properties = attributes.properties
        if str(properties.get("type", "")).upper() == "VECTOR":
            return ServedVector(
                name=str(properties.get("attribute")),
                at=str(properties.get("identifier")),
                dims=int(properties.get("dim", 0) or 0),
                datatype=str(properties.get("data_type", "")).upper(),
            )
    return None


def copyable(mirror: MirrorConfig, served: ServedVector | None) -> str | None:
    """The served vectors' type when they can stand for the config's where the model embedded the
    same text: the same dims, and a type at least as precise (a renamed field, FLOAT32 to FLOAT16)."""
    vector = mirror.vector_field
    if vector is None or served is None or mirror.embed is None:
        return None
    attrs: Any = vector.attrs
    wanted = str(attrs.datatype.value).upper()
    if served.dims != int(attrs.dims) or served.datatype not in (wanted, "FLOAT32", "FLOAT64"):
        return None
    return served.datatype.lower()


def same_shape(mirror: MirrorConfig, served: ServedVector | None) -> bool:
    """The served vector field is the config's, of the same dims and type."""
    vector = mirror.vector_field
    if vector is None or served is None:
        return False
    attrs: Any = vector.attrs
    wanted = (vector.name, int(attrs.dims), str(attrs.datatype.value).upper())
    return (served.name, served.dims, served.datatype) == wanted


async def place_vectors(
    client: redis.Redis, marker: str, mirror: MirrorConfig, info: dict[str, Any] | None
) -> MirrorConfig:
    """Where this config writes its vectors. Where the queried index reads them, while they are made
    as this config makes them (same model, backend and template, as the marker records, and the
    same field, dims and type). Otherwise beside them, at `<field>__<digest of what they are made
    from>`: the old index keeps answering from the old vectors until the new generation, filled
    with new ones, takes over (blue/green). Every worker with the same file picks the same place."""
    vector = mirror.vector_field
    if vector is None:
        return mirror
    recorded, recorded_at = await _recorded(client, marker)
    served = served_vector(info)
    attrs: Any = vector.attrs
    dims, datatype = int(attrs.dims), str(attrs.datatype.value).upper()
    digest = embedding_digest(mirror)
    same_source = recorded is None or recorded == digest
    usual = mirror.usual_vector_at or vector.name
    if same_source and (served is None or same_shape(mirror, served)):
        return mirror.with_vector_at(served.at if served is not None else recorded_at or usual)
    made_from = json.dumps([digest, mirror.vector_column, dims, datatype]).encode()
    return mirror.with_vector_at(f"{usual}__{hashlib.sha256(made_from).hexdigest()[:8]}")


# KEYS[1]: the marker. Returns the embedding digest and where the vectors are (false: not recorded).
# A marker from before generations is a STRING, which records nothing (and is replaced on adoption).
_READ_VECTORS = f"""
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then
    return {{false, false}}
end
return redis.call('HMGET', KEYS[1], '{EMBEDDING_FIELD}', '{VECTOR_AT_FIELD}')
"""

# KEYS[1]: the marker. ARGV: the embedding digest ('' for none), where the vectors are. Only a HASH
# marker is written: one made here would stand for a sync that never happened.
_RECORD_VECTORS = f"""
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then
    return 0
end
if ARGV[1] == '' then
    redis.call('HDEL', KEYS[1], '{EMBEDDING_FIELD}')
else
    redis.call('HSET', KEYS[1], '{EMBEDDING_FIELD}', ARGV[1])
end
redis.call('HSET', KEYS[1], '{VECTOR_AT_FIELD}', ARGV[2])
return 1
"""


async def settle_vectors(
    client: redis.Redis, marker: str, mirror: MirrorConfig, *, walk: bool = True
) -> None:
    """Once the index users query reads vectors where this config writes them (created, or just
    switched to): the old vectors, recorded with the marker, are deleted from every document, then
    the marker records the new ones. A crash in between walks again on the next start."""
    at = mirror.vector_at
    if at is None:
        return
    recorded, recorded_at = await _recorded(client, marker)
    digest = embedding_digest(mirror)
    if (recorded, recorded_at) == (digest, at):
        return
    left = recorded_at if recorded_at is not None else mirror.usual_vector_at
    if walk and left is not None and left != at:
        removed = await delete_from_documents(client, mirror, left)
        log.info("old_vectors_removed", mirror=mirror.name, at=left, documents=removed)
    await client.register_script(_RECORD_VECTORS)(keys=[marker], args=[digest or "", at])


async def _recorded(client: redis.Redis, marker: str) -> tuple[str | None, str | None]:
    """What the marker records of the mirror's vectors: made from (a digest), and where."""
    digest, at = await client.register_script(_READ_VECTORS)(keys=[marker])
    return _text(digest), _text(at)


async def delete_from_documents(client: redis.Redis, mirror: MirrorConfig, at: str) -> int:
    """Deletes one field (HASH) or path (JSON) from every document under the mirror's prefix."""
    removed = 0
    async for keys in _document_keys(client, mirror):
        async with client.pipeline(transaction=False) as pipe:
            for key in keys:
                if mirror.storage == "json":
                    pipe.execute_command("JSON.DEL", key, at)
                else:
                    pipe.hdel(key, at)
            # A foreign key of another type under the prefix answers WRONGTYPE: not ours to change.
            replies = await pipe.execute(raise_on_error=False)
        removed += sum(1 for reply in replies if isinstance(reply, int) and reply > 0)
    return removed


async def _document_keys(client: redis.Redis, mirror: MirrorConfig) -> AsyncIterator[list[Any]]:
    cursor = 0
    while True:
        cursor, keys = await client.scan(cursor, match=key_pattern(mirror), count=1000)
        if keys:
            yield keys
        if cursor == 0:
            return


def _text(value: Any) -> str | None:
    if value is None or value is False:  # the scripts' false: nil in RESP2, false in RESP3
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
