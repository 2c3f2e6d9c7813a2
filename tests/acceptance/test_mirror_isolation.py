"""One mirror's trouble is its own: `vecmirror run` with two mirrors, one of which gets a timestamp
Python cannot hold (it crashed every mirror once) and then loses a template column while the worker
runs. The other mirror's new rows stay searchable within seconds throughout; the broken one is named
with its column in `status`, the logs and a metric, and catches up once the column is back, `verify`
agreeing."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families
from redis.commands.search.query import Query

from helpers import DOCS_MIRROR
from processes import start_worker, vecmirror, wait_for

NOTES_TABLE = "CREATE TABLE notes (id integer PRIMARY KEY, body text NOT NULL)"
NOTES_MIRROR: dict[str, Any] = {
    "name": "notes",
    "table": "public.notes",
    "embed": {"field": "embedding", "template": "{body}"},
    "index": {
        "index": {"name": "notes_idx", "prefix": "note", "storage_type": "hash"},
        "fields": [
            {"name": "body", "type": "text"},
            {
                "name": "embedding",
                "type": "vector",
                "attrs": {
                    "algorithm": "flat",
                    "dims": 384,
                    "distance_metric": "cosine",
                    "datatype": "float32",
                },
            },
        ],
    },
}
DOCS_WITH_DATE: dict[str, Any] = {
    **DOCS_MIRROR,
    "index": {
        **DOCS_MIRROR["index"],
        "fields": [*DOCS_MIRROR["index"]["fields"], {"name": "published", "type": "numeric"}],
    },
}
SEARCHABLE_WITHIN = 15.0  # seconds: what "the other mirror keeps its freshness" means here


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _searchable(client: redis.Redis, index: str, key: str) -> bool:
    """The key is a document the index returns (not only a hash under the prefix)."""
    try:
        found = client.ft(index).search(Query("*").no_content().paging(0, 10000))
    except redis.ResponseError:  # the index does not exist yet
        return False
    return key in {doc.id for doc in found.docs}


def _status(env: dict[str, str], config: Path) -> dict[str, dict[str, Any]]:
    result = vecmirror(env, "status", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    return {s["mirror"]: s for s in json.loads(result.stdout)}


async def test_a_broken_mirror_pauses_alone_and_catches_up(
    pg: asyncpg.Connection, cli_env: dict[str, str], redis_client: redis.Redis, tmp_path: Path
) -> None:
    await pg.execute(
        "CREATE TABLE docs (id integer PRIMARY KEY, title text NOT NULL, content text, genre text, "
        "published timestamptz)"
    )
    await pg.execute(NOTES_TABLE)
    await pg.execute("INSERT INTO docs VALUES (1, 'Cats', 'Cats purr', 'pets', '2024-05-01T00:00:00Z')")
    await pg.execute("INSERT INTO notes VALUES (1, 'first note')")
    config = tmp_path / "mirrors.yaml"
    config.write_text(yaml.safe_dump({"mirrors": [DOCS_WITH_DATE, NOTES_MIRROR]}, sort_keys=False))
    port = _free_port()
    env = {
        **cli_env,
        "VECMIRROR_HTTP_HOST": "127.0.0.1",
        "VECMIRROR_HTTP_PORT": str(port),
        "VECMIRROR_POLL_INTERVAL": "1",
        "VECMIRROR_ERROR_BACKOFF": "0.2",
        "VECMIRROR_METRICS_INTERVAL": "0.2",
    }
    assert vecmirror(env, "migrate", "--config", str(config)).returncode == 0
    worker = start_worker(env, config)
    try:
        wait_for(lambda: _searchable(redis_client, "notes_idx", "note:1"), 120, "the first sync")
        wait_for(lambda: _searchable(redis_client, "docs_idx", "doc:1"), 30, "the first sync of docs")

        # A value Python's datetime cannot hold: it becomes its exact epoch seconds, both mirrors go on.
        await pg.execute("INSERT INTO docs VALUES (2, 'Far', 'far away', 'x', '294276-01-01T00:00:00Z')")
        await _note_is_searchable_soon(pg, redis_client, 2)
        wait_for(lambda: _searchable(redis_client, "docs_idx", "doc:2"), 30, "the far-future row")
        seconds = await pg.fetchval("SELECT extract(epoch FROM published) FROM docs WHERE id = 2")
        assert float(redis_client.hget("doc:2", "published") or b"0") == float(seconds)
        await pg.execute("INSERT INTO docs VALUES (3, 'Dogs', 'Dogs bark', 'pets', now())")
        wait_for(lambda: _searchable(redis_client, "docs_idx", "doc:3"), 30, "docs to go on after it")

        # The template column goes while the worker runs: the user's writes still succeed, docs
        # pauses named with its column, notes keeps its freshness.
        await pg.execute("ALTER TABLE docs RENAME COLUMN content TO body")
        await pg.execute("INSERT INTO docs (id, title, body, genre) VALUES (4, 'Birds', 'Birds sing', 'x')")
        wait_for(lambda: metric(port, "vecmirror_mirror_paused", mirror="docs") == 1, 30, "docs paused")
        assert metric(port, "vecmirror_mirror_paused", mirror="notes") == 0
        for note in (3, 4, 5):
            await _note_is_searchable_soon(pg, redis_client, note)
        statuses = _status(env, config)
        assert statuses["docs"]["state"] == "paused" and "content" in statuses["docs"]["error"]
        assert statuses["notes"]["state"] == "ok" and statuses["notes"]["error"] is None
        assert not _searchable(redis_client, "docs_idx", "doc:4")

        # The column comes back: docs resumes and catches up.
        await pg.execute("ALTER TABLE docs RENAME COLUMN body TO content")
        wait_for(lambda: _searchable(redis_client, "docs_idx", "doc:4"), 60, "docs to catch up")
        wait_for(lambda: metric(port, "vecmirror_mirror_paused", mirror="docs") == 0, 30, "docs resumed")
        assert _status(env, config)["docs"]["state"] == "ok"
        verified = vecmirror(env, "verify", "--config", str(config))
        assert verified.returncode == 0, verified.stdout + verified.stderr
        await _note_is_searchable_soon(pg, redis_client, 6)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err[-3000:]
    events = [json.loads(line) for line in err.splitlines() if line.strip()]
    paused = [e for e in events if e["event"] == "mirror_paused"]
    assert paused and all(e["mirror"] == "docs" for e in paused)
    assert "content" in paused[0]["error"] and paused[0]["table"] == "public.docs"
    assert any(e["event"] == "mirror_resumed" and e["mirror"] == "docs" for e in events)
    assert not any(e["event"] == "server_unavailable" for e in events)
    # A first sync is not a resync: nothing to warn about, no TRUNCATE re-check of an empty index.
    assert {e["mirror"] for e in events if e["event"] == "mirror_initialised"} == {"docs", "notes"}
    assert not any(e["event"] in ("mirror_resync_queued", "truncate_queued") for e in events)


async def _note_is_searchable_soon(pg: asyncpg.Connection, client: redis.Redis, note: int) -> None:
    await pg.execute("INSERT INTO notes VALUES ($1, $2)", note, f"note number {note}")
    started = time.monotonic()
    wait_for(lambda: _searchable(client, "notes_idx", f"note:{note}"), SEARCHABLE_WITHIN, f"note {note}")
    assert time.monotonic() - started < SEARCHABLE_WITHIN


def metric(port: int, name: str, **labels: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None
