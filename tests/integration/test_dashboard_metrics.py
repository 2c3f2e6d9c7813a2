"""Every metric the monitoring manifests read (the alerts, the autoscalers' queries, the Grafana
dashboard's panels and variables) is one a real `vecmirror run` exports: a worker on this test's
Postgres and Redis syncs a few rows, its /metrics is scraped over HTTP, and each name the queries use
must be among the samples (counters as their _total, histograms as _bucket)."""

from __future__ import annotations

import importlib.util
import signal
from pathlib import Path
from types import ModuleType

import asyncpg
import yaml
from prometheus_client.parser import text_string_to_metric_families

from helpers import DOCS_MIRROR, DOCS_TABLE
from processes import free_port, http_get, start_worker, vecmirror, wait_for

MANIFEST_TESTS = Path(__file__).resolve().parents[1] / "unit" / "test_monitoring_manifests.py"


def manifest_queries() -> ModuleType:
    """The unit test that validates the manifests also lists their queries: both read the one list."""
    spec = importlib.util.spec_from_file_location("monitoring_manifest_queries", MANIFEST_TESTS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, text = http_get(port, "/metrics")
    assert status == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def synced_and_sampled(port: int) -> bool:
    """The user write made searchable, the queue sampled and the table's rows counted: every series
    a worker exports once it has run a little."""
    scraped = scrape(port)
    docs = frozenset({("mirror", "docs")})
    return (
        scraped.get(("vecmirror_freshness_seconds_count", docs), 0) >= 1
        and scraped.get(("vecmirror_changes_pending", docs)) == 0
        and scraped.get(("vecmirror_table_rows", docs)) == 3
    )


async def test_every_metric_the_manifests_read_is_exported_by_a_running_worker(
    pg: asyncpg.Connection, cli_env: dict[str, str], tmp_path: Path
) -> None:
    used = manifest_queries().used_metric_names()
    assert {"vecmirror_changes_pending", "vecmirror_freshness_seconds_bucket"} <= used
    await pg.execute(DOCS_TABLE)
    await pg.execute("INSERT INTO docs VALUES (1, 'Cats', 'Cats purr', 'pets'), (2, 'Dogs', 'Dogs', 'pets')")
    config = tmp_path / "mirrors.yaml"
    config.write_text(yaml.safe_dump({"mirrors": [DOCS_MIRROR]}, sort_keys=False))
    port = free_port()
    # Sampled gauges and the count check (vecmirror_table_rows) come within a second, not minutes.
    settings = {
        "HTTP_HOST": "127.0.0.1",
        "HTTP_PORT": str(port),
        "METRICS_INTERVAL": "0.2",
        "CHECK_INTERVAL": "1",
    }
    env = {**cli_env, **{f"VECMIRROR_{name}": value for name, value in settings.items()}}
    assert vecmirror(env, "migrate", "--config", str(config)).returncode == 0
    worker = start_worker(env, config)
    try:
        wait_for(lambda: http_get(port, "/readyz")[0] == 200, 120, "/readyz once the model is loaded")
        await pg.execute("INSERT INTO docs VALUES (3, 'Birds', 'Birds sing at dawn', 'pets')")  # a user write
        wait_for(lambda: synced_and_sampled(port), 60, "the user write synced, the queue and table sampled")
        assert used - {name for name, _ in scrape(port)} == set()
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err[-3000:]
    finally:
        worker.kill()
        worker.communicate()
