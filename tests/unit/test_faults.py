"""Whose fault an error is, decided once (vecmirror.run.faults)."""

from __future__ import annotations

import asyncpg
import pytest
from prometheus_client import CollectorRegistry
from redis import exceptions as redis_errors

from vecmirror.errors import MirrorError, StartupError
from vecmirror.ops.metrics import Metrics
from vecmirror.run.faults import as_mirror_error, classify
from vecmirror.run.pauses import MirrorPauses, Pause


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(),
        TimeoutError(),
        asyncpg.ConnectionDoesNotExistError("gone"),
        asyncpg.AdminShutdownError("shutting down"),  # 57P01
        asyncpg.CannotConnectNowError("starting up"),  # 57P03
        asyncpg.SerializationError("conflict"),  # 40001
        asyncpg.DeadlockDetectedError("deadlock"),  # 40P01
        asyncpg.IdleInTransactionSessionTimeoutError("claim ended"),  # 25P03
        asyncpg.TooManyConnectionsError("full"),  # 53300
        asyncpg.InterfaceError("closed"),
        redis_errors.ConnectionError("reset"),
        redis_errors.TimeoutError("slow"),
        redis_errors.BusyLoadingError("loading"),
        redis_errors.ReadOnlyError("replica"),
        redis_errors.MovedError("3999 127.0.0.1:6381"),
        redis_errors.ResponseError("OOM command not allowed when used memory > 'maxmemory'"),
        redis_errors.ResponseError("BUSY Redis is busy running a script"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_server_trouble(error: BaseException) -> None:
    assert classify(error) == "server"


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.UndefinedColumnError("column t.title does not exist"),  # 42703
        asyncpg.UndefinedTableError('relation "docs" does not exist'),  # 42P01
        asyncpg.UndefinedFunctionError("operator does not exist: text = integer"),  # 42883
        asyncpg.InsufficientPrivilegeError("permission denied for table docs"),  # 42501
        asyncpg.InvalidTextRepresentationError("invalid input syntax for type integer"),  # 22P02
        redis_errors.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        redis_errors.ResponseError("docs_idx: no such index"),
        redis_errors.NoPermissionError("No permissions to access a key"),
        MirrorError("docs", "its index is gone"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_mirrors_trouble(error: BaseException) -> None:
    assert classify(error) == "mirror"


def test_anything_else_is_nobodys_business_but_a_bug() -> None:
    assert classify(ValueError("a bug")) is None
    assert classify(StartupError("checked at start only")) is None


def test_the_mirror_error_names_the_table_and_column_postgres_gave() -> None:
    error = asyncpg.UndefinedColumnError("column t.title does not exist")
    error.table_name, error.column_name = "docs", "title"  # type: ignore[attr-defined]
    message = str(as_mirror_error("docs", error))
    assert message == "mirror 'docs': Postgres: column t.title does not exist (table 'docs', column 'title')"
    assert as_mirror_error("docs", MirrorError("docs", "x")).problem == "x"


async def test_a_paused_mirror_gets_one_attempt_per_due_time_however_many_lanes() -> None:
    pauses = MirrorPauses(Metrics(CollectorRegistry()), backoff=0.0)
    pauses._pauses["docs"] = Pause(MirrorError("docs", "x"), attempts=1, retry_at=0.0)  # due
    assert pauses.take_attempt("docs") and not pauses.take_attempt("docs")  # the second lane waits
    pauses.end_attempt("docs")  # it neither paused nor resumed: due again
    assert pauses.take_attempt("docs")
    assert pauses.take_attempt("other")  # not paused: always
