"""Keys vecmirror did not write under a mirror's prefix: `verify` reports them instead of crashing, and
counts documents as `status` does (the index's documents: keys of the mirror's type)."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import redis

from helpers import NOTES_MIRROR, NOTES_TABLE, PRODUCTS_MIRROR, PRODUCTS_TABLE, sync_once
from processes import vecmirror
from vecmirror.commands import migrate_command, status_command, verify_command


async def test_foreign_keys_are_reported_and_counted_as_status_counts_them(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    write_config: Any,
    settings_for: Any,
    cli_env: dict[str, str],
) -> None:
    await pg.execute(PRODUCTS_TABLE)
    await pg.execute(NOTES_TABLE)
    path, config = write_config([PRODUCTS_MIRROR, NOTES_MIRROR])
    settings = settings_for(path)
    await migrate_command(settings, config)
    await pg.execute(
        "INSERT INTO products VALUES ('a', 'A', 1, '{1,0,0,0}'), ('b', 'B', 2, '{0,1,0,0}'), "
        "('pen', 'Pen', 3, '{0,0,1,0}')"
    )
    await pg.execute("INSERT INTO notes VALUES ('t', 1, 'one', 'red', '{1,0,0}')")
    await sync_once(settings, config)

    # HASH mirror `product`: keys of other types, a hash vecmirror did not write, and a STRING
    # where row 'pen' has its document.
    redis_client.set("product:zzz", "x")
    redis_client.rpush("product:yyy", "x")
    redis_client.execute_command("JSON.SET", "product:jjj", "$", '{"name": "J"}')
    redis_client.hset("product:hhh", mapping={"name": "Not ours"})
    redis_client.delete("product:pen")
    redis_client.set("product:pen", "not a document")
    # JSON mirror `note`: a HASH and a STRING under its prefix.
    redis_client.hset("note:x:1", mapping={"body": "x"})
    redis_client.set("note:x:2", "x")

    drifts = {d.mirror: d for d in await verify_command(settings, config, None, repair=False)}
    products, notes = drifts["products"], drifts["notes"]
    assert products.foreign == {
        "product:zzz": "string",
        "product:yyy": "list",
        "product:jjj": "json",
        "product:hhh": "hash",
        "product:pen": "string",
    }
    assert (products.missing, products.extra, products.stale) == ([("pen",)], [], {})
    assert (products.rows, products.documents) == (3, 3)  # a, b and the foreign hash the index holds
    assert notes.foreign == {"note:x:1": "hash", "note:x:2": "string"}
    assert (notes.rows, notes.documents, notes.clean) == (1, 1, False)
    assert products.lines()[-1] == (
        "  foreign keys under the prefix: 5, e.g. product:hhh (hash), product:jjj (json), "
        "product:pen (string), product:yyy (list), product:zzz (string) "
        "(not written by vecmirror; one of another type is not a document and is not counted)"
    )

    statuses = {s.mirror: s for s in await status_command(settings, config)}
    assert statuses["products"].index.documents == products.documents
    assert statuses["notes"].index.documents == notes.documents

    args = ["--config", str(path)]
    verified = vecmirror(cli_env, "verify", "--json", *args)
    assert verified.returncode == 1, verified.stderr
    by_mirror = {d["mirror"]: d for d in json.loads(verified.stdout)}
    assert by_mirror["notes"]["foreign"] == [
        {"key": "note:x:1", "type": "hash"},
        {"key": "note:x:2", "type": "string"},
    ]
    status = vecmirror(cli_env, "status", "--json", *args)
    assert status.returncode == 0, status.stderr
    documents = {s["mirror"]: s["documents"] for s in json.loads(status.stdout)}
    assert documents == {"products": 3, "notes": 1}

    # Repair queues the row, never the foreign keys; the foreign keys stay where they are.
    await verify_command(settings, config, "products", repair=True)
    queued = await pg.fetch("SELECT row_key FROM vecmirror.changes_v1 WHERE mirror = 'products'")
    assert [r["row_key"] for r in queued] == [["pen"]]
    assert redis_client.get("product:zzz") == b"x"
