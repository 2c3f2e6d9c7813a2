"""Reaching a sharded Redis (connections.py, sink/cluster.py) and what the commands do there: a
cluster found from any node's URL, keys listed and deleted per node and per slot, indexes listed on
every primary, a search refused where each shard would answer for itself, and a removed mirror's
keys of every naming dropped without a command over several slots."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis
import redis.asyncio as aredis

from vecmirror.boundary import RedisUnavailableError, require_query_engine, translated
from vecmirror.config import Config, ModelSpec, load_config
from vecmirror.connections import connect_redis
from vecmirror.index.manage import ensure_index
from vecmirror.pipeline.embedder import Embedder
from vecmirror.query.search import MirrorSearch
from vecmirror.settings import Settings
from vecmirror.sink import cluster
from vecmirror.sink.drop import Layout, MirrorData, drop
from vecmirror.sink.slots import slot_of
from vecmirror.sink.versioned import (
    guard_key,
    lease_keys,
    legacy_lease_keys,
    legacy_tombstone_key,
    slot_lease_key,
    tombstone_key,
)

KEYS = [f"doc:{n}" for n in range(300)]
MIRRORS = """
mirrors:
  - name: docs
    table: public.docs
    vector_column: embedding
    index:
      index: {name: docs_idx, prefix: doc, key_separator: ":", storage_type: hash}
      fields:
        - {name: title, type: text}
        - {name: embedding, type: vector, attrs: {dims: 4, algorithm: flat, distance_metric: cosine}}
"""


@asynccontextmanager
async def _client(url: str) -> AsyncIterator[aredis.Redis]:
    client = await connect_redis(Settings(redis_url=url))
    try:
        yield client
    finally:
        await client.aclose()


def _node_keys(node_urls: list[str]) -> list[set[str]]:
    found = []
    for url in node_urls:
        client = redis.Redis.from_url(url, decode_responses=True)
        try:
            found.append(set(client.scan_iter(count=1000)))
        finally:
            client.close()
    return found


def _config(tmp_path: Path) -> Config:
    path = tmp_path / "vecmirror.yaml"
    path.write_text(MIRRORS)
    return load_config(path)


def _no_model(spec: ModelSpec) -> Embedder:
    raise AssertionError(f"a vector query loads no model ({spec})")


async def test_any_nodes_url_reaches_the_whole_cluster(cluster3_url: str, cluster3_nodes: list[str]) -> None:
    async with _client(cluster3_url) as client:
        assert cluster.is_cluster(client)
        assert len(cluster.primaries(client)) == 3
        assert not await cluster.has_coordinator(client)  # this build's search module
        assert await cluster.shards_index_alone(client)
        async with client.pipeline(transaction=False) as pipe:
            for key in KEYS:
                pipe.set(key, "x")
            await pipe.execute()
        listed = {key async for key in cluster.scan_keys(client, "doc:*", 50)}
        assert listed == set(KEYS)
        assert all(len(keys) > 50 for keys in _node_keys(cluster3_nodes))  # spread over the three
        assert await cluster.get_many(client, KEYS[:40]) == [b"x"] * 40
        assert await cluster.unlink_keys(client, [*KEYS, "doc:absent"]) == len(KEYS)
    assert _node_keys(cluster3_nodes) == [set(), set(), set()]


async def test_a_one_node_cluster_is_a_cluster_that_searches_whole(cluster1_url: str) -> None:
    async with _client(cluster1_url) as client:
        assert cluster.is_cluster(client)
        assert not await cluster.shards_index_alone(client)
        await cluster.refuse_partial_search(client, "docs_idx")  # nothing to refuse
    async with _client(cluster1_url + "?cluster=false") as client:  # as a proxy endpoint is reached
        assert not cluster.is_cluster(client)
        assert await client.set("doc:1", "x")


async def test_indexes_are_listed_on_every_primary_and_a_missing_one_is_named(
    cluster3_url: str, tmp_path: Path
) -> None:
    config = _config(tmp_path)
    (mirror,) = config.mirrors
    async with _client(cluster3_url) as client:
        assert await cluster.primaries_lacking(client, "docs_idx") == [
            cluster.index_owner(client, "docs_idx")
        ]
        assert await ensure_index(client, mirror)
        assert await require_query_engine(client) == {"docs_idx"}
        assert await cluster.index_names(client) == {"docs_idx"}
        assert await cluster.primaries_lacking(client, "docs_idx") == []
        seen = await cluster.keys_the_index_sees(client, "docs_idx", KEYS)
        owner = cluster.index_owner(client, "docs_idx")
        assert 0 < len(seen) < len(KEYS)
        assert {client.get_node_from_key(k).name for k in seen} == {owner}  # type: ignore[attr-defined]


async def test_a_search_where_each_shard_answers_for_itself_is_refused(
    cluster3_url: str, tmp_path: Path
) -> None:
    config = _config(tmp_path)
    async with _client(cluster3_url) as client:
        await ensure_index(client, config.mirrors[0])
    async with MirrorSearch.open(Settings(redis_url=cluster3_url), config, _no_model) as search:
        with pytest.raises(cluster.PartialSearchError, match="no coordinator"):
            await search.knn("docs", vector=[0.1, 0.2, 0.3, 0.4])


async def test_a_cluster_out_of_reach_is_one_named_error() -> None:
    settings = Settings(redis_url="redis://127.0.0.1:1/0?cluster=true", redis_timeout=1)
    with pytest.raises(RedisUnavailableError, match=r"127\.0\.0\.1:1\b"), translated(settings):
        await connect_redis(settings)


async def test_a_removed_mirrors_keys_of_every_naming_go_slot_by_slot(
    cluster3_url: str, cluster3_nodes: list[str]
) -> None:
    documents = [f"doc:{n}" for n in range(50)]
    foreign = "doc:foreign"
    own = [
        *lease_keys("docs"),
        *legacy_lease_keys("docs"),
        *(guard_key("docs", slot_of(k)) for k in documents),
        *(slot_lease_key("docs", slot_of(k)) for k in documents),
        *(tombstone_key(f"doc:gone{n}") for n in range(20)),
        *(legacy_tombstone_key(f"doc:old{n}") for n in range(20)),
    ]
    async with _client(cluster3_url) as client:
        async with client.pipeline(transaction=False) as pipe:
            for key in documents:
                pipe.hset(key, mapping={"title": "t", "_vm_key": '["1"]'})
            pipe.hset(foreign, "title", "not vecmirror's")
            for key in own:
                pipe.set(key, "1")
            pipe.set("vecmirror:marker:docs", "1")
            pipe.set(tombstone_key("other:1"), "1")  # another prefix's: kept
            await pipe.execute()
        layout = Layout("docs_idx", ("doc",), ":", "hash")
        report = await drop(client, MirrorData("docs", None, True, layout=layout), [])
    assert report.documents == len(documents) and report.foreign == [foreign]
    left = set().union(*_node_keys(cluster3_nodes))
    assert left == {foreign, tombstone_key("other:1")}
