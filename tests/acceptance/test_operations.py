"""Operating `vecmirror run` as a subprocess: /metrics moves by what the rows did, /readyz follows
Redis going away and coming back, every log line is JSON with stable event names, `vecmirror status`
agrees, and SIGTERM exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path

import asyncpg
import yaml
from prometheus_client.parser import text_string_to_metric_families

from helpers import DOCS_MIRROR, DOCS_TABLE
from processes import free_port, http_get, start_worker, vecmirror, wait_for
from vecmirror import __version__
from vecmirror.stack import StackUrls, start_redis, stop_redis

Sample = tuple[str, tuple[tuple[str, str], ...]]


def scrape(port: int) -> dict[Sample, float]:
    status, text = http_get(port, "/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def metric(port: int, name: str, **labels: str) -> float | None:
    return scrape(port).get((name, tuple(sorted(labels.items()))))


def _env(urls: StackUrls, port: int) -> dict[str, str]:
    settings = {
        "DATABASE_URL": urls.database_url,
        "REDIS_URL": urls.redis_url,
        "LOG_FORMAT": "json",
        "HTTP_HOST": "127.0.0.1",
        "HTTP_PORT": str(port),
        "METRICS_INTERVAL": "0.2",
        "CHECK_INTERVAL": "1",
        "POLL_INTERVAL": "1",
        "ERROR_BACKOFF": "0.2",
        "MAX_TEXT_LENGTH": "200",
        "ROW_MAX_ATTEMPTS": "1",
    }
    return {**os.environ, "HF_HUB_OFFLINE": "1", **{f"VECMIRROR_{k}": v for k, v in settings.items()}}


def _stop(worker: subprocess.Popen[str]) -> str:
    """SIGTERM, which must exit 0; returns what the worker logged."""
    worker.send_signal(signal.SIGTERM)
    try:
        out, err = worker.communicate(timeout=60)
    finally:
        worker.kill()
    assert worker.returncode == 0, err[-3000:]
    assert out == ""
    return err


async def _user_writes(pg: asyncpg.Connection) -> None:
    await pg.execute("INSERT INTO docs VALUES (3, 'Birds', 'Birds sing at dawn', 'pets')")
    await pg.execute("UPDATE docs SET genre = 'animals' WHERE id = 1")  # text unchanged: vector kept
    await pg.execute("DELETE FROM docs WHERE id = 2")
    await pg.execute("INSERT INTO docs VALUES (4, 'Long', $1, 'misc')", "x" * 500)  # over 200: fails


async def test_run_exports_metrics_health_status_and_json_logs(
    own_stack: tuple[Path, StackUrls], tmp_path: Path
) -> None:
    directory, urls = own_stack
    pg = await asyncpg.connect(urls.database_url)
    await pg.execute(DOCS_TABLE)
    await pg.execute(
        "INSERT INTO docs VALUES (1, 'Cats', 'Cats purr', 'pets'), (2, 'Dogs', 'Dogs bark', 'pets')"
    )
    config_path = tmp_path / "mirrors.yaml"
    config_path.write_text(yaml.safe_dump({"mirrors": [DOCS_MIRROR]}, sort_keys=False))
    port = free_port()
    env = _env(urls, port)
    assert vecmirror(env, "migrate", "--config", str(config_path)).returncode == 0
    worker = start_worker(env, config_path)
    try:
        wait_for(lambda: http_get(port, "/healthz")[0] == 200, 60, "/healthz while the model loads")
        wait_for(lambda: http_get(port, "/readyz")[0] == 200, 120, "/readyz once started")
        upserts = ("vecmirror_rows_synced_total", {"mirror": "docs", "operation": "upsert"})
        wait_for(lambda: metric(port, upserts[0], **upserts[1]) == 2, 60, "the backfill of two rows")
        before = scrape(port)
        _check_backfill(before)
        await _user_writes(pg)
        wait_for(lambda: metric(port, "vecmirror_dead_letters", mirror="docs") == 1, 60, "the bad row")
        wait_for(lambda: metric(port, "vecmirror_changes_pending", mirror="docs") == 0, 60, "an empty queue")
        _check_moved(before, scrape(port))
        _check_status(env, config_path)
        await _check_redis_outage(directory, port, env, config_path)
        err = _stop(worker)
    finally:
        worker.kill()
        worker.communicate()
        await pg.close()
    _check_logs(err, urls)


def _key(name: str, **labels: str) -> Sample:
    return name, tuple(sorted(labels.items()))


def _check_backfill(scraped: dict[Sample, float]) -> None:
    """Rows from before `migrate` are a backfill: synced and embedded, but no user write to time."""
    assert scraped[_key("vecmirror_backfill_rows_total", mirror="docs")] == 2
    assert scraped[_key("vecmirror_embeddings_total", mirror="docs", outcome="computed")] == 2
    assert scraped[_key("vecmirror_freshness_seconds_count", mirror="docs")] == 0
    assert scraped[_key("vecmirror_build_info", version=__version__)] == 1


def _check_moved(before: dict[Sample, float], after: dict[Sample, float]) -> None:
    def moved(name: str, **labels: str) -> float:
        return after[_key(name, **labels)] - before.get(_key(name, **labels), 0.0)

    assert moved("vecmirror_rows_synced_total", mirror="docs", operation="upsert") == 2  # rows 3 and 1
    assert moved("vecmirror_rows_synced_total", mirror="docs", operation="delete") == 1  # row 2
    assert moved("vecmirror_embeddings_total", mirror="docs", outcome="computed") == 1  # row 3
    assert moved("vecmirror_embeddings_total", mirror="docs", outcome="skipped") == 1  # row 1
    assert moved("vecmirror_errors_total", stage="document") == 1  # row 4
    # One observation per user write made searchable: rows 3, 1 and 2 (row 4 failed).
    assert moved("vecmirror_freshness_seconds_count", mirror="docs") == 3
    assert moved("vecmirror_freshness_seconds_sum", mirror="docs") > 0
    assert moved("vecmirror_embedding_batch_duration_seconds_count") >= 1
    assert moved("vecmirror_redis_write_duration_seconds_count") >= 1
    assert after[_key("vecmirror_index_documents", mirror="docs")] == 2  # rows 1 and 3
    assert after[_key("vecmirror_index_indexing_failures", mirror="docs")] == 0
    assert after[_key("vecmirror_oldest_pending_change_age_seconds", mirror="docs")] == 0


def _check_status(env: dict[str, str], config_path: Path) -> None:
    result = vecmirror(env, "status", "--json", "--config", str(config_path))
    assert result.returncode == 0, result.stderr
    [docs] = json.loads(result.stdout)
    assert (docs["mirror"], docs["state"], docs["pending"], docs["dead_letters"]) == ("docs", "ok", 0, 1)
    assert (docs["error"], docs["error_since"]) == (None, None)
    assert (docs["table_rows"], docs["documents"]) == (3, 2)
    assert docs["index"] == {
        "name": "docs_idx",
        "exists": True,
        "answering": "docs_idx",
        "percent_indexed": 100.0,
        "indexing_failures": 0,
        "rebuild": None,
    }
    assert docs["last_sync"] is not None and docs["backfill"] == "done"
    table = vecmirror(env, "status", "--config", str(config_path))
    assert table.returncode == 0 and table.stdout.splitlines()[1].split()[:7] == [
        "docs",
        "ok",
        "0",
        "-",
        "1",
        "3",
        "2",
    ]


async def _check_redis_outage(directory: Path, port: int, env: dict[str, str], config_path: Path) -> None:
    """/readyz fails while Redis is away and passes again once it is back; the process stays alive,
    and `status` says which server it cannot read."""
    await asyncio.to_thread(stop_redis, directory)
    wait_for(lambda: http_get(port, "/readyz")[0] == 503, 30, "/readyz to fail without Redis")
    status, body = http_get(port, "/readyz")
    assert status == 503 and json.loads(body)["problems"][0].startswith("redis unreachable")
    assert http_get(port, "/healthz")[0] == 200  # alive: only Redis is gone
    down = vecmirror(env, "status", "--config", str(config_path))
    assert down.returncode == 2 and down.stderr.startswith("vecmirror: Redis unreachable"), down.stderr
    await asyncio.to_thread(start_redis, directory)
    # Redis comes back empty: ready once the worker has resynced the mirror (its index is back).
    wait_for(lambda: http_get(port, "/readyz")[0] == 200, 90, "/readyz once Redis is back")


def _check_logs(err: str, urls: StackUrls) -> None:
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]  # every line parses
    events = [line["event"] for line in lines]
    for name in ("http_server_started", "backfill_queued", "batch_synced", "row_failed", "readiness_changed"):
        assert name in events, name
    assert "shutdown_requested" in events
    synced = next(line for line in lines if line["event"] == "batch_synced" and line["rows"] > 0)
    assert synced["mirror"] == "docs" and synced["duration_seconds"] > 0
    failed = next(line for line in lines if line["event"] == "row_failed")
    assert (failed["mirror"], failed["key"], failed["stage"]) == ("docs", ["4"], "document")
    assert all(line["level"] in {"debug", "info", "warning", "error"} for line in lines)
    assert urls.redis_url not in err and urls.database_url not in err
