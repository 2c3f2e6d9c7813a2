"""Where the servers meet the commands: driver errors become VecmirrorErrors that say what is wrong
and what to do, and the checks every command makes before any work (can it log in, is the schema
there, does Redis have the Query Engine) live here.

Only what a user can fix is translated: a server that is down, refuses the login, lacks the
database, the schema or a module. Anything else a driver raises is left alone, so a bug still shows
as one (see cli.py's last-resort net).
"""

from __future__ import annotations

import errno
import re
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import redis.asyncio as redis
from redis import exceptions as redis_errors

from vecmirror.errors import NotMigratedError, ShardedRedisError, VecmirrorError
from vecmirror.logging import redact
from vecmirror.run.faults import cross_slot_problem, is_cross_slot
from vecmirror.settings import Settings
from vecmirror.sink.cluster import index_names, is_cluster
from vecmirror.source.session import connect

DATABASE_VARIABLE = "VECMIRROR_DATABASE_URL"
REDIS_VARIABLE = "VECMIRROR_REDIS_URL"
_NETWORK_ERRNOS = {errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ETIMEDOUT, errno.ENOENT}


class ServerError(VecmirrorError):
    """A server vecmirror needs cannot be used: down, refusing the login, lacking a database or a
    module. Nothing was done; fix the server or the URL and run the command again."""


class PostgresUnavailableError(ServerError):
    """Postgres cannot be reached or refuses the connection."""


class RedisUnavailableError(ServerError):
    """Redis cannot be reached or refuses the connection."""


class QueryEngineMissingError(RedisUnavailableError):
    """Redis answers but has no Query Engine (FT.*) or no JSON module (JSON.*)."""


class IndexMissingError(VecmirrorError):
    """A mirror's index is not in Redis (yet): no worker has started since Redis was emptied."""


class UnknownMirrorError(VecmirrorError):
    """A command named a mirror the mirrors file does not define."""


# ---- where: a server's address, never its credentials


