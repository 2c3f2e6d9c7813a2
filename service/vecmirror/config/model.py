"""The mirrors file as typed objects, and the small helpers every stage uses with them."""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from redisvl.schema import IndexInfo, IndexSchema
from redisvl.schema.fields import BaseField

from vecmirror.errors import ConfigError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# How the model runs: sentence-transformers on torch, in float32 or with its matrix products in
# bfloat16 (torch's autocast), or an ONNX export of the same pipeline run by onnxruntime, in float32
# or with int8 weights. Unset, it depends on the device (pipeline/embedder.py): torch-bf16 on a CPU
# with bfloat16 products in hardware (AMX or AVX512-BF16), onnx on any other CPU, torch on a CUDA
# device; the fastest that bench/embedding_speed.py found there within the accuracy bar.
Backend = Literal["torch", "torch-bf16", "onnx", "onnx-int8"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)
CPU_BACKEND: Backend = "onnx"
BF16_CPU_BACKEND: Backend = "torch-bf16"
CUDA_BACKEND: Backend = "torch"
# Fields vecmirror keeps in every document next to the user's fields.
META_KEY_FIELD = "_vm_key"
META_HASH_FIELD = "_vm_hash"
META_VERSION_FIELD = "_vm_version"
# vecmirror's own keys (per-mirror markers, tombstones of deleted documents) live under this.
OWN_KEY_PREFIX = "vecmirror:"
RESERVED_PREFIX = "_vm_"
# Mirror names become parts of trigger names, which Postgres caps at 63 bytes.
MIRROR_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
# Where an online re-embedding writes vectors beside the old ones: the field's own place + this.
MOVED_VECTOR = re.compile(r"__[0-9a-f]{8}$")
# JSON paths we can turn into a nested document: $.a.b, optionally ending in [*] for arrays.
SIMPLE_JSON_PATH = re.compile(r"^\$(\.[A-Za-z_][A-Za-z0-9_]*)+(\[\*\])?$")
# The keys accepted in `index:`, in each of its `fields:` and (from RedisVL) in `index.index:`.
INDEX_KEYS = ("index", "fields", "version")
FIELD_KEYS = ("name", "type", "path", "attrs", "as_name")
INDEX_INFO_KEYS = tuple(IndexInfo.model_fields)
VECTOR_ALGORITHMS = ("flat", "hnsw")  # what search 2.10 builds (and the README documents)


@dataclass(frozen=True)
class ModelSpec:
    """What loading a model needs: mirrors with equal specs share one loaded model."""

    model: str = DEFAULT_MODEL
    backend: Backend | None = None  # the device's default


# Where a chunked document holds its chunks (JSON): each chunk's text, position, hash and vector.
CHUNKS_PATH = "$._vm_chunks"


def chunk_vector_key(at: str | None) -> str:
    """The key of each chunk's vector, from where the vectors are (`$._vm_chunks[*].<key>`)."""
    return (at or "").rsplit(".", 1)[-1]


class ChunksConfig(BaseModel):
    """Long texts split into chunks of at most `max_tokens` of the model's tokens (paragraphs first,
    then sentences, then words), each embedded; a row stays one document holding every chunk."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tokens: int = Field(gt=8)
    overlap_tokens: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _overlap_below_max(self) -> ChunksConfig:
        if self.overlap_tokens >= self.max_tokens:
            raise ValueError("overlap_tokens must be smaller than max_tokens")
        return self

    @property
    def settings(self) -> str:
        """What the chunks depend on besides the text, for the document's content hash."""
        return f"chunks:{self.max_tokens}:{self.overlap_tokens}"


