"""`wait-synced`: read-your-writes from a shell or a deploy script (query/synced.py says how)."""

from __future__ import annotations

from collections.abc import Sequence

from vecmirror.app import check_migrated
from vecmirror.boundary import translated
from vecmirror.commands.servers import mirrors_named
from vecmirror.config import Config
from vecmirror.query.postgres import open_pool
from vecmirror.query.synced import ANSWER_GRACE, SyncWait, wait_synced
from vecmirror.settings import Settings
from vecmirror.source import pooled


async def wait_synced_command(
    settings: Settings, config: Config, name: str, keys: Sequence[object], timeout: float
) -> SyncWait:
    """Waits on Postgres alone; a mirror not in the file, a server it cannot use, a schema not
    migrated or a malformed key is an error (one line, exit 2), as in every command."""
    (mirror,) = mirrors_named(settings, config, [name])
    with translated(settings):
        # One wait: one poll at a time. A server that does not answer is given up on with the wait.
        pool = await open_pool(settings, max_size=1, connect_timeout=max(timeout, 1.0) + ANSWER_GRACE)
        try:
            async with pooled(pool) as conn:
                await check_migrated(conn, Config(mirrors=(mirror,)))
            return await wait_synced(pool, mirror, keys, timeout)
        finally:
            await pool.close()
