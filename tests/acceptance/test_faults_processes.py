"""Faults injected into `vecmirror run` subprocesses and into the servers themselves; once the queue
drains, invariant P (tests/invariant.py) must hold and no row may be dead-lettered for a fault that
was not the row's own."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis
import yaml

from helpers import DOCS_MIRROR, DOCS_TABLE, PRODUCTS_MIRROR, PRODUCTS_TABLE, keys
from invariant import assert_invariant
from processes import start_worker, until, vecmirror, wait_for
from vecmirror.config import META_VERSION_FIELD, parse_config
from vecmirror.stack import (
    StackUrls,
    redis_pid,
    restart_postgres,
    start_redis,
    stop_redis,
)

WORKER_QUERY = "SELECT pid FROM pg_stat_activity WHERE application_name = $1"


def _stop(worker: subprocess.Popen[str], timeout: float = 30) -> str:
    """SIGTERM, which must exit 0; returns what the worker logged."""
    worker.send_signal(signal.SIGTERM)
    try:
        out, err = worker.communicate(timeout=timeout)
    finally:
        worker.kill()
    assert worker.returncode == 0, err[-3000:]
    return out + err


def _write_config(path: Path, raw: dict[str, Any]) -> Any:
    path.write_text(yaml.safe_dump({"mirrors": [raw]}, sort_keys=False))
    return parse_config({"mirrors": [raw]}).mirrors[0]


def _products_config(path: Path) -> Any:
    return _write_config(path, PRODUCTS_MIRROR)


async def _insert_products(pg: asyncpg.Connection, first: int, last: int) -> None:
    await pg.execute(
        "INSERT INTO products SELECT 'p' || g, 'Product ' || g, g, ARRAY[g, 1, 2, 3]::real[]"
        " FROM generate_series($1::int, $2::int) g",
        first,
        last,
    )


@pytest.mark.parametrize("moment", ["before", "after"])
async def test_worker_sigkilled_before_and_after_the_redis_write_loses_nothing(
    moment: str,
    pg: asyncpg.Connection,
    database_url: str,
    redis_client: redis.Redis,
    redis_url: str,
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await pg.execute(PRODUCTS_TABLE)
    config_path = tmp_path / "mirrors.yaml"
    mirror = _products_config(config_path)
    assert vecmirror(cli_env, "migrate", "--config", str(config_path)).returncode == 0
    # A first run marks Redis: a worker that finds no marker resyncs, and that resync reads
    # failed_v1 before any batch is written, which would stop it before the gate below.
    assert vecmirror(cli_env, "run", "--once", "--config", str(config_path)).returncode == 0
    # p1 failed before (dead-lettered): the batch that syncs it clears that failure when it
    # acknowledges, after its Redis write.
    await pg.execute(
        "INSERT INTO vecmirror.failed_v1 (mirror, row_key, field, error, attempts)"
        " VALUES ('products', '{p1}', 'price', 'an earlier failure', 5)"
    )
    await _insert_products(pg, 1, 300)
    # Hold a table the worker needs next, so it stops at an exact point of its batch: versions_v1
    # is read with the rows (before any write); failed_v1 is only read by the claim, and written
    # with the acknowledgement (after the Redis write, before the commit), which EXCLUSIVE blocks.
    blocker = await asyncpg.connect(database_url)
    gate = blocker.transaction()
    await gate.start()
    lock = (
        "vecmirror.versions_v1 IN ACCESS EXCLUSIVE"
        if moment == "before"
        else "vecmirror.failed_v1 IN EXCLUSIVE"
    )
    await blocker.execute(f"LOCK TABLE {lock} MODE")
    # One batch of 100 at a time, so exactly the first batch is written when the gate holds it.
    one_batch = {
        "VECMIRROR_BATCH_SIZE": "100",
        "VECMIRROR_MAX_BATCH_SIZE": "100",
        "VECMIRROR_BATCHES_IN_FLIGHT": "1",
    }
    worker = start_worker({**cli_env, **one_batch}, config_path)
    # The batch's own statement must be the one waiting: the metrics sampler reads failed_v1 too.
    statement = "%JOIN vecmirror.versions_v1%" if moment == "before" else "%DELETE FROM vecmirror.failed_v1%"
    try:
        blocked = (
            "SELECT count(*) > 0 FROM pg_stat_activity WHERE application_name = 'vecmirror'"
            f" AND wait_event_type = 'Lock' AND query LIKE '{statement}'"
        )
        await until(lambda: pg.fetchval(blocked), 60, f"the worker to block {moment} its write")
        written = len(keys(redis_client, "product:*"))
        assert written == (0 if moment == "before" else 100)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        worker.kill()
        worker.communicate()
        await gate.rollback()
        await blocker.close()
    assert await pg.fetchval("SELECT count(*) FROM vecmirror.changes_v1") >= 300  # nothing was acknowledged
    finished = vecmirror(cli_env, "run", "--once", "--config", str(config_path))
    assert finished.returncode == 0, finished.stderr[-3000:]
    await assert_invariant(pg, redis_url, mirror)


@pytest.fixture
async def own_pg(own_stack: tuple[Path, StackUrls]) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(own_stack[1].database_url)
    try:
        yield conn
    finally:
        await conn.close()


def _env(urls: StackUrls, **settings: str) -> dict[str, str]:
    env = {
        **os.environ,
        "VECMIRROR_DATABASE_URL": urls.database_url,
        "VECMIRROR_REDIS_URL": urls.redis_url,
        "VECMIRROR_LOG_FORMAT": "json",
        "HF_HUB_OFFLINE": "1",
        "VECMIRROR_ERROR_BACKOFF": "0.2",
    }
    env.update({f"VECMIRROR_{k.upper()}": v for k, v in settings.items()})
    return env


async def _reconnect(conn: asyncpg.Connection, url: str) -> asyncpg.Connection:
    await conn.close()
    return await asyncpg.connect(url)


async def test_listen_connection_killed_and_postgres_restarted_mid_run(
    own_stack: tuple[Path, StackUrls], own_pg: asyncpg.Connection, tmp_path: Path
) -> None:
    directory, urls = own_stack
    pg = own_pg
    await pg.execute(PRODUCTS_TABLE)
    config_path = tmp_path / "mirrors.yaml"
    mirror = _products_config(config_path)
    env = _env(urls, poll_interval="600", check_interval="600")
    assert vecmirror(env, "migrate", "--config", str(config_path)).returncode == 0
    client = redis.Redis.from_url(urls.redis_url)
    worker = start_worker(env, config_path)
    try:
        await _insert_products(pg, 1, 10)
        wait_for(lambda: len(keys(client, "product:*")) == 10, 60, "the first rows (NOTIFY)")
        # The LISTEN backend is killed: the worker must notice, reconnect and catch up on its own
        # (the 600 s poll interval would be far too late).
        listener = await pg.fetchval(WORKER_QUERY, "vecmirror-listener")
        assert await pg.fetchval("SELECT pg_terminate_backend($1)", listener)
        await _insert_products(pg, 11, 20)
        wait_for(lambda: len(keys(client, "product:*")) == 20, 30, "rows queued while LISTEN was down")
        # The worker's own sessions are killed mid-run.
        await _insert_products(pg, 21, 400)
        for pid in [r["pid"] for r in await pg.fetch(WORKER_QUERY, "vecmirror")]:
            await pg.execute("SELECT pg_terminate_backend($1)", pid)
        # Postgres itself goes away for two seconds.
        await asyncio.to_thread(restart_postgres, directory, 2.0)
        pg = await _reconnect(pg, urls.database_url)
        await _insert_products(pg, 401, 450)
        await pg.execute("UPDATE products SET price = -1 WHERE sku IN ('p1', 'p450')")
        wait_for(lambda: len(keys(client, "product:*")) == 450, 90, "rows after the restart")
        wait_for(lambda: client.hget("product:p450", "price") == b"-1.0", 30, "the update after the restart")
        assert listener != await pg.fetchval(WORKER_QUERY, "vecmirror-listener")
        _stop(worker)
    finally:
        worker.kill()
        worker.communicate()
        client.close()
    await assert_invariant(pg, urls.redis_url, mirror)
    await pg.close()


async def test_redis_down_for_a_while_then_back_empty_or_not(
    own_stack: tuple[Path, StackUrls], own_pg: asyncpg.Connection, tmp_path: Path
) -> None:
    directory, urls = own_stack
    pg = own_pg
    await pg.execute(PRODUCTS_TABLE)
    config_path = tmp_path / "mirrors.yaml"
    mirror = _products_config(config_path)
    env = _env(urls, poll_interval="1", check_interval="2", redis_timeout="1")
    assert vecmirror(env, "migrate", "--config", str(config_path)).returncode == 0
    client = redis.Redis.from_url(urls.redis_url)
    worker = start_worker(env, config_path)
    try:
        await _insert_products(pg, 1, 20)
        wait_for(lambda: len(keys(client, "product:*")) == 20, 60, "the first rows")
        # Not empty: Redis hangs (frozen) for four seconds, then carries on with its data.
        pid = redis_pid(directory)
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            await _insert_products(pg, 21, 40)
            await asyncio.sleep(4)
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_for(lambda: len(keys(client, "product:*")) == 40, 60, "rows written while Redis hung")
        # Empty: Redis stops and comes back without its data, its index or vecmirror's marker.
        await asyncio.to_thread(stop_redis, directory)
        await _insert_products(pg, 41, 60)
        await pg.execute("DELETE FROM products WHERE sku IN ('p1', 'p2')")
        await asyncio.sleep(2)
        await asyncio.to_thread(start_redis, directory)
        client = redis.Redis.from_url(urls.redis_url)
        wait_for(lambda: len(keys(client, "product:*")) == 58, 90, "the resync of an empty Redis")
        _stop(worker)
    finally:
        worker.kill()
        worker.communicate()
        client.close()
    await assert_invariant(pg, urls.redis_url, mirror)


class VersionWatch:
    """Samples every document's stored version in a thread; a version that goes down is recorded."""

    def __init__(self, client: redis.Redis, names: list[str]) -> None:
        self._client, self._names = client, names
        self.highest: dict[str, int] = {}
        self.decreases: list[tuple[str, int, int]] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> VersionWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._client.pipeline(transaction=False) as pipe:
                for name in self._names:
                    pipe.hget(name, META_VERSION_FIELD)
                replies = pipe.execute()
            for name, reply in zip(self._names, replies, strict=True):
                if reply is None:
                    continue
                version = int(reply)
                if version < self.highest.get(name, 0):
                    self.decreases.append((name, self.highest[name], version))
                self.highest[name] = max(version, self.highest.get(name, 0))
            self.samples += 1
            time.sleep(0.01)


