"""A row becomes a document: each index field's value checked and converted from its column.

Conversion errors are raised as RowError naming the mirror, the row key and the field, so the bad
row is reported and the rest of its batch still syncs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.typing as npt
from redisvl.schema.fields import BaseField

from vecmirror.config import MirrorConfig, field_type
from vecmirror.errors import RowError
from vecmirror.pipeline.template import TemplateValueError, content_hash, render

FieldValue = str | int | float | list[str]
RowKey = tuple[str, ...]


@dataclass
class Document:
    key: RowKey
    fields: dict[str, FieldValue | None]  # None: the column is NULL, so the field is removed
    text: str | None = None  # the rendered template, for mirrors that embed
    text_hash: str | None = None
    vector: npt.NDArray[Any] | None = field(default=None, repr=False)


class DocumentBuilder:
    def __init__(self, mirror: MirrorConfig) -> None:
        self._mirror = mirror
        self._vector_field = mirror.vector_field

    def build(self, key: RowKey, row: dict[str, Any]) -> Document:
        fields = {f.name: self._field_value(key, f, row.get(f.name)) for f in self._mirror.value_fields}
        document = Document(key, fields)
        embed = self._mirror.embed
        if embed is not None:
            try:
                document.text = render(embed.template, row)
            except TemplateValueError as exc:
                raise RowError(self._mirror.name, key, exc.column, str(exc)) from exc
            document.text_hash = content_hash(embed.model, document.text)
        elif self._mirror.vector_column is not None:
            document.vector = self.vector(key, row.get(self._mirror.vector_column), self._mirror.vector_column)
        return document

    def vector(self, key: RowKey, value: Any, source: str) -> npt.NDArray[Any]:
        """Checks a vector (from a column or the model) against the vector field's dims."""
        assert self._vector_field is not None
        attrs = self._vector_field.attrs
        try:
            return check_vector(value, attrs.dims, str(attrs.datatype.value).lower())  # type: ignore[union-attr]
        except ValueError as exc:
            raise RowError(self._mirror.name, key, source, str(exc)) from exc

    def _field_value(self, key: RowKey, field_: BaseField, value: Any) -> FieldValue | None:
        if value is None:
            return None
        try:
            return CONVERTERS[field_type(field_)](value)
        except (ValueError, TypeError) as exc:
            raise RowError(self._mirror.name, key, field_.name, str(exc)) from exc


def check_vector(value: Any, dims: int, datatype: str) -> npt.NDArray[Any]:
    if value is None:
        raise ValueError("the vector is NULL")
    if isinstance(value, bytes | bytearray | memoryview):
        array = np.frombuffer(bytes(value), dtype=_numpy_dtype(datatype))
    else:
        array = np.asarray([float(v) if isinstance(v, Decimal) else v for v in value], dtype=np.float64)
    if array.ndim != 1 or array.shape[0] != dims:
        raise ValueError(f"the vector has {array.size} values, the index expects dims={dims}")
    if not np.all(np.isfinite(array.astype(np.float64))):
        raise ValueError("the vector contains NaN or infinite values")
    return array


def _numpy_dtype(datatype: str) -> npt.DTypeLike:
    if datatype == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(datatype)


def _text(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _tag(value: Any) -> FieldValue:
    if isinstance(value, list | tuple):
        return [_tag_item(v) for v in value if v is not None]
    return _tag_item(value)


def _tag_item(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _numeric(value: Any) -> int | float:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day).timestamp()
    number = _as_float(value)
    if math.isnan(number):
        raise ValueError("NaN is not a valid NUMERIC value")
    return number


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a number, the NUMERIC field needs one") from None


def _geo(value: Any) -> str:
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        return f"{float(value[0])},{float(value[1])}"
    if hasattr(value, "x") and hasattr(value, "y"):  # asyncpg Point: (longitude, latitude)
        return f"{float(value.x)},{float(value.y)}"
    return str(value)


CONVERTERS = {"text": _text, "tag": _tag, "numeric": _numeric, "geo": _geo}
