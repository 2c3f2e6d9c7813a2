"""`pause` and `resume`: an operator's pause of a mirror, recorded in Postgres (migration 0008).

While a mirror is paused its capture keeps queueing (the triggers are untouched) and every worker
leaves its queue alone; the other mirrors keep syncing. `resume` lets the queue drain. Both wake the
running workers (NOTIFY), which also look again on every drain.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import structlog

from vecmirror.app import check_migrated
from vecmirror.boundary import connect_postgres, translated
from vecmirror.commands.servers import mirrors_named
from vecmirror.config import Config
from vecmirror.errors import NotMigratedError
from vecmirror.settings import Settings
from vecmirror.source import changes

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class PauseResult:
    mirror: str
    paused: bool  # paused now (after `pause`), or was paused (before `resume`)
    since: datetime | None
    pending: int

    def line(self, action: str) -> str:
        if action == "pause":
            since = "" if self.since is None else f" (since {self.since.isoformat(timespec='seconds')})"
            return (
                f"mirror {self.mirror!r} paused{since}: capture keeps queueing, no worker syncs it until "
                f"`vecmirror resume {self.mirror}`; {self.pending} changes pending"
            )
        if not self.paused:
            return f"mirror {self.mirror!r} was not paused; {self.pending} changes pending"
        return f"mirror {self.mirror!r} resumed: the workers sync its {self.pending} pending changes"


async def pause_command(settings: Settings, config: Config, mirror: str, reason: str | None) -> PauseResult:
    """Pauses the mirror (again: the first time stays, the reason is replaced)."""
    return await _operate(settings, config, mirror, "pause", reason)


async def resume_command(settings: Settings, config: Config, mirror: str) -> PauseResult:
    return await _operate(settings, config, mirror, "resume", None)


async def _operate(
    settings: Settings, config: Config, name: str, action: str, reason: str | None
) -> PauseResult:
    (mirror,) = mirrors_named(settings, config, [name])
    with translated(settings):
        conn = await connect_postgres(settings)
        try:
            await check_migrated(conn, Config(mirrors=(mirror,)))
            async with conn.transaction():
                if action == "pause":
                    since = await changes.pause_mirror(conn, mirror.name, reason)
                    done: bool | None = None if since is None else True
                else:
                    since = None
                    done = await changes.resume_mirror(conn, mirror.name)
                if done is None:  # removed by a concurrent `migrate`
                    raise NotMigratedError(
                        f"mirror {mirror.name!r} is not installed: run `vecmirror migrate` first"
                    )
                pending = await changes.pending(conn, mirror.name)
        finally:
            await conn.close()
    log.info(f"mirror_{action}d_by_operator", mirror=mirror.name, reason=reason, pending=pending)
    return PauseResult(mirror.name, done, since, pending)