async def _hammer(database_url: str, skus: list[str], updates: int, writers: int) -> None:
    async def writer(count: int) -> None:
        conn = await asyncpg.connect(database_url)
        try:
            for _ in range(count):
                sku = random.choice(skus)
                update = "UPDATE products SET price = price + 1, vec = ARRAY[random(), 1, 2, 3]::real[]"
                await conn.execute(update + " WHERE sku = $1", sku)
        finally:
            await conn.close()

    await asyncio.gather(*(writer(updates // writers) for _ in range(writers)))


async def test_three_workers_hammering_the_same_keys_never_lower_a_version(
    pg: asyncpg.Connection,
    database_url: str,
    redis_client: redis.Redis,
    redis_url: str,
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await pg.execute(PRODUCTS_TABLE)
    config_path = tmp_path / "mirrors.yaml"
    mirror = _products_config(config_path)
    assert vecmirror(cli_env, "migrate", "--config", str(config_path)).returncode == 0
    await _insert_products(pg, 1, 40)
    skus = [f"p{i}" for i in range(1, 41)]
    env = {**cli_env, "VECMIRROR_BATCH_SIZE": "16", "VECMIRROR_POLL_INTERVAL": "0.5"}
    workers = [start_worker(env, config_path) for _ in range(3)]
    try:
        with VersionWatch(redis_client, [f"product:{s}" for s in skus]) as watch:
            await _hammer(database_url, skus, updates=3000, writers=3)
            queued = "SELECT count(*) = 0 FROM vecmirror.changes_v1"
            await until(lambda: pg.fetchval(queued), 120, "the workers to drain the queue")
        for worker in workers:
            _stop(worker)
    finally:
        for worker in workers:
            worker.kill()
            worker.communicate()
    assert watch.samples > 10 and watch.decreases == []
    await assert_invariant(pg, redis_url, mirror)


async def test_a_worker_frozen_after_reading_cannot_overwrite_newer_versions(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    redis_url: str,
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await pg.execute(DOCS_TABLE)
    config_path = tmp_path / "mirrors.yaml"
    mirror = _write_config(config_path, DOCS_MIRROR)
    assert vecmirror(cli_env, "migrate", "--config", str(config_path)).returncode == 0
    await pg.execute(
        "INSERT INTO docs SELECT g, 'Title ' || g, repeat('A fairly long body of text. ', 40) || g, 'old'"
        " FROM generate_series(1, 256) g"
    )
    env = {**cli_env, "VECMIRROR_CLAIM_TIMEOUT": "2", "VECMIRROR_EMBED_BATCH_SIZE": "16"}
    frozen = start_worker({**env, "VECMIRROR_BATCH_SIZE": "256"}, config_path)
    other: subprocess.Popen[str] | None = None
    try:
        claimed = "SELECT count(*) > 100 FROM pg_locks WHERE locktype = 'advisory' AND granted"
        await until(lambda: pg.fetchval(claimed), 120, "the first worker to claim its batch")
        frozen.send_signal(signal.SIGSTOP)  # after reading its rows, while it embeds them
        assert keys(redis_client, "doc:*") == set()
        await pg.execute("UPDATE docs SET genre = 'new', content = 'Rewritten ' || id")
        other = start_worker(env, config_path)
        new_versions = "SELECT count(*) = 0 FROM vecmirror.changes_v1"
        await until(lambda: pg.fetchval(new_versions), 240, "the other worker to sync the newer rows")
        with VersionWatch(redis_client, [f"doc:{i}" for i in range(1, 257)]) as watch:
            await asyncio.sleep(0.5)
            frozen.send_signal(signal.SIGCONT)  # it wakes with a batch that is no longer its own
            await asyncio.sleep(8)
        assert watch.decreases == [] and watch.samples > 10
        assert {redis_client.hget(f"doc:{i}", "genre") for i in range(1, 257)} == {b"new"}
        woke = _stop(frozen)
        _stop(other)
        # Its claim was ended by Postgres while it was frozen: the keepalive after its model call
        # failed, so it wrote nothing and retried (finding nothing left to do).
        assert "server_unavailable" in woke, woke[-3000:]
    finally:
        for worker in (frozen, other):
            if worker is not None:
                worker.send_signal(signal.SIGCONT)
                worker.kill()
                worker.communicate()
    await assert_invariant(pg, redis_url, mirror)


STUCK_READER = """
import asyncio, os, signal, sys
import asyncpg

async def main() -> None:
    conn = await asyncpg.connect(sys.argv[1], server_settings={"application_name": "vecmirror"})
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(42)")
        query = asyncio.ensure_future(conn.fetchval("SELECT repeat('x', 200000000)"))
        await asyncio.sleep(0.2)  # the query is sent; its result is far larger than a socket holds
        os.kill(os.getpid(), signal.SIGSTOP)
        await query

asyncio.run(main())
"""


async def test_a_worker_frozen_while_receiving_a_result_is_ended_by_its_peers(
    pg: asyncpg.Connection, database_url: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """Frozen mid-result, a backend is not idle in transaction but blocked writing (ClientWrite), so
    idle_in_transaction_session_timeout never ends it; a peer's drain does, after the claim timeout."""
    await pg.execute(PRODUCTS_TABLE)
    config_path = tmp_path / "mirrors.yaml"
    _products_config(config_path)
    assert vecmirror(cli_env, "migrate", "--config", str(config_path)).returncode == 0
    stuck = subprocess.Popen([sys.executable, "-c", STUCK_READER, database_url])
    try:
        writing = (
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'vecmirror'"
            " AND wait_event = 'ClientWrite'"
        )
        await until(lambda: pg.fetchval(writing), 60, "the frozen reader's backend to block")
        pid = await pg.fetchval(writing)
        await asyncio.sleep(1.5)
        env = {**cli_env, "VECMIRROR_CLAIM_TIMEOUT": "1"}
        drained = vecmirror(env, "run", "--once", "--config", str(config_path))
        assert drained.returncode == 0, drained.stderr[-3000:]
        assert "stuck_claims_ended" in drained.stderr
        gone = "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $1"
        await until(lambda: pg.fetchval(gone, pid), 30, "the stuck backend to end")
        assert await pg.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
    finally:
        stuck.send_signal(signal.SIGCONT)
        stuck.kill()
        stuck.wait()
