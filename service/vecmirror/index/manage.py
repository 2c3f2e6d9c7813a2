"""Creates a mirror's index when absent; an existing index must match the config exactly.

Changing an index in place would silently re-index or break queries, so a difference stops
start-up with a message listing what differs. FT.INFO does not report EF_RUNTIME, EPSILON,
INITIAL_CAP, BLOCK_SIZE or PHONETIC, so those cannot be compared.

FT.INFO comes back in several shapes, depending on the protocol and the client: RESP2 gives flat
`key value` lists (bytes unless decode_responses), RESP3 gives maps with the flags in a `flags`
list. Everything is normalised to str keys and values first.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio as redis
import structlog
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError, ResponseError
from redisvl.exceptions import RedisSearchError
from redisvl.index import AsyncSearchIndex
from redisvl.schema import IndexSchema
from redisvl.schema.fields import BaseField

from vecmirror.config import MirrorConfig, field_type
from vecmirror.errors import StartupError
from vecmirror.sink.cluster import is_cluster

log = structlog.get_logger(__name__)

FLAGS = {
    "SORTABLE",
    "NOSTEM",
    "CASESENSITIVE",
    "NOINDEX",
    "UNF",
    "WITHSUFFIXTRIE",
    "INDEXMISSING",
    "INDEXEMPTY",
}
# The flags compared for each field type: (flag, the RedisVL attribute that sets it).
_COMMON_FLAGS = (("SORTABLE", "sortable"), ("NOINDEX", "no_index"), ("INDEXMISSING", "index_missing"))
_TYPE_FLAGS: dict[str, tuple[tuple[str, str], ...]] = {
    "text": (("NOSTEM", "no_stem"), ("WITHSUFFIXTRIE", "withsuffixtrie"), ("INDEXEMPTY", "index_empty")),
    "tag": (
        ("CASESENSITIVE", "case_sensitive"),
        ("WITHSUFFIXTRIE", "withsuffixtrie"),
        ("INDEXEMPTY", "index_empty"),
    ),
    "numeric": (),
    "geo": (),
}


def physical_schema(mirror: MirrorConfig, name: str) -> IndexSchema:
    """The index FT.CREATE makes for this mirror under `name`: the vector read from where documents
    hold it (`<at> AS <field>` once an online re-embedding moved it, see index/rollout.py)."""
    schema = mirror.index.model_copy(deep=True)
    schema.index.name = name
    vector = mirror.vector_field
    if vector is not None and (mirror.vector_moved or mirror.chunked):
        schema.fields[vector.name].path = mirror.vector_at
    return schema


async def ensure_index(client: redis.Redis, mirror: MirrorConfig) -> bool:
    """True when the index was created now."""
    if await check_index(client, mirror):
        return False
    await create_index(client, physical_schema(mirror, mirror.index.index.name))
    log.info("index_created", mirror=mirror.name, index=mirror.index.index.name)
    return True


async def check_index(client: redis.Redis, mirror: MirrorConfig) -> bool:
    """True when the index exists as configured, False when it does not exist (the worker creates
    it and fills it: see MirrorSync.resync_if_forgotten); raises when it differs."""
    name = mirror.index.index.name
    info = await index_info(client, name)
    if info is None:
        return False
    differences = index_differences(physical_schema(mirror, name), info)
    if differences:
        raise different_index_error(mirror, differences)
    return True


def different_index_error(mirror: MirrorConfig, differences: list[str]) -> StartupError:
    name = mirror.index.index.name
    return StartupError(
        f"mirror {mirror.name!r}: index {name!r} exists with a definition documents cannot follow "
        f"in place: {'; '.join(differences)}. Drop it (FT.DROPINDEX) or change the config back"
    )


async def create_index(client: redis.Redis, schema: IndexSchema) -> None:
    if is_cluster(client):
        # RedisVL sends FT.CREATE to the cluster client's default node. Where each shard indexes
        # alone, FT.* take the index name for their key and only the owner of its slot accepts it;
        # with the coordinator any node does, so the owner is right everywhere.
        cluster = cast(RedisCluster, client)
        owner = cluster.get_node_from_key(schema.index.name)
        if owner is not None:
            cluster.set_default_node(owner)
    try:
        await AsyncSearchIndex(schema, redis_client=client).create(overwrite=False)
    except RedisSearchError as exc:
        # RedisVL wraps every error, a dropped connection too: the worker retries server trouble
        # only when it sees it as such.
        if isinstance(exc.__cause__, RedisError):
            raise exc.__cause__ from exc
        raise


async def index_info(client: redis.Redis, name: str) -> dict[str, Any] | None:
    try:
        info: dict[str, Any] = await client.ft(name).info()  # type: ignore[no-untyped-call]
    except ResponseError as exc:
        if "no such index" in str(exc).lower() or "unknown index" in str(exc).lower():
            return None
        raise
    return info


@dataclass
class _Attributes:
    """One field as FT.INFO shows it: `key value` properties and bare flags."""

    properties: dict[str, Any] = field(default_factory=dict)
    flags: set[str] = field(default_factory=set)


def index_differences(schema: IndexSchema, info: dict[str, Any]) -> list[str]:
    info = _mapping(info)
    definition = _mapping(info["index_definition"])
    differences = []
    storage = str(schema.index.storage_type.value).upper()
    key_type = str(_text(definition.get("key_type"))).upper()
    if key_type != storage:
        differences.append(f"storage_type: config {storage}, Redis {key_type}")
    prefix = schema.index.prefix
    wanted_prefixes = [prefix] if isinstance(prefix, str) else list(prefix)
    existing_prefixes = [_text(p) for p in definition.get("prefixes") or []]
    if existing_prefixes != wanted_prefixes:
        differences.append(f"prefix: config {wanted_prefixes}, Redis {existing_prefixes}")
    existing = {str(a.properties.get("attribute")): a for a in map(_attributes, info["attributes"])}
    wanted = {f.name: f for f in schema.fields.values()}
    for name in sorted(set(wanted) | set(existing)):
        differences += _field_differences(name, wanted.get(name), existing.get(name), storage)
    return differences


def index_definition(info: dict[str, Any]) -> dict[str, Any]:
    """FT.INFO's index_definition (key_type, prefixes, ...), with str keys."""
    return _mapping(_mapping(info)["index_definition"])


