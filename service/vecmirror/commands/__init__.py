"""What each CLI command does, as coroutines the CLI runs and the tests can call directly."""

from vecmirror.commands.pauses import PauseResult, pause_command, resume_command
from vecmirror.commands.schema import (
    AmbiguousIndexError,
    Removal,
    migrate_and_remove,
    migrate_command,
    plan_command,
    print_plan,
)
from vecmirror.commands.servers import both_servers, check_servers, mirrors_named
from vecmirror.commands.sync import backfill_command, run_command
from vecmirror.commands.views import (
    QueryRequest,
    failed_command,
    print_drift,
    print_failed,
    print_hits,
    print_status,
    query_command,
    status_command,
    verify_command,
)
from vecmirror.commands.waits import wait_synced_command

__all__ = [
    "AmbiguousIndexError",
    "PauseResult",
    "QueryRequest",
    "Removal",
    "backfill_command",
    "both_servers",
    "check_servers",
    "failed_command",
    "migrate_and_remove",
    "migrate_command",
    "mirrors_named",
    "pause_command",
    "plan_command",
    "print_drift",
    "print_failed",
    "print_hits",
    "print_plan",
    "print_status",
    "query_command",
    "resume_command",
    "run_command",
    "status_command",
    "verify_command",
    "wait_synced_command",
]
