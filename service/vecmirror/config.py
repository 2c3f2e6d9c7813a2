"""The mirrors file: which table feeds which Redis index, validated once before anything starts.

The YAML shape is a contract with users (see README, "Configuration"): extend it, never rename a key.
Every problem is collected and reported together, each naming the mirror and the key that is wrong.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from redisvl.schema import IndexInfo, IndexSchema, StorageType
from redisvl.schema.fields import BaseField, FieldFactory

from vecmirror.errors import ConfigError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Fields vecmirror keeps in every document next to the user's fields.
META_KEY_FIELD = "_vm_key"
META_HASH_FIELD = "_vm_hash"
RESERVED_PREFIX = "_vm_"
# Mirror names become parts of trigger names, which Postgres caps at 63 bytes.
MIRROR_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
# JSON paths we can turn into a nested document: $.a.b, optionally ending in [*] for arrays.
SIMPLE_JSON_PATH = re.compile(r"^\$(\.[A-Za-z_][A-Za-z0-9_]*)+(\[\*\])?$")
# The keys accepted in `index:`, in each of its `fields:` and (from RedisVL) in `index.index:`.
INDEX_KEYS = ("index", "fields", "version")
FIELD_KEYS = ("name", "type", "path", "attrs", "as_name")
INDEX_INFO_KEYS = tuple(IndexInfo.model_fields)
VECTOR_ALGORITHMS = ("flat", "hnsw")  # what search 2.10 builds (and the README documents)


class EmbedConfig(BaseModel):
    """The vector computed from a row's text with a sentence-transformers model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str
    template: str
    model: str = DEFAULT_MODEL

    @field_validator("template")
    @classmethod
    def _template_is_simple(cls, template: str) -> str:
        template_columns(template)
        return template


class MirrorConfig(BaseModel):
    """One table mirrored into one index."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    name: str = Field(pattern=MIRROR_NAME.pattern)
    table: str
    key: tuple[str, ...] | None = None
    embed: EmbedConfig | None = None
    vector_column: str | None = None
    index: IndexSchema

    @field_validator("key", mode="before")
    @classmethod
    def _key_as_tuple(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("key")
    @classmethod
    def _key_names_columns(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("must name at least one column (leave it out to use the primary key)")
        if not all(value):
            raise ValueError("column names must not be empty")
        if len(set(value)) != len(value):
            raise ValueError(f"a column is listed more than once in {list(value)}")
        return value

    @field_validator("table")
    @classmethod
    def _table_is_qualified_name(cls, value: str) -> str:
        split_table_name(value)
        return value

    @field_validator("index", mode="before")
    @classmethod
    def _index_from_dict(cls, value: Any) -> Any:
        if isinstance(value, IndexSchema):
            return value
        schema, problems = build_index(value)
        if schema is None:
            raise ValueError("; ".join(problems))
        return schema

    @property
    def schema_name(self) -> str:
        return split_table_name(self.table)[0]

    @property
    def table_name(self) -> str:
        return split_table_name(self.table)[1]

    @property
    def storage(self) -> str:
        return str(self.index.index.storage_type.value)

    @property
    def vector_field(self) -> BaseField | None:
        vectors = [f for f in self.index.fields.values() if field_type(f) == "vector"]
        return vectors[0] if vectors else None

    @property
    def value_fields(self) -> list[BaseField]:
        """The non-vector fields; each takes the column of its own name."""
        return [f for f in self.index.fields.values() if field_type(f) != "vector"]

    def columns_needed(self) -> list[str]:
        """Every column the worker reads, keys excluded."""
        columns = [f.name for f in self.value_fields]
        if self.embed is not None:
            columns += template_columns(self.embed.template)
        if self.vector_column is not None:
            columns.append(self.vector_column)
        return list(dict.fromkeys(columns))


class Config(BaseModel):
    """The whole mirrors file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mirrors: tuple[MirrorConfig, ...]

    def mirror(self, name: str) -> MirrorConfig:
        for mirror in self.mirrors:
            if mirror.name == name:
                return mirror
        known = ", ".join(m.name for m in self.mirrors)
        raise ConfigError([f"unknown mirror {name!r} (configured: {known})"])


def field_type(field: BaseField) -> str:
    """ "text", "tag", "numeric", "geo" or "vector" (RedisVL mixes enums and plain strings)."""
    return str(getattr(field.type, "value", field.type)).lower()


def split_table_name(table: str) -> tuple[str, str]:
    parts = table.split(".")
    if len(parts) == 1:
        parts = ["public", *parts]
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"expected 'schema.table' or 'table', got {table!r}")
    return parts[0], parts[1]


