"""`vecmirror plan` and `migrate --dry-run` as users run them: the same report, exit 0 when nothing
would change and 3 when something would, `--json` alone on stdout, broken worlds as one line and
exit 2; `migrate` says what it kept of a removed mirror, `--drop-data` deletes it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis
from test_failure_worlds import (  # the broken worlds every command meets
    SECRET,
    WORLDS,
    OwnRedis,
    make_world,
    password_redis,  # noqa: F401  (a fixture)
    plain_redis,  # noqa: F401  (a fixture)
)

from helpers import DOCS_MIRROR, DOCS_TABLE, PRODUCTS_MIRROR, PRODUCTS_TABLE, keys
from processes import vecmirror

EXIT_CHANGES_PENDING = 3


async def test_plan_exit_codes_json_and_dry_run(
    pg: asyncpg.Connection, cli_env: dict[str, str], write_config: Any, redis_client: redis.Redis
) -> None:
    await pg.execute(DOCS_TABLE)
    await pg.execute(PRODUCTS_TABLE)
    await pg.execute("INSERT INTO docs VALUES (1, 'Cats', 'purr', 'pets'), (2, 'Dogs', 'bark', NULL)")
    await pg.execute("INSERT INTO products VALUES ('a', 'A', 1.5, '{1,0,0,0}')")
    path, _ = write_config([DOCS_MIRROR, PRODUCTS_MIRROR])

    fresh = vecmirror(cli_env, "plan", "--config", str(path))
    assert fresh.returncode == EXIT_CHANGES_PENDING, fresh.stderr
    assert "+ docs: added (public.docs): its first sync will queue 2 rows" in fresh.stdout
    assert fresh.stdout.splitlines()[-1] == "changes pending"
    dry = vecmirror(cli_env, "migrate", "--dry-run", "--config", str(path))
    assert (dry.returncode, dry.stdout) == (fresh.returncode, fresh.stdout)
    assert await pg.fetchval("SELECT to_regclass('vecmirror.migrations')") is None  # nothing applied

    as_json = vecmirror(cli_env, "plan", "--json", "--config", str(path))
    assert as_json.returncode == EXIT_CHANGES_PENDING
    payload = json.loads(as_json.stdout)
    assert payload["changes"] is True and payload["pending_migrations"]
    assert [(m["mirror"], m["action"], m["rows_to_queue"]) for m in payload["mirrors"]] == [
        ("docs", "add", 2),
        ("products", "add", 1),
    ]

    assert vecmirror(cli_env, "migrate", "--config", str(path)).returncode == 0
    synced = vecmirror(cli_env, "run", "--once", "--config", str(path))
    assert synced.returncode == 0, synced.stderr
    settled = vecmirror(cli_env, "plan", "--config", str(path))
    assert settled.returncode == 0, settled.stdout + settled.stderr
    assert settled.stdout.splitlines() == [
        "migrations: none pending",
        "= docs: unchanged (2 documents in docs_idx)",
        "= products: unchanged (1 documents in products_idx)",
        "nothing would change",
    ]
    assert json.loads(vecmirror(cli_env, "plan", "--json", "--config", str(path)).stdout)["changes"] is False

    # Removing a mirror: the plan says what Redis keeps; migrate keeps it, then --drop-data deletes it.
    only_docs, _ = write_config([DOCS_MIRROR])
    removal = vecmirror(cli_env, "plan", "--config", str(only_docs))
    assert removal.returncode == EXIT_CHANGES_PENDING
    assert (
        "- products: removed (public.products): Redis keeps 1 documents under prefix product and index "
        "products_idx; `vecmirror migrate --drop-data` deletes them"
    ) in removal.stdout
    kept = vecmirror(cli_env, "migrate", "--config", str(only_docs))
    assert kept.returncode == 0, kept.stderr
    assert (
        "kept 'products': 1 documents under prefix product and index products_idx; "
        "`vecmirror migrate --drop-data` deletes them"
    ) in kept.stdout
    assert keys(redis_client, "product:*") == {"product:a"}
    dropped = vecmirror(cli_env, "migrate", "--drop-data", "--config", str(only_docs))
    assert dropped.returncode == 0, dropped.stderr
    assert "deleted 'products': index products_idx and its 1 documents" in dropped.stdout
    assert keys(redis_client, "product:*") == set()
    assert keys(redis_client, "doc:*") == {"doc:1", "doc:2"}
    assert vecmirror(cli_env, "plan", "--drop-data", "--config", str(only_docs)).returncode == 0


@pytest.mark.parametrize("command", [("plan",), ("migrate", "--dry-run"), ("plan", "--json")])
@pytest.mark.parametrize(
    "world_name", ["postgres_down", "no_database", "redis_down", "redis_password", "no_query_engine"]
)
async def test_plan_meets_broken_worlds_with_one_line_and_exit_2(
    command: tuple[str, ...],
    world_name: str,
    cli_env: dict[str, str],
    pg: asyncpg.Connection,
    tmp_path: Path,
    plain_redis: OwnRedis,  # noqa: F811
    password_redis: OwnRedis,  # noqa: F811
) -> None:
    world = WORLDS[world_name]
    cell = await make_world(world, cli_env, tmp_path, {"plain": plain_redis, "password": password_redis}, pg)
    result = vecmirror(cell.env, *command, "--config", str(cell.config), timeout=90)
    everything = result.stdout + result.stderr
    assert result.returncode == 2, everything
    assert "Traceback" not in everything and SECRET not in everything
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vecmirror: ") and world.says.format(port=cell.port) in lines[0]
    assert result.stdout == ""
