"""Where a mirror's vectors are, and new ones made beside the old (blue/green, index/rollout.py).

Another model, backend, template or vector column, or another name, dims or type of the vector
field, means other vectors. They are written beside the old ones, in each document at
`<field>__<digest of what they are made from>` (a HASH field, a JSON path), which the new index
generation reads `AS <field>`; the index users query keeps answering from the old ones until the
switch, then they are deleted (settle_vectors). The marker records what the vectors are made from
and where they are, so every worker with the same file places them alike, and a restart or a lost
index finds them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
import structlog

from vecmirror.config import MirrorConfig
from vecmirror.index.manage import index_attributes
from vecmirror.pipeline.template import EXACT_BACKENDS
from vecmirror.sink.cluster import scan_pages
from vecmirror.sink.keys import key_pattern

log = structlog.get_logger(__name__)


# Of the marker HASH: a digest of what the stored vectors were made from, and where they are.
EMBEDDING_FIELD, VECTOR_AT_FIELD = "embedding", "vector_at"


def embedding_digest(mirror: MirrorConfig) -> str | None:
    """What a mirror's vectors are made from: the model, backend and template, or the column they
    come from; None without either. The backends that give torch's vectors count as none (an unset
    one is one of them)."""
    if mirror.embed is not None:
        backend = None if mirror.embed.backend in EXACT_BACKENDS else mirror.embed.backend
        made_from: list[str | None] = [mirror.embed.model, backend, mirror.embed.template]
        if mirror.embed.chunks is not None:  # appended: an unchunked mirror's digest stays as it was
            made_from.append(mirror.embed.chunks.settings)
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
    async for keys in scan_pages(client, key_pattern(mirror), 1000):  # every primary's
        yield keys


def _text(value: Any) -> str | None:
    if value is None or value is False:  # the scripts' false: nil in RESP2, false in RESP3
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