def index_attributes(info: dict[str, Any]) -> list[_Attributes]:
    """Each field of an index as FT.INFO shows it."""
    return [_attributes(raw) for raw in _mapping(info)["attributes"]]


def index_identifiers(info: dict[str, Any]) -> list[str]:
    """What each field of an index reads: a HASH field's name, a JSON path."""
    attributes = map(_attributes, _mapping(info)["attributes"])
    return [str(_text(a.properties.get("identifier"))) for a in attributes]


def _field_differences(
    name: str, wanted: BaseField | None, existing: _Attributes | None, storage: str
) -> list[str]:
    if existing is None:
        return [f"field {name!r}: in the config, not in the index"]
    if wanted is None:
        return [f"field {name!r}: in the index, not in the config"]
    properties = expected_attributes(wanted)
    same_type = _normal(existing.properties.get("type")) == _normal(properties["type"])
    if not same_type:  # every other property differs too: the type says it all
        properties = {"identifier": properties["identifier"], "type": properties["type"]}
    differences = [
        f"field {name!r}: {prop} is {properties[prop]!r} in the config, "
        f"{existing.properties.get(prop)!r} in Redis"
        for prop in sorted(properties)
        if _normal(existing.properties.get(prop)) != _normal(properties[prop])
    ]
    if not same_type:
        return differences
    for flag, on in expected_flags(wanted, storage).items():
        if on != (flag in existing.flags):
            differences.append(f"field {name!r}: {flag} is {_on(on)} in the config, {_on(not on)} in Redis")
    return differences