def template_columns(template: str) -> list[str]:
    """The columns a `str.format` template reads; only plain `{column}` placeholders are allowed."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"cannot parse template {template!r}: {exc}") from exc
    columns: list[str] = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            placeholder = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise ValueError(f"template placeholder {{{placeholder}}} must be a plain column name")
        columns.append(name)
    return list(dict.fromkeys(columns))


def build_index(raw: Any) -> tuple[IndexSchema | None, list[str]]:
    """The RedisVL schema of a mirror's `index:`, or None and every problem found in it.

    RedisVL ignores keys it does not know, so a misspelt option would silently fall back to its
    default (a HASH index for `storage-type: json`, say); here every unknown key is an error.
    """
    if isinstance(raw, IndexSchema):
        return raw, []
    if not isinstance(raw, dict):
        return None, ["index: expected a mapping with `index:` and `fields:`"]
    problems = _unknown_keys("index", raw, INDEX_KEYS)
    info, info_problems = _index_info(raw.get("index"))
    problems += info_problems
    storage = info.storage_type if info is not None else StorageType.HASH
    fields, field_problems = _index_fields(raw.get("fields"), storage)
    problems += field_problems
    if problems or info is None:
        return None, problems
    try:
        schema = IndexSchema.model_validate(
            {"index": info, "fields": {f.name: f for f in fields}, "version": raw.get("version", "0.1.0")}
        )
    except ValidationError as exc:
        return None, [f"index.{where}: {message}" for where, message in _pydantic_problems(exc)]
    except (ValueError, TypeError) as exc:
        return None, [f"index: {exc}"]
    return schema, []


def _unknown_keys(where: str, raw: dict[Any, Any], known: tuple[str, ...]) -> list[str]:
    return [f"{where}.{key}: unknown key (known: {', '.join(known)})" for key in raw if key not in known]


def _index_info(raw: Any) -> tuple[IndexInfo | None, list[str]]:
    if not isinstance(raw, dict):
        return None, ["index.index: expected a mapping with at least `name:` and `prefix:`"]
    problems = _unknown_keys("index.index", raw, INDEX_INFO_KEYS)
    try:
        info = IndexInfo.model_validate(raw)
    except ValidationError as exc:
        # A union (prefix: str | list) reports each member; the first message is enough.
        first = {str(error["loc"][0]): _message(error["msg"]) for error in reversed(exc.errors())}
        return None, problems + [f"index.index.{where}: {message}" for where, message in first.items()]
    return info, problems


def _index_fields(raw: Any, storage: StorageType) -> tuple[list[BaseField], list[str]]:
    if not isinstance(raw, list) or not raw:
        return [], ["index.fields: expected a non-empty list of fields"]
    fields: list[BaseField] = []
    problems: list[str] = []
    for position, raw_field in enumerate(raw):
        field, field_problems = _index_field(raw_field, position, storage)
        problems += field_problems
        if field is None:
            continue
        if any(f.name == field.name for f in fields):
            problems.append(f"index.fields.{field.name}: defined more than once")
        fields.append(field)
    return fields, problems


def _index_field(raw: Any, position: int, storage: StorageType) -> tuple[BaseField | None, list[str]]:
    if not isinstance(raw, dict):
        return None, [f"index.fields[{position}]: expected a mapping such as {{name: title, type: text}}"]
    spec = _normalise_field(raw, storage)
    name = spec.get("name")
    where = f"index.fields.{name}" if isinstance(name, str) and name else f"index.fields[{position}]"
    problems = _unknown_keys(where, raw, FIELD_KEYS)
    problems += _field_spec_problems(where, spec)
    if problems:
        return None, problems
    attrs = spec.get("attrs") or {}
    try:
        field = FieldFactory.create_field(type=spec["type"], name=name, attrs=attrs, path=spec.get("path"))
    except ValidationError as exc:
        return None, [f"{where}.{loc}: {message}" for loc, message in _pydantic_problems(exc)]
    except (ValueError, TypeError, AttributeError) as exc:
        return None, [f"{where}: {exc}"]
    # The path RedisVL would give the field (IndexSchema does this when it builds fields itself).
    field.path = (field.path or f"$.{field.name}") if storage == StorageType.JSON else None
    problems = _unknown_keys(f"{where}.attrs", attrs, tuple(type(field.attrs).model_fields))
    algorithm = str(getattr(getattr(field.attrs, "algorithm", None), "value", "")).lower()
    if field_type(field) == "vector" and algorithm not in VECTOR_ALGORITHMS:
        problems.append(f"{where}.attrs.algorithm: {algorithm!r} is not supported; use flat or hnsw")
    if field_type(field) == "vector" and getattr(field.attrs, "index_missing", False):
        # RedisVL 0.28 sends the flag as a bare boolean and FT.CREATE fails at start-up.
        problems.append(f"{where}.attrs.index_missing: not supported on vector fields")
    return field, problems


def _field_spec_problems(where: str, spec: dict[str, Any]) -> list[str]:
    name, kind, attrs = spec.get("name"), spec.get("type"), spec.get("attrs")
    problems = []
    if not isinstance(name, str) or not name:
        problems.append(f"{where}.name: required")
    elif name.startswith("$"):
        problems.append(
            f"{where}.name: {name!r} is a JSON path; write {{name: {name}, as_name: NAME}} "
            "or {name: NAME, path: PATH}"
        )
    if not isinstance(kind, str):
        problems.append(f"{where}.type: required, one of text, tag, numeric, geo, vector")
    if attrs is not None and not isinstance(attrs, dict):
        problems.append(f"{where}.attrs: expected a mapping")
    if "path" in spec and not isinstance(spec["path"], str):
        problems.append(f"{where}.path: expected a JSON path such as $.a.b")
    return problems


def _normalise_field(field: dict[str, Any], storage: StorageType) -> dict[str, Any]:
    """Accept FT.CREATE-style `as_name` besides RedisVL's own `name` + `path` for JSON fields, and
    FT.CREATE's upper-case types."""
    field = dict(field)
    if isinstance(field.get("type"), str):
        field["type"] = field["type"].lower()
    if "as_name" not in field:
        return field
    alias = field.pop("as_name")
    name = field.get("name")
    if storage == StorageType.JSON and isinstance(name, str) and "path" not in field:
        field["path"] = name if name.startswith("$") else f"$.{name}"
    field["name"] = alias
    return field


