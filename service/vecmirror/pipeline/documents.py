"""A row becomes a document: each index field's value checked and converted from its column.

Conversion errors are raised as RowError naming the mirror, the row key and the field, so the bad
row is reported and the rest of its batch still syncs.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.typing as npt
from redisvl.schema.fields import BaseField

from vecmirror.config import MirrorConfig, field_type
from vecmirror.errors import RowError
from vecmirror.pipeline.template import ContentHasher, Template, TemplateValueError
from vecmirror.source.session import PgValue

Scalar = str | int | float
FieldValue = Scalar | list[Scalar]  # a list: TAG values, or any field whose JSON path ends in [*]
RowKey = tuple[str, ...]
Converter = Callable[[Any], FieldValue]  # a non-NULL column's value to its field's value
ARRAY_SUFFIX = "[*]"
# Type tuples built once: `isinstance(v, list | tuple)` builds a union on every call, which costs
# more than the check itself in converters that run for every field of every row.
ARRAY_TYPES = (list, tuple)
JSON_TYPES = (dict, list)
FRACTIONAL_TYPES = (float, Decimal)


@dataclass
class Chunk:
    """A piece of a long text (embed.chunks), embedded on its own."""

    text: str
    text_hash: str  # of the chunk's text under the model: an equal one keeps its vector
    vector: npt.NDArray[Any] | None = field(default=None, repr=False)


@dataclass
class Document:
    key: RowKey
    fields: dict[str, FieldValue | None]  # None: the column is NULL, so the field is removed
    text: str | None = None  # the rendered template, for mirrors that embed
    text_hash: str | None = None
    vector: npt.NDArray[Any] | None = field(default=None, repr=False)
    version: int = 0  # of the row this document was built from (see migrations/0002)
    # While new vectors are made beside the old ones (index/rollout.py): the hash the old vector
    # holds if it was made from this very text by this very model, so it is copied, not made again.
    reusable_hash: str | None = None
    # A chunked mirror's document: its text's chunks, each with its own vector (no `vector`).
    chunks: list[Chunk] | None = None


class DocumentBuilder:
    """Builds one mirror's documents. What depends only on the mirror (each field's converter, the
    parsed template, the model's part of the hash) is worked out here once: a batch whose text did
    not change costs little more than this per-row work, which must stay small next to Redis'."""

    def __init__(
        self,
        mirror: MirrorConfig,
        *,
        max_text_length: int = 100_000,
        reuse_from: str | None = None,
        split: Callable[[str], list[str]] | None = None,
    ) -> None:
        self._mirror = mirror
        self._split = split  # a chunked mirror's splitter (pipeline/chunks.py); None: texts stay whole
        self._vector_field = mirror.vector_field
        self._max_text_length = max_text_length
        self._converters = [(f.name, _converter(f)) for f in mirror.value_fields]
        self._embedding: tuple[str, Template, ContentHasher] | None = None
        self._reusable: ContentHasher | None = None
        if mirror.embed is not None:
            embed = mirror.embed
            moved_to = mirror.vector_at if mirror.vector_moved else None
            chunks = embed.chunks.settings if embed.chunks is not None else None
            self._embedding = (
                embed.field,
                Template(embed.template),
                ContentHasher(embed.model, embed.backend, moved_to=moved_to, chunks=chunks),
            )
            self._chunk_hash = ContentHasher(embed.model, embed.backend)
            if reuse_from is not None:
                moved_from = reuse_from if mirror.is_moved_vector_location(reuse_from) else None
                self._reusable = ContentHasher(embed.model, embed.backend, moved_to=moved_from)

    def build(self, key: RowKey, row: dict[str, Any]) -> Document:
        document = Document(key, self._fields(key, row))
        if self._embedding is not None:
            field_name, template, content_hash = self._embedding
            document.text = self._render(key, row, template, field_name)
            document.text_hash = content_hash(document.text)
            if self._split is not None:
                pieces = self._split(document.text)
                document.chunks = [Chunk(piece, self._chunk_hash(piece)) for piece in pieces]
            if self._reusable is not None:
                document.reusable_hash = self._reusable(document.text)
        elif self._mirror.vector_column is not None:
            document.vector = self.vector(
                key, row.get(self._mirror.vector_column), self._mirror.vector_column
            )
        return document

    def _fields(self, key: RowKey, row: dict[str, Any]) -> dict[str, FieldValue | None]:
        fields: dict[str, FieldValue | None] = {}
        for name, convert in self._converters:
            value = row.get(name)
            if value is None:
                fields[name] = None
                continue
            try:
                fields[name] = convert(value)
            except (ValueError, TypeError) as exc:
                raise RowError(self._mirror.name, key, name, str(exc)) from exc
        return fields

    def _render(self, key: RowKey, row: dict[str, Any], template: Template, field_name: str) -> str:
        try:
            text = template.render(row)
        except TemplateValueError as exc:
            raise RowError(self._mirror.name, key, exc.column, str(exc)) from exc
        self._check_length(key, text, field_name)
        return text

    def _check_length(self, key: RowKey, text: str, field_name: str) -> None:
        # The model reads only its first few hundred tokens, but tokenizing megabytes of text
        # stalls the whole batch: such a row is refused instead.
        if len(text) > self._max_text_length:
            problem = (
                f"the rendered text is {len(text)} characters long, over the limit of {self._max_text_length}"
            )
            raise RowError(self._mirror.name, key, field_name, problem)

    def vector(self, key: RowKey, value: Any, source: str) -> npt.NDArray[Any]:
        """Checks a vector (from a column or the model) against the vector field's dims."""
        assert self._vector_field is not None
        attrs: Any = self._vector_field.attrs
        try:
            return check_vector(value, int(attrs.dims), str(attrs.datatype.value).lower())
        except ValueError as exc:
            raise RowError(self._mirror.name, key, source, str(exc)) from exc


