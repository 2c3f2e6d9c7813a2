"""`vecmirror verify [--repair]` finds every kind of drift on HASH and JSON mirrors and repairs it."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import asyncpg
import numpy as np
import redis

from helpers import (
    DOCS_MIRROR,
    DOCS_TABLE,
    NOTES_MIRROR,
    NOTES_TABLE,
    PRODUCTS_MIRROR,
    PRODUCTS_TABLE,
    sync_once,
)
from vecmirror.commands import migrate_command, verify_command


async def test_verify_reports_drift_and_repair_fixes_it(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    write_config: Any,
    settings_for: Any,
    embedder_factory: Any,
    cli_env: dict[str, str],
) -> None:
    for ddl in (DOCS_TABLE, PRODUCTS_TABLE, NOTES_TABLE):
        await pg.execute(ddl)
    path, config = write_config([DOCS_MIRROR, PRODUCTS_MIRROR, NOTES_MIRROR])
    settings = settings_for(path)
    await migrate_command(settings, config)
    await pg.execute(
        "INSERT INTO docs VALUES (1, 'Cats', 'purr', 'pets'), (2, 'Dogs', 'bark', NULL), "
        "(3, 'Fish', 'swim', 'x')"
    )
    await pg.execute(
        "INSERT INTO products VALUES ('a', 'A', 1.5, '{1,0,0,0}'), ('b', 'B', 2, '{0,1,0,0}'), "
        "('bad', 'Bad', 1, '{1,2}')"
    )
    await pg.execute(
        "INSERT INTO notes VALUES ('t', 1, 'one', 'red|blue', '{1,0,0}'), ('t', 2, 'two', NULL, '{0,1,0}')"
    )
    await sync_once(settings, config, embedder_factory)
    clean = await verify_command(settings, config, None, repair=False)
    assert [d.as_dict() for d in clean if not d.clean] == []
    assert [(d.mirror, d.rows, d.documents) for d in clean] == [
        ("docs", 3, 3),
        ("products", 3, 2),
        ("notes", 2, 2),
    ]

    redis_client.delete("doc:1")  # missing
    redis_client.hset("doc:99", mapping={"title": "ghost", "_vm_key": '["99"]'})  # extra
    redis_client.hset("doc:2", "title", "Wolves")  # a field behind our back
    redis_client.hset("doc:3", "_vm_hash", "0" * 32)  # the embedded text is not what the row says
    redis_client.hset("product:a", "vec", np.zeros(2, dtype=np.float32).tobytes())  # short vector
    redis_client.hset(
        "product:bad", mapping={"name": "Bad", "_vm_key": '["bad"]'}
    )  # a failed row has a document
    redis_client.execute_command("JSON.SET", "note:t:1", "$.meta.labels", '"green"')
    await pg.execute("ALTER TABLE notes DISABLE TRIGGER USER")
    await pg.execute("UPDATE notes SET body = 'changed' WHERE id = 2")  # a change capture never saw
    await pg.execute("ALTER TABLE notes ENABLE TRIGGER USER")

    drifts = {d.mirror: d for d in await verify_command(settings, config, None, repair=False)}
    docs, products, notes = drifts["docs"], drifts["products"], drifts["notes"]
    assert docs.missing == [("1",)] and docs.extra == [("99",)]
    assert docs.stale == {
        ("2",): "field 'title' differs",
        ("3",): "content hash differs: the text, model or backend changed since it was embedded",
    }
    assert products.stale[("a",)] == "vector has 2 values, dims is 4"
    assert products.stale[("bad",)].startswith("the row fails (vec: the vector has 2 values")
    assert notes.stale == {("t", "1"): "field 'meta' differs", ("t", "2"): "field 'body' differs"}

    cli = subprocess.run(
        [sys.executable, "-m", "vecmirror.cli", "verify", "--json", "--config", str(path)],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 1 and {d["mirror"] for d in json.loads(cli.stdout)} == {
        "docs",
        "products",
        "notes",
    }

    await verify_command(settings, config, None, repair=True)
    await sync_once(settings, config, embedder_factory)
    assert all(d.clean for d in await verify_command(settings, config, None, repair=False))
    assert redis_client.hget("doc:2", "title") == b"Dogs"
