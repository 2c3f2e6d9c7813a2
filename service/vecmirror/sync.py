"""One batch of one mirror, start to finish: claim → re-read rows → documents → embed → write → ack.

Stages meet only here and in app.py; each stage knows nothing of the ones after it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import structlog

from vecmirror.config import MirrorConfig
from vecmirror.errors import RowError
from vecmirror.pipeline.documents import Document, DocumentBuilder, RowKey
from vecmirror.pipeline.embedder import Embedder
from vecmirror.sink.writer import RedisSink
from vecmirror.source import Connection, changes
from vecmirror.source.changes import RowFailure
from vecmirror.source.rows import Row, load_rows
from vecmirror.source.tables import SourceTable

log = structlog.get_logger(__name__)
INDEX_REFUSED_FIELD = "(document)"


@dataclass
class BatchStats:
    mirror: str
    changes: int = 0
    upserted: int = 0
    deleted: int = 0
    embedded: int = 0
    embedding_skipped: int = 0
    failed: int = 0
    truncated: bool = False
    failures: list[RowFailure] = field(default_factory=list)


@dataclass
class _Plan:
    documents: list[Document]
    deletes: list[RowKey]
    failures: list[RowFailure]
    keep_vector: set[RowKey] = field(default_factory=set)


class MirrorSync:
    def __init__(
        self,
        mirror: MirrorConfig,
        table: SourceTable,
        sink: RedisSink,
        embedder: Embedder | None,
        batch_size: int,
        embed_batch_size: int = 64,
    ) -> None:
        self.mirror = mirror
        self.table = table
        self.sink = sink
        self._embedder = embedder
        self._builder = DocumentBuilder(mirror)
        self._batch_size = batch_size
        self._embed_batch_size = embed_batch_size
        self._failures_seen: int | None = None

    @property
    def name(self) -> str:
        return self.mirror.name

    async def sync_batch(self, conn: Connection) -> BatchStats | None:
        """Processes one batch; None when the mirror's queue had nothing claimable."""
        if await self._sync_truncate(conn):
            return BatchStats(self.name, changes=1, truncated=True)
        async with conn.transaction():
            batch = await changes.claim(conn, self.name, self._batch_size)
            if not batch.change_ids:
                return None
            rows = await load_rows(conn, self.table, batch.keys)
            plan = self._plan(batch.keys, rows)
            stats = await self._embed(plan)
            await self._write(plan)
            await changes.record_outcome(conn, self.name, plan.failures, [d.key for d in plan.documents])
            await changes.acknowledge(conn, self.name, batch.change_ids)
        stats.changes = len(batch.change_ids)
        stats.upserted, stats.deleted = len(plan.documents), len(plan.deletes)
        stats.failed, stats.failures = len(plan.failures), plan.failures
        return stats

    async def _sync_truncate(self, conn: Connection) -> bool:
        """A TRUNCATE re-queues every key the mirror has in Redis; re-reading them deletes the
        ones whose rows are gone."""
        async with conn.transaction():
            marker = await changes.claim_truncate(conn, self.name)
            if marker is None:
                return False
            async for keys in self.sink.scan_row_keys():
                await changes.enqueue(conn, self.name, keys)
            await changes.acknowledge(conn, self.name, [marker])
        log.info("truncate_queued", mirror=self.name)
        return True

    def _plan(self, keys: list[RowKey], rows: dict[RowKey, Row]) -> _Plan:
        plan = _Plan([], [], [])
        for key in keys:
            row = rows.get(key)
            if row is None:
                plan.deletes.append(key)
                continue
            try:
                plan.documents.append(self._builder.build(key, row))
            except RowError as exc:
                self._fail(plan, key, exc)
        return plan

    def _fail(self, plan: _Plan, key: RowKey, exc: RowError) -> None:
        # The row can no longer be represented: its old document would be stale, so it goes too.
        log.error("row_failed", mirror=self.name, key=list(key), field=exc.field, error=exc.problem)
        plan.failures.append(RowFailure(key, exc.field, exc.problem))
        plan.deletes.append(key)

    async def _embed(self, plan: _Plan) -> BatchStats:
        stats = BatchStats(self.name)
        if self._embedder is None or self.mirror.embed is None or not plan.documents:
            return stats
        stored = await self.sink.stored_text_hashes([d.key for d in plan.documents])
        plan.keep_vector = {d.key for d, h in zip(plan.documents, stored, strict=True) if h == d.text_hash}
        todo = [d for d in plan.documents if d.key not in plan.keep_vector]
        stats.embedding_skipped = len(plan.documents) - len(todo)
        stats.embedded = len(todo)
        if todo:
            texts = [d.text or "" for d in todo]
            vectors = await self._embed_texts(texts)
            self._attach_vectors(plan, todo, list(vectors))
        return stats

    async def _embed_texts(self, texts: list[str]) -> list[object]:
        """One model call per embed batch, each in a thread: the event loop stays free, and a
        shutdown that cancels the batch waits for one model call at most. Texts go to the model
        sorted by length so each call pads little (unsorted chunks halved throughput here)."""
        assert self._embedder is not None
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors: list[object] = [None] * len(texts)
        for start in range(0, len(order), self._embed_batch_size):
            chunk = order[start : start + self._embed_batch_size]
            embedded = await asyncio.to_thread(self._embedder.embed, [texts[i] for i in chunk])
            for position, vector in zip(chunk, embedded, strict=True):
                vectors[position] = vector
        return vectors

    def _attach_vectors(self, plan: _Plan, todo: list[Document], vectors: list[object]) -> None:
        assert self.mirror.embed is not None
        bad: set[RowKey] = set()
        for document, vector in zip(todo, vectors, strict=True):
            try:
                document.vector = self._builder.vector(document.key, vector, self.mirror.embed.field)
            except RowError as exc:
                self._fail(plan, document.key, exc)
                bad.add(document.key)
        plan.documents = [d for d in plan.documents if d.key not in bad]

    async def _write(self, plan: _Plan) -> None:
        if self._failures_seen is None:
            self._failures_seen, _ = await self.sink.indexing_failures()
        await self.sink.write(plan.documents, plan.deletes, keep_vector=plan.keep_vector)
        failures_now, reason = await self.sink.indexing_failures()
        if failures_now > self._failures_seen and plan.documents:
            await self._report_refused(plan, reason)
        self._failures_seen = failures_now

    async def _report_refused(self, plan: _Plan, reason: str | None) -> None:
        refused = set(await self.sink.not_indexed([d.key for d in plan.documents]))
        for key in refused:
            problem = "Redis refused to index the document" + (f": {reason}" if reason else "")
            log.error("document_not_indexed", mirror=self.name, key=self.sink.key(key), error=problem)
            plan.failures.append(RowFailure(key, INDEX_REFUSED_FIELD, problem))
        plan.documents = [d for d in plan.documents if d.key not in refused]
