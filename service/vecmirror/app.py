"""The composition root: settings + config → connections, checked tables and indexes, workers.

Everything that can be checked before the first change is processed is checked here, so a wrong
config or a mismatching server stops start-up with a message instead of failing rows later.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
import redis.asyncio as redis
import structlog

from vecmirror.boundary import require_query_engine, translated
from vecmirror.config import Config, MirrorConfig, ModelSpec
from vecmirror.connections import connect_redis
from vecmirror.errors import NotMigratedError, StartupError
from vecmirror.index.manage import check_eviction_policy
from vecmirror.ops.metrics import Metrics
from vecmirror.pipeline.embedder import Embedder, EmbedderFactory, default_embedder_factory
from vecmirror.run.sync import MirrorSync, SyncOptions
from vecmirror.run.worker import BatchCallback, Worker
from vecmirror.settings import Settings
from vecmirror.sink.versioned import SupersededError
from vecmirror.sink.writer import RedisSink
from vecmirror.source import Connection
from vecmirror.source.changes import RetryPolicy
from vecmirror.source.migrate import bundled_migrations
from vecmirror.source.session import SESSION_SETTINGS, prepare_connection
from vecmirror.source.sql import QUERIES
from vecmirror.source.tables import SourceTable, inspect_table

log = structlog.get_logger(__name__)
# Beside the lanes' connections: the metrics sampler, readiness checks and the count check.
POOL_SPARE_CONNECTIONS = 2


@dataclass
class App:
    settings: Settings
    config: Config
    pool: asyncpg.Pool
    redis: redis.Redis
    syncs: list[MirrorSync]
    embedders: dict[ModelSpec, Embedder]

    def worker(self, on_batch: BatchCallback | None = None, metrics: Metrics | None = None) -> Worker:
        return Worker(
            self.pool,
            self.syncs,
            backfill_page=self.settings.backfill_batch_size,
            on_batch=on_batch,
            error_backoff=self.settings.error_backoff,
            metrics=metrics,
            claim_timeout=self.settings.claim_timeout,
            batches_in_flight=self.settings.batches_in_flight,
        )


@asynccontextmanager
async def redis_client(settings: Settings) -> AsyncIterator[redis.Redis]:
    """The Redis of the settings: a cluster client where it runs in cluster mode (connections.py)."""
    with translated(settings):  # an unreachable server: one named error
        client = await connect_redis(settings)
    try:
        yield client
    finally:
        await client.aclose()


@asynccontextmanager
async def open_app(
    settings: Settings, config: Config, embedder_factory: EmbedderFactory | None = None
) -> AsyncIterator[App]:
    with translated(settings):  # a refused login or an unreachable server: one named error
        pool = await asyncpg.create_pool(
            settings.require_database_url(),
            min_size=1,
            max_size=settings.batches_in_flight + POOL_SPARE_CONNECTIONS,
            server_settings=session_settings(settings),
            init=prepare_connection,
        )
    try:
        async with redis_client(settings) as client:
            json_storage = any(m.storage == "json" for m in config.mirrors)
            with translated(settings):
                await require_query_engine(client, json_storage=json_storage)
            app = await _build(
                settings, config, pool, client, embedder_factory or default_embedder_factory(settings)
            )
            yield app
    finally:
        await pool.close()


def session_settings(settings: Settings) -> dict[str, str]:
    """A claim lives in a transaction that is idle while the model runs; the worker pings it between
    model calls, so only a frozen or cut-off worker stays idle past the claim timeout, and Postgres
    then ends its session, releasing its changes to the other workers."""
    return {
        **SESSION_SETTINGS,
        "application_name": "vecmirror",
        "idle_in_transaction_session_timeout": str(int(settings.claim_timeout * 1000)),
    }


def sync_options(settings: Settings) -> SyncOptions:
    return SyncOptions(
        batch_size=settings.batch_size,
        max_batch_size=max(settings.batch_size, settings.max_batch_size),
        batch_target_seconds=settings.batch_target_seconds,
        embed_batch_size=settings.embed_batch_size,
        max_text_length=settings.max_text_length,
        retry=RetryPolicy(settings.row_max_attempts, settings.row_retry_backoff),
    )


async def _build(
    settings: Settings, config: Config, pool: asyncpg.Pool, client: redis.Redis, factory: EmbedderFactory
) -> App:
    async with pool.acquire() as conn:
        await check_migrated(conn, config)  # before the models load: seconds to say "migrate first"
    embedders = load_embedders(config, factory)
    syncs = []
    async with pool.acquire() as conn:
        for mirror in config.mirrors:
            embedder = embedders.get(mirror.embed.spec) if mirror.embed else None
            sink = RedisSink(
                client, mirror, tombstone_ttl=settings.tombstone_ttl, config_lease=settings.config_lease
            )
            table = await _inspect_or_defer(conn, mirror)
            syncs.append(MirrorSync(mirror, table, sink, embedder, sync_options(settings)))
    await check_eviction_policy(client)
    for sync in syncs:
        try:
            await sync.claim_config()
        except SupersededError as exc:  # an old worker (re)started during a rolling update
            log.warning("mirror_superseded", mirror=sync.name, error=exc.problem)
            continue  # its index is left alone; the worker pauses the mirror and asks again
        async with pool.acquire() as conn:
            await sync.prepare_index(conn)
    return App(settings, config, pool, client, syncs, embedders)


async def _inspect_or_defer(conn: Connection, mirror: MirrorConfig) -> SourceTable | None:
    """A table that fails its checks is that mirror's trouble, not the others': the worker pauses
    the mirror, names the problem and checks again with backoff (None: not checked yet)."""
    try:
        return await inspect_table(conn, mirror)
    except StartupError as exc:
        log.error("mirror_check_failed", mirror=mirror.name, error=str(exc))
        return None


def load_embedders(config: Config, factory: EmbedderFactory) -> dict[ModelSpec, Embedder]:
    """One model instance per distinct model and backend, checked against every field it feeds."""
    embedders: dict[ModelSpec, Embedder] = {}
    for mirror in config.mirrors:
        if mirror.embed is None:
            continue
        if mirror.embed.spec not in embedders:
            embedders[mirror.embed.spec] = factory(mirror.embed.spec)
        check_dimension(mirror, embedders[mirror.embed.spec])
    return embedders


def check_dimension(mirror: MirrorConfig, embedder: Embedder) -> None:
    field = mirror.vector_field
    assert field is not None and mirror.embed is not None
    dims = int(field.attrs.dims)
    if embedder.dimension != dims:
        raise StartupError(
            f"mirror {mirror.name!r}: embed.model {mirror.embed.model!r} outputs {embedder.dimension}-"
            f"dimensional vectors but index.fields.{field.name}.attrs.dims is {dims}"
        )


async def check_migrated(conn: Connection, config: Config) -> None:
    if not await conn.fetchval("SELECT to_regclass('vecmirror.mirrors_v1') IS NOT NULL"):
        raise NotMigratedError("the vecmirror schema is missing: run `vecmirror migrate` first")
    applied = {r["version"] for r in await conn.fetch(QUERIES["applied_migrations"])}
    missing = [f"{m.version:04d}_{m.name}" for m in bundled_migrations() if m.version not in applied]
    if missing:
        raise NotMigratedError(
            f"the vecmirror schema lacks {', '.join(missing)}: run `vecmirror migrate` (it also "
            "updates every mirror's capture function)"
        )
    installed = {r["name"]: r for r in await conn.fetch(QUERIES["installed_mirrors"])}
    for mirror in config.mirrors:
        row = installed.get(mirror.name)
        if row is None or (row["table_schema"], row["table_name"]) != (mirror.schema_name, mirror.table_name):
            raise NotMigratedError(
                f"mirror {mirror.name!r}: its triggers on {mirror.table} are not installed: "
                "run `vecmirror migrate` first"
            )
