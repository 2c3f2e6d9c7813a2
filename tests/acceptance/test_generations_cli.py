"""Generations through the CLI (issue 12): a running worker notices on a wake-up that Postgres went
back in time and resyncs the mirror in a new generation; a mirror removed and added back syncs with
`migrate` and `run --once`; `verify --repair` fixes documents ahead of Postgres. Each ends with
`vecmirror verify` exiting 0."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import redis
import yaml

from helpers import NOTES_MIRROR, NOTES_TABLE, PRODUCTS_MIRROR, PRODUCTS_TABLE
from processes import start_worker, vecmirror, wait_for
from vecmirror.config import META_VERSION_FIELD

FIVE_ROWS = "INSERT INTO products SELECT 'p' || n, 'P' || n, n, '{1,2,3,4}' FROM generate_series(1, 5) n"


def _config(tmp_path: Path, *mirrors: dict[str, Any]) -> Path:
    path = tmp_path / "mirrors.yaml"
    path.write_text(yaml.safe_dump({"mirrors": list(mirrors)}, sort_keys=False))
    return path


def _ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr + result.stdout
    return result


def _stop(worker: subprocess.Popen[str]) -> str:
    worker.send_signal(signal.SIGTERM)
    _, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 0, stderr
    return stderr


async def test_a_running_worker_notices_postgres_went_back_and_resyncs(
    pg: asyncpg.Connection, redis_client: redis.Redis, cli_env: dict[str, str], tmp_path: Path
) -> None:
    await pg.execute(PRODUCTS_TABLE)
    config = _config(tmp_path, PRODUCTS_MIRROR)
    env = {**cli_env, "VECMIRROR_POLL_INTERVAL": "0.2", "VECMIRROR_HTTP_PORT": "0"}
    _ok(vecmirror(env, "migrate", "--config", str(config)))
    await pg.execute(
        "INSERT INTO products SELECT 'p' || n, 'P' || n, n, '{1,2,3,4}' FROM generate_series(1, 5) n"
    )
    back_to = await pg.fetchval("SELECT vecmirror.last_change_id_v1()")
    versions = await pg.fetch("SELECT row_key, version FROM vecmirror.versions_v1")
    worker = start_worker(env, config)
    try:
        wait_for(lambda: redis_client.hget("product:p5", "name") == b"P5", 60, "the rows to sync")
        await pg.execute("UPDATE products SET name = 'later'")
        wait_for(lambda: redis_client.hget("product:p1", "name") == b"later", 60, "the update to sync")
        # A point-in-time recovery, as far as vecmirror can tell: rows, versions and change ids back.
        await pg.execute("ALTER TABLE products DISABLE TRIGGER USER")
        await pg.execute("UPDATE products SET name = 'P' || substr(sku, 2)")
        await pg.execute("ALTER TABLE products ENABLE TRIGGER USER")
        await pg.execute("DELETE FROM vecmirror.versions_v1")
        await pg.executemany(
            "INSERT INTO vecmirror.versions_v1 VALUES ('products', $1, $2)",
            [(r["row_key"], r["version"]) for r in versions],
        )
        await pg.execute(f"ALTER TABLE vecmirror.changes_v1 ALTER COLUMN id RESTART WITH {back_to + 1}")
        await pg.execute("UPDATE products SET price = 100 WHERE sku = 'p2'")  # wakes the worker
        wait_for(lambda: redis_client.hget("product:p1", "name") == b"P1", 60, "the resync")
        wait_for(lambda: float(redis_client.hget("product:p2", "price") or 0) == 100, 60, "the edit after it")
    finally:
        stderr = _stop(worker)
    events = [json.loads(line).get("event") for line in stderr.splitlines() if line.startswith("{")]
    assert "generation_renewed" in events and "mirror_resync_queued" in events
    _ok(vecmirror(cli_env, "verify", "--config", str(config)))


async def test_removed_and_added_back_then_verify_repairs_versions_ahead(
    pg: asyncpg.Connection, redis_client: redis.Redis, cli_env: dict[str, str], tmp_path: Path
) -> None:
    await pg.execute(PRODUCTS_TABLE)
    await pg.execute(NOTES_TABLE)
    both = _config(tmp_path, PRODUCTS_MIRROR, NOTES_MIRROR)
    _ok(vecmirror(cli_env, "migrate", "--config", str(both)))
    await pg.execute(
        "INSERT INTO products SELECT 'p' || n, 'P' || n, n, '{1,2,3,4}' FROM generate_series(1, 5) n"
    )
    await pg.execute("UPDATE products SET price = price + 1")
    _ok(vecmirror(cli_env, "run", "--once", "--config", str(both)))

    _ok(vecmirror(cli_env, "migrate", "--config", str(_config(tmp_path, NOTES_MIRROR))))
    await pg.execute("UPDATE products SET name = 'changed' WHERE sku = 'p1'")
    await pg.execute("DELETE FROM products WHERE sku = 'p2'")
    both = _config(tmp_path, PRODUCTS_MIRROR, NOTES_MIRROR)
    _ok(vecmirror(cli_env, "migrate", "--config", str(both)))
    _ok(vecmirror(cli_env, "run", "--once", "--config", str(both)))
    assert redis_client.hget("product:p1", "name") == b"changed"
    assert not redis_client.exists("product:p2")
    _ok(vecmirror(cli_env, "verify", "--config", str(both)))

    redis_client.hset("product:p3", mapping={META_VERSION_FIELD: 10**9, "name": "ahead"})
    drifted = vecmirror(cli_env, "verify", "products", "--json", "--config", str(both))
    assert drifted.returncode == 1, drifted.stderr
    (report,) = json.loads(drifted.stdout)
    assert report["ahead"] == [["p3"]]
    repaired = vecmirror(cli_env, "verify", "products", "--repair", "--config", str(both))
    assert repaired.returncode == 1, repaired.stderr  # it reports the drift it queued
    _ok(vecmirror(cli_env, "run", "--once", "--config", str(both)))
    assert redis_client.hget("product:p3", "name") == b"P3"
    _ok(vecmirror(cli_env, "verify", "--config", str(both)))
