"""Creates a mirror's index when absent; an existing index must match the config exactly.

Changing an index in place would silently re-index or break queries, so a difference stops
start-up with a message listing what differs. FT.INFO does not report EF_RUNTIME, EPSILON,
INITIAL_CAP or BLOCK_SIZE, so those cannot be compared.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as redis
import structlog
from redis.exceptions import ResponseError
from redisvl.index import AsyncSearchIndex
from redisvl.schema import IndexSchema
from redisvl.schema.fields import BaseField

from vecmirror.config import MirrorConfig, field_type
from vecmirror.errors import StartupError

log = structlog.get_logger(__name__)


async def ensure_index(client: redis.Redis, mirror: MirrorConfig) -> bool:
    """True when the index was created now."""
    name = mirror.index.index.name
    info = await index_info(client, name)
    if info is None:
        await AsyncSearchIndex(mirror.index, redis_client=client).create(overwrite=False)
        log.info("index_created", mirror=mirror.name, index=name)
        return True
    differences = index_differences(mirror.index, info)
    if differences:
        raise StartupError(
            f"mirror {mirror.name!r}: index {name!r} exists with a different definition:\n"
            + "\n".join(f"  - {d}" for d in differences)
            + "\nDrop it (FT.DROPINDEX) or change the config back; vecmirror will not rebuild it."
        )
    return False


async def index_info(client: redis.Redis, name: str) -> dict[str, Any] | None:
    try:
        info: dict[str, Any] = await client.ft(name).info()
    except ResponseError as exc:
        if "no such index" in str(exc).lower() or "unknown index" in str(exc).lower():
            return None
        raise
    return info


def index_differences(schema: IndexSchema, info: dict[str, Any]) -> list[str]:
    definition = info["index_definition"]
    differences = []
    storage = str(schema.index.storage_type.value).upper()
    if str(definition["key_type"]).upper() != storage:
        differences.append(f"storage_type: config {storage}, Redis {definition['key_type']}")
    prefix = schema.index.prefix
    wanted_prefixes = [prefix] if isinstance(prefix, str) else list(prefix)
    if list(definition["prefixes"]) != wanted_prefixes:
        differences.append(f"prefix: config {wanted_prefixes}, Redis {definition['prefixes']}")
    existing = {attrs["attribute"]: attrs for attrs in map(_attributes, info["attributes"])}
    wanted = {f.name: expected_attributes(f, storage) for f in schema.fields.values()}
    for name in sorted(set(wanted) | set(existing)):
        differences += _field_differences(name, wanted.get(name), existing.get(name))
    return differences


def _field_differences(name: str, wanted: dict[str, Any] | None, existing: dict[str, Any] | None) -> list[str]:
    if existing is None:
        return [f"field {name!r}: in the config, not in the index"]
    if wanted is None:
        return [f"field {name!r}: in the index, not in the config"]
    return [
        f"field {name!r}: {prop} is {wanted[prop]!r} in the config, {existing.get(prop)!r} in Redis"
        for prop in sorted(wanted)
        if _normal(existing.get(prop)) != _normal(wanted[prop])
    ]


def _attributes(raw: list[Any]) -> dict[str, Any]:
    """FT.INFO lists `key value` pairs and bare flags (SORTABLE, NOSTEM, ...) in one list."""
    attrs: dict[str, Any] = {}
    items = [i.decode() if isinstance(i, bytes) else i for i in raw]
    position = 0
    while position < len(items):
        item = items[position]
        if isinstance(item, str) and item in FLAGS:
            attrs[item] = True
            position += 1
        else:
            attrs[str(item)] = items[position + 1] if position + 1 < len(items) else None
            position += 2
    return attrs


FLAGS = {"SORTABLE", "NOSTEM", "CASESENSITIVE", "NOINDEX", "UNF", "WITHSUFFIXTRIE", "INDEXMISSING", "INDEXEMPTY"}


def expected_attributes(field: BaseField, storage: str) -> dict[str, Any]:
    """What FT.INFO shows for this configured field."""
    expected: dict[str, Any] = {
        "identifier": field.path if storage == "JSON" and field.path else field.name,
        "type": field_type(field).upper(),
    }
    attrs = field.attrs
    if field_type(field) == "vector":
        expected.update(_vector_attributes(attrs))
    if field_type(field) == "tag":
        expected["SEPARATOR"] = getattr(attrs, "separator", ",")
        expected["CASESENSITIVE"] = bool(getattr(attrs, "case_sensitive", False)) or None
    if field_type(field) == "text":
        expected["WEIGHT"] = float(getattr(attrs, "weight", 1.0))
        expected["NOSTEM"] = bool(getattr(attrs, "no_stem", False)) or None
    if field_type(field) != "vector":
        expected["SORTABLE"] = bool(getattr(attrs, "sortable", False)) or None
    return expected


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
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value.upper()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value
