"""Whose fault is an error? Decided once, where a batch's exception reaches the worker.

- **Server trouble** (a connection refused, reset or timed out, a failover, a server shutting down,
  out of memory, a lock or serialization conflict): nobody's fault. The batch rolled back, its
  changes are still queued; the worker backs off and retries forever. Never a row's attempt.
  On a sharded Redis: MOVED/ASK (slots moving), TRYAGAIN, CLUSTERDOWN, MASTERDOWN, and redis-py's
  cluster errors for a slot no node serves or a cluster it cannot reach (resharding, failover).
- **A mirror's trouble** (its table lost a column or changed a type, a privilege is missing, its
  Redis prefix holds keys of another type, its index vanished): that mirror pauses, named, and is
  retried with backoff; the other mirrors keep syncing. A command over several hash slots refused
  by a sharded Redis (CROSSSLOT, or redis-py's "all keys must map to the same key slot") is one:
  a retry would meet it again, and the message names the cause.
- A row's trouble never gets here: the pipeline turns it into a failed row (RowError).
"""

from __future__ import annotations

from typing import Literal

import asyncpg
from redis import exceptions as redis_errors

from vecmirror.errors import MirrorError

Fault = Literal["server", "mirror"]

# SQLSTATE classes that say the server (or the session) is in trouble, not the statement:
# 08 connection, 25 invalid transaction state (idle_in_transaction_session_timeout ended a claim),
# 40 rollback (serialization, deadlock), 53 insufficient resources, 55 lock not available,
# 57 operator intervention (shutdown, cancel), 58 system error, XX internal error.
SERVER_SQLSTATE_CLASSES = frozenset({"08", "25", "40", "53", "55", "57", "58", "XX"})
REDIS_SERVER_ERRORS = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    redis_errors.ReadOnlyError,  # a replica during failover
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    redis_errors.MovedError,
    redis_errors.AskError,
    redis_errors.MasterDownError,
    redis_errors.OutOfMemoryError,
    redis_errors.NoScriptError,  # scripts flushed: redis-py loads them again on the next call
    redis_errors.SlotNotCoveredError,  # a slot without a node while a cluster reshards or fails over
    redis_errors.RedisClusterUnreachableError,
)
# Keys of several hash slots in one command, script or transaction: the server's CROSSSLOT reply,
# or redis-py's cluster client refusing to send it.
CROSS_SLOT_ERRORS = (redis_errors.ClusterCrossSlotError, redis_errors.CrossSlotTransactionError)
CROSS_SLOT_TEXTS = ("CROSSSLOT", "same slot", "same key slot", "same hash slot")
# Replies of a healthy Redis that is short of something for a while: retried like an outage.
REDIS_SERVER_REPLIES = ("OOM ", "LOADING", "BUSY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "NOSCRIPT")
# Every error redis-py raises: its cluster client's own errors are not RedisErrors.
REDIS_ERRORS = (redis_errors.RedisError, redis_errors.RedisClusterException)
CLIENT_SERVER_ERRORS = (OSError, asyncpg.InterfaceError, asyncpg.InternalClientError)


def classify(error: BaseException) -> Fault | None:
    """'server', 'mirror', or None for an error that is neither (a bug: let it surface)."""
    if isinstance(error, MirrorError) or is_cross_slot(error):
        return "mirror"
    if isinstance(error, asyncpg.PostgresError):
        return "server" if _sqlstate_class(error) in SERVER_SQLSTATE_CLASSES else "mirror"
    if isinstance(error, REDIS_SERVER_ERRORS):
        return "server"
    if isinstance(error, redis_errors.ResponseError):
        return "server" if str(error).startswith(REDIS_SERVER_REPLIES) else "mirror"
    if isinstance(error, (*REDIS_ERRORS, *CLIENT_SERVER_ERRORS)):
        return "server"
    return None


def is_cross_slot(error: BaseException) -> bool:
    """A command naming keys of several hash slots, refused by a sharded Redis or its client."""
    if isinstance(error, CROSS_SLOT_ERRORS):
        return True
    if isinstance(error, redis_errors.ResponseError | redis_errors.RedisClusterException):
        return any(text in str(error) for text in CROSS_SLOT_TEXTS)
    return False


def cross_slot_problem(error: BaseException) -> str:
    return (
        f"Redis is sharded (a cluster or a proxy endpoint) and refused a command over keys of several "
        f"hash slots ({type(error).__name__}: {_first_line(error)}). An index alias and its index "
        "in different slots need the Query Engine's coordinator (Redis 8); anything else is a "
        "vecmirror bug to report"
    )


def _first_line(error: BaseException) -> str:
    return next(iter(str(error).splitlines()), "")


def _sqlstate_class(error: asyncpg.PostgresError) -> str:
    sqlstate = getattr(error, "sqlstate", None) or ""
    return str(sqlstate)[:2]


def as_mirror_error(mirror: str, error: BaseException) -> MirrorError:
    """The one line an operator reads in `status`, the logs and the metrics' neighbourhood."""
    if isinstance(error, MirrorError):
        return error
    if is_cross_slot(error):
        return MirrorError(mirror, cross_slot_problem(error))
    if isinstance(error, asyncpg.PostgresError):
        return MirrorError(mirror, f"Postgres: {_postgres_text(error)}")
    if isinstance(error, REDIS_ERRORS):
        return MirrorError(mirror, f"Redis: {type(error).__name__}: {error}")
    return MirrorError(mirror, f"{type(error).__name__}: {error}")


def _postgres_text(error: asyncpg.PostgresError) -> str:
    text = str(error)
    table = getattr(error, "table_name", None)
    column = getattr(error, "column_name", None)
    details = [f"{name} {value!r}" for name, value in (("table", table), ("column", column)) if value]
    return text + (f" ({', '.join(details)})" if details else "")
