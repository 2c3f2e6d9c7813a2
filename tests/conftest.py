"""Shared fixtures: real servers (the embedded stack unless VECMIRROR_TEST_*_URL point elsewhere), a
fresh database and an empty Redis per test, Redis OSS clusters (one node, three masters) started only
for the tests that ask for them, and the real model loaded once per session."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis
import yaml

from helpers import stack_directory
from vecmirror.config import DEFAULT_MODEL, Config, ModelSpec, parse_config
from vecmirror.pipeline.embedder import Embedder, load_embedder
from vecmirror.settings import Settings
from vecmirror.stack import StackUrls, cluster_down, cluster_up, stack_down, stack_up

os.environ.setdefault("HF_HUB_OFFLINE", "1")
_database_numbers = itertools.count()


@pytest.fixture(scope="session")
def servers() -> Iterator[StackUrls]:
    external_db = os.environ.get("VECMIRROR_TEST_DATABASE_URL")
    external_redis = os.environ.get("VECMIRROR_TEST_REDIS_URL")
    if external_db and external_redis:
        yield StackUrls(external_db, external_redis)
        return
    with stack_directory() as directory:
        try:
            yield stack_up(directory)
        finally:
            stack_down(directory)


@pytest.fixture
def stack_dir() -> Iterator[Path]:
    """A directory for servers a test starts itself (see helpers.stack_directory)."""
    with stack_directory() as directory:
        yield directory


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture
def own_stack() -> Iterator[tuple[Path, StackUrls]]:
    """Servers of the test's own, for a test that stops and restarts them."""
    with stack_directory() as directory:
        try:
            yield directory, stack_up(directory)
        finally:
            stack_down(directory)


