"""Checks that span keys of one mirror, or several mirrors."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from redisvl.schema import IndexSchema
from redisvl.schema.fields import BaseField

from vecmirror.config.model import (
    CHUNKS_PATH,
    OWN_KEY_PREFIX,
    RESERVED_PREFIX,
    SIMPLE_JSON_PATH,
    EmbedConfig,
    MirrorConfig,
    field_type,
)


def schema_problems(schema: IndexSchema, entry: dict[str, Any]) -> list[str]:
    """Checks that need the index, run even when another key of the mirror is wrong."""
    problems = _field_problems(schema)
    embed, vector_column = entry.get("embed"), entry.get("vector_column")
    if embed is not None:
        try:
            embed = EmbedConfig.model_validate(embed)
        except ValidationError:
            return problems  # reported as embed.*; which vector field it feeds is unknown
    if isinstance(embed, EmbedConfig | None) and isinstance(vector_column, str | None):
        problems += _vector_source_problems(schema, embed, vector_column)
    return problems


def _vector_source_problems(
    schema: IndexSchema, embed: EmbedConfig | None, vector_column: str | None
) -> list[str]:
    vectors = [f.name for f in schema.fields.values() if field_type(f) == "vector"]
    if len(vectors) > 1:
        return [f"index.fields: at most one vector field is supported, found {vectors}"]
    if embed is not None and vector_column is not None:
        return ["embed and vector_column: set one of them, not both"]
    if not vectors:
        if embed is not None or vector_column is not None:
            return ["index.fields: embed/vector_column given but the index has no vector field"]
        return []
    if embed is None and vector_column is None:
        return [f"embed or vector_column: the vector field {vectors[0]!r} needs a source"]
    if embed is not None and embed.field != vectors[0]:
        return [f"embed.field: {embed.field!r} is not a vector field (vector fields: {vectors})"]
    if embed is not None and embed.chunks is not None:
        return _chunk_problems(schema, embed)
    return []


def _chunk_problems(schema: IndexSchema, embed: EmbedConfig) -> list[str]:
    """A chunked row is one JSON document holding every chunk's vector (the index reads them all,
    and ranks the row by its best chunk); a HASH field holds one vector."""
    if str(schema.index.storage_type.value) != "json":
        return ["embed.chunks: needs index.index.storage_type json (a HASH field holds one vector)"]
    vector = schema.fields[embed.field]
    if vector.path not in (None, f"$.{vector.name}"):
        return [f"embed.chunks: the vector field takes no path; chunks are kept at {CHUNKS_PATH}"]
    return []


def _field_problems(schema: IndexSchema) -> list[str]:
    problems: list[str] = []
    is_json = str(schema.index.storage_type.value) == "json"
    for field in schema.fields.values():
        if field.name.startswith(RESERVED_PREFIX):
            problems.append(f"index.fields.{field.name}: names starting {RESERVED_PREFIX!r} are reserved")
        if is_json:
            problems += _json_path_problems(field)
        if field_type(field) == "vector":
            problems += _vector_attr_problems(field)
    if is_json:
        plain = [f for f in schema.fields.values() if SIMPLE_JSON_PATH.match(f.path or "")]
        problems += _path_conflicts(plain)
    return problems


# RedisVL takes any integer for these; Redis would refuse the index only at FT.CREATE, or not at all.
POSITIVE_VECTOR_ATTRS = ("dims", "m", "ef_construction", "ef_runtime", "initial_cap", "block_size")


def _vector_attr_problems(field: BaseField) -> list[str]:
    attrs = field.attrs.model_dump()
    return [
        f"index.fields.{field.name}.attrs.{name}: must be a positive integer, got {attrs[name]}"
        for name in POSITIVE_VECTOR_ATTRS
        if isinstance(attrs.get(name), int) and attrs[name] < 1
    ]


def _json_path_problems(field: BaseField) -> list[str]:
    path = field.path or ""
    where = f"index.fields.{field.name}.path"
    if not SIMPLE_JSON_PATH.match(path):
        return [
            f"{where}: {path!r} is not supported; use a plain path such as $.a.b, optionally ending in [*]"
        ]
    if path.removeprefix("$.").startswith(RESERVED_PREFIX):
        return [
            f"{where}: {path!r} is reserved, paths starting $.{RESERVED_PREFIX} hold vecmirror's own data"
        ]
    if field_type(field) == "vector" and path.endswith("[*]"):
        return [f"{where}: a vector path cannot end in [*]"]
    return []


def _path_conflicts(fields: list[BaseField]) -> list[str]:
    """Each field writes its own column at its path, so no path may equal or contain another."""
    problems: list[str] = []
    parts = [(f.name, (f.path or "").removesuffix("[*]").split(".")) for f in fields]
    for i, (name_a, path_a) in enumerate(parts):
        for name_b, path_b in parts[i + 1 :]:
            shorter = min(len(path_a), len(path_b))
            if path_a[:shorter] == path_b[:shorter]:
                problems.append(
                    f"index.fields.{name_b}.path: {'.'.join(path_b)!r} overlaps {'.'.join(path_a)!r} "
                    f"of field {name_a!r}; each field needs a path of its own"
                )
    return problems


def cross_mirror_problems(mirrors: list[MirrorConfig]) -> list[str]:
    problems: list[str] = []
    seen_names: set[str] = set()
    seen_indexes: dict[str, str] = {}
    prefixes: list[tuple[str, str]] = []
    for mirror in mirrors:
        if mirror.name in seen_names:
            problems.append(f"mirror {mirror.name!r}: name: used by more than one mirror")
        seen_names.add(mirror.name)
        index_name = mirror.index.index.name
        if index_name in seen_indexes:
            problems.append(
                f"mirror {mirror.name!r}: index.index.name: {index_name!r} is already used by "
                f"mirror {seen_indexes[index_name]!r}"
            )
        seen_indexes[index_name] = mirror.name
        prefixes += [(mirror.name, p) for p in _all_prefixes(mirror)]
    problems += _prefix_overlaps(prefixes)
    return problems


def index_prefix(mirror: MirrorConfig) -> str:
    """The prefix of the mirror's keys (the first, when the index lists several)."""
    prefix = mirror.index.index.prefix
    if isinstance(prefix, str):
        return prefix
    return prefix[0] if prefix else ""