def load_config(path: Path) -> Config:
    """Read and validate the mirrors file; raises ConfigError listing every problem."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError([f"cannot read mirrors file {path}: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path} is not a UTF-8 text file: {exc}"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path} is not valid YAML: {exc}"]) from exc
    return parse_config(raw, source=str(path))


def parse_config(raw: Any, source: str = "config") -> Config:
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: expected a top-level 'mirrors:' list with at least one mirror"])
    problems = [f"{source}: unknown top-level key {k!r}" for k in raw if k != "mirrors"]
    entries = raw.get("mirrors")
    if not isinstance(entries, list) or not entries:
        problems.insert(0, f"{source}: expected a top-level 'mirrors:' list with at least one mirror")
        raise ConfigError(problems)
    mirrors: list[MirrorConfig] = []
    for position, entry in enumerate(entries):
        label = _mirror_label(entry, position)
        mirror, found = _check_mirror(entry)
        problems += [f"{label}: {p}" for p in found]
        if mirror is not None:
            mirrors.append(mirror)
    problems += _cross_mirror_problems(mirrors)
    if problems:
        raise ConfigError(problems)
    return Config(mirrors=tuple(mirrors))


def _mirror_label(entry: Any, position: int) -> str:
    name = entry.get("name") if isinstance(entry, dict) else None
    return f"mirror {name!r}" if isinstance(name, str) else f"mirrors[{position}]"


def _check_mirror(entry: Any) -> tuple[MirrorConfig | None, list[str]]:
    """The mirror, if it validates, and its problems: the index's and the rest, all of them."""
    if not isinstance(entry, dict):
        return None, ["(mirror): expected a mapping with name:, table: and index:"]
    schema, problems = build_index(entry["index"]) if "index" in entry else (None, [])
    mirror: MirrorConfig | None = None
    try:
        mirror = MirrorConfig.model_validate({**entry, "index": schema} if schema is not None else entry)
    except ValidationError as exc:
        problems += [
            f"{where}: {message}"
            for where, message in _pydantic_problems(exc)
            if not (problems and where.split(".")[0] == "index")  # reported in detail already
        ]
    if schema is not None:
        problems += _schema_problems(schema, entry)
    return mirror, problems


def _message(msg: Any) -> str:
    return str(msg).removeprefix("Value error, ")


def _pydantic_problems(exc: ValidationError) -> Iterator[tuple[str, str]]:
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(mirror)"
        yield where, _message(error["msg"])


def _schema_problems(schema: IndexSchema, entry: dict[str, Any]) -> list[str]:
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
    return []


def _field_problems(schema: IndexSchema) -> list[str]:
    problems: list[str] = []
    is_json = str(schema.index.storage_type.value) == "json"
    for field in schema.fields.values():
        if field.name.startswith(RESERVED_PREFIX):
            problems.append(f"index.fields.{field.name}: names starting {RESERVED_PREFIX!r} are reserved")
        if is_json:
            problems += _json_path_problems(field)
    if is_json:
        plain = [f for f in schema.fields.values() if SIMPLE_JSON_PATH.match(f.path or "")]
        problems += _path_conflicts(plain)
    return problems


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


def _cross_mirror_problems(mirrors: list[MirrorConfig]) -> list[str]:
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
    for i, (name_a, prefix_a) in enumerate(prefixes):
        for name_b, prefix_b in prefixes[i + 1 :]:
            if prefix_a.startswith(prefix_b) or prefix_b.startswith(prefix_a):
                problems.append(
                    f"mirror {name_b!r}: index.index.prefix: keys {prefix_b!r}* overlap the keys "
                    f"{prefix_a!r}* of mirror {name_a!r}"
                )
    return problems
