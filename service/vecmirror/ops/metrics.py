"""Every Prometheus metric vecmirror exports, behind one small class the worker calls.

Names follow Prometheus' conventions: a `vecmirror_` prefix, base units (`_seconds`, ratios 0..1),
`_total` on counters, and labels of bounded cardinality only (mirror, operation, outcome, stage;
never a row key). Each `Metrics` owns its registry, so a test can make a fresh one and read it back.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

from vecmirror import __version__

if TYPE_CHECKING:
    from vecmirror.ops.verify import CountCheck
    from vecmirror.run.sync import BatchStats
    from vecmirror.sink.observe import IndexState
    from vecmirror.source.observe import QueueState

OPERATIONS = ("upsert", "delete")
OUTCOMES = ("computed", "skipped")
# document: a row's value cannot become a document; embed: the model failed on a row's text; index:
# Redis refused to index a document; postgres, redis: server trouble (the batch is retried).
STAGES = ("document", "embed", "index", "postgres", "redis")
# Seconds: commit-to-searchable spans a busy model and a backlog, up to hours during an outage.
FRESHNESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
EMBED_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # A `_created` series beside every counter doubles the scrape for no use here.
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry if registry is not None else CollectorRegistry()
        self._declare_sync_metrics()
        self._declare_queue_metrics()
        self._declare_index_metrics()
        build = Info("vecmirror_build", "The running vecmirror's version", registry=self.registry)
        build.info({"version": __version__})

    @classmethod
    def for_process(cls) -> Metrics:
        """With the process, platform and garbage-collector metrics a scrape usually expects."""
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        return cls(registry)

    def _declare_sync_metrics(self) -> None:
        r = self.registry
        self.rows_synced = Counter(
            "vecmirror_rows_synced",
            "Rows written to or deleted from Redis",
            ["mirror", "operation"],
            registry=r,
        )
        self.embeddings = Counter(
            "vecmirror_embeddings",
            "Texts embedded (computed) or whose stored vector was kept because the text was unchanged "
            "(skipped)",
            ["mirror", "outcome"],
            registry=r,
        )
        self.embed_duration = Histogram(
            "vecmirror_embedding_batch_duration_seconds", "One model call", buckets=EMBED_BUCKETS, registry=r
        )
        self.write_duration = Histogram(
            "vecmirror_redis_write_duration_seconds",
            "Writing one batch's documents and deletes to Redis",
            buckets=WRITE_BUCKETS,
            registry=r,
        )
        self.freshness = Histogram(
            "vecmirror_freshness_seconds",
            "From a user's write (its transaction's start) to its Redis write being acknowledged",
            ["mirror"],
            buckets=FRESHNESS_BUCKETS,
            registry=r,
        )
        self.errors = Counter("vecmirror_errors", "Errors by pipeline stage", ["stage"], registry=r)
        self.last_sync = Gauge(
            "vecmirror_last_sync_timestamp_seconds",
            "When this worker last wrote a batch to Redis",
            ["mirror"],
            registry=r,
        )
        self.backfill_rows = Counter(
            "vecmirror_backfill_rows", "Rows queued by backfill walks", ["mirror"], registry=r
        )
        self.related_changes = Counter(
            "vecmirror_related_changes", "Changes of related tables fanned out", ["mirror"], registry=r
        )
        self.related_documents = Counter(
            "vecmirror_related_documents_queued",
            "Documents queued to be read again by changes of related tables",
            ["mirror"],
            registry=r,
        )
        self.mirror_paused = Gauge(
            "vecmirror_mirror_paused",
            "1 while the mirror is paused on trouble of its own (see `vecmirror status` for why); "
            "the other mirrors keep syncing",
            ["mirror"],
            registry=r,
        )
        self.mirror_operator_paused = Gauge(
            "vecmirror_mirror_operator_paused",
            "1 while an operator has paused the mirror (`vecmirror pause`): capture keeps queueing, "
            "no worker syncs it until `vecmirror resume`",
            ["mirror"],
            registry=r,
        )
        self.mirror_errors = Counter(
            "vecmirror_mirror_errors",
            "Attempts of a paused mirror that failed on its own trouble (a missing column, a type "
            "change, a privilege, foreign keys under its prefix)",
            ["mirror"],
            registry=r,
        )

    def _declare_queue_metrics(self) -> None:
        r = self.registry
        self.pending = Gauge("vecmirror_changes_pending", "Queued changes", ["mirror"], registry=r)
        self.oldest_age = Gauge(
            "vecmirror_oldest_pending_change_age_seconds",
            "How long the oldest claimable change has waited (0: none)",
            ["mirror"],
            registry=r,
        )
        self.dead_letters = Gauge(
            "vecmirror_dead_letters", "Failed rows with no automatic attempt left", ["mirror"], registry=r
        )
        self.failed_rows = Gauge(
            "vecmirror_failed_rows", "Failed rows, still retried or dead-lettered", ["mirror"], registry=r
        )
        self.backfill_running = Gauge(
            "vecmirror_backfill_running", "1 while a backfill walk is unfinished", ["mirror"], registry=r
        )

    def _declare_index_metrics(self) -> None:
        r = self.registry
        self.index_documents = Gauge(
            "vecmirror_index_documents", "Documents in the mirror's index", ["mirror"], registry=r
        )
        self.index_failures = Gauge(
            "vecmirror_index_indexing_failures", "Documents the index refused", ["mirror"], registry=r
        )
        self.indexed_ratio = Gauge(
            "vecmirror_index_indexed_ratio", "How far the index's scan has got, 0..1", ["mirror"], registry=r
        )
        self.rebuilding = Gauge(
            "vecmirror_index_rebuilding",
            "1 while a new index generation is filled beside the one users query (its progress: the "
            "mirror's pending changes)",
            ["mirror"],
            registry=r,
        )
        self.table_rows = Gauge(
            "vecmirror_table_rows",
            "Rows of the mirror's table at the last count check",
            ["mirror"],
            registry=r,
        )
        self.drifted = Gauge(
            "vecmirror_mirror_drifted",
            "1 when the last count check found rows != documents + failed rows with nothing queued",
            ["mirror"],
            registry=r,
        )

    def declare_mirrors(self, mirrors: Iterable[str]) -> None:
        """Every series exists from the start, at 0, so rates and alerts work before the first event."""
        for stage in STAGES:
            self.errors.labels(stage)
        for mirror in mirrors:
            for operation in OPERATIONS:
                self.rows_synced.labels(mirror, operation)
            for outcome in OUTCOMES:
                self.embeddings.labels(mirror, outcome)
            self.freshness.labels(mirror)
            self.backfill_rows.labels(mirror)
            self.related_changes.labels(mirror)
            self.related_documents.labels(mirror)
            self.mirror_paused.labels(mirror).set(0)
            self.mirror_operator_paused.labels(mirror).set(0)
            self.mirror_errors.labels(mirror)

    def batch_synced(self, stats: BatchStats) -> None:
        mirror = stats.mirror
        self.rows_synced.labels(mirror, "upsert").inc(stats.upserted)
        self.rows_synced.labels(mirror, "delete").inc(stats.deleted)
        self.embeddings.labels(mirror, "computed").inc(stats.embedded)
        self.embeddings.labels(mirror, "skipped").inc(stats.embedding_skipped)
        for seconds in stats.embed_call_seconds:
            self.embed_duration.observe(seconds)
        if stats.redis_write_seconds is not None:
            self.write_duration.observe(stats.redis_write_seconds)
        freshness = self.freshness.labels(mirror)
        for seconds in stats.freshness_seconds:
            freshness.observe(seconds)
        for stage, count in stats.errors.items():
            self.errors.labels(stage).inc(count)
        if stats.synced_at is not None:
            self.last_sync.labels(mirror).set(stats.synced_at)
        if stats.related_changes:
            self.related_changes.labels(mirror).inc(stats.related_changes)
            self.related_documents.labels(mirror).inc(stats.related_queued)

    def server_error(self, stage: str) -> None:
        self.errors.labels(stage).inc()

    def backfill_queued(self, mirror: str, rows: int) -> None:
        self.backfill_rows.labels(mirror).inc(rows)

    def queue_sampled(self, mirror: str, queue: QueueState) -> None:
        self.pending.labels(mirror).set(queue.pending)
        self.oldest_age.labels(mirror).set(queue.oldest_age or 0.0)
        self.dead_letters.labels(mirror).set(queue.dead_letters)
        self.failed_rows.labels(mirror).set(queue.failed_rows)
        self.backfill_running.labels(mirror).set(int(queue.backfill_running))

    def index_sampled(self, mirror: str, index: IndexState) -> None:
        self.index_documents.labels(mirror).set(index.documents)
        self.index_failures.labels(mirror).set(index.indexing_failures)
        self.indexed_ratio.labels(mirror).set(index.indexed_ratio)
        self.rebuilding.labels(mirror).set(int(index.rebuild is not None))

    def mirror_checked(self, check: CountCheck) -> None:
        self.table_rows.labels(check.mirror).set(check.rows)
        self.index_documents.labels(check.mirror).set(check.documents)
        self.failed_rows.labels(check.mirror).set(check.failed)
        self.pending.labels(check.mirror).set(check.pending)
        self.drifted.labels(check.mirror).set(int(check.drifted))
