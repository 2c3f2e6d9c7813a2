"""Search hits with typed fields and a score where higher is better.

Scores, per distance metric (Redis reports `distance`):
  COSINE  distance = 1 - cos(a, b)        score = 1 - distance   (the cosine similarity, -1..1)
  IP      distance = 1 - a·b              score = 1 - distance   (the inner product)
  L2      distance = |a - b|² (squared)   score = 1 / (1 + distance)   (0..1, 1 for identical)
  fused   score = hybrid score: text_weight·text relevance (BM25) + (1 - text_weight)·(2 - distance)/2
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from redisvl.schema.fields import BaseField

from vecmirror.config import field_type

METRIC_SCORES: dict[str, Callable[[float], float]] = {
    "COSINE": lambda distance: 1.0 - distance,
    "IP": lambda distance: 1.0 - distance,
    "L2": lambda distance: 1.0 / (1.0 + distance),
}


@dataclass(frozen=True)
class Hit:
    id: str
    distance: float
    score: float
    fields: dict[str, Any]
    vector: npt.NDArray[Any] | None = field(default=None, repr=False)
    # A chunked mirror's hit: its nearest chunk ({text, position, distance}), and with `chunks`
    # asked for, every chunk of the row, nearest first.
    chunk: dict[str, Any] | None = None
    chunks: list[dict[str, Any]] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of `vecmirror query --json`: id, distance, score, then the fields."""
        out: dict[str, Any] = {"id": self.id, "distance": self.distance, "score": self.score, **self.fields}
        if self.vector is not None:
            out["vector"] = [float(v) for v in self.vector]
        if self.chunk is not None:
            out["chunk"] = self.chunk
        if self.chunks is not None:
            out["chunks"] = self.chunks
        return out


DISTANCES: dict[str, Callable[[npt.NDArray[Any], npt.NDArray[Any]], npt.NDArray[Any]]] = {
    # As Redis measures them (see the table above): vectors in rows, the query a vector.
    "COSINE": lambda vectors, query: (
        1.0 - (vectors @ query) / np.maximum(np.linalg.norm(vectors, axis=1) * np.linalg.norm(query), 1e-12)
    ),
    "IP": lambda vectors, query: 1.0 - vectors @ query,
    "L2": lambda vectors, query: np.sum((vectors - query) ** 2, axis=1),
}


def nearest_chunks(
    stored: list[dict[str, Any]], vector_name: str, query: npt.NDArray[Any], metric: str, *, every: bool
) -> dict[str, Any]:
    """From a chunked document's chunks: its nearest chunk to `query`, and, with `every`, all of
    them nearest first. A repeated chunk holds no vector: it has the first one of its text's."""
    by_hash = {c["hash"]: c[vector_name] for c in stored if vector_name in c and "hash" in c}
    chunks = [c for c in stored if c.get("hash") in by_hash]
    if not chunks:
        return {"chunk": None, "chunks": [] if every else None}
    vectors = np.asarray([by_hash[c["hash"]] for c in chunks], dtype=np.float64)
    distances = DISTANCES[metric](vectors, query)
    ranked = [
        {"text": c["text"], "position": int(c["pos"]), "distance": float(d)}
        for d, c in sorted(zip(distances, chunks, strict=True), key=lambda pair: float(pair[0]))
    ]
    return {"chunk": ranked[0], "chunks": ranked if every else None}


def decode_field(definition: BaseField, raw: Any, *, is_json: bool) -> Any:
    """Redis returns every value as text; this gives numbers, tag lists and parsed JSON back."""
    value = raw.decode() if isinstance(raw, bytes) else raw
    kind = field_type(definition)
    if is_json and isinstance(value, str) and value[:1] in ("[", "{"):  # not '': "" is in every string
        return json.loads(value)
    if kind == "numeric":
        return _number(value)
    if kind == "tag":
        separator = str(getattr(definition.attrs, "separator", ","))
        return [part.strip() for part in str(value).split(separator) if part.strip()]
    return value


def array_paths(fields: Iterable[BaseField], *, is_json: bool) -> dict[str, str]:
    """Each JSON field over an array (`$.tags[*]`) by name, with the array's own path (`$.tags`).

    RETURN (FT.SEARCH) or LOAD (FT.AGGREGATE) of such a field's name gives only the first value
    its path matches; `$.tags AS tags` gives the whole array, as JSON text (decode_field parses it).
    """
    if not is_json:
        return {}
    paths = {str(f.name): str(getattr(f, "path", None) or "") for f in fields}
    return {name: path.removesuffix("[*]") for name, path in paths.items() if path.endswith("[*]")}


def return_whole_arrays(query: Any, arrays: Mapping[str, str]) -> None:
    """Rewrites the query's RETURN or LOAD so each field of `arrays` comes back whole (see
    array_paths). redis-py keeps them as the argument lists `_return_fields` (RETURN n …) and
    `_loadfields` (LOAD n …), whose counts it takes from the lists' lengths, `AS` included."""
    for attribute in ("_return_fields", "_loadfields"):
        names = getattr(query, attribute, None)
        if names:
            setattr(query, attribute, _aliased(list(names), arrays))


def _aliased(names: list[str], arrays: Mapping[str, str]) -> list[str]:
    out: list[str] = []
    for position, name in enumerate(names):
        bare = str(name).removeprefix("@")
        after_as = position > 0 and names[position - 1] == "AS"
        out += [arrays[bare], "AS", bare] if bare in arrays and not after_as else [name]
    return out


def _number(value: Any) -> int | float:
    text = str(value)
    try:
        return int(text)
    except ValueError:
        number = float(text)
        return int(number) if number.is_integer() and abs(number) < 2**53 else number


def decode_vector(raw: Any, datatype: str, *, is_json: bool) -> npt.NDArray[Any] | None:
    if raw is None:
        return None
    if is_json:
        values = json.loads(raw)
        return np.asarray(values[0] if values and isinstance(values[0], list) else values, dtype=np.float64)
    if datatype == "bfloat16":
        import ml_dtypes

        return np.frombuffer(raw, dtype=ml_dtypes.bfloat16).astype(np.float32)
    return np.frombuffer(raw, dtype=np.dtype(datatype))
