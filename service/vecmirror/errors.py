"""One error root for everything vecmirror raises on purpose.

Driver errors (asyncpg, redis) are translated at the stage boundary into these, so the CLI can print a
message that says what to fix and exit non-zero without a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar


class VecmirrorError(Exception):
    """Base of every error vecmirror raises on purpose."""


class ConfigError(VecmirrorError):
    """The settings or the mirrors file are wrong; nothing has started."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))


class StartupError(VecmirrorError):
    """The servers disagree with the configuration (missing table, index differs, wrong dims)."""


class NotMigratedError(StartupError):
    """The vecmirror schema or a mirror's trigger is missing: `vecmirror migrate` has not run."""


class StackError(VecmirrorError):
    """The embedded Postgres/Redis stack could not be started or stopped."""


class ShardedRedisError(VecmirrorError):
    """A sharded Redis cannot do what was asked as it is set up: a command over several hash slots
    refused (CROSSSLOT), or a search each shard would answer for its own keys only."""


class QueryError(VecmirrorError):
    """A query was rejected before Redis was called."""


class RowError(VecmirrorError):
    """One source row cannot be turned into a document; the rest of its batch still syncs."""

    def __init__(self, mirror: str, key: Sequence[str], field: str, problem: str) -> None:
        self.mirror = mirror
        self.key = list(key)
        self.field = field
        self.problem = problem
        super().__init__(f"mirror {mirror!r}, row key {self.key}, field {field!r}: {problem}")


class RedisForgotError(VecmirrorError):
    """Redis lost a mirror's marker key: it restarted empty, was flushed, or the key was removed.
    Its documents can no longer be trusted to match the table, so the mirror is resynced."""

    def __init__(self, mirror: str) -> None:
        self.mirror = mirror
        super().__init__(f"mirror {mirror!r}: Redis no longer holds the mirror's marker key")


class MirrorError(VecmirrorError):
    """One mirror cannot sync, through no fault of a server or of a single row: its table lost a
    column or changed a type, a privilege is missing, its prefix holds keys of another Redis type,
    its index vanished. That mirror pauses (named, retried with backoff); the others go on."""

    # Recorded as the mirror's error for `status` (every worker shares it), unless it is the state
    # of this worker alone: a superseded config's worker must not mark the mirror paused for all.
    of_the_mirror: ClassVar[bool] = True

    def __init__(self, mirror: str, problem: str) -> None:
        self.mirror = mirror
        self.problem = problem
        super().__init__(f"mirror {mirror!r}: {problem}")


class ArgumentError(VecmirrorError):
    """A command-line argument cannot be read (one line, exit 2, like every other failure)."""


class FailedRowError(VecmirrorError):
    """`wait_synced`: a row of the keys waited for failed to become a document (vecmirror.failed_v1),
    so its change will not be searchable by waiting; the recorded error says why."""

    def __init__(self, mirror: str, key: Sequence[str], field: str, error: str, state: str) -> None:
        self.mirror = mirror
        self.key = list(key)
        self.field = field
        self.error = error
        super().__init__(
            f"mirror {mirror!r}, row key {self.key}: the row failed ({state}), field {field!r}: {error}; "
            f"`vecmirror failed list --mirror {mirror}` lists it"
        )
