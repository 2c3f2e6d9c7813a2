"""Queries on a one-node Redis cluster give what the same mirror gives in a standalone Redis: the same
hits, fields, distances and scores, in every query mode, HASH and JSON.

This search module (2.10, no coordinator) answers nil for every document field a search returns in
cluster mode (RediSearch issue #5034); vecmirror reads the hits' fields by key there (query/by_key.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest

from conftest import with_database
from helpers import sync_once
from processes import vecmirror
from vecmirror.commands import migrate_command
from vecmirror.config import Config, ModelSpec
from vecmirror.pipeline.embedder import Embedder
from vecmirror.query import Hit, MirrorSearch, num, tag, text
from vecmirror.query.by_key import with_fields
from vecmirror.query.checks import target_of
from vecmirror.settings import Settings
from vecmirror.sink.cluster import PartialSearchError, is_cluster
from vecmirror.stack import StackUrls

ROWS, DIMS = 24, 4
GENRES = ["pets", "farm", "space"]
TABLE = """
CREATE TABLE things (
    id integer PRIMARY KEY,
    title text NOT NULL,
    genre text,
    price numeric,
    tags text[],
    v real[] NOT NULL
)
"""
VECTOR = {"algorithm": "flat", "dims": DIMS, "distance_metric": "l2"}
MIRRORS: list[dict[str, Any]] = [
    {
        "name": "hashes",
        "table": "public.things",
        "vector_column": "v",
        "index": {
            "index": {"name": "hashes_idx", "prefix": "h", "storage_type": "hash"},
            "fields": [
                {"name": "title", "type": "text"},
                {"name": "genre", "type": "tag"},
                {"name": "price", "type": "numeric"},
                {"name": "v", "type": "vector", "attrs": VECTOR},
            ],
        },
    },
    {
        "name": "jsons",
        "table": "public.things",
        "vector_column": "v",
        "index": {
            "index": {"name": "jsons_idx", "prefix": "j", "storage_type": "json"},
            "fields": [
                {"name": "title", "type": "text", "path": "$.title"},
                {"name": "genre", "type": "tag", "path": "$.genre"},
                {"name": "price", "type": "numeric", "path": "$.price"},
                {"name": "tags", "type": "tag", "path": "$.tags[*]"},
                {"name": "v", "type": "vector", "attrs": {**VECTOR, "algorithm": "hnsw"}},
            ],
        },
    },
]
QUERY = [0.1, -0.2, 0.3, 0.05]
Search = Callable[[MirrorSearch, str], Awaitable[list[Hit]]]
SEARCHES: dict[str, Search] = {
    "knn": lambda s, m: s.knn(m, vector=QUERY, k=6),
    "knn_paged": lambda s, m: s.knn(m, vector=QUERY, k=4, offset=3),
    "knn_filtered": lambda s, m: s.knn(m, vector=QUERY, k=5, filter=tag("genre").any_of("pets", "space")),
    "knn_raw_filter": lambda s, m: s.knn(m, vector=QUERY, k=5, filter="@price:[10 60] -@genre:{farm}"),
    "knn_some_fields": lambda s, m: s.knn(m, vector=QUERY, k=3, return_fields=["price"]),
    "range": lambda s, m: s.range(m, vector=QUERY, radius=1.5),
    "range_filtered": lambda s, m: s.range(m, vector=QUERY, radius=2.0, filter=num("price").lt(50)),
    "range_text_filter": lambda s, m: s.range(
        m, vector=QUERY, radius=9.0, filter=text("title").matches("red")
    ),
    "hybrid": lambda s, m: s.hybrid(m, text="red box", vector=QUERY, k=6, text_weight=0.4),
    "hybrid_filtered": lambda s, m: s.hybrid(
        m, text="blue", vector=QUERY, k=5, filter=tag("genre").any_of("farm"), return_fields=["title"]
    ),
}


@dataclass
class Mirrored:
    standalone: Settings
    cluster: Settings
    config: Config
    path: Path


def _no_model(spec: ModelSpec) -> Embedder:
    raise AssertionError(f"no model is loaded for vector queries, asked for {spec}")


@pytest.fixture
async def mirrored(
    servers: StackUrls, database_url: str, redis_url: str, cluster1_url: str, write_config: Any
) -> AsyncIterator[Mirrored]:
    """The same rows mirrored into the standalone Redis and the one-node cluster, each from a
    database of its own (a mirror's progress is kept in its database)."""
    path, config = write_config(MIRRORS)
    second = with_database(servers.database_url, "vecmirror_query_cluster")
    admin = await asyncpg.connect(servers.database_url)
    try:
        await admin.execute("DROP DATABASE IF EXISTS vecmirror_query_cluster WITH (FORCE)")
        await admin.execute("CREATE DATABASE vecmirror_query_cluster")
        targets = [(database_url, redis_url), (second, cluster1_url)]
        standalone, cluster = [await _synced(path, config, db, url) for db, url in targets]
        yield Mirrored(standalone, cluster, config, path)
    finally:
        await admin.execute("DROP DATABASE IF EXISTS vecmirror_query_cluster WITH (FORCE)")
        await admin.close()


async def _synced(path: Path, config: Config, database_url: str, redis_url: str) -> Settings:
    settings = Settings(database_url=database_url, redis_url=redis_url, config=path, row_retry_backoff=0.01)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(TABLE)
        await conn.executemany("INSERT INTO things VALUES ($1, $2, $3, $4, $5, $6)", _rows())
    finally:
        await conn.close()
    await migrate_command(settings, config)
    await sync_once(settings, config)
    return settings


def _rows() -> list[tuple[Any, ...]]:
    rng = np.random.default_rng(13)
    words = ["red", "blue", "box", "small", "cat"]
    rows = []
    for n in range(ROWS):
        title = " ".join(rng.choice(words, size=2 + n % 3))
        tags = None if n % 5 == 0 else [str(t) for t in rng.choice(words, size=1 + n % 3, replace=False)]
        price = None if n % 7 == 0 else round(float(rng.uniform(0, 100)), 2)
        vector = [float(x) for x in rng.standard_normal(DIMS).astype(np.float32)]
        rows.append((n, title, GENRES[n % 3], price, tags, vector))
    return rows


@pytest.mark.parametrize("mirror", ["hashes", "jsons"])
async def test_every_query_mode_answers_as_in_a_standalone_redis(mirrored: Mirrored, mirror: str) -> None:
    answers: list[dict[str, list[dict[str, Any]]]] = []
    for settings in (mirrored.standalone, mirrored.cluster):
        async with MirrorSearch.open(settings, mirrored.config, _no_model) as search:
            answers.append({name: _shown(await run(search, mirror)) for name, run in SEARCHES.items()})
    standalone, cluster = answers
    assert all(standalone.values()), {name: len(hits) for name, hits in standalone.items()}
    for name, hits in standalone.items():
        if name.startswith("hybrid"):  # scored by Redis there, here from the same text score and distance
            _approx_scores(hits, cluster[name])
        assert cluster[name] == hits, name
    assert all(h["fields"] for h in standalone["knn"])


async def test_a_plain_client_to_a_cluster_node_reads_the_fields_by_key_too(mirrored: Mirrored) -> None:
    """`?cluster=false` on a cluster node's URL (or a user without cluster commands) gives a plain
    client; the search still returns no fields there, so they are read by key as on a cluster client."""
    plain = Settings(redis_url=_with_cluster_false(mirrored.cluster))
    answers = []
    for settings in (mirrored.standalone, plain):
        async with MirrorSearch.open(settings, mirrored.config, _no_model) as search:
            assert not is_cluster(search._redis)
            answers.append({name: _shown(await run(search, "hashes")) for name, run in SEARCHES.items()})
    standalone, cluster = answers
    for name, hits in standalone.items():
        if name.startswith("hybrid"):
            _approx_scores(hits, cluster[name])
        assert cluster[name] == hits, name
    assert cluster["knn"] and all(h["fields"] for h in cluster["knn"])


def _with_cluster_false(settings: Settings) -> str:
    url = settings.require_redis_url()
    return f"{url}{'&' if '?' in url else '?'}cluster=false"


@pytest.mark.parametrize("mirror", ["hashes", "jsons"])
async def test_vectors_come_back_as_in_a_standalone_redis(mirrored: Mirrored, mirror: str) -> None:
    found = []
    for settings in (mirrored.standalone, mirrored.cluster):
        async with MirrorSearch.open(settings, mirrored.config, _no_model) as search:
            found.append(await search.knn(mirror, vector=QUERY, k=4, with_vectors=True))
    standalone, cluster = found
    assert [h.as_dict() for h in cluster] == [h.as_dict() for h in standalone]
    assert all(h.vector is not None and h.vector.shape == (DIMS,) for h in cluster)


@pytest.mark.parametrize("mirror", ["hashes", "jsons"])
def test_the_cli_prints_the_hits_of_a_one_node_cluster(
    mirrored: Mirrored, cli_env: dict[str, str], mirror: str
) -> None:
    args = [
        "query",
        mirror,
        "--vector",
        json.dumps(QUERY),
        "--k",
        "3",
        "--config",
        str(mirrored.path),
        "--json",
    ]
    printed = []
    for settings in (mirrored.standalone, mirrored.cluster):
        url = settings.require_redis_url()
        env = {
            **cli_env,
            "VECMIRROR_REDIS_URL": url,
            "VECMIRROR_DATABASE_URL": settings.require_database_url(),
        }
        done = vecmirror(env, *args)
        assert done.returncode == 0, done.stderr
        printed.append(json.loads(done.stdout))
    standalone, cluster = printed
    assert len(cluster) == 3 and all("title" in hit for hit in cluster)
    assert cluster == standalone


async def test_a_hit_whose_document_is_gone_by_the_read_is_dropped(mirrored: Mirrored) -> None:
    async with MirrorSearch.open(mirrored.cluster, mirrored.config, _no_model) as search:
        hits = await search.knn("hashes", vector=QUERY, k=2, return_fields=["title"])
        client = search._redis
        assert is_cluster(client)
        rows = [{"id": hits[0].id, "vector_distance": "0.5"}, {"id": "h:gone", "vector_distance": "0.6"}]
        read = await with_fields(client, target_of(mirrored.config, "hashes"), rows, ["title"])
    assert read == [{**rows[0], "title": hits[0].fields["title"].encode()}]


@pytest.mark.parametrize("mode", ["knn", "range", "hybrid"])
async def test_each_mode_is_still_refused_where_each_shard_answers_alone(
    cluster3_url: str, write_config: Any, mode: str
) -> None:
    _, config = write_config(MIRRORS)
    async with MirrorSearch.open(Settings(redis_url=cluster3_url), config, _no_model) as search:
        with pytest.raises(PartialSearchError, match="no coordinator"):
            await SEARCHES[mode](search, "hashes")


def _shown(hits: list[Hit]) -> list[dict[str, Any]]:
    return [{"id": h.id, "distance": h.distance, "score": h.score, "fields": h.fields} for h in hits]


def _approx_scores(expected: list[dict[str, Any]], got: list[dict[str, Any]]) -> None:
    assert [h["score"] for h in got] == pytest.approx([h["score"] for h in expected], rel=1e-9)
    for want, have in zip(expected, got, strict=False):
        have["score"] = want["score"]
