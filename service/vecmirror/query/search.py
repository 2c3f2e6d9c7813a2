"""KNN lookups over a mirror's index (the minimal path; filters are raw RediSearch expressions)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis.asyncio as redis
from redisvl.index import AsyncSearchIndex
from redisvl.query import VectorQuery

from vecmirror.config import MirrorConfig
from vecmirror.errors import QueryError
from vecmirror.pipeline.embedder import Embedder


@dataclass(frozen=True)
class Hit:
    id: str
    distance: float
    fields: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "distance": self.distance, **self.fields}


async def knn(
    client: redis.Redis,
    mirror: MirrorConfig,
    vector: Sequence[float],
    *,
    k: int = 10,
    filter_expression: str | None = None,
    return_fields: Sequence[str] | None = None,
) -> list[Hit]:
    field = _vector_field(mirror)
    fields = list(return_fields) if return_fields else [f.name for f in mirror.value_fields]
    _check_fields(mirror, fields)
    dims = int(field.attrs.dims)
    if len(vector) != dims:
        raise QueryError(
            f"mirror {mirror.name!r}: the query vector has {len(vector)} values, expected {dims}"
        )
    query = VectorQuery(
        vector=[float(v) for v in vector],
        vector_field_name=field.name,
        return_fields=fields,
        num_results=k,
        filter_expression=filter_expression or None,
        dtype=str(field.attrs.datatype.value).lower(),
    )
    index = AsyncSearchIndex(mirror.index, redis_client=client)
    results = await index.query(query)
    return [_hit(result, fields) for result in results]


async def embed_query(embedder: Embedder, text: str) -> list[float]:
    vectors = await asyncio.to_thread(embedder.embed, [text])
    return [float(v) for v in np.asarray(vectors[0])]


def _vector_field(mirror: MirrorConfig) -> Any:
    field = mirror.vector_field
    if field is None:
        raise QueryError(f"mirror {mirror.name!r} has no vector field to search")
    return field


def _check_fields(mirror: MirrorConfig, fields: Sequence[str]) -> None:
    known = {f.name for f in mirror.value_fields}
    unknown = [f for f in fields if f not in known]
    if unknown:
        raise QueryError(f"mirror {mirror.name!r}: unknown return field(s) {unknown}; known: {sorted(known)}")


def _hit(result: dict[str, Any], fields: Sequence[str]) -> Hit:
    return Hit(
        id=str(result["id"]),
        distance=float(result["vector_distance"]),
        fields={name: result[name] for name in fields if name in result},
    )
