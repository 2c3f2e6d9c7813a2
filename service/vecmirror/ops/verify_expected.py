"""What a row's document must hold, compared the way each storage type stores it (for `verify`)."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

from vecmirror.config import META_HASH_FIELD, META_KEY_FIELD, META_VERSION_FIELD, MirrorConfig
from vecmirror.config.model import chunk_vector_key
from vecmirror.pipeline.documents import Document
from vecmirror.pipeline.template import ContentHasher
from vecmirror.sink.encode import CHUNKS_FIELD, HashEncoder, JsonEncoder
from vecmirror.sink.versioned import META_GENERATION_FIELD

AHEAD = "version ahead of Postgres"  # a stale reason that only a new generation repairs
CHUNK_REASONS = ("no chunks", "chunk ")  # how the stale reasons about a document's chunks begin


class Expected:
    """What a row's document must hold, compared the way each storage type stores it."""

    def __init__(self, mirror: MirrorConfig) -> None:
        self._mirror = mirror
        self._hash, self._json = HashEncoder(mirror), JsonEncoder(mirror)
        vector = mirror.vector_field
        self._vector_name = mirror.vector_at
        self._dims = int(vector.attrs.dims) if vector is not None else 0
        self._vector_path = mirror.vector_at
        embed = mirror.embed
        self._chunk_hash = ContentHasher(embed.model, embed.backend) if embed and embed.chunks else None

    def difference(
        self, expected: Document, stored: dict[str, Any], generation: str | None, legacy: str | None
    ) -> str | None:
        if self._chunk_hash is not None:
            stored = copy.deepcopy(stored)
            chunks = stored.pop(CHUNKS_FIELD, None)
            found = self._fields_difference(expected, stored, generation, legacy)
            return found or self._chunks_difference(expected, chunks)
        stored, vector = self._split_vector(stored)
        return self._fields_difference(expected, stored, generation, legacy) or self._vector_difference(
            vector
        )

    def _fields_difference(
        self, expected: Document, stored: dict[str, Any], generation: str | None, legacy: str | None
    ) -> str | None:
        owner = stored.pop(META_GENERATION_FIELD, None) or legacy
        if owner != generation:
            return f"generation differs: Redis holds {owner or 'none'}, the mirror is at {generation}"
        held = stored.get(META_VERSION_FIELD)
        if str(held) != str(expected.version):
            if is_int(held) and int(str(held)) > expected.version:
                return f"{AHEAD}: Redis holds {held}, the row is at {expected.version}"
            return f"version differs: Redis holds {held}, the row is at {expected.version}"
        if expected.text_hash is not None and stored.get(META_HASH_FIELD) != expected.text_hash:
            return "content hash differs: the text, model or backend changed since it was embedded"
        wanted = self._wanted_fields(expected)
        for name, value in wanted.items():
            if stored.get(name) != value:
                return f"field {name!r} differs"
        extra = set(stored) - set(wanted) - {META_KEY_FIELD, META_HASH_FIELD}
        if extra:
            return f"unexpected field(s) {sorted(extra)}"
        return None

    def _chunks_difference(self, expected: Document, chunks: Any) -> str | None:
        """A chunked document's chunks, checked without the model: in order, each a piece of the
        row's text whose hash is its own text's, with a vector of `dims` values. (Which pieces they
        are is settled by the content hash: the same text and chunk settings split the same.)"""
        assert self._chunk_hash is not None
        if not isinstance(chunks, list) or not chunks:
            return "no chunks"
        name = chunk_vector_key(self._vector_path)
        if [c.get("pos") for c in chunks] != list(range(len(chunks))):
            return "chunk positions are not 0..n-1"
        embedded: set[Any] = set()
        for position, chunk in enumerate(chunks):
            text = str(chunk.get("text", ""))
            if text not in (expected.text or ""):
                return f"chunk {position} is not a piece of the row's text"
            if chunk.get("hash") != self._chunk_hash(text):
                return f"chunk {position}'s hash is not its text's"
            if name not in chunk and chunk.get("hash") in embedded:
                continue  # a repeated chunk: the first of its text holds the vector
            embedded.add(chunk.get("hash"))
            if len(chunk.get(name) or []) != self._dims:
                return (
                    f"chunk {position}'s vector has {len(chunk.get(name) or [])} values, dims is {self._dims}"
                )
        return None

    def _split_vector(self, stored: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        """The document without its vector, and the vector (raw bytes for HASH, a list for JSON)."""
        stored = copy.deepcopy(stored)
        if self._vector_name is None:
            return stored, None
        if self._mirror.storage != "json":
            return stored, stored.pop(self._vector_name, None)
        node: Any = stored
        parts = (self._vector_path or "").removeprefix("$.").split(".")
        for part in parts[:-1]:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        vector = node.pop(parts[-1], None) if isinstance(node, dict) else None
        _drop_empty(stored)
        return stored, vector

    def _wanted_fields(self, expected: Document) -> dict[str, Any]:
        # Vectors are checked by length only: the model is not run again to compare values.
        expected = dataclasses.replace(expected, vector=None)
        if self._mirror.storage == "json":
            return {
                k: v
                for k, v in self._json.document(expected, with_nulls=False).items()
                if k != META_KEY_FIELD
            }
        return {k: str(v) for k, v in self._hash.mapping(expected).items() if k != META_KEY_FIELD}

    def _vector_difference(self, stored: Any) -> str | None:
        if self._vector_name is None:
            return None
        length = _vector_length(stored, self._mirror)
        if length != self._dims:
            return f"vector has {length} values, dims is {self._dims}"
        return None


def _vector_length(stored: Any, mirror: MirrorConfig) -> int:
    if stored is None:
        return 0
    if isinstance(stored, list):
        return len(stored)
    vector = mirror.vector_field
    assert vector is not None
    itemsize = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "int8": 1, "uint8": 1}
    return len(stored) // itemsize[str(vector.attrs.datatype.value).lower()]


def is_int(value: Any) -> bool:
    try:
        int(str(value))
    except ValueError:
        return False
    return True


def _drop_empty(node: dict[str, Any]) -> None:
    for key in [k for k, v in node.items() if isinstance(v, dict)]:
        _drop_empty(node[key])
        if not node[key]:
            del node[key]


def as_document(reply: Any, is_json: bool, vector_name: str | None) -> dict[str, Any] | None:
    if not reply:
        return None
    if is_json:
        parsed: dict[str, Any] = json.loads(reply)
        return parsed
    document: dict[str, Any] = {}
    for name, value in reply.items():
        key = name.decode() if isinstance(name, bytes) else name
        # The vector stays raw bytes: they might even happen to decode as text. So does any other
        # binary field (the old vectors beside the new ones during a rollout, index/rollout.py).
        document[key] = value if key == vector_name or not isinstance(value, bytes) else _decoded(value)
    return document


def _decoded(value: bytes) -> str | bytes:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value