@pytest.fixture
async def database_url(servers: StackUrls) -> AsyncIterator[str]:
    """A database of its own for each test, dropped afterwards."""
    name = f"vecmirror_test_{os.getpid()}_{next(_database_numbers)}"
    admin = await asyncpg.connect(servers.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield with_database(servers.database_url, name)
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def redis_url(servers: StackUrls) -> Iterator[str]:
    """An empty Redis (FLUSHALL also drops every index)."""
    client = redis.Redis.from_url(servers.redis_url)
    client.flushall()
    client.close()
    yield servers.redis_url


class Cluster(NamedTuple):
    url: str  # the URL vecmirror is given: one node's, a cluster client finds the others
    node_urls: list[str]  # each master's own URL, in slot order: a plain client there sees its keys only


def _cluster(nodes: int) -> Iterator[Cluster]:
    external = os.environ.get(f"VECMIRROR_TEST_REDIS_CLUSTER{nodes}_URL")
    if external:
        yield Cluster(external, master_urls(external))
        return
    with stack_directory() as directory:
        try:
            url = cluster_up(directory, nodes)
            yield Cluster(url, master_urls(url))
        finally:
            cluster_down(directory)


def master_urls(url: str) -> list[str]:
    """The URL of each master of the cluster that `url` reaches, in slot order (CLUSTER SLOTS)."""
    client = redis.Redis.from_url(url)
    try:
        ranges = client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
    finally:
        client.close()
    masters = dict.fromkeys((_text(host), int(port)) for _, _, (host, port, *_), *_ in sorted(ranges))
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    prefix = f"{credentials}@" if credentials else ""
    return [urlunsplit(parts._replace(netloc=f"{prefix}{host}:{port}")) for host, port in masters]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _emptied(cluster: Cluster) -> str:
    # Each master on its own: a cluster client sends FLUSHALL to one node. FLUSHALL drops a node's
    # indexes too (without the coordinator each node holds its own copy of every index definition).
    for node_url in cluster.node_urls:
        client = redis.Redis.from_url(node_url)
        try:
            client.flushall()
        finally:
            client.close()
    return cluster.url


@pytest.fixture(scope="session")
def cluster1() -> Iterator[Cluster]:
    """A one-node Redis OSS cluster owning every slot: like a proxy endpoint (Redis Cloud, Redis
    Software, Azure Managed Redis), it refuses a script or MULTI whose keys span slots, and it searches
    everything (VECMIRROR_TEST_REDIS_CLUSTER1_URL points elsewhere)."""
    yield from _cluster(1)


@pytest.fixture(scope="session")
def cluster3() -> Iterator[Cluster]:
    """Three masters, slots split evenly (VECMIRROR_TEST_REDIS_CLUSTER3_URL points elsewhere). This
    build's search module has no coordinator: a search sees only the keys of the node it runs on."""
    yield from _cluster(3)


@pytest.fixture
def cluster1_url(cluster1: Cluster) -> str:
    """The one-node cluster, emptied (keys and indexes) for this test."""
    return _emptied(cluster1)


@pytest.fixture
def cluster3_url(cluster3: Cluster) -> str:
    """The three-master cluster, every node emptied (keys and indexes) for this test."""
    return _emptied(cluster3)


@pytest.fixture
def cluster3_nodes(cluster3: Cluster, cluster3_url: str) -> list[str]:  # noqa: ARG001 (empties them)
    """The three masters' own URLs, in slot order, emptied like cluster3_url."""
    return cluster3.node_urls


@pytest.fixture
def own_cluster3(stack_dir: Path) -> Iterator[tuple[Path, Cluster]]:
    """Three masters of the test's own, for a test that stops and starts nodes (stack.stop_cluster_node,
    stack.start_cluster_node with the directory); stopped afterwards."""
    try:
        url = cluster_up(stack_dir, 3)
        yield stack_dir, Cluster(url, master_urls(url))
    finally:
        cluster_down(stack_dir)


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=False)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The default model on its default backend, as `vecmirror run` loads it (the ONNX export is
    made in, or read from, the same cache the CLI subprocesses use)."""
    return load_embedder(ModelSpec(DEFAULT_MODEL), Settings())


@pytest.fixture(scope="session")
def minilm_256(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second model with other dims, made offline: all-MiniLM-L6-v2 then a fixed random projection
    to 256 dims (and Normalize), saved as a sentence-transformers folder. For model and dims
    changes; its vectors are what this folder makes, nothing more."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    from vecmirror.pipeline.embedder import resolve_model

    base = SentenceTransformer(resolve_model(DEFAULT_MODEL), device="cpu")
    torch.manual_seed(256)
    projection = Dense(384, 256, bias=False, activation_function=torch.nn.Identity())
    kept = [module for module in base if not isinstance(module, Normalize)]
    directory = tmp_path_factory.mktemp("models") / "minilm-256"
    SentenceTransformer(modules=[*kept, projection, Normalize()], device="cpu").save(str(directory))
    return directory


@pytest.fixture
def embedder_factory(embedder: Embedder) -> Callable[[ModelSpec], Embedder]:
    def load(spec: ModelSpec) -> Embedder:
        assert spec == ModelSpec(DEFAULT_MODEL)  # the default model on the default backend
        return embedder

    return load


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[list[dict[str, Any]]], tuple[Path, Config]]:
    def write(mirrors: list[dict[str, Any]]) -> tuple[Path, Config]:
        path = tmp_path / "mirrors.yaml"
        raw = {"mirrors": mirrors}
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path, parse_config(raw)

    return write


@pytest.fixture
def settings_for(database_url: str, redis_url: str) -> Callable[..., Settings]:
    def make(config_path: Path, **overrides: Any) -> Settings:
        # Failing rows are retried after 10 ms, not 5 s: tests with poison rows drain in seconds.
        # tests/integration/test_faults_in_process.py checks the attempts and the backoff itself.
        overrides.setdefault("row_retry_backoff", 0.01)
        return Settings(database_url=database_url, redis_url=redis_url, config=config_path, **overrides)

    return make


@pytest.fixture
def cli_env(database_url: str, redis_url: str) -> dict[str, str]:
    """Environment for running the `vecmirror` CLI as a subprocess against this test's servers."""
    return {
        **os.environ,
        "VECMIRROR_DATABASE_URL": database_url,
        "VECMIRROR_REDIS_URL": redis_url,
        "VECMIRROR_LOG_FORMAT": "json",
        "VECMIRROR_ROW_RETRY_BACKOFF": "0.01",
        "HF_HUB_OFFLINE": "1",
    }
