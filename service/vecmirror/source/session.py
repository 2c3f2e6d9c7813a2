"""How vecmirror's own Postgres sessions are set up: every connection it opens goes through here.

(Foundation stub: the session settings and codecs are filled in by the values/keys work.)
"""

from __future__ import annotations

from typing import Any

import asyncpg

# Settings every vecmirror session runs with, so what it reads and the keys it builds do not
# depend on the server's or the role's defaults.
SESSION_SETTINGS: dict[str, str] = {}


async def prepare_connection(conn: asyncpg.Connection[Any]) -> None:
    """Registers vecmirror's type codecs on a new connection (a pool's `init`)."""
    del conn


async def connect(url: str, **settings: str) -> asyncpg.Connection[Any]:
    """A single connection set up like the pool's."""
    conn = await asyncpg.connect(url, server_settings={**SESSION_SETTINGS, **settings})
    await prepare_connection(conn)
    return conn
