"""Hits' fields read from the documents themselves, where the search cannot return them.

RediSearch without its coordinator (this stack's 2.10) in cluster mode answers nil for every
document field a search returns or loads (RediSearch issue #5034), even on a one-node cluster that
searches every document: only what the query computes comes back, the KNN distance and the text
score. RedisVL then drops every hit as a document with missing data. So on a cluster client the
search asks for ids and distances alone, and the hits' fields are read by key afterwards: one
pipeline of single-key reads, which a cluster client sends to each key's primary and a proxy
endpoint accepts. A standalone client keeps the single round trip (search.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import redis.asyncio as redis
from redis.commands.search.query import Query
from redisvl.query import AggregateHybridQuery

from vecmirror.query.checks import Target

DISTANCE = "vector_distance"  # what RedisVL names the distance its queries compute
TEXT_SCORER = "BM25STD"  # the fused mode's text relevance, on either path
_QUERY_DIALECT = 2


def scored_knn(hybrid: AggregateHybridQuery, k: int) -> Query:
    """The fused query as an FT.SEARCH: the same `text filter=>[KNN k …]` query, whose text score
    (WITHSCORES, same scorer) is the `__score` FT.AGGREGATE's ADDSCORES gives, and its distance."""
    query_string = str(hybrid.build_args()[0])
    return (
        Query(query_string)
        .scorer(TEXT_SCORER)
        .with_scores()
        .return_fields(DISTANCE)
        .paging(0, k)
        .dialect(_QUERY_DIALECT)
    )


def fused_rows(docs: Sequence[Any], text_weight: float) -> list[dict[str, Any]]:
    """The hits of `scored_knn`, best first, scored as AggregateHybridQuery's APPLY steps score them:
    text_weight·text score + (1 - text_weight)·(2 - distance)/2."""
    rows = [
        {
            "id": str(doc.id),
            DISTANCE: getattr(doc, DISTANCE),
            "hybrid_score": _fused(float(doc.score), float(getattr(doc, DISTANCE)), text_weight),
        }
        for doc in docs
    ]
    return sorted(rows, key=lambda row: -float(row["hybrid_score"]))


def _fused(text_score: float, distance: float, text_weight: float) -> float:
    return text_weight * text_score + (1.0 - text_weight) * (2.0 - distance) / 2.0


async def with_fields(
    client: redis.Redis, target: Target, rows: Sequence[dict[str, Any]], fields: Sequence[str]
) -> list[dict[str, Any]]:
    """The rows (search hits with an `id`), in order, each with its document's `fields` as a search
    would have returned them. A hit whose document was deleted since the search is dropped, as a
    search that read it would not have found it."""
    if not rows:
        return []
    reads = [_Read(target, fields, str(row["id"])) for row in rows]
    async with client.pipeline(transaction=False) as pipe:
        for read in reads:
            read.queue(pipe)
        replies = iter(await pipe.execute())
    found = [(row, read.values(replies)) for row, read in zip(rows, reads, strict=True)]
    return [{**row, **values} for row, values in found if values is not None]


class _Read:
    """The commands reading one document's fields, and what they answer as RETURN would."""

    def __init__(self, target: Target, fields: Sequence[str], key: str) -> None:
        self.key = key
        self.is_json = target.is_json
        self.names = list(fields)
        self.at = [_location(target, name) for name in self.names]

    def queue(self, pipe: Any) -> None:
        pipe.exists(self.key)
        if not self.names:
            return
        if self.is_json:
            pipe.execute_command("JSON.GET", self.key, *self.at)
        else:
            pipe.hmget(self.key, self.at)

    def values(self, replies: Any) -> dict[str, Any] | None:
        """The fields by name (those the document has), or None where the document is gone."""
        exists = int(next(replies))
        read = next(replies) if self.names else None
        if not exists:
            return None
        found = _json_values(read, self.at) if self.is_json else list(read or [])
        return {name: value for name, value in zip(self.names, found, strict=True) if value is not None}


def _location(target: Target, name: str) -> str:
    """A hash field's name; a JSON field's path, or the array's own path for a field over an
    array (the whole array, as the search returns it: results.array_paths)."""
    if not target.is_json:
        return name
    field = target.mirror.index.fields[name]
    return target.array_paths.get(name) or str(getattr(field, "path", None) or f"$.{name}")


def _json_values(reply: Any, paths: Sequence[str]) -> list[str | None]:
    """JSON.GET of several paths answers {path: [matches]}, of one path its [matches]: each path's
    first match, as RETURN gives it (a string as is, anything else as JSON text); None for none."""
    if reply is None:
        return [None] * len(paths)
    parsed = json.loads(reply)
    by_path = parsed if len(paths) > 1 else {paths[0]: parsed}
    return [_as_returned(by_path.get(path) or []) for path in paths]


def _as_returned(matches: list[Any]) -> str | None:
    if not matches or matches[0] is None:
        return None
    value = matches[0]
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


async def fields_and_chunks(
    client: redis.Redis, target: Target, keys: Sequence[str], fields: Sequence[str], chunks_path: str
) -> list[tuple[dict[str, Any], list[dict[str, Any]]] | None]:
    """A chunked mirror's hits read whole, each with one JSON.GET: its `fields` as a search returns
    them and its chunks, from one state of the document (the search's own fields may be older than
    the chunks read after it). None where the document is gone."""
    paths = [_location(target, name) for name in fields]
    async with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.execute_command("JSON.GET", key, *paths, chunks_path)
        replies = await pipe.execute()
    read: list[tuple[dict[str, Any], list[dict[str, Any]]] | None] = []
    for reply in replies:
        if reply is None:
            read.append(None)
            continue
        parsed = json.loads(reply)  # several paths: {path: [matches]}; one: its [matches]
        by_path = parsed if paths else {chunks_path: parsed}
        values = [_as_returned(by_path.get(path) or []) for path in paths]
        chunks = (by_path.get(chunks_path) or [[]])[0]
        found = {name: value for name, value in zip(fields, values, strict=True) if value is not None}
        read.append((found, chunks if isinstance(chunks, list) else []))
    return read
