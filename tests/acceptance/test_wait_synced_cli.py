"""`vecmirror wait-synced MIRROR KEY…`: exit 0 once synced, 1 after --timeout with one line saying how
many keys wait and why, 2 with one line (no traceback) for an unknown mirror, a malformed key, a
failed row or a Postgres out of reach."""

from __future__ import annotations

import subprocess
from typing import Any

import asyncpg

from helpers import PRODUCTS_MIRROR, PRODUCTS_TABLE, sync_once
from processes import vecmirror
from vecmirror.commands import migrate_command

PARTS_TABLE = """
CREATE TABLE parts (maker text, n integer, vec real[], PRIMARY KEY (maker, n))
"""


def _one_line_error(result: subprocess.CompletedProcess[str], starts: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(f"vecmirror: {starts}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


async def test_wait_synced_exits_0_1_and_2(
    pg: asyncpg.Connection, write_config: Any, settings_for: Any, cli_env: dict[str, str]
) -> None:
    await pg.execute(PRODUCTS_TABLE)
    await pg.execute(PARTS_TABLE)
    parts = {**PRODUCTS_MIRROR, "name": "parts", "table": "parts"}
    parts["index"] = {**PRODUCTS_MIRROR["index"], "index": {"name": "parts_idx", "prefix": "part"}}
    parts["index"]["fields"] = [PRODUCTS_MIRROR["index"]["fields"][2]]
    path, config = write_config([PRODUCTS_MIRROR, parts])
    settings = settings_for(path)
    await migrate_command(settings, config)
    await sync_once(settings, config)
    args = ["--config", str(path)]

    await pg.execute("INSERT INTO products VALUES ('a', 'A', 1, '{1,2,3,4}'), ('b', 'B', 2, '{1,2,3,4}')")
    await pg.execute("INSERT INTO parts VALUES ('acme', 7, '{1,2,3,4}')")
    waiting = vecmirror(cli_env, "wait-synced", "products", "a", "b", "c", "--timeout", "0.2", *args)
    assert waiting.returncode == 1, waiting.stderr
    assert waiting.stdout.splitlines() == [
        "not synced after 0.2 s: 2 of 3 key(s) of mirror 'products' still wait: "
        "no worker synced them in time (is `vecmirror run` running?)"
    ]

    paused = vecmirror(cli_env, "pause", "parts", "--reason", "maintenance", *args)
    assert paused.returncode == 0, paused.stderr
    waiting = vecmirror(cli_env, "wait-synced", "parts", '["acme", "007"]', "--timeout", "0", *args)
    assert waiting.returncode == 1, waiting.stderr
    assert waiting.stdout.strip().endswith(
        "1 of 1 key(s) of mirror 'parts' still wait: the mirror is paused by an operator (maintenance): "
        "`vecmirror resume parts`"
    )

    await sync_once(settings, config)
    synced = vecmirror(cli_env, "wait-synced", "products", "a", "b", *args)
    assert (synced.returncode, synced.stdout) == (0, "synced: 2 key(s) of mirror 'products'\n")

    _one_line_error(
        vecmirror(cli_env, "wait-synced", "nope", "a", *args), "no mirror 'nope' in the mirrors file"
    )
    _one_line_error(
        vecmirror(cli_env, "wait-synced", "parts", '["acme", "seven"]', *args),
        "mirror 'parts': a key is not a value of its column's type: invalid input syntax for type integer",
    )
    _one_line_error(
        vecmirror(cli_env, "wait-synced", "parts", "acme", *args), "mirror 'parts': key ('acme',)"
    )
    down = {**cli_env, "VECMIRROR_DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none"}
    _one_line_error(vecmirror(down, "wait-synced", "products", "a", *args), "Postgres")

    await pg.execute("INSERT INTO products VALUES ('bad', 'B', 3, '{1,2}')")  # 2 of 4 dims: fails
    await sync_once(settings, config)
    _one_line_error(
        vecmirror(cli_env, "wait-synced", "products", "bad", *args),
        "mirror 'products', row key ['bad']: the row failed (5 attempt(s), dead-lettered), field 'vec'",
    )
