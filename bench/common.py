"""What every bench script shares: a throw-away embedded stack, a fresh database per measurement,
and small timing helpers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import numpy as np
import redis.asyncio as redis
from pydantic import SecretStr

from vecmirror.commands import migrate_command
from vecmirror.config import DEFAULT_MODEL, Config, ModelSpec, parse_config
from vecmirror.logging import configure_logging
from vecmirror.pipeline.embedder import Embedder, load_embedder
from vecmirror.settings import Settings
from vecmirror.stack import StackUrls, stack_down, stack_up

T = TypeVar("T")


def run_bench(
    description: str, default_rows: int, measure: Callable[[StackUrls, int], Coroutine[Any, Any, None]]
) -> None:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rows", type=int, default=default_rows)
    args = parser.parse_args()
    with temporary_stack() as urls:
        asyncio.run(measure(urls, args.rows))


@contextlib.contextmanager
def temporary_stack() -> Iterator[StackUrls]:
    """Embedded Postgres and Redis in a temporary directory, stopped whatever happens. The worker's
    per-batch `batch_synced` lines would drown the bench's output: only warnings are logged."""
    configure_logging("console", "error")
    directory = Path(tempfile.mkdtemp(prefix="vecmirror-bench-"))
    try:
        yield stack_up(directory)
    finally:
        stack_down(directory)
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class Phase:
    """One measurement's own database, its mirrors migrated, and clients to both servers."""

    settings: Settings
    config: Config
    conn: asyncpg.Connection
    redis: redis.Redis


@contextlib.asynccontextmanager
async def phase(
    urls: StackUrls,
    name: str,
    tables: dict[str, str],
    mirrors: Sequence[dict[str, Any]],
    before_migrate: Callable[[asyncpg.Connection], Awaitable[object]] | None = None,
) -> AsyncIterator[Phase]:
    """A fresh database `bench_<name>` holding `tables` (name → CREATE TABLE with a {table}
    placeholder), an empty Redis, then `before_migrate` (rows that predate the mirrors), then
    `vecmirror migrate`. Measurements never see each other's queues, triggers or documents."""
    database_url = await _fresh_database(urls.database_url, f"bench_{name}")
    client = redis.Redis.from_url(urls.redis_url)
    await client.flushall()
    conn = await asyncpg.connect(database_url)
    try:
        for table, ddl in tables.items():
            await conn.execute(ddl.format(table=table))
        if before_migrate is not None:
            await before_migrate(conn)
        settings = Settings(database_url=SecretStr(database_url), redis_url=SecretStr(urls.redis_url))
        config = parse_config({"mirrors": list(mirrors)})
        await migrate_command(settings, config)
        yield Phase(settings, config, conn, client)
    finally:
        await conn.close()
        await client.aclose()


async def _fresh_database(server_url: str, name: str) -> str:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def default_embedder() -> Embedder:
    """The default model on the default backend for this machine, loaded as `vecmirror run` loads
    it (on a CPU the ONNX export, made in or read from VECMIRROR_MODEL_CACHE)."""
    return load_embedder(ModelSpec(DEFAULT_MODEL), Settings())


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Stopwatch:
    """Adds up the seconds spent inside `with stopwatch:` blocks."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0

    def __enter__(self) -> Stopwatch:
        self._started = time.perf_counter()
        return self

    def __exit__(self, *_: object) -> None:
        self.seconds += time.perf_counter() - self._started


def percentiles(values: Sequence[float], *quantiles: float) -> list[float]:
    """Linear-interpolated percentiles (0..100); NaN for no values."""
    if not values:
        return [float("nan")] * len(quantiles)
    return [float(v) for v in np.percentile(np.asarray(values, dtype=np.float64), quantiles)]