def _converter(field_: BaseField) -> Converter:
    """How a non-NULL column becomes the field's value, chosen by the field's type and path."""
    kind = field_type(field_)
    convert = CONVERTERS[kind]
    array_path = (field_.path or "").endswith(ARRAY_SUFFIX)
    if kind == "tag":
        separator = str(getattr(field_.attrs, "separator", ","))
        return functools.partial(_tag_array_path if array_path else _joined_tags, separator)
    if not array_path:
        return convert
    return functools.partial(_array_or_value, kind, convert)


def _array_or_value(kind: str, convert: Converter, value: Any) -> FieldValue:
    """A field whose JSON path ends in [*]: an array column becomes an array of converted values."""
    if isinstance(value, ARRAY_TYPES) and not _is_point(kind, value):
        return _array(convert, value)
    return convert(value)


def check_vector(value: Any, dims: int, datatype: str) -> npt.NDArray[np.float64]:
    """The vector as float64 values (exact for every datatype), once it fits the index's field."""
    if value is None:
        raise ValueError("the vector is NULL")
    array = _as_array(value, datatype)
    if array.ndim != 1 or array.shape[0] != dims:
        raise ValueError(f"the vector has {array.size} values, the index expects dims={dims}")
    if not np.all(np.isfinite(array)):
        raise ValueError("the vector contains NaN or infinite values")
    _check_representable(array, datatype)
    return array


