"""Issue 13's must-shows, through the `vecmirror` command with the real model, on sharded Redis built
from the stack's own server (tests/conftest.py): the seed scenario answers alike on standalone Redis
and on a one-node cluster (which enforces one-slot scripts as a proxy endpoint does); on three masters
every change, a shard restarted empty and a worker SIGKILLed mid-batch end, after a drain, with every
row's document on the master owning its slot (read node by node, see shard_checks.py) and `verify`
agreeing; the other commands work there or refuse in one line.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis
import yaml
from shard_checks import (
    assert_documents_on_their_shards,
    expected_rows,
    guards_per_node,
    node_keys,
    owned_slots,
    tombstoned,
)

from conftest import Cluster, with_database
from processes import start_worker, vecmirror, wait_for
from vecmirror.config import MirrorConfig, parse_config
from vecmirror.stack import StackUrls, start_cluster_node, stop_cluster_node

# The seed scenario (issue 2's mirrors file): HASH under `doc:`, index vector_idx, HNSW L2 over 384
# dims of all-MiniLM-L6-v2.
SEED_TABLE = "CREATE TABLE docs (id integer PRIMARY KEY, content text, genre text)"
SEED_MIRROR: dict[str, Any] = {
    "name": "docs",
    "table": "public.docs",
    "embed": {"field": "embedding", "template": "{content}"},
    "index": {
        "index": {"name": "vector_idx", "prefix": "doc", "storage_type": "hash"},
        "fields": [
            {"name": "content", "type": "text"},
            {"name": "genre", "type": "tag"},
            {
                "name": "embedding",
                "type": "vector",
                "attrs": {"algorithm": "hnsw", "dims": 384, "distance_metric": "l2", "datatype": "float32"},
            },
        ],
    },
}
SEED_TEXTS = [
    (1, "That is a very happy person", "people"),
    (2, "That is a happy dog", "pets"),
    (3, "Today is a sunny day", "weather"),
]
SEED_SELECT = "SELECT id::text AS key, content, genre FROM docs"

# A precomputed vector: thousands of rows sync in seconds, so a batch can be caught in the middle.
ITEMS_TABLE = "CREATE TABLE items (id integer PRIMARY KEY, title text NOT NULL, vec real[])"
ITEMS_MIRROR: dict[str, Any] = {
    "name": "items",
    "table": "public.items",
    "vector_column": "vec",
    "index": {
        "index": {"name": "items_idx", "prefix": "item", "storage_type": "hash"},
        "fields": [
            {"name": "title", "type": "text"},
            {
                "name": "vec",
                "type": "vector",
                "attrs": {"algorithm": "flat", "dims": 4, "distance_metric": "l2"},
            },
        ],
    },
}
ITEMS_SELECT = "SELECT id::text AS key, title FROM items"
# The master owning the slot of `items_idx` (12660 of three even ranges): without a coordinator the
# index is defined there only, so restarting it empty loses the index definition as well.
INDEX_NODE = 2


def _config(tmp_path: Path, raw: dict[str, Any]) -> tuple[Path, MirrorConfig]:
    path = tmp_path / "mirrors.yaml"
    path.write_text(yaml.safe_dump({"mirrors": [raw]}, sort_keys=False))
    return path, parse_config({"mirrors": [raw]}).mirrors[0]


def _ok(result: Any) -> Any:
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    return result


def _drain(env: dict[str, str], path: Path) -> None:
    _ok(vecmirror(env, "run", "--once", "--config", str(path), timeout=240))


async def _assert_synced(
    pg: asyncpg.Connection, env: dict[str, str], path: Path, mirror: MirrorConfig, nodes: list[str]
) -> None:
    """The invariant of issue 13 on three masters, then `verify` exiting 0."""
    select, vector, dims = (
        (SEED_SELECT, "embedding", 384) if mirror.name == "docs" else (ITEMS_SELECT, "vec", 4)
    )
    assert await pg.fetchval("SELECT count(*) FROM vecmirror.changes_v1") == 0, "the queue did not drain"
    expected = await expected_rows(pg, mirror, select)
    assert_documents_on_their_shards(nodes, mirror, expected, vector, dims)
    _ok(vecmirror(env, "verify", "--config", str(path)))


@pytest.fixture
async def second_database_url(servers: StackUrls) -> AsyncIterator[str]:
    """Another database of this test's own, for a second mirror of the same table."""
    name = f"vecmirror_sharded_{os.getpid()}_{id(servers)}"
    admin = await asyncpg.connect(servers.database_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield with_database(servers.database_url, name)
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _seed(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(SEED_TABLE)
        await conn.executemany("INSERT INTO docs VALUES ($1, $2, $3)", SEED_TEXTS)
    finally:
        await conn.close()


def _seed_query(env: dict[str, str], path: Path) -> list[tuple[str, float]]:
    result = _ok(
        vecmirror(env, "query", "docs", "That is a happy person", "--k", "3", "--json", "--config", str(path))
    )
    return [(hit["id"], float(hit["distance"])) for hit in json.loads(result.stdout)]


async def test_seed_scenario_gives_the_same_three_distances_on_standalone_redis_and_a_one_node_cluster(
    database_url: str,
    second_database_url: str,
    redis_url: str,
    cluster1_url: str,
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    path, _ = _config(tmp_path, SEED_MIRROR)
    answers = []
    for db_url, r_url in ((database_url, redis_url), (second_database_url, cluster1_url)):
        await _seed(db_url)
        env = {**cli_env, "VECMIRROR_DATABASE_URL": db_url, "VECMIRROR_REDIS_URL": r_url}
        _ok(vecmirror(env, "migrate", "--config", str(path)))
        _drain(env, path)
        _ok(vecmirror(env, "verify", "--config", str(path)))
        answers.append(_seed_query(env, path))
    standalone, clustered = answers
    assert [key for key, _ in standalone] == ["doc:1", "doc:2", "doc:3"], standalone
    assert [key for key, _ in clustered] == [key for key, _ in standalone], (standalone, clustered)
    for (_, alone), (_, sharded) in zip(standalone, clustered, strict=True):
        assert sharded == pytest.approx(alone, abs=1e-6), (standalone, clustered)


def _cluster_env(cli_env: dict[str, str], url: str) -> dict[str, str]:
    return {**cli_env, "VECMIRROR_REDIS_URL": url}


async def test_three_masters_hold_each_row_on_its_shard_through_every_kind_of_change(
    pg: asyncpg.Connection,
    cli_env: dict[str, str],
    cluster3_url: str,
    cluster3_nodes: list[str],
    tmp_path: Path,
) -> None:
    env = _cluster_env(cli_env, cluster3_url)
    path, mirror = _config(tmp_path, SEED_MIRROR)
    await pg.execute(SEED_TABLE)
    await pg.execute(
        "INSERT INTO docs SELECT g, 'Note number ' || g, 'g' || (g % 3) FROM generate_series(1, 30) g"
    )
    _ok(vecmirror(env, "migrate", "--config", str(path)))
    _drain(env, path)  # the first run's backfill
    await _assert_synced(pg, env, path, mirror, cluster3_nodes)
    assert all(
        node_keys(url) - {k for k in node_keys(url) if k.startswith("vecmirror:")} for url in cluster3_nodes
    )

    steps = [
        # inserts made while the mirror is synced (captured, not backfilled)
        "INSERT INTO docs SELECT g, 'Later note ' || g, 'new' FROM generate_series(31, 45) g",
        # text re-embedded, another field only, a field removed (NULL)
        "UPDATE docs SET content = content || ' (edited)' WHERE id % 4 = 0",
        "UPDATE docs SET genre = 'moved' WHERE id % 5 = 1",
        "UPDATE docs SET genre = NULL WHERE id IN (2, 3, 33)",
        # key changes: each document moves to the slot (most often the shard) of its new key
        "UPDATE docs SET id = id + 1000 WHERE id <= 6",
        "DELETE FROM docs WHERE id % 7 = 0",
    ]
    for statement in steps:
        await pg.execute(statement)
        _drain(env, path)
        await _assert_synced(pg, env, path, mirror, cluster3_nodes)
    assert {"doc:1", "doc:7", "doc:14"} <= tombstoned(cluster3_nodes)  # moved away, deleted

    await pg.execute("TRUNCATE docs")
    _drain(env, path)
    await _assert_synced(pg, env, path, mirror, cluster3_nodes)
    await pg.execute("INSERT INTO docs VALUES (7, 'Back after the truncate', 'again')")  # over a tombstone
    _drain(env, path)
    await _assert_synced(pg, env, path, mirror, cluster3_nodes)


async def _sync_items(pg: asyncpg.Connection, env: dict[str, str], path: Path, rows: int) -> None:
    await pg.execute(ITEMS_TABLE)
    await pg.execute(
        "INSERT INTO items SELECT g, 'Item ' || g, ARRAY[g, 1, 2, 3]::real[]"
        " FROM generate_series(1, $1::int) g",
        rows,
    )
    _ok(vecmirror(env, "migrate", "--config", str(path)))
    _drain(env, path)


def _node_documents(url: str) -> set[str]:
    return {key for key in node_keys(url) if not key.startswith("vecmirror:")}


async def test_a_shard_restarted_empty_gets_its_rows_back_at_the_next_drain(
    pg: asyncpg.Connection, cli_env: dict[str, str], own_cluster3: tuple[Path, Cluster], tmp_path: Path
) -> None:
    directory, cluster = own_cluster3
    env = _cluster_env(cli_env, cluster.url)
    path, mirror = _config(tmp_path, ITEMS_MIRROR)
    await _sync_items(pg, env, path, 60)
    await _assert_synced(pg, env, path, mirror, cluster.node_urls)
    before = _node_documents(cluster.node_urls[INDEX_NODE])
    assert before

    stop_cluster_node(directory, INDEX_NODE)
    start_cluster_node(directory, INDEX_NODE)
    assert node_keys(cluster.node_urls[INDEX_NODE]) == set()  # it forgot everything, its index too
    drift = vecmirror(env, "verify", "--config", str(path))
    assert drift.returncode == 1, drift.stdout + drift.stderr  # rows without a document: drift, not an error

    _drain(env, path)  # nothing changed in Postgres: the drain itself must notice the forgetful shard
    assert _node_documents(cluster.node_urls[INDEX_NODE]) == before
    await _assert_synced(pg, env, path, mirror, cluster.node_urls)
    assert guards_per_node(cluster.node_urls, "items") == [len(owned_slots(url)) for url in cluster.node_urls]


async def test_a_shard_restarted_empty_under_a_running_worker_is_repaired(
    pg: asyncpg.Connection, cli_env: dict[str, str], own_cluster3: tuple[Path, Cluster], tmp_path: Path
) -> None:
    directory, cluster = own_cluster3
    env = {
        **_cluster_env(cli_env, cluster.url),
        "VECMIRROR_CHECK_INTERVAL": "1",
        "VECMIRROR_POLL_INTERVAL": "0.5",
    }
    port = _free_port()
    env |= {
        "VECMIRROR_HTTP_PORT": str(port),
        "VECMIRROR_HTTP_HOST": "127.0.0.1",
        "VECMIRROR_ERROR_BACKOFF": "0.2",
    }
    path, mirror = _config(tmp_path, ITEMS_MIRROR)
    await _sync_items(pg, env, path, 60)
    worker = start_worker(env, path)
    try:
        wait_for(lambda: _ready(port), 60, "the worker to be ready")
        before = _node_documents(cluster.node_urls[1])
        stop_cluster_node(directory, 1)
        await pg.execute("UPDATE items SET title = title || ' while a shard is down' WHERE id % 2 = 0")
        start_cluster_node(directory, 1)
        await pg.execute("UPDATE items SET title = title || ', and back' WHERE id % 3 = 0")
        wait_for(lambda: _node_documents(cluster.node_urls[1]) == before, 60, "the shard's rows to come back")
        wait_for(
            lambda: vecmirror(env, "verify", "--config", str(path)).returncode == 0, 60, "verify to agree"
        )
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        worker.kill()
        _, err = worker.communicate()
        print(err[-6000:])  # shown when the test fails
    assert "Traceback" not in err, err[-4000:]
    await _assert_synced(pg, env, path, mirror, cluster.node_urls)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return bool(response.status == 200)
    except OSError:  # not listening yet, or 503
        return False


async def _writes_meanwhile(pg: asyncpg.Connection) -> None:
    """Users keep writing while the batch is held: updates, key changes, deletes, inserts."""
    await pg.execute("UPDATE items SET title = title || ' v2' WHERE id % 10 = 0")
    await pg.execute("UPDATE items SET id = id + 100000 WHERE id % 25 = 1")
    await pg.execute("DELETE FROM items WHERE id % 9 = 0")
    await pg.execute(
        "INSERT INTO items SELECT g, 'New ' || g, ARRAY[g, 0, 0, 1]::real[]"
        " FROM generate_series(5001, 5200) g"
    )


async def test_a_worker_sigkilled_mid_batch_on_three_masters_loses_nothing(
    pg: asyncpg.Connection,
    database_url: str,
    cli_env: dict[str, str],
    cluster3_url: str,
    cluster3_nodes: list[str],
    tmp_path: Path,
) -> None:
    env = _cluster_env(cli_env, cluster3_url)
    path, mirror = _config(tmp_path, ITEMS_MIRROR)
    await _sync_items(pg, env, path, 0)  # migrated and marked: the worker below goes straight to batches
    await pg.execute(
        "INSERT INTO items SELECT g, 'Item ' || g, ARRAY[g, 1, 2, 3]::real[] FROM generate_series(1, 3000) g"
    )
    # Hold failed_v1, which a batch writes when it acknowledges, after its Redis write, where one of
    # its rows had failed before: the worker is caught with its first batch written on every shard
    # and not acknowledged, and killed there.
    await pg.execute(
        "INSERT INTO vecmirror.failed_v1 (mirror, row_key, field, error, attempts)"
        " VALUES ('items', '{1}', 'title', 'an earlier failure', 5)"
    )
    blocker = await asyncpg.connect(database_url)
    gate = blocker.transaction()
    await gate.start()
    await blocker.execute("LOCK TABLE vecmirror.failed_v1 IN EXCLUSIVE MODE")
    one_batch = {
        "VECMIRROR_BATCH_SIZE": "300",
        "VECMIRROR_MAX_BATCH_SIZE": "300",
        "VECMIRROR_BATCHES_IN_FLIGHT": "1",
    }
    worker = start_worker({**env, **one_batch, "VECMIRROR_HTTP_PORT": "0"}, path)
    blocked = (
        "SELECT count(*) > 0 FROM pg_stat_activity WHERE application_name = 'vecmirror'"
        " AND wait_event_type = 'Lock' AND query LIKE '%DELETE FROM vecmirror.failed_v1%'"
    )
    try:
        for _ in range(600):
            if await pg.fetchval(blocked):
                break
            await asyncio.sleep(0.1)
        else:
            worker.kill()
            raise AssertionError(
                f"the worker never reached its acknowledgement: {worker.communicate()[1][-3000:]}"
            )
        await _writes_meanwhile(pg)
        written = [len(_node_documents(url)) for url in cluster3_nodes]
        assert all(written) and sum(written) < 3000, written  # mid-run: on every shard, not all of it
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        worker.kill()
        worker.communicate()
        await gate.rollback()
        await blocker.close()
    await pg.execute("UPDATE items SET title = title || ' after' WHERE id % 11 = 0")
    _drain(env, path)
    await _assert_synced(pg, env, path, mirror, cluster3_nodes)


async def test_the_operating_commands_work_on_three_masters_and_query_refuses(
    pg: asyncpg.Connection,
    cli_env: dict[str, str],
    cluster3_url: str,
    cluster3_nodes: list[str],
    tmp_path: Path,
) -> None:
    env = _cluster_env(cli_env, cluster3_url)
    path, mirror = _config(tmp_path, SEED_MIRROR)
    await pg.execute(SEED_TABLE)
    await pg.execute("INSERT INTO docs SELECT g, 'Note number ' || g, 'g' FROM generate_series(1, 20) g")
    await pg.execute("INSERT INTO docs VALUES (21, NULL, 'broken')")  # a NULL in the template: a failed row
    _ok(vecmirror(env, "migrate", "--config", str(path)))
    _drain(env, path)

    [status] = json.loads(_ok(vecmirror(env, "status", "--json", "--config", str(path))).stdout)
    assert (status["state"], status["pending"], status["table_rows"], status["documents"]) == (
        "ok",
        0,
        21,
        20,
    )
    assert status["index"]["exists"] and status["index"]["name"] == "vector_idx", status
    planned = json.loads(_ok(vecmirror(env, "plan", "--json", "--config", str(path))).stdout)
    assert [m["index"]["documents"] for m in planned["mirrors"]] == [20], planned  # all shards
    failed = json.loads(_ok(vecmirror(env, "failed", "list", "--json", "--config", str(path))).stdout)
    assert [row["key"] for row in failed] in ([["21"]], ["21"]), failed

    await pg.execute("UPDATE docs SET content = 'Fixed at last' WHERE id = 21")
    _ok(vecmirror(env, "failed", "retry", "--config", str(path)))
    _drain(env, path)
    assert json.loads(_ok(vecmirror(env, "failed", "list", "--json", "--config", str(path))).stdout) == []
    await _assert_synced(pg, env, path, mirror, cluster3_nodes)

    # Documents deleted behind vecmirror's back, on two shards: verify sees it, backfill repairs it.
    lost = [next(iter(_node_documents(url))) for url in cluster3_nodes[:2]]
    for url, key in zip(cluster3_nodes, lost, strict=False):
        redis.Redis.from_url(url).delete(key)
    drift = vecmirror(env, "verify", "--json", "--config", str(path))
    assert drift.returncode == 1, drift.stdout + drift.stderr
    [report] = json.loads(drift.stdout)
    assert {f"doc:{key}" for (key,) in report["missing"]} == set(lost), report
    assert (report["rows"], report["documents"], report["extra"]) == (21, 19, []), report
    _ok(vecmirror(env, "backfill", "docs", "--config", str(path), timeout=240))
    await _assert_synced(pg, env, path, mirror, cluster3_nodes)

    _assert_checks_see_no_drift({**env, "VECMIRROR_CHECK_INTERVAL": "0.5", "VECMIRROR_HTTP_PORT": "0"}, path)

    refused = vecmirror(env, "query", "docs", "a note", "--config", str(path))
    assert refused.returncode == 2 and refused.stdout == "", refused.stdout + refused.stderr
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("vecmirror: "), refused.stderr
    assert "Traceback" not in refused.stderr


def _assert_checks_see_no_drift(env: dict[str, str], path: Path) -> None:
    """A running worker's periodic check (table rows against index documents) of a mirror in sync
    finds nothing: it counts every shard's documents, not one shard's."""
    worker = start_worker(env, path)
    try:
        wait_for(lambda: worker.stderr_so_far().count('"mirror_checked"') >= 2, 120, "two checks")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        worker.kill()
        _, err = worker.communicate()
    checks = [event for event in map(json.loads, err.splitlines()) if event["event"] == "mirror_checked"]
    assert checks, err[-3000:]
    assert not [check for check in checks if check["drifted"]], checks[:3]
    assert "drift_repaired" not in err, err[-3000:]


COMMANDS_NEEDING_REDIS = [
    ("run", "--once"),
    ("run",),
    ("verify",),
    ("status",),
    ("backfill",),
    ("query", "docs", "a note"),
    ("plan",),
]


async def test_every_command_against_a_cluster_whose_nodes_are_all_down_says_one_line_and_exits_2(
    pg: asyncpg.Connection, cli_env: dict[str, str], own_cluster3: tuple[Path, Cluster], tmp_path: Path
) -> None:
    directory, cluster = own_cluster3
    env = {**_cluster_env(cli_env, cluster.url), "VECMIRROR_HTTP_PORT": "0"}
    path, _ = _config(tmp_path, SEED_MIRROR)
    await pg.execute(SEED_TABLE)
    await pg.execute("INSERT INTO docs VALUES (1, 'One note', 'g')")
    _ok(vecmirror(env, "migrate", "--config", str(path)))  # Postgres is ready: only Redis is missing
    stop_cluster_node(directory, 2)  # first one node, not the URL's: the one down is named
    result = vecmirror(env, "verify", "--config", str(path), timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    down = urlsplit(cluster.node_urls[2]).port
    assert result.stderr.startswith(f"vecmirror: Redis unreachable at 127.0.0.1:{down} "), result.stderr
    for index in range(2):
        stop_cluster_node(directory, index)
    for command in COMMANDS_NEEDING_REDIS:
        result = vecmirror(env, *command, "--config", str(path), timeout=120)
        everything = result.stdout + result.stderr
        assert result.returncode == 2, (command, everything[-3000:])
        assert "Traceback" not in everything, (command, everything[-3000:])
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, (command, result.stderr[-3000:])
        if command[0] == "run":
            assert json.loads(lines[0])["event"] == "run_failed", (command, lines[0])
        else:
            assert lines[0].startswith("vecmirror: Redis unreachable"), (command, lines[0])