def _on(value: bool) -> str:
    return "on" if value else "off"


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _mapping(raw: Any) -> dict[str, Any]:
    """A RESP3 map or a RESP2 flat `key value` list, with str keys."""
    if isinstance(raw, dict):
        return {str(_text(k)): v for k, v in raw.items()}
    items = list(raw)
    return {str(_text(k)): v for k, v in zip(items[::2], items[1::2], strict=False)}


def _attributes(raw: Any) -> _Attributes:
    """FT.INFO lists `key value` pairs and bare flags (SORTABLE, NOSTEM, ...) in one list (RESP2),
    or a map with the flags under `flags` (RESP3)."""
    attrs = _Attributes()
    if isinstance(raw, dict):
        for key, value in _mapping(raw).items():
            if key == "flags":
                attrs.flags.update(str(_text(flag)) for flag in value or [])
            else:
                attrs.properties[key] = _text(value)
        return attrs
    items = [_text(i) for i in raw]
    position = 0
    while position < len(items):
        item = items[position]
        if isinstance(item, str) and item in FLAGS:
            attrs.flags.add(item)
            position += 1
        else:
            attrs.properties[str(item)] = items[position + 1] if position + 1 < len(items) else None
            position += 2
    return attrs


def expected_attributes(field: BaseField) -> dict[str, Any]:
    """The `key value` properties FT.INFO shows for this configured field."""
    expected: dict[str, Any] = {
        # A HASH field has a path only where vecmirror moved its vector (index/rollout.py).
        "identifier": field.path or field.name,
        "type": field_type(field).upper(),
    }
    attrs: Any = field.attrs
    if field_type(field) == "vector":
        expected.update(_vector_attributes(attrs))
    if field_type(field) == "tag":
        expected["SEPARATOR"] = getattr(attrs, "separator", ",")
    if field_type(field) == "text":
        expected["WEIGHT"] = float(getattr(attrs, "weight", 1.0))
    return expected


def expected_flags(field: BaseField, storage: str) -> dict[str, bool]:
    """The bare flags FT.INFO shows for this configured field, each on or off."""
    kind = field_type(field)
    if kind not in _TYPE_FLAGS:
        return {}
    attrs: Any = field.attrs
    flags = {flag: bool(getattr(attrs, name, False)) for flag, name in _flag_names(kind)}
    if kind == "text" and storage == "HASH":
        # UNF only means something on a SORTABLE field; JSON and NUMERIC sortables always show it.
        flags["UNF"] = flags["SORTABLE"] and bool(getattr(attrs, "unf", False))
    return flags


def _flag_names(kind: str) -> Iterable[tuple[str, str]]:
    return (*_COMMON_FLAGS, *_TYPE_FLAGS[kind])


def _vector_attributes(attrs: Any) -> dict[str, Any]:
    expected = {
        "algorithm": str(attrs.algorithm.value).upper(),
        "data_type": str(attrs.datatype.value).upper(),
        "dim": int(attrs.dims),
        "distance_metric": str(attrs.distance_metric.value).upper(),
    }
    if expected["algorithm"] == "HNSW":
        expected.update({"M": int(attrs.m), "ef_construction": int(attrs.ef_construction)})
    return expected


def _normal(value: Any) -> Any:
    value = _text(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value.upper()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


async def check_eviction_policy(client: redis.Redis) -> None:
    """An allkeys-* eviction policy with a memory limit can silently drop indexed documents."""
    try:
        config = await client.config_get("maxmemory*")
    except ResponseError as exc:  # managed services may refuse CONFIG; that is not our call to make
        log.warning("eviction_policy_unknown", error=str(exc))
        return
    values = {str(_text(k)): str(_text(v)) for k, v in config.items()}
    policy, limit = values.get("maxmemory-policy", ""), values.get("maxmemory", "0")
    if limit != "0" and policy.startswith("allkeys-"):
        raise StartupError(
            f"Redis evicts keys under memory pressure (maxmemory {limit}, maxmemory-policy {policy}): "
            "indexed documents could vanish. Set maxmemory-policy to noeviction (or a volatile-* policy)."
        )