def _as_array(value: Any, datatype: str) -> npt.NDArray[np.float64]:
    if isinstance(value, bytes | bytearray | memoryview):
        dtype = np.dtype(_numpy_dtype(datatype))
        if len(value) % dtype.itemsize:
            raise ValueError(f"the vector has {len(value)} bytes, not a whole number of {datatype} values")
        return np.frombuffer(bytes(value), dtype=dtype).astype(np.float64)
    if isinstance(value, str) or not isinstance(value, Sequence | np.ndarray):
        raise ValueError(f"the vector must be an array of numbers, got {type(value).__name__}")
    if isinstance(value, np.ndarray):
        items: Any = value
    else:
        items = [float(v) if isinstance(v, Decimal) else v for v in value]
        if any(v is None for v in items):
            raise ValueError("the vector has NULL elements")
    try:
        return np.asarray(items, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("the vector must be an array of numbers") from None


def _check_representable(array: npt.NDArray[np.float64], datatype: str) -> None:
    """A value the index's datatype cannot hold would be stored as inf or wrapped around."""
    if datatype in ("int8", "uint8"):
        limits = np.iinfo(np.dtype(datatype))
        if not np.all(array == np.round(array)) or array.min() < limits.min or array.max() > limits.max:
            raise ValueError(f"the vector has values that are not {datatype} integers")
        return
    with np.errstate(over="ignore", invalid="ignore"):
        converted = array.astype(_numpy_dtype(datatype)).astype(np.float64)
    if not np.all(np.isfinite(converted)):
        raise ValueError(f"the vector has values too large for {datatype}")


def _numpy_dtype(datatype: str) -> npt.DTypeLike:
    if datatype == "bfloat16":
        import ml_dtypes

        bfloat16: npt.DTypeLike = ml_dtypes.bfloat16
        return bfloat16
    return np.dtype(datatype)


def _is_point(kind: str, value: Sequence[Any]) -> bool:
    """A GEO column holding one (longitude, latitude) pair, not an array of points."""
    return kind == "geo" and len(value) == 2 and all(isinstance(v, int | float | Decimal) for v in value)


def _array(convert: Converter, values: Sequence[Any]) -> list[Scalar]:
    items: list[Scalar] = []
    for value in values:
        if value is None:
            continue
        converted = convert(value)
        items += converted if isinstance(converted, list) else [converted]
    return items


def _text(value: Any) -> str:
    if isinstance(value, JSON_TYPES):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _tag(value: Any) -> FieldValue:
    if isinstance(value, ARRAY_TYPES):
        items: list[Scalar] = [_tag_item(v) for v in value if v is not None]
        return items
    return _tag_item(value)


def _joined_tags(separator: str, value: Any) -> FieldValue:
    """TAG values of a HASH field or a plain JSON path: an array is joined with the separator."""
    tags = _tag(value)
    return _no_separator(separator, tags) if isinstance(tags, list) else tags


def _tag_array_path(separator: str, value: Any) -> FieldValue:
    """TAG values on a JSON [*] path: the index splits each element by the separator too."""
    if isinstance(value, ARRAY_TYPES):
        return _no_separator(separator, _array(_tag, value))
    return _tag(value)


def _no_separator(separator: str, tags: list[Scalar]) -> list[Scalar]:
    """An array element holding the separator would be indexed as several tags: the row fails
    instead. (A plain text column is split on purpose: "a,b" is two tags.)"""
    for tag in tags:
        if separator in str(tag):
            raise ValueError(
                f"the array element {tag!r} contains the TAG separator {separator!r}; "
                "it would be indexed as several tags"
            )
    return tags


def _tag_item(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _numeric(value: Any) -> int | float:
    if isinstance(value, FRACTIONAL_TYPES):  # real, double precision and numeric columns: checked first
        return _finite(value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, datetime):
        # A timestamp without time zone is taken as UTC, not as the worker's local time.
        return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, PgValue):
        return _pg_seconds(value)
    return _finite(value)


def _pg_seconds(value: PgValue) -> float:
    """A date or time Python cannot hold (see source/session.py): its exact seconds, unless it has
    none (a time of day) or they are infinite, which a NUMERIC field cannot take."""
    if value.seconds is None:
        raise ValueError(f"{value.type_name} {value.text!r} is not a number, the NUMERIC field needs one")
    if not math.isfinite(value.seconds):
        problem = "is infinite, the NUMERIC field needs a finite number"
        raise ValueError(f"{value.type_name} {value.text!r} {problem}")
    return value.seconds


def _finite(value: Any) -> float:
    number = _as_float(value)
    if math.isfinite(number):
        return number
    if math.isnan(number):
        raise ValueError("NaN is not a valid NUMERIC value")
    raise ValueError(f"{value!r} is not a finite number, the NUMERIC field needs one")


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{value!r} is not a number, the NUMERIC field needs one") from None


def _geo(value: Any) -> str:
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        return f"{float(value[0])},{float(value[1])}"
    if hasattr(value, "x") and hasattr(value, "y"):  # asyncpg Point: (longitude, latitude)
        return f"{float(value.x)},{float(value.y)}"
    return str(value)


CONVERTERS: dict[str, Converter] = {
    "text": _text,
    "tag": _tag,
    "numeric": _numeric,
    "geo": _geo,
}