class EmbedConfig(BaseModel):
    """The vector computed from a row's text with a sentence-transformers model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str
    template: str
    model: str = DEFAULT_MODEL
    backend: Backend | None = None
    chunks: ChunksConfig | None = None

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(self.model, self.backend)

    @field_validator("template")
    @classmethod
    def _template_is_simple(cls, template: str) -> str:
        template_columns(template)
        return template


def _qualified_name(table: str) -> str:
    split_table_name(table)
    return table


# A table's name, 'schema.table' or 'table'; a key's columns, one name standing for a list of one.
TableName = Annotated[str, AfterValidator(_qualified_name)]
KeyColumns = Annotated[
    tuple[str, ...] | None, BeforeValidator(lambda value: (value,) if isinstance(value, str) else value)
]

# A `keys` query's parameters: $1 (one array per key column of the related table, $1..$n).
KEYS_PARAMETER = re.compile(r"\$1(?![0-9])")


class _OnATable(BaseModel):
    """A config entry about one table: `table`, 'schema.table' or 'table'."""

    table: TableName

    @property
    def schema_name(self) -> str:
        return split_table_name(self.table)[0]

    @property
    def table_name(self) -> str:
        return split_table_name(self.table)[1]


class RelatedConfig(_OnATable):
    """A table whose changes change the mirror's documents (read through `documents`): its changed
    rows name the documents to read again, by a column pair (`on`) or by a query (`keys`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    table: TableName
    # A column of the mirror's table -> the column of this table it equals (one hop, any direction).
    on: dict[str, str] | None = None
    # From this table's changed keys ($1: an array per key column, $2.. for more) to the mirror's keys.
    keys: str | None = None
    key: KeyColumns = None  # this table's key for `keys` (default: its primary key)

    @model_validator(mode="before")
    @classmethod
    def _yaml_on_is_a_key(cls, data: Any) -> Any:
        """YAML 1.1 (PyYAML) reads a bare `on:` as the boolean true: it is this key all the same."""
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if key is True else key): value for key, value in data.items()}
        return data

    @field_validator("on")
    @classmethod
    def _on_names_columns(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and (not value or not all(value) or not all(value.values())):
            raise ValueError("must map at least one column of the mirror's table to one of this table")
        return value

    @field_validator("keys")
    @classmethod
    def _keys_reads_changed_keys(cls, value: str | None) -> str | None:
        if value is not None and not KEYS_PARAMETER.search(value):
            raise ValueError("the query must read the changed keys from $1")
        return value

    @model_validator(mode="after")
    def _one_way_to_documents(self) -> RelatedConfig:
        if (self.on is None) == (self.keys is None):
            raise ValueError("set one of `on` (a column pair) or `keys` (a query), not both")
        if self.key is not None and self.keys is None:
            raise ValueError("`key` is only read with `keys`")
        return self

    @property
    def relation_id(self) -> str:
        """Names this relation in the queue: what its captured values mean changes with it."""
        described = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(described.encode()).hexdigest()[:12]


class MirrorConfig(_OnATable):
    """One table mirrored into one index."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    name: str = Field(pattern=MIRROR_NAME.pattern)
    table: TableName
    key: KeyColumns = None
    embed: EmbedConfig | None = None
    vector_column: str | None = None
    index: IndexSchema
    # A view (or table) with the key columns of `table`, read instead of it for every other column.
    documents: TableName | None = None
    related: tuple[RelatedConfig, ...] = ()
    # Where documents hold the vector when an online re-embedding moved it (index/rollout.py): not
    # part of the definition, so not of `digest` either.
    _moved_vector_to: str | None = PrivateAttr(default=None)

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

    @model_validator(mode="after")
    def _related_needs_documents(self) -> MirrorConfig:
        if self.related and self.documents is None:
            raise ValueError(
                "related: its tables' columns can only reach documents through a view: set `documents`"
            )
        return self

    @field_validator("index", mode="before")
    @classmethod
    def _index_from_dict(cls, value: Any) -> Any:
        if isinstance(value, IndexSchema):
            return value
        # Imported here: index_schema builds on this module's constants and helpers.
        from vecmirror.config.index_schema import build_index

        schema, problems = build_index(value)
        if schema is None:
            raise ValueError("; ".join(problems))
        return schema

    @property
    def digest(self) -> str:
        """Names this definition of the mirror: workers with the same file agree on it, and any
        change (the index, the template, the model, the key) gives another one."""
        described = self.model_dump(mode="json", exclude={"index"})
        described["index"] = self.index.to_dict()
        text = json.dumps(described, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def documents_source(self) -> tuple[str, str]:
        """Where the fields and the template's columns are read: `documents`, or else `table`."""
        return split_table_name(self.documents or self.table)

    @property
    def storage(self) -> str:
        return str(self.index.index.storage_type.value)

    @property
    def vector_field(self) -> BaseField | None:
        vectors = [f for f in self.index.fields.values() if field_type(f) == "vector"]
        return vectors[0] if vectors else None

    @property
    def vector_at(self) -> str | None:
        """Where each document holds its vector: a HASH field's name, a JSON path."""
        if self.vector_field is None:
            return None
        return self._moved_vector_to or self.usual_vector_at

    @property
    def usual_vector_at(self) -> str | None:
        """Where the vector field's own name (HASH) or path (JSON) puts the vector; in each chunk
        of a chunked document (`$._vm_chunks[*].<field>`)."""
        vector = self.vector_field
        if vector is None:
            return None
        if self.chunked:
            return f"{CHUNKS_PATH}[*].{vector.name}"
        return (vector.path or f"$.{vector.name}") if self.storage == "json" else vector.name

    @property
    def chunked(self) -> bool:
        return self.embed is not None and self.embed.chunks is not None

    @property
    def vector_moved(self) -> bool:
        return self._moved_vector_to is not None

    @staticmethod
    def is_moved_vector_location(at: str) -> bool:
        """A place an online re-embedding chose (`<field>__<8 hex digits>`, index/rollout.py), not a
        field's own name or path: its vectors' content hashes name it."""
        return MOVED_VECTOR.search(at) is not None

    def with_vector_at(self, at: str) -> MirrorConfig:
        """This mirror writing its vectors at `at` (see index/rollout.py, place_vectors)."""
        placed = self.model_copy()
        placed._moved_vector_to = None if at == self.usual_vector_at else at
        return placed

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


def validation_message(msg: Any) -> str:
    return str(msg).removeprefix("Value error, ")


def pydantic_problems(exc: ValidationError) -> Iterator[tuple[str, str]]:
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(mirror)"
        yield where, validation_message(error["msg"])
