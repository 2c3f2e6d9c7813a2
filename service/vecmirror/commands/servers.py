"""What every command checks first: Postgres' login and schema, Redis' Query Engine, the mirrors named."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import redis.asyncio as redis
import structlog

from vecmirror.app import check_migrated
from vecmirror.boundary import (
    UnknownMirrorError,
    connect_postgres,
    require_query_engine,
    translated,
)
from vecmirror.config import Config, MirrorConfig
from vecmirror.connections import open_redis
from vecmirror.settings import Settings
from vecmirror.source import Connection

log = structlog.get_logger(__name__)


async def check_servers(settings: Settings, config: Config, *, postgres: bool = True) -> set[str]:
    """Before anything slow (a model load): Postgres takes the login and holds the migrated schema
    and every mirror's triggers, Redis takes its login and has the Query Engine. Returns the
    names of Redis' indexes."""
    if postgres:
        conn = await connect_postgres(settings)
        try:
            await check_migrated(conn, config)
        finally:
            await conn.close()
    async with open_redis(settings) as client:
        return await require_redis(client, config)


@asynccontextmanager
async def both_servers(settings: Settings, config: Config) -> AsyncIterator[tuple[Connection, redis.Redis]]:
    """A Postgres connection whose schema is current and a Redis client with the Query Engine, for
    the commands that read both; a server they cannot use is one error naming it."""
    with translated(settings):
        conn = await connect_postgres(settings)
        try:
            await check_migrated(conn, config)
            async with open_redis(settings) as client:
                await require_redis(client, config)
                yield conn, client
        finally:
            await conn.close()


async def require_redis(client: redis.Redis, config: Config) -> set[str]:
    return await require_query_engine(client, json_storage=any(m.storage == "json" for m in config.mirrors))


def mirrors_named(settings: Settings, config: Config, names: Sequence[str]) -> list[MirrorConfig]:
    """The mirrors a command names, checked before any server is touched."""
    known = {m.name: m for m in config.mirrors}
    for name in names:
        if name not in known:
            raise UnknownMirrorError(
                f"no mirror {name!r} in the mirrors file {settings.config} (its mirrors: {', '.join(known)})"
            )
    return [known[name] for name in names]
