"""Clients built from the settings, TLS included, in one place so every command connects alike.

Postgres needs nothing here: asyncpg reads TLS from the URL itself (`sslmode=verify-full`,
`sslrootcert=`, `sslcert=`, `sslkey=`), so `VECMIRROR_DATABASE_URL` carries it. Redis URLs carry no
certificate paths, so a `rediss://` URL takes them from the `VECMIRROR_REDIS_TLS_*` settings.

A sharded Redis is reached through any node's URL: `connect_redis` asks that node (`INFO cluster`)
and returns a cluster client where cluster mode is on. `?cluster=true` (RedisVL's spelling) skips
the question; `?cluster=false` forces a plain client, as a proxy endpoint (Redis Cloud, Redis
Software, Azure Managed Redis) needs: it looks standalone and routes every key itself. The cluster
client keeps the static type `redis.asyncio.Redis` (a `cast`): it answers the commands vecmirror
sends alike, and sink/cluster.py is where the two differ.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as redis
import structlog
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoPermissionError

from vecmirror.errors import ConfigError
from vecmirror.settings import Settings

log = structlog.get_logger(__name__)

TLS_SCHEME = "rediss"
CLUSTER_PARAMETER = "cluster"
_INVALID_URL = "VECMIRROR_REDIS_URL is not a valid redis://, rediss:// or unix:// URL"
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


async def connect_redis(settings: Settings) -> redis.Redis:
    """The async client for `VECMIRROR_REDIS_URL`: a cluster client (initialized) where the URL
    says `?cluster=true` or its node runs in cluster mode, else a plain one."""
    url, wanted = split_cluster_parameter(settings.require_redis_url())
    if wanted is False:
        return _plain_client(settings, url)
    if wanted is None:
        plain = _plain_client(settings, url)
        if not await cluster_enabled(plain):
            return plain
        await plain.aclose()
    cluster = _cluster_client(settings, url)
    try:
        await cluster.initialize()
    except BaseException:
        await cluster.aclose()
        raise
    return cast(redis.Redis, cluster)


@asynccontextmanager
async def open_redis(settings: Settings) -> AsyncIterator[redis.Redis]:
    """`connect_redis`, closed on the way out."""
    client = await connect_redis(settings)
    try:
        yield client
    finally:
        await client.aclose()


def redis_from_settings(settings: Settings) -> redis.Redis:
    """A plain async client for `VECMIRROR_REDIS_URL`, without asking whether it is a cluster
    (`?cluster=` is dropped); ssl_* options only for a rediss:// URL."""
    url, _ = split_cluster_parameter(settings.require_redis_url())
    return _plain_client(settings, url)


async def cluster_enabled(client: redis.Redis) -> bool:
    """Whether the node runs in cluster mode. A user without INFO (it is in @dangerous) is taken
    as standalone: a cluster then answers MOVED, which says to add `?cluster=true` (boundary.py)."""
    try:
        info = await client.info("cluster")
    except NoPermissionError:
        log.warning("redis_cluster_probe_refused", hint="grant INFO or add ?cluster=true|false to the URL")
        return False
    return bool(int(info.get("cluster_enabled", 0)))


def split_cluster_parameter(url: str) -> tuple[str, bool | None]:
    """The URL without `cluster=`, and what it asked for (None: not said, ask the server)."""
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        raise ConfigError([_INVALID_URL]) from None
    given = [value for name, value in query if name == CLUSTER_PARAMETER]
    if not given:
        return url, None
    wanted = _BOOLEANS.get(given[-1].lower())
    if wanted is None:
        raise ConfigError(["VECMIRROR_REDIS_URL: ?cluster= takes true or false"])
    rest = urlencode([(name, value) for name, value in query if name != CLUSTER_PARAMETER])
    return urlunsplit(parts._replace(query=rest)), wanted


def _plain_client(settings: Settings, url: str) -> redis.Redis:
    try:
        return redis.Redis.from_url(url, **_client_options(settings, url))
    except ValueError:
        # urllib's and redis-py's messages quote the part of the URL they could not parse, which
        # can be a piece of the password: say which setting is wrong, never what it holds.
        raise ConfigError([_INVALID_URL]) from None


def _cluster_client(settings: Settings, url: str) -> RedisCluster:
    if urlsplit(url).scheme == "unix":
        raise ConfigError(["VECMIRROR_REDIS_URL: a cluster is reached over TCP, not a unix:// socket"])
    try:
        return RedisCluster.from_url(url, **_client_options(settings, url))
    except ValueError:
        raise ConfigError([_INVALID_URL]) from None


def _client_options(settings: Settings, url: str) -> dict[str, Any]:
    try:
        tls = urlsplit(url).scheme == TLS_SCHEME
    except ValueError:
        raise ConfigError([_INVALID_URL]) from None
    if not tls:
        _refuse_unused_tls_files(settings)
    return {"socket_timeout": settings.redis_timeout, **(redis_tls_options(settings) if tls else {})}


def redis_tls_options(settings: Settings) -> dict[str, Any]:
    """redis-py's ssl_* keyword arguments; without a CA file the system's CAs verify the server."""
    if settings.redis_tls_key is not None and settings.redis_tls_cert is None:
        raise ConfigError(["VECMIRROR_REDIS_TLS_KEY is set without VECMIRROR_REDIS_TLS_CERT"])
    if settings.redis_tls_verify == "none":
        log.warning("redis_tls_unverified", reason="VECMIRROR_REDIS_TLS_VERIFY=none")
    return {
        "ssl_ca_certs": _existing(settings.redis_tls_ca_cert, "VECMIRROR_REDIS_TLS_CA_CERT"),
        "ssl_certfile": _existing(settings.redis_tls_cert, "VECMIRROR_REDIS_TLS_CERT"),
        "ssl_keyfile": _existing(settings.redis_tls_key, "VECMIRROR_REDIS_TLS_KEY"),
        "ssl_cert_reqs": settings.redis_tls_verify,
        "ssl_check_hostname": settings.redis_tls_check_hostname,
    }


def _existing(path: Path | None, variable: str) -> str | None:
    # Checked here: ssl would only fail at the first command, with a bare FileNotFoundError.
    if path is None:
        return None
    if not path.is_file():
        raise ConfigError([f"{variable}: {path} is not a readable file"])
    return str(path)


def _refuse_unused_tls_files(settings: Settings) -> None:
    # Certificates given for a plain redis:// URL mean TLS was wanted: connecting in clear text
    # anyway would silently send the password unencrypted.
    given = [settings.redis_tls_ca_cert, settings.redis_tls_cert, settings.redis_tls_key]
    if any(path is not None for path in given):
        raise ConfigError(
            ["VECMIRROR_REDIS_TLS_* certificates are set but VECMIRROR_REDIS_URL is not rediss://"]
        )
