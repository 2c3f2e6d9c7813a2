"""`vecmirror status` shows a mirror a worker paused (mirrors_v1.error, migration 0004): its state, the
error and since when, in the table and in the JSON, and still answers when the table is gone. The
worker's side (setting and clearing the error) is tested with the worker; here the columns are set
directly."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from helpers import PRODUCTS_MIRROR, PRODUCTS_TABLE, sync_once
from processes import vecmirror
from vecmirror.commands import migrate_command, status_command

ERROR = 'column "name" does not exist in public.products'
PAUSE = (
    "UPDATE vecmirror.mirrors_v1 SET error = $1, error_since = now() - interval '5 minutes' "
    "WHERE name = 'products'"
)


async def test_status_shows_a_paused_mirror_and_its_error(
    pg: asyncpg.Connection, write_config: Any, settings_for: Any, cli_env: dict[str, str]
) -> None:
    await pg.execute(PRODUCTS_TABLE)
    path, config = write_config([PRODUCTS_MIRROR])
    settings = settings_for(path)
    await migrate_command(settings, config)
    await pg.execute("INSERT INTO products VALUES ('a', 'A', 1, '{1,0,0,0}'), ('b', 'B', 2, '{0,1,0,0}')")
    await sync_once(settings, config)
    [running] = await status_command(settings, config)
    assert (running.state, running.queue.error, running.queue.error_since) == ("ok", None, None)

    await pg.execute("ALTER TABLE products DROP COLUMN name")
    await pg.execute(PAUSE, ERROR)
    [paused] = await status_command(settings, config)
    assert (paused.state, paused.queue.error, paused.table_rows) == ("paused", ERROR, 2)
    assert paused.queue.error_since is not None

    args = ["--config", str(path)]
    table = vecmirror(cli_env, "status", *args)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[:2]
    assert header.split()[:3] == ["MIRROR", "STATE", "PENDING"] and row.split()[:2] == ["products", "paused"]
    [line] = [x for x in table.stdout.splitlines() if x.startswith("products: paused since ")]
    assert line.endswith(f" ago): {ERROR}") and "(5m0" in line
    shown = json.loads(vecmirror(cli_env, "status", "--json", *args).stdout)[0]
    assert (shown["state"], shown["error"], shown["table_rows"]) == ("paused", ERROR, 2)
    assert shown["error_since"].endswith("Z")

    await pg.execute("DROP TABLE products")  # status still answers for it
    [gone] = await status_command(settings, config)
    assert (gone.state, gone.table_rows) == ("paused", None)
    assert gone.table_error == 'relation "public.products" does not exist'

    # Its error cleared by hand, the table still gone: its changes are not captured, status says so.
    await pg.execute("UPDATE vecmirror.mirrors_v1 SET error = NULL, error_since = NULL")
    shown = json.loads(vecmirror(cli_env, "status", "--json", *args).stdout)[0]
    assert (shown["state"], shown["error"], shown["error_since"]) == ("uncaptured", None, None)
    assert shown["capture_error"].startswith("the capture triggers are missing on products")

    await pg.execute(PRODUCTS_TABLE)
    await migrate_command(settings, config)
    shown = json.loads(vecmirror(cli_env, "status", "--json", *args).stdout)[0]
    assert (shown["state"], shown["error"], shown["capture_error"]) == ("ok", None, None)