def _all_prefixes(mirror: MirrorConfig) -> list[str]:
    prefix = mirror.index.index.prefix
    prefixes = [prefix] if isinstance(prefix, str) else list(prefix)
    # RedisVL drops trailing separators when it builds keys, so "doc:" and "doc" are one keyspace,
    # and a prefix of separators only means no prefix at all.
    separator = mirror.index.index.key_separator
    return [p.rstrip(separator) if separator else p for p in prefixes] or [""]


def _prefix_overlaps(prefixes: list[tuple[str, str]]) -> list[str]:
    # Each mirror owns every key under its prefix (a TRUNCATE removes them all) and FT.CREATE
    # indexes every key starting with it, so no prefix may start another.
    problems = [f"mirror {name!r}: index.index.prefix: must not be empty" for name, p in prefixes if not p]
    prefixes = [(name, p) for name, p in prefixes if p]
    problems += [
        f"mirror {name!r}: index.index.prefix: keys {p!r}* overlap vecmirror's own keys "
        f"{OWN_KEY_PREFIX!r}* (markers and tombstones)"
        for name, p in prefixes
        if p.startswith(OWN_KEY_PREFIX) or OWN_KEY_PREFIX.startswith(p)
    ]
    for i, (name_a, prefix_a) in enumerate(prefixes):
        for name_b, prefix_b in prefixes[i + 1 :]:
            if prefix_a.startswith(prefix_b) or prefix_b.startswith(prefix_a):
                problems.append(
                    f"mirror {name_b!r}: index.index.prefix: keys {prefix_b!r}* overlap the keys "
                    f"{prefix_a!r}* of mirror {name_a!r}"
                )
    return problems
