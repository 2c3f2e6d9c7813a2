"""Documents as Redis stores them: flat string fields for HASH, a nested object for JSON."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import numpy.typing as npt
from redisvl.schema.fields import BaseField

from vecmirror.config import META_HASH_FIELD, META_KEY_FIELD, META_VERSION_FIELD, MirrorConfig
from vecmirror.config.model import CHUNKS_PATH, chunk_vector_key
from vecmirror.pipeline.documents import Chunk, Document, FieldValue

ARRAY_SUFFIX = "[*]"
CHUNKS_FIELD = CHUNKS_PATH.removeprefix("$.")


def tag_separator(field: BaseField) -> str:
    return str(getattr(field.attrs, "separator", ","))


def vector_bytes(vector: npt.NDArray[Any], datatype: str) -> bytes:
    if datatype == "bfloat16":
        import ml_dtypes

        return bytes(vector.astype(ml_dtypes.bfloat16).tobytes())
    return vector.astype(np.dtype(datatype)).tobytes()


def vector_from_bytes(raw: bytes, datatype: str) -> npt.NDArray[Any]:
    """What vector_bytes wrote, read back."""
    if datatype == "bfloat16":
        import ml_dtypes

        return np.frombuffer(raw, dtype=ml_dtypes.bfloat16).astype(np.float32)
    return np.frombuffer(raw, dtype=np.dtype(datatype))


def _datatype(field: BaseField) -> str:
    attrs: Any = field.attrs
    return str(attrs.datatype.value).lower()


class HashEncoder:
    def __init__(self, mirror: MirrorConfig) -> None:
        self._fields = {f.name: f for f in mirror.value_fields}
        self._vector = mirror.vector_field
        self._vector_at = mirror.vector_at

    def mapping(self, document: Document) -> dict[str, str | bytes | int | float]:
        """Fields to HSET; vector only when the document carries one."""
        mapping: dict[str, str | bytes | int | float] = {
            META_KEY_FIELD: json.dumps(list(document.key)),
            META_VERSION_FIELD: document.version,
        }
        if document.text_hash is not None:
            mapping[META_HASH_FIELD] = document.text_hash
        for name, value in document.fields.items():
            if value is not None:
                mapping[name] = self._scalar(self._fields[name], value)
        if document.vector is not None and self._vector is not None and self._vector_at is not None:
            mapping[self._vector_at] = vector_bytes(document.vector, _datatype(self._vector))
        return mapping

    @staticmethod
    def removed(document: Document) -> list[str]:
        """Fields whose column is NULL now: HDEL, or an old value would stay searchable."""
        return [name for name, value in document.fields.items() if value is None]

    @staticmethod
    def _scalar(field: BaseField, value: FieldValue) -> str | int | float:
        if isinstance(value, list):
            return tag_separator(field).join(str(v) for v in value)
        return value


class JsonEncoder:
    def __init__(self, mirror: MirrorConfig) -> None:
        self._fields = {f.name: f for f in mirror.value_fields}
        self._vector_at = mirror.vector_at
        # In each chunk of a chunked document, the vector's key: `$._vm_chunks[*].<this>`.
        self._chunk_vector = chunk_vector_key(mirror.vector_at) if mirror.chunked else None

    def document(self, document: Document, *, with_nulls: bool) -> dict[str, Any]:
        """The object to JSON.SET (nulls dropped) or JSON.MERGE (nulls delete fields)."""
        body: dict[str, Any] = {META_KEY_FIELD: list(document.key), META_VERSION_FIELD: document.version}
        if document.text_hash is not None:
            body[META_HASH_FIELD] = document.text_hash
        for name, value in document.fields.items():
            if value is not None or with_nulls:
                field = self._fields[name]
                _set_path(body, field.path or f"$.{name}", self._value(field, value))
        if document.vector is not None and self._vector_at is not None:
            _set_path(body, self._vector_at, document.vector.tolist())
        if document.chunks is not None and self._chunk_vector is not None:
            self._set_chunks(body, document.chunks, self._chunk_vector)
        return body

    @staticmethod
    def _set_chunks(body: dict[str, Any], chunks: list[Chunk], vector_name: str) -> None:
        """Every chunk, the first of each text with its vector; none where the vectors were not
        read (the text is unchanged: a merge keeps the chunks stored). A repeated chunk (a text
        that repeats itself) holds no vector of its own: many equal vectors in one HNSW graph fill
        the neighbour lists and hide other documents from KNN, even exact matches."""
        if any(chunk.vector is None for chunk in chunks):
            return
        stored: list[dict[str, Any]] = []
        seen: set[str] = set()
        for position, chunk in enumerate(chunks):
            entry: dict[str, Any] = {"text": chunk.text, "pos": position, "hash": chunk.text_hash}
            if chunk.text_hash not in seen and chunk.vector is not None:
                entry[vector_name] = chunk.vector.tolist()
                seen.add(chunk.text_hash)
            stored.append(entry)
        body[CHUNKS_FIELD] = stored

    @staticmethod
    def _value(field: BaseField, value: FieldValue | None) -> Any:
        if value is None:
            return None
        if (field.path or "").endswith(ARRAY_SUFFIX):
            return value if isinstance(value, list) else [value]
        if isinstance(value, list):  # TAG values on a plain path: one string, split by the separator
            return tag_separator(field).join(str(v) for v in value)
        return value


def _set_path(body: dict[str, Any], path: str, value: Any) -> None:
    """Only paths like $.a.b or $.a[*] reach here (the config checks them, and that no path holds
    another)."""
    parts = path.removesuffix(ARRAY_SUFFIX).removeprefix("$.").split(".")
    node = body
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
