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
from redisvl.schema import IndexSchema
from redisvl.schema.fields import BaseField

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

    @field_validator("table")
    @classmethod
    def _table_is_qualified_name(cls, value: str) -> str:
        split_table_name(value)
        return value

    @field_validator("index", mode="before")
    @classmethod
    def _index_from_dict(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return IndexSchema.from_dict(_normalise_index(value))
        return value

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
    """"text", "tag", "numeric", "geo" or "vector" (RedisVL mixes enums and plain strings)."""
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
    columns = [name for _, name, _, _ in parsed if name is not None]
    for name in columns:
        if not name.isidentifier():
            raise ValueError(f"template placeholder {{{name}}} must be a plain column name")
    return list(dict.fromkeys(columns))


def _normalise_index(index: dict[str, Any]) -> dict[str, Any]:
    """Accept FT.CREATE-style `as_name` besides RedisVL's own `name` + `path` for JSON fields."""
    fields = [_normalise_field(f) if isinstance(f, dict) else f for f in index.get("fields", [])]
    return {**index, "fields": fields}


def _normalise_field(field: dict[str, Any]) -> dict[str, Any]:
    if "as_name" not in field:
        return field
    field = dict(field)
    alias = field.pop("as_name")
    name = field.get("name")
    if isinstance(name, str) and name.startswith("$") and "path" not in field:
        field["path"] = name
    field["name"] = alias
    return field


def load_config(path: Path) -> Config:
    """Read and validate the mirrors file; raises ConfigError listing every problem."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError([f"cannot read mirrors file {path}: {exc.strerror}"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path} is not valid YAML: {exc}"]) from exc
    return parse_config(raw, source=str(path))


def parse_config(raw: Any, source: str = "config") -> Config:
    if not isinstance(raw, dict) or not isinstance(raw.get("mirrors"), list) or not raw["mirrors"]:
        raise ConfigError([f"{source}: expected a top-level 'mirrors:' list with at least one mirror"])
    unknown = sorted(set(raw) - {"mirrors"})
    problems = [f"{source}: unknown top-level key {k!r}" for k in unknown]
    mirrors: list[MirrorConfig] = []
    for position, entry in enumerate(raw["mirrors"]):
        label = _mirror_label(entry, position)
        try:
            mirror = MirrorConfig.model_validate(entry)
        except ValidationError as exc:
            problems += [f"{label}: {where}: {msg}" for where, msg in _pydantic_problems(exc)]
            continue
        except (ValueError, TypeError) as exc:
            problems.append(f"{label}: index: {exc}")
            continue
        problems += [f"{label}: {p}" for p in _mirror_problems(mirror)]
        mirrors.append(mirror)
    problems += _cross_mirror_problems(mirrors)
    if problems:
        raise ConfigError(problems)
    return Config(mirrors=tuple(mirrors))


def _mirror_label(entry: Any, position: int) -> str:
    name = entry.get("name") if isinstance(entry, dict) else None
    return f"mirror {name!r}" if isinstance(name, str) else f"mirrors[{position}]"


def _pydantic_problems(exc: ValidationError) -> Iterator[tuple[str, str]]:
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(mirror)"
        message = str(error["msg"]).removeprefix("Value error, ")
        yield where, message


def _mirror_problems(mirror: MirrorConfig) -> list[str]:
    return [*_vector_source_problems(mirror), *_field_problems(mirror)]


def _vector_source_problems(mirror: MirrorConfig) -> list[str]:
    vectors = [f.name for f in mirror.index.fields.values() if field_type(f) == "vector"]
    if len(vectors) > 1:
        return [f"index.fields: at most one vector field is supported, found {vectors}"]
    if mirror.embed is not None and mirror.vector_column is not None:
        return ["embed and vector_column: set one of them, not both"]
    if not vectors:
        if mirror.embed is not None or mirror.vector_column is not None:
            return ["index.fields: embed/vector_column given but the index has no vector field"]
        return []
    if mirror.embed is None and mirror.vector_column is None:
        return [f"embed or vector_column: the vector field {vectors[0]!r} needs a source"]
    if mirror.embed is not None and mirror.embed.field != vectors[0]:
        return [f"embed.field: {mirror.embed.field!r} is not a vector field (vector fields: {vectors})"]
    return []


def _field_problems(mirror: MirrorConfig) -> list[str]:
    problems: list[str] = []
    for field in mirror.index.fields.values():
        if field.name.startswith(RESERVED_PREFIX):
            problems.append(f"index.fields.{field.name}: names starting {RESERVED_PREFIX!r} are reserved")
        if mirror.storage == "json" and not SIMPLE_JSON_PATH.match(field.path or ""):
            problems.append(
                f"index.fields.{field.name}.path: {field.path!r} is not supported; "
                "use a plain path such as $.a.b, optionally ending in [*]"
            )
        if field_type(field) == "vector" and field.path and field.path.endswith("[*]"):
            problems.append(f"index.fields.{field.name}.path: a vector path cannot end in [*]")
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
        prefixes.append((mirror.name, index_prefix(mirror)))
    problems += _prefix_overlaps(prefixes)
    return problems


def index_prefix(mirror: MirrorConfig) -> str:
    prefix = mirror.index.index.prefix
    return prefix if isinstance(prefix, str) else prefix[0]


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