def postgres_location(url: str) -> str:
    """host:port (or socket directory:port) of a Postgres URL; `?host=`/`?port=` as libpq reads them."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    hosts = parts.netloc.rpartition("@")[2]
    if not hosts:
        host = query.get("host", ["localhost"])[0]
        hosts = f"{host}:{query.get('port', ['5432'])[0]}"
    elif ":" not in hosts.rsplit("]", 1)[-1]:
        hosts += ":5432"
    return hosts


def redis_location(client_or_url: redis.Redis | str) -> str:
    if isinstance(client_or_url, str):
        parts = urlsplit(client_or_url)
        if parts.scheme == "unix":
            return parts.path
        return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
    if is_cluster(client_or_url):
        node = client_or_url.get_default_node()  # type: ignore[attr-defined]
        return f"{node.host}:{node.port} (a cluster)"
    options = client_or_url.connection_pool.connection_kwargs
    return str(options.get("path") or f"{options.get('host', 'localhost')}:{options.get('port', 6379)}")


# ---- translation


def postgres_error(exc: BaseException, where: str) -> VecmirrorError | None:
    """The VecmirrorError for a Postgres driver error a user can fix, else None."""
    fix = f"fix {DATABASE_VARIABLE}"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return PostgresUnavailableError(f"{_first_line(exc)} on Postgres at {where}: create it or {fix}")
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return PostgresUnavailableError(
            f"Postgres at {where} refused the password ({_first_line(exc)}): {fix}"
        )
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return PostgresUnavailableError(f"Postgres at {where} refused the login ({_first_line(exc)}): {fix}")
    if isinstance(exc, asyncpg.UndefinedTableError) and 'relation "vecmirror.' in str(exc):
        return NotMigratedError("the vecmirror schema is missing: run `vecmirror migrate` first")
    if isinstance(exc, asyncpg.CannotConnectNowError | asyncpg.TooManyConnectionsError):
        return PostgresUnavailableError(
            f"Postgres at {where} does not accept connections now ({_first_line(exc)})"
        )
    if isinstance(exc, asyncpg.PostgresConnectionError | asyncpg.ConnectionDoesNotExistError):
        return PostgresUnavailableError(f"lost the connection to Postgres at {where} ({_first_line(exc)})")
    if _is_network_error(exc):
        return PostgresUnavailableError(
            f"Postgres unreachable at {where} ({_network_reason(exc)}): start it or {fix}"
        )
    return None


def redis_error(exc: BaseException, where: str) -> VecmirrorError | None:
    """The VecmirrorError for a Redis driver error a user can fix, else None."""
    fix = f"fix {REDIS_VARIABLE}"
    if isinstance(exc, redis_errors.AuthenticationWrongNumberOfArgsError):
        return RedisUnavailableError(
            f"Redis at {where} refused the login ({_first_line(exc)}): it takes a password only, "
            f"or it has no ACL users; {fix}"
        )
    if isinstance(exc, redis_errors.AuthenticationError):
        if "NOAUTH" in str(exc) or "required" in str(exc).lower():
            return RedisUnavailableError(f"Redis at {where} needs a password: put it in {REDIS_VARIABLE}")
        return RedisUnavailableError(f"Redis at {where} refused the password ({_first_line(exc)}): {fix}")
    if isinstance(exc, redis_errors.ResponseError) and _unknown_command(exc, "FT."):
        return QueryEngineMissingError(
            f"Redis at {where} has no Query Engine (FT.* commands unknown): use Redis 8 with the "
            "search module, or Redis Stack"
        )
    if isinstance(exc, redis_errors.ResponseError) and _unknown_command(exc, "JSON."):
        return QueryEngineMissingError(
            f"Redis at {where} has no JSON module (JSON.* commands unknown), which storage_type: json "
            "needs: use Redis 8 or Redis Stack"
        )
    if isinstance(exc, redis_errors.NoPermissionError):
        return RedisUnavailableError(
            f"Redis at {where} denied a command ({_first_line(exc)}): grant it to the user"
        )
    cluster_error = _cluster_error(exc, where)
    if cluster_error is not None:
        return cluster_error
    node = _node_of(exc, where)
    if isinstance(exc, redis_errors.TimeoutError):
        return RedisUnavailableError(f"Redis at {node} did not answer in time: check it, or {fix}")
    if isinstance(exc, redis_errors.ConnectionError):
        return RedisUnavailableError(
            f"Redis unreachable at {node} ({_network_reason(exc)}): start it or {fix}"
        )
    return None


_CONNECTING_TO = re.compile(r"connecting to (\S+?)\.? ")


def _node_of(exc: BaseException, where: str) -> str:
    """The server a connection error names, where it is not the URL's: a cluster node down while
    the one in the URL answers (redis-py says which: "Error 111 connecting to host:port.")."""
    named = _CONNECTING_TO.search(str(exc))
    if named is None or named.group(1) in where:
        return where
    return f"{named.group(1)} (a node of the Redis at {where})"


def _cluster_error(exc: BaseException, where: str) -> VecmirrorError | None:
    """A sharded Redis' own troubles: keys over several slots, a node that redirects a plain
    client, a cluster down or out of reach."""
    if is_cross_slot(exc):
        return ShardedRedisError(cross_slot_problem(exc))
    if isinstance(exc, redis_errors.MovedError):
        return RedisUnavailableError(
            f"Redis at {where} is a cluster node and sent vecmirror to another ({_first_line(exc)}): "
            f"add ?cluster=true to {REDIS_VARIABLE} (or grant INFO, which tells vecmirror by itself)"
        )
    if isinstance(exc, redis_errors.ClusterDownError):
        return RedisUnavailableError(f"the Redis cluster at {where} is down ({_first_line(exc)})")
    if isinstance(exc, redis_errors.RedisClusterException):
        return RedisUnavailableError(
            f"Redis cluster at {where}: {_first_line(exc)}; start it or fix {REDIS_VARIABLE}"
        )
    return None


def translate(exc: BaseException, settings: Settings) -> VecmirrorError | None:
    """Which server a driver error came from is told by its type: redis-py wraps every socket error
    in its own, asyncpg raises them bare."""
    if isinstance(exc, redis_errors.RedisError | redis_errors.RedisClusterException):
        return redis_error(exc, redis_location(_secret(settings.redis_url)))
    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError) or _is_network_error(exc):
        return postgres_error(exc, postgres_location(_secret(settings.database_url)))
    return None


@contextmanager
def translated(settings: Settings) -> Iterator[None]:
    """Driver errors a user can fix, raised inside, leave as VecmirrorErrors."""
    try:
        yield
    except VecmirrorError:
        raise
    except Exception as exc:
        error = translate(exc, settings)
        if error is None:
            raise
        raise error from exc


# ---- checks


async def connect_postgres(settings: Settings) -> asyncpg.Connection[Any]:
    """One vecmirror session; a refused or failed login is a PostgresUnavailableError."""
    url = settings.require_database_url()
    try:
        return await connect(url)
    except Exception as exc:
        error = postgres_error(exc, postgres_location(url))
        if error is None:
            raise
        raise error from exc


async def require_query_engine(client: redis.Redis, *, json_storage: bool = False) -> set[str]:
    """Redis answers, accepts the login and has the Query Engine (and the JSON module, if a mirror
    stores JSON); returns the names of its indexes. Meant as the first command sent, so that any
    Redis problem is named here."""
    try:
        names = await index_names(client)  # on a cluster, every primary's
        if json_storage:
            # JSON.GET: within the least-privilege ACL of the README (Security)
            await client.execute_command("JSON.GET", "vecmirror:probe")  # type: ignore[no-untyped-call]
    except (redis_errors.RedisError, redis_errors.RedisClusterException) as exc:
        error = redis_error(exc, redis_location(client))
        if error is None:
            raise
        raise error from exc
    return names


# ---- helpers


def _secret(value: Any) -> str:
    return "" if value is None else str(value.get_secret_value())


def _first_line(exc: BaseException) -> str:
    return redact(next(iter(str(exc).splitlines()), "") or type(exc).__name__).rstrip(". ")


def _unknown_command(exc: BaseException, prefix: str) -> bool:
    return str(exc).lower().startswith(f"unknown command '{prefix.lower()}")


def _is_network_error(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror | ssl.SSLError):
        return True
    return isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS and exc.filename is None


def _network_reason(exc: BaseException) -> str:
    """What went wrong with the socket, from the OSError inside the driver's error."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, socket.gaierror):
        return f"unknown host: {cause.strerror}"
    if isinstance(cause, ssl.SSLError):
        return f"TLS: {redact(cause.reason or str(cause))}"
    if isinstance(cause, TimeoutError):
        return "no answer"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    return _first_line(exc)
