"""The Prometheus metrics: names by the conventions, and what each worker event moves."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from vecmirror import __version__
from vecmirror.ops.metrics import Metrics
from vecmirror.ops.verify import CountCheck
from vecmirror.run.sync import BatchStats
from vecmirror.sink.observe import IndexState
from vecmirror.source.observe import QueueState

# The names the README, the dashboards and the Kubernetes docs use.
DOCUMENTED = {
    "vecmirror_changes_pending",
    "vecmirror_oldest_pending_change_age_seconds",
    "vecmirror_rows_synced_total",
    "vecmirror_embeddings_total",
    "vecmirror_embedding_batch_duration_seconds",
    "vecmirror_redis_write_duration_seconds",
    "vecmirror_freshness_seconds",
    "vecmirror_errors_total",
    "vecmirror_dead_letters",
    "vecmirror_index_documents",
    "vecmirror_index_indexing_failures",
    "vecmirror_backfill_rows_total",
    "vecmirror_related_changes_total",
    "vecmirror_related_documents_queued_total",
    "vecmirror_build_info",
}
BOUNDED_LABELS = {"mirror", "operation", "outcome", "stage", "version", "le"}


@pytest.fixture
def metrics() -> Metrics:
    metrics = Metrics(CollectorRegistry())
    metrics.declare_mirrors(["docs"])
    return metrics


def value(metrics: Metrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    assert found is not None, f"{name}{labels} is not exported"
    return found


def test_names_follow_the_prometheus_conventions(metrics: Metrics) -> None:
    for family in metrics.registry.collect():
        assert family.name.startswith("vecmirror_"), family.name
        for sample in family.samples:
            assert set(sample.labels) <= BOUNDED_LABELS, f"{sample.name}: {sample.labels}"
            if family.type == "counter":
                assert sample.name.endswith("_total"), sample.name
            else:
                assert not sample.name.endswith("_total"), sample.name
        if family.type == "histogram" or "duration" in family.name or "age" in family.name:
            assert family.name.endswith("_seconds"), family.name


def test_every_documented_metric_is_exported(metrics: Metrics) -> None:
    suffix = {"counter": "_total", "info": "_info"}
    families = {f.name + suffix.get(f.type, "") for f in metrics.registry.collect()}
    assert families >= DOCUMENTED, DOCUMENTED - families


def test_series_exist_at_zero_before_anything_happened(metrics: Metrics) -> None:
    scraped = {
        sample.name
        for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        for sample in family.samples
    }
    assert {"vecmirror_rows_synced_total", "vecmirror_freshness_seconds_bucket"} <= scraped
    assert value(metrics, "vecmirror_rows_synced_total", mirror="docs", operation="upsert") == 0
    assert value(metrics, "vecmirror_embeddings_total", mirror="docs", outcome="skipped") == 0
    assert value(metrics, "vecmirror_freshness_seconds_count", mirror="docs") == 0
    assert value(metrics, "vecmirror_errors_total", stage="embed") == 0
    assert value(metrics, "vecmirror_build_info", version=__version__) == 1


def test_a_synced_batch_moves_its_counters_and_histograms(metrics: Metrics) -> None:
    stats = BatchStats(
        "docs",
        changes=6,
        upserted=4,
        deleted=1,
        embedded=3,
        embedding_skipped=1,
        failed=1,
        errors={"document": 1},
        embed_call_seconds=[0.2, 0.3],
        redis_write_seconds=0.004,
        freshness_seconds=[0.5, 1.5, 2.0],
        synced_at=1_700_000_000.0,
    )
    metrics.batch_synced(stats)
    metrics.batch_synced(stats)
    assert value(metrics, "vecmirror_rows_synced_total", mirror="docs", operation="upsert") == 8
    assert value(metrics, "vecmirror_rows_synced_total", mirror="docs", operation="delete") == 2
    assert value(metrics, "vecmirror_embeddings_total", mirror="docs", outcome="computed") == 6
    assert value(metrics, "vecmirror_embeddings_total", mirror="docs", outcome="skipped") == 2
    assert value(metrics, "vecmirror_errors_total", stage="document") == 2
    assert value(metrics, "vecmirror_embedding_batch_duration_seconds_count") == 4
    assert value(metrics, "vecmirror_embedding_batch_duration_seconds_sum") == pytest.approx(1.0)
    assert value(metrics, "vecmirror_redis_write_duration_seconds_count") == 2
    assert value(metrics, "vecmirror_freshness_seconds_count", mirror="docs") == 6
    assert value(metrics, "vecmirror_freshness_seconds_sum", mirror="docs") == pytest.approx(8.0)
    assert value(metrics, "vecmirror_freshness_seconds_bucket", mirror="docs", le="1.0") == 2
    assert value(metrics, "vecmirror_last_sync_timestamp_seconds", mirror="docs") == 1_700_000_000.0


def test_a_truncate_batch_observes_no_write() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.batch_synced(BatchStats("docs", changes=1, truncated=True))
    assert value(metrics, "vecmirror_redis_write_duration_seconds_count") == 0
    assert value(metrics, "vecmirror_rows_synced_total", mirror="docs", operation="upsert") == 0


def test_samples_set_the_queue_and_index_gauges(metrics: Metrics) -> None:
    metrics.queue_sampled("docs", QueueState(7, 12.5, 2, 3, "running"))
    metrics.index_sampled("docs", IndexState("docs_idx", True, 40, 1, 0.5))
    assert value(metrics, "vecmirror_changes_pending", mirror="docs") == 7
    assert value(metrics, "vecmirror_oldest_pending_change_age_seconds", mirror="docs") == 12.5
    assert value(metrics, "vecmirror_dead_letters", mirror="docs") == 2
    assert value(metrics, "vecmirror_failed_rows", mirror="docs") == 3
    assert value(metrics, "vecmirror_backfill_running", mirror="docs") == 1
    assert value(metrics, "vecmirror_index_documents", mirror="docs") == 40
    assert value(metrics, "vecmirror_index_indexing_failures", mirror="docs") == 1
    assert value(metrics, "vecmirror_index_indexed_ratio", mirror="docs") == 0.5
    assert value(metrics, "vecmirror_index_rebuilding", mirror="docs") == 0
    filling = IndexState("docs_idx__0123456789", True, 40)
    metrics.index_sampled("docs", IndexState("docs_idx", True, 40, answering="docs_idx", rebuild=filling))
    assert value(metrics, "vecmirror_index_rebuilding", mirror="docs") == 1
    metrics.queue_sampled("docs", QueueState(0, None, 0, 0, "done"))
    assert value(metrics, "vecmirror_oldest_pending_change_age_seconds", mirror="docs") == 0
    assert value(metrics, "vecmirror_backfill_running", mirror="docs") == 0


def test_a_count_check_sets_rows_documents_and_drift(metrics: Metrics) -> None:
    metrics.mirror_checked(CountCheck("docs", rows=10, documents=8, failed=1, pending=0))
    assert value(metrics, "vecmirror_table_rows", mirror="docs") == 10
    assert value(metrics, "vecmirror_index_documents", mirror="docs") == 8
    assert value(metrics, "vecmirror_mirror_drifted", mirror="docs") == 1
    metrics.mirror_checked(CountCheck("docs", rows=10, documents=9, failed=1, pending=0))
    assert value(metrics, "vecmirror_mirror_drifted", mirror="docs") == 0


def test_server_errors_and_backfill_progress_count_up(metrics: Metrics) -> None:
    metrics.server_error("redis")
    metrics.backfill_queued("docs", 2000)
    metrics.backfill_queued("docs", 500)
    assert value(metrics, "vecmirror_errors_total", stage="redis") == 1
    assert value(metrics, "vecmirror_backfill_rows_total", mirror="docs") == 2500


def test_the_process_registry_adds_the_usual_process_metrics() -> None:
    names = {family.name for family in Metrics.for_process().registry.collect()}
    assert "python_info" in names
    assert {n for n in names if not n.startswith(("vecmirror_", "process_", "python_"))} == set()


def test_related_changes_are_counted(metrics: Metrics) -> None:
    metrics.batch_synced(BatchStats("docs", related_changes=3, related_queued=20_000))
    assert value(metrics, "vecmirror_related_changes_total", mirror="docs") == 3
    assert value(metrics, "vecmirror_related_documents_queued_total", mirror="docs") == 20_000
