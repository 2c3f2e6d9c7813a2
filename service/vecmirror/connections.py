"""Clients built from the settings, TLS included, in one place so every command connects alike.

Postgres needs nothing here: asyncpg reads TLS from the URL itself (`sslmode=verify-full`,
`sslrootcert=`, `sslcert=`, `sslkey=`), so `VECMIRROR_DATABASE_URL` carries it. Redis URLs carry no
certificate paths, so a `rediss://` URL takes them from the `VECMIRROR_REDIS_TLS_*` settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as redis
import structlog

from vecmirror.errors import ConfigError
from vecmirror.settings import Settings

log = structlog.get_logger(__name__)

TLS_SCHEME = "rediss"


def redis_from_settings(settings: Settings) -> redis.Redis:
    """The async client for `VECMIRROR_REDIS_URL`; ssl_* options only for a rediss:// URL."""
    url = settings.require_redis_url()
    tls = urlsplit(url).scheme == TLS_SCHEME
    options = redis_tls_options(settings) if tls else {}
    if not tls:
        _refuse_unused_tls_files(settings)
    try:
        return redis.Redis.from_url(url, socket_timeout=settings.redis_timeout, **options)
    except ValueError:
        # urllib's and redis-py's messages quote the part of the URL they could not parse, which
        # can be a piece of the password: say which setting is wrong, never what it holds.
        raise ConfigError(["VECMIRROR_REDIS_URL is not a valid redis://, rediss:// or unix:// URL"]) from None


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
