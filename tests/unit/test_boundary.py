"""Driver errors become VecmirrorErrors that name the server and the fix, never a password; errors
that are no user's to fix stay as they are. No server: the drivers' exceptions are built here."""

from __future__ import annotations

import socket
from pathlib import Path

import asyncpg
import pytest
from redis import exceptions as redis_errors

from vecmirror.boundary import (
    PostgresUnavailableError,
    QueryEngineMissingError,
    RedisUnavailableError,
    postgres_location,
    redis_error,
    redis_location,
    translate,
    translated,
)
from vecmirror.errors import NotMigratedError, VecmirrorError
from vecmirror.pipeline.embedder import ModelNotFoundError, check_model_source
from vecmirror.settings import Settings

SECRET = "Zq8-boundary-pw"
SETTINGS = Settings(
    database_url=f"postgresql://app:{SECRET}@db:6432/shop",
    redis_url=f"redis://vm:{SECRET}@cache:6380/0",
)


def caused(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("exc", "kind", "says"),
    [
        (
            ConnectionRefusedError(111, "Connect call failed"),
            PostgresUnavailableError,
            "Postgres unreachable at db:6432 (connection refused): start it or fix VECMIRROR_DATABASE_URL",
        ),
        (
            socket.gaierror(-2, "Name or service not known"),
            PostgresUnavailableError,
            "Postgres unreachable at db:6432 (unknown host: Name or service not known)",
        ),
        (TimeoutError(), PostgresUnavailableError, "Postgres unreachable at db:6432 (no answer)"),
        (
            asyncpg.InvalidCatalogNameError('database "shop" does not exist'),
            PostgresUnavailableError,
            'database "shop" does not exist on Postgres at db:6432: create it or fix VECMIRROR_DATABASE_URL',
        ),
        (
            asyncpg.InvalidPasswordError('password authentication failed for user "app"'),
            PostgresUnavailableError,
            'Postgres at db:6432 refused the password (password authentication failed for user "app")',
        ),
        (
            asyncpg.InvalidAuthorizationSpecificationError('role "app" does not exist'),
            PostgresUnavailableError,
            'Postgres at db:6432 refused the login (role "app" does not exist)',
        ),
        (
            asyncpg.UndefinedTableError('relation "vecmirror.failed_v1" does not exist'),
            NotMigratedError,
            "the vecmirror schema is missing: run `vecmirror migrate` first",
        ),
        (
            caused(
                redis_errors.ConnectionError("Error 111 connecting"), ConnectionRefusedError(111, "refused")
            ),
            RedisUnavailableError,
            "Redis unreachable at cache:6380 (connection refused): start it or fix VECMIRROR_REDIS_URL",
        ),
        (
            caused(
                redis_errors.ConnectionError("Error 111 connecting to cache:6380. Connection refused."),
                ConnectionRefusedError(111, "refused"),
            ),
            RedisUnavailableError,
            "Redis unreachable at cache:6380 (connection refused)",
        ),
        (  # a cluster node down while the one in the URL answers: the one down is named
            caused(
                redis_errors.ConnectionError("Error 111 connecting to 10.0.0.7:7002. Connection refused."),
                ConnectionRefusedError(111, "refused"),
            ),
            RedisUnavailableError,
            "Redis unreachable at 10.0.0.7:7002 (a node of the Redis at cache:6380) (connection refused)",
        ),
        (
            redis_errors.AuthenticationError("invalid username-password pair or user is disabled."),
            RedisUnavailableError,
            "Redis at cache:6380 refused the password (invalid username-password pair or user is disabled)",
        ),
        (
            redis_errors.AuthenticationError("Authentication required."),
            RedisUnavailableError,
            "Redis at cache:6380 needs a password: put it in VECMIRROR_REDIS_URL",
        ),
        (
            redis_errors.AuthenticationWrongNumberOfArgsError("wrong number of arguments for 'auth' command"),
            RedisUnavailableError,
            "Redis at cache:6380 refused the login",
        ),
        (
            redis_errors.ResponseError("unknown command 'FT._LIST', with args beginning with: "),
            QueryEngineMissingError,
            "Redis at cache:6380 has no Query Engine (FT.* commands unknown): use Redis 8 with the "
            "search module, or Redis Stack",
        ),
        (
            redis_errors.ResponseError("unknown command 'JSON.GET', with args beginning with: "),
            QueryEngineMissingError,
            "has no JSON module (JSON.* commands unknown)",
        ),
        (
            redis_errors.TimeoutError("Timeout reading from socket"),
            RedisUnavailableError,
            "Redis at cache:6380 did not answer in time",
        ),
    ],
)
def test_what_a_user_can_fix_is_named(exc: BaseException, kind: type[VecmirrorError], says: str) -> None:
    error = translate(exc, SETTINGS)
    assert isinstance(error, kind)
    assert says in str(error)
    assert "\n" not in str(error) and SECRET not in str(error)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.UndefinedColumnError('column "x" does not exist'),  # our SQL's bug, or a mirror's
        asyncpg.PostgresSyntaxError("syntax error at or near"),
        redis_errors.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        PermissionError(13, "Permission denied", "/some/file"),  # a file, not a socket
        KeyError("x"),
    ],
)
def test_anything_else_is_left_alone(exc: BaseException) -> None:
    assert translate(exc, SETTINGS) is None
    with pytest.raises(type(exc)), translated(SETTINGS):
        raise exc


def test_translated_raises_the_named_error_from_the_driver_error() -> None:
    refused = ConnectionRefusedError(111, "Connect call failed")
    with pytest.raises(PostgresUnavailableError) as raised, translated(SETTINGS):
        raise refused
    assert raised.value.__cause__ is refused


def test_a_driver_message_quoting_a_url_is_redacted() -> None:
    exc = redis_errors.AuthenticationError(f"refused for redis://vm:{SECRET}@cache:6380")
    error = redis_error(exc, "cache:6380")
    assert error is not None and SECRET not in str(error) and "redis://vm:***@" in str(error)


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("postgresql://u:p@db:5433/app", "db:5433"),
        ("postgresql://u@db/app", "db:5432"),
        ("postgresql://postgres:@/postgres?host=/run/pg", "/run/pg:5432"),
        ("postgresql:///app?host=/run/pg&port=6000", "/run/pg:6000"),
        ("postgres://u:p@[::1]:6000/app", "[::1]:6000"),
    ],
)
def test_postgres_location_names_no_credentials(url: str, where: str) -> None:
    assert postgres_location(url) == where


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("redis://:pw@cache:6380/0", "cache:6380"),
        ("rediss://user:pw@cache/0", "cache:6379"),
        ("unix:///run/redis.sock", "/run/redis.sock"),
    ],
)
def test_redis_location_names_no_credentials(url: str, where: str) -> None:
    assert redis_location(url) == where


def test_a_missing_model_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="is not a directory"):
        check_model_source("models/mine", str(tmp_path / "nothing/here"))


def test_a_directory_without_a_model_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"holds neither modules\.json .* nor config\.json"):
        check_model_source(str(tmp_path), str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    check_model_source(str(tmp_path), str(tmp_path))  # a transformers model: accepted


def test_offline_a_hub_name_not_in_the_cache_fails_at_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("SENTENCE_TRANSFORMERS_HOME", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match=r"model not found: 'no-such/model' \(offline"):
        check_model_source("no-such/model", "no-such/model")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    check_model_source("no-such/model", "no-such/model")  # online: the hub may have it
