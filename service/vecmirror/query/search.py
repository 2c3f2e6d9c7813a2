"""KNN, filtered KNN, range and fused text+vector search over what vecmirror mirrors.

Queries use exactly what the writer used: the mirror's model, vector field, datatype and metric.
Every argument is checked before Redis is called; each error says what to fix. On a cluster the
search returns ids and distances only, and the fields are read by key (by_key.py says why).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, TypeVar

import asyncpg
import numpy as np
import redis.asyncio as redis
from redis.exceptions import RedisError, ResponseError
from redisvl.exceptions import RedisSearchError
from redisvl.index import AsyncSearchIndex
from redisvl.query import AggregateHybridQuery, VectorQuery, VectorRangeQuery

from vecmirror.config import Config, ModelSpec
from vecmirror.config.model import CHUNKS_PATH, chunk_vector_key
from vecmirror.connections import cluster_enabled, connect_redis
from vecmirror.errors import ConfigError, QueryError
from vecmirror.index.manage import index_info
from vecmirror.index.vectors import served_vector
from vecmirror.pipeline.embedder import Embedder, EmbedderFactory, default_embedder_factory
from vecmirror.query.by_key import TEXT_SCORER, fields_and_chunks, fused_rows, scored_knn, with_fields
from vecmirror.query.checks import Target, check_filter, check_return_fields, check_vector, target_of
from vecmirror.query.filters import Filter
from vecmirror.query.postgres import LazyPool
from vecmirror.query.results import Hit, decode_field, decode_vector, nearest_chunks, return_whole_arrays
from vecmirror.query.synced import SyncWait, wait_synced
from vecmirror.settings import Settings
from vecmirror.sink.cluster import is_cluster, refuse_partial_search

FilterArg = Filter | str | None
T = TypeVar("T")


class MirrorSearch:
    """Async search over one config's mirrors; models are loaded once, on first use. `postgres` (a
    pool, or a LazyPool opening one on first use) is read by `wait_synced` alone."""

    def __init__(
        self,
        config: Config,
        client: redis.Redis,
        embedder_factory: EmbedderFactory,
        postgres: asyncpg.Pool | LazyPool | None = None,
    ) -> None:
        self._config = config
        self._redis = client
        self._factory = embedder_factory
        self._postgres = postgres
        self._embedders: dict[ModelSpec, Embedder] = {}
        # Whether the search cannot return fields (by_key.py): known on a cluster client, asked of
        # the server on first use otherwise, as a plain client may reach a cluster node (?cluster=false).
        self._fields_by_key: bool | None = True if is_cluster(client) else None

    @classmethod
    @asynccontextmanager
    async def open(
        cls, settings: Settings, config: Config, embedder_factory: EmbedderFactory | None = None
    ) -> AsyncIterator[MirrorSearch]:
        client = await connect_redis(settings)
        postgres = LazyPool(settings)
        try:
            yield cls(config, client, embedder_factory or default_embedder_factory(settings), postgres)
        finally:
            await postgres.close()
            await client.aclose()

    async def wait_synced(self, mirror: str, keys: Sequence[object], timeout: float) -> bool:
        """Read-your-writes: True once every change of these rows committed before the call is in
        Redis (a search then sees it), False when `timeout` seconds passed first. A key is a value of
        the mirror's key column, or a tuple in key order for a composite key. Raises FailedRowError
        when one of the rows failed to become a document. Reads Postgres only (query/synced.py)."""
        return (await self.wait_synced_outcome(mirror, keys, timeout)).synced

    async def wait_synced_outcome(self, mirror: str, keys: Sequence[object], timeout: float) -> SyncWait:
        """`wait_synced`, telling how many keys still wait and why, where Postgres knows."""
        try:
            config = self._config.mirror(mirror)
        except ConfigError as exc:
            raise QueryError(str(exc.problems[0])) from exc
        if self._postgres is None:
            raise QueryError(
                "wait_synced reads Postgres: open the search with MirrorSearch.open(settings, ...), "
                "or pass it `postgres=` (an asyncpg pool)"
            )
        pool = await self._postgres.get() if isinstance(self._postgres, LazyPool) else self._postgres
        return await wait_synced(pool, config, keys, timeout)

    async def knn(
        self,
        mirror: str,
        *,
        text: str | None = None,
        vector: Sequence[float] | None = None,
        k: int = 10,
        filter: FilterArg = None,
        return_fields: Sequence[str] | None = None,
        ef_runtime: int | None = None,
        offset: int = 0,
        with_vectors: bool = False,
        chunks: bool = False,
    ) -> list[Hit]:
        """The `k` nearest documents after skipping `offset`, nearest first, among those `filter` keeps
        (of a chunked mirror: rows, each ranked by its nearest chunk; `chunks` lists them all)."""
        target = target_of(self._config, mirror)
        _check_counts(k=k, offset=offset)
        target.check_ef_runtime(ef_runtime)
        fields = check_return_fields(target, return_fields)
        kept = check_filter(target, filter)
        asked = await self._query_vector(target, text, vector)
        query = VectorQuery(
            vector=asked,
            vector_field_name=target.field.name,
            return_fields=await self._returned(fields),
            filter_expression=kept,
            num_results=offset + k,
            dtype=target.datatype,
            ef_runtime=ef_runtime,
        )
        query.paging(offset, k)
        hits = await self._run(target, query, fields, with_vectors)
        return await self._with_chunks(target, hits, asked, fields, every=chunks)

    async def range(
        self,
        mirror: str,
        *,
        radius: float,
        text: str | None = None,
        vector: Sequence[float] | None = None,
        epsilon: float | None = None,
        filter: FilterArg = None,
        limit: int = 100,
        return_fields: Sequence[str] | None = None,
        with_vectors: bool = False,
        chunks: bool = False,
    ) -> list[Hit]:
        """Every document within `radius` (in the metric's distance), nearest first, at most `limit`."""
        target = target_of(self._config, mirror)
        _check_counts(k=limit, offset=0)
        target.check_range(radius, epsilon)
        fields = check_return_fields(target, return_fields)
        kept = check_filter(target, filter)
        asked = await self._query_vector(target, text, vector)
        query = VectorRangeQuery(
            vector=asked,
            vector_field_name=target.field.name,
            return_fields=await self._returned(fields),
            filter_expression=kept,
            distance_threshold=radius,
            epsilon=epsilon,
            num_results=limit,
            dtype=target.datatype,
            sort_by="vector_distance",
        )
        hits = await self._run(target, query, fields, with_vectors)
        return await self._with_chunks(target, hits, asked, fields, every=chunks)

    async def hybrid(
        self,
        mirror: str,
        *,
        text: str,
        vector: Sequence[float] | None = None,
        k: int = 10,
        text_weight: float = 0.3,
        text_field: str | None = None,
        filter: FilterArg = None,
        return_fields: Sequence[str] | None = None,
        chunks: bool = False,
    ) -> list[Hit]:
        """Ranks by text_weight·BM25 relevance of `text` + (1 - text_weight)·vector similarity."""
        target = target_of(self._config, mirror)
        _check_counts(k=k, offset=0)
        if not 0.0 <= text_weight <= 1.0:
            raise QueryError(f"mirror {mirror!r}: text_weight must be between 0 and 1, not {text_weight}")
        fields = check_return_fields(target, return_fields)
        text_field_name = target.text_field(text_field)
        kept = check_filter(target, filter)
        asked = await self._query_vector(target, None if vector is not None else text, vector)
        query = AggregateHybridQuery(
            text=text,
            text_field_name=text_field_name,
            vector=asked,
            vector_field_name=target.field.name,
            filter_expression=kept,
            alpha=1.0 - text_weight,
            dtype=target.datatype,
            text_scorer=TEXT_SCORER,
            num_results=k,
            return_fields=await self._returned(fields),
            stopwords=None,
        )
        await refuse_partial_search(self._redis, target.mirror.index.index.name)
        index = AsyncSearchIndex(target.mirror.index, redis_client=self._redis)
        if await self._reads_fields_by_key():
            # FT.AGGREGATE answers nil rows there once it LOADs anything, even the key: FT.SEARCH
            # gives the same hits, with the text score and distance the fused score is made of.
            result = await _searched(target, index.search(scored_knn(query, k), query_params=query.params))
            rows = await with_fields(self._redis, target, fused_rows(result.docs, text_weight), fields)
        else:
            query.load("@__key")
            return_whole_arrays(query, target.array_paths)
            rows = await _searched(target, index.query(query))
        hits = [self._hit(target, row, fields, score=float(row["hybrid_score"])) for row in rows]
        return await self._with_chunks(target, hits, asked, fields, every=chunks)

    async def _with_chunks(
        self, target: Target, hits: list[Hit], asked: Sequence[float], fields: list[str], *, every: bool
    ) -> list[Hit]:
        """A chunked mirror's hits with their nearest chunk (its text, position and distance), or
        with every chunk, nearest first: the index ranks a row by its nearest chunk but says not
        which. Each hit is read again whole, so its fields and chunks are of one version of the
        row; a hit deleted since the search is dropped, as a later search would not find it."""
        if not target.mirror.chunked or not hits:
            return hits
        read = await fields_and_chunks(self._redis, target, [h.id for h in hits], fields, CHUNKS_PATH)
        # Where the answering index reads them: an online re-embedding moves them (index/rollout.py).
        served = served_vector(await index_info(self._redis, target.mirror.index.index.name))
        name = chunk_vector_key(served.at if served is not None else target.mirror.vector_at)
        query = np.asarray(asked, dtype=np.float64)
        definitions = target.mirror.index.fields
        found = []
        for hit, document in zip(hits, read, strict=True):
            if document is None:
                continue
            values, chunks = document
            decoded = {n: decode_field(definitions[n], v, is_json=True) for n, v in values.items()}
            found.append(
                replace(
                    hit, fields=decoded, **nearest_chunks(chunks, name, query, target.metric, every=every)
                )
            )
        return found

    async def _query_vector(
        self, target: Target, text: str | None, vector: Sequence[float] | None
    ) -> list[float]:
        if (text is None) == (vector is None):
            raise QueryError(
                f"mirror {target.mirror.name!r}: give either a text or a vector, not both or neither"
            )
        if vector is not None:
            return check_vector(target, vector)
        embed = target.mirror.embed
        if embed is None:
            raise QueryError(f"mirror {target.mirror.name!r} has no embed model: query it with a vector")
        if embed.spec not in self._embedders:
            self._embedders[embed.spec] = await asyncio.to_thread(self._factory, embed.spec)
        vectors = await asyncio.to_thread(self._embedders[embed.spec].embed, [text or ""])
        return [float(v) for v in vectors[0]]

    async def _reads_fields_by_key(self) -> bool:
        if self._fields_by_key is None:
            self._fields_by_key = await cluster_enabled(self._redis)
        return self._fields_by_key

    async def _returned(self, fields: list[str]) -> list[str]:
        """The fields the search itself returns: none where they are read by key afterwards."""
        return [] if await self._reads_fields_by_key() else fields

    async def _run(self, target: Target, query: Any, fields: list[str], with_vectors: bool) -> list[Hit]:
        index = AsyncSearchIndex(target.mirror.index, redis_client=self._redis)
        return_whole_arrays(query, target.array_paths)
        await refuse_partial_search(self._redis, target.mirror.index.index.name)
        rows: list[dict[str, Any]] = await _searched(target, index.query(query))
        if await self._reads_fields_by_key():
            rows = await with_fields(self._redis, target, rows, fields)
        hits = [self._hit(target, row, fields) for row in rows]
        return await self._attach_vectors(target, hits) if with_vectors else hits

    def _hit(self, target: Target, row: dict[str, Any], fields: list[str], score: float | None = None) -> Hit:
        distance = float(row["vector_distance"])
        definitions = target.mirror.index.fields
        values = {
            name: decode_field(definitions[name], row[name], is_json=target.is_json)
            for name in fields
            if name in row and name in definitions
        }
        key = str(row.get("id", row.get("__key")))
        return Hit(key, distance, target.score(distance) if score is None else score, values)

    async def _attach_vectors(self, target: Target, hits: list[Hit]) -> list[Hit]:
        # Where the index answering reads them: an online re-embedding moves them (index/rollout.py).
        served = served_vector(await index_info(self._redis, target.mirror.index.index.name))
        usual = (target.field.path or f"$.{target.field.name}") if target.is_json else target.field.name
        at = served.at if served is not None else usual
        async with self._redis.pipeline(transaction=False) as pipe:
            for hit in hits:
                if target.is_json:
                    pipe.execute_command("JSON.GET", hit.id, at)
                else:
                    pipe.hget(hit.id, at)
            replies = await pipe.execute()
        return [
            Hit(
                h.id,
                h.distance,
                h.score,
                h.fields,
                decode_vector(raw, target.datatype, is_json=target.is_json),
            )
            for h, raw in zip(hits, replies, strict=True)
        ]


def _check_counts(*, k: int, offset: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise QueryError(f"k/limit must be a whole number of at least 1, not {k!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise QueryError(f"offset must be a whole number of at least 0, not {offset!r}")


async def _searched(target: Target, search: Awaitable[T]) -> T:
    """What the search answers; a query Redis rejects (a filter its parser refuses, a range of
    words) is the caller's mistake, said in one line, not a traceback."""
    try:
        return await search
    except RedisSearchError as exc:
        cause = exc.__cause__
        if isinstance(cause, ResponseError):
            raise QueryError(f"mirror {target.mirror.name!r}: Redis rejected the query: {cause}") from exc
        if isinstance(cause, RedisError):
            raise cause from exc  # server trouble, named by the boundary like any other
        raise
