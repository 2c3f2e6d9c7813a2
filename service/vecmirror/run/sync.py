"""One batch of one mirror, start to finish: claim → re-read rows → documents → embed → write → ack.

Stages meet only here and in app.py; each stage knows nothing of the ones after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import structlog
from redis.exceptions import ResponseError

from vecmirror.config import MirrorConfig
from vecmirror.errors import MirrorError, NotMigratedError, RowError, StartupError
from vecmirror.index.rollout import IndexPlan, prepare_index, settle
from vecmirror.pipeline.batch_embed import BatchEmbedder, Keepalive
from vecmirror.pipeline.chunks import chunker
from vecmirror.pipeline.documents import Chunk, Document, DocumentBuilder, RowKey
from vecmirror.pipeline.embedder import Embedder
from vecmirror.run.batching import BatchSizer
from vecmirror.run.faults import classify
from vecmirror.run.resync import MirrorResync
from vecmirror.sink.observe import record_last_sync
from vecmirror.sink.versioned import marker_key
from vecmirror.sink.writer import RedisSink
from vecmirror.source import Connection, changes, discard, generations
from vecmirror.source.changes import ClaimedBatch, RetryPolicy, RowFailure
from vecmirror.source.migrate import capture_problem, follow_documents
from vecmirror.source.related import FanOut, FanOutFailed, fan_out, fan_out_all
from vecmirror.source.rows import LoadedRows, load_rows
from vecmirror.source.tables import SourceTable, documents_state, inspect_table

log = structlog.get_logger(__name__)
INDEX_REFUSED_FIELD = "(document)"
DOCUMENTS_FIELD = "(documents)"  # a failed row's field when the documents view is what is wrong
# What a claim returns instead of a batch while a TRUNCATE marker waits: it is handled first, alone.
TRUNCATE_FIRST: Literal["truncate first"] = "truncate first"


@dataclass
class BatchStats:
    mirror: str
    changes: int = 0
    upserted: int = 0
    deleted: int = 0
    embedded: int = 0
    embedding_skipped: int = 0
    failed: int = 0
    refused_stale: int = 0
    truncated: bool = False
    related_changes: int = 0  # changes of related tables fanned out before the claim
    related_queued: int = 0  # documents they queued to be read again
    resynced: bool = False  # Redis had forgotten the mirror; every row is queued again
    failures: list[RowFailure] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)  # failed rows by stage: document, embed, index
    duration_seconds: float = 0.0
    embed_call_seconds: list[float] = field(default_factory=list)  # one per model call
    redis_write_seconds: float | None = None
    synced_at: float | None = None  # Unix time the batch was written to Redis
    # Commit-to-searchable seconds of each user write the batch made searchable (see _freshness).
    freshness_seconds: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class SyncOptions:
    batch_size: int = 256  # the first claim's size, and the smallest (see batching.py)
    max_batch_size: int = 256  # claims grow up to this while the backlog is deep and batches quick
    batch_target_seconds: float = 2.0
    embed_batch_size: int = 64
    max_text_length: int = 100_000  # characters of rendered text; longer rows fail (see README)
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass
class _Plan:
    versions: dict[RowKey, int]
    documents: list[Document] = field(default_factory=list)
    deletes: list[RowKey] = field(default_factory=list)
    failures: list[RowFailure] = field(default_factory=list)
    keep_vector: set[RowKey] = field(default_factory=set)
    errors: Counter[str] = field(default_factory=Counter)

    def versioned_deletes(self) -> list[tuple[RowKey, int]]:
        return [(key, self.versions[key]) for key in self.deletes]


@contextlib.asynccontextmanager
async def claim_transaction(conn: Connection) -> AsyncIterator[None]:
    """The claim's transaction, rolled back by ending the session when anything goes wrong. After a
    cancellation (shutdown) or a backend killed mid-statement, the connection may still be waiting
    for that statement's end, and a ROLLBACK would fail ("another operation is in progress"),
    hiding the real error; ending the session rolls back just as well, at once, and the pool opens
    a new connection."""
    transaction = conn.transaction()
    await transaction.start()
    try:
        yield
    except BaseException:
        discard(conn)
        raise
    await transaction.commit()


class MirrorSync:
    def __init__(
        self,
        mirror: MirrorConfig,
        table: SourceTable | None,
        sink: RedisSink,
        embedder: Embedder | None,
        options: SyncOptions,
    ) -> None:
        self.mirror = mirror
        self._table = table  # None until the table passed its checks (see reinspect)
        self.index_created = False  # by start-up, just now: if a marker exists, it was dropped
        self.rebuild_into: str | None = None  # a new index generation to switch to once filled
        self.index_prepared = False  # prepare_index ran (start-up, or once the config lease came)
        self.sink = sink
        # None: the mirror has no model (its vectors come from a column).
        self._model = BatchEmbedder(embedder, options.embed_batch_size) if embedder is not None else None
        # A chunked mirror's texts are split by its model's tokenizer (pipeline/chunks.py).
        chunks = mirror.embed.chunks if mirror.embed is not None else None
        self._split = chunker(embedder, chunks, mirror.name) if chunks is not None else None
        self._builder = DocumentBuilder(mirror, max_text_length=options.max_text_length, split=self._split)
        self.options = options
        self.batch_sizer = BatchSizer(
            options.batch_size, options.max_batch_size, options.batch_target_seconds
        )
        self._failures_seen: int | None = None
        self._reading = asyncio.Lock()
        self._resyncs = MirrorResync(mirror, sink)
        self._reuse: tuple[str, str] | None = None  # see follow
        self._prepared_at_epoch: int | None = None  # the lease's epoch when the index was prepared

    @property
    def name(self) -> str:
        return self.mirror.name

    @property
    def table(self) -> SourceTable:
        if self._table is None:
            raise MirrorError(self.name, f"{self.mirror.table} has not passed its checks yet")
        return self._table

    @property
    def inspected(self) -> bool:
        return self._table is not None

    async def reinspect(self, conn: Connection) -> None:
        """Checks the table again and rebuilds its statements: a paused mirror's table may have got
        its column back, or a key column a new type. A check that fails is the mirror's trouble."""
        try:
            table = await inspect_table(conn, self.mirror)
        except StartupError as exc:
            problems = str(exc).replace(f"mirror {self.name!r}: ", "").splitlines()
            raise MirrorError(self.name, "; ".join(problems)) from exc
        problem = await capture_problem(conn, self.mirror)
        if problem is not None:
            raise MirrorError(self.name, problem)
        read = {*self.mirror.columns_needed(), *table.key_names}
        if self._table is not None and _shape(self._table, read) != _shape(table, read):
            # The same rows, read otherwise now (a type changed with USING, a column dropped and
            # added again): no trigger fired, so every row is read again.
            await changes.requeue_all_rows(conn, self.name)
            log.warning("table_changed_rows_requeued", mirror=self.name, table=self.mirror.table)
        self._table = table
        await self.follow_documents(conn)

    async def follow_documents(self, conn: Connection) -> None:
        """A documents view defined otherwise since the last look: every document is read again."""
        if self.mirror.documents is not None:
            await follow_documents(conn, self.name, await documents_state(conn, self.mirror))

    async def claim_config(self) -> None:
        """Renews this worker's config lease on the mirror, or takes it over from an older config
        (see sink/versioned.py); raises SupersededError while a newer config's workers run."""
        before = await self.sink.versioned.claim_config()
        if before is not None:
            log.info("config_taken_over", mirror=self.name, config=self.mirror.digest, before=before)

    async def take_config(self, conn: Connection) -> None:
        """On every wake-up: the lease first, and nothing of this config's index is done before it
        holds it (an old worker restarted during a rolling update must not build its old index)."""
        await self.claim_config()
        if self.sink.versioned.lease_epoch != self._prepared_at_epoch:
            # Another config held the mirror since (a rollback, or a rollout superseded this worker
            # and went): what it left is this config's to settle or undo.
            self.index_prepared = False
        if not self.index_prepared:
            try:
                await self.prepare_index(conn)
            except StartupError as exc:
                raise MirrorError(self.name, str(exc).removeprefix(f"mirror {self.name!r}: ")) from exc

    async def prepare_index(self, conn: Connection) -> None:
        """Creates the index, or the new generation to fill and switch to (index/rollout.py)."""
        generation = self.sink.versioned.generation
        if generation is None:  # before the first sync: Postgres' (a mirror not installed has none)
            with contextlib.suppress(NotMigratedError):
                generation = (await generations.load(conn, self.name)).generation
        plan = await prepare_index(self.sink.client, self.mirror, marker_key(self.name), generation)
        self.follow(plan)
        if self.rebuild_into is not None or plan.abandoned:
            # Every document gets the new index's fields (index/rollout.py); a start during a
            # rebuild reads them all again, which is slower but never leaves one behind.
            await changes.requeue_all_rows(conn, self.name)
        self.index_prepared = True
        self._prepared_at_epoch = self.sink.versioned.lease_epoch

    async def settle(self, conn: Connection) -> None:  # noqa: ARG002 (a worker step's signature)
        """Once Redis knows the mirror (its marker) and no rebuild is under way: what a finished
        rollout left (old keys, old vectors) goes, and the marker records what its documents are
        (index/rollout.py)."""
        if self.index_prepared and self.rebuild_into is None:
            await settle(self.sink.client, marker_key(self.name), self.mirror, self.sink.versioned.generation)

    def follow(self, plan: IndexPlan) -> None:
        """What the index plan says every stage does until the next plan (index/rollout.py): the
        mirror with its vectors placed, the generation to fill and what the writes keep or drop
        meanwhile. After the switch the worker follows the plain plan of the mirror as placed."""
        self.mirror = plan.mirror
        # An index created here that a marker says existed was dropped: the worker refills it.
        self.index_created, self.rebuild_into = plan.created, plan.rebuild_into
        # Where old vectors are copied from for texts that did not change, and their type.
        copied_from, datatype = plan.vectors_left_at, plan.vectors_reusable
        reusable = copied_from is not None and datatype is not None and not plan.mirror.chunked
        self._reuse = (copied_from, datatype) if reusable else None  # type: ignore[assignment]
        copied_from = self._reuse[0] if self._reuse is not None else None
        self._builder = DocumentBuilder(
            plan.mirror,
            max_text_length=self.options.max_text_length,
            reuse_from=copied_from,
            split=self._split,
        )
        self.sink.follow(plan.mirror, plan.dropped_fields, plan.vectors_left_at, plan.keys_left)
        self._resyncs.mirror = plan.mirror

    async def sync_batch(self, conn: Connection) -> BatchStats | None:
        """Processes one batch; None when the mirror's queue had nothing claimable."""
        started = time.monotonic()
        fanned_out = await self._fan_out_related(conn)
        stats = await self._claim_and_sync(conn, after_truncate=False)
        if stats == TRUNCATE_FIRST:
            if await self._sync_truncate(conn):
                stats = BatchStats(self.name, changes=1, truncated=True)
            else:  # a peer holds the marker: this claim waits for it to finish (the mirror's lock)
                stats = await self._claim_and_sync(conn, after_truncate=True)
        if not isinstance(stats, BatchStats):
            if not fanned_out.related_changes:
                return None
            stats = BatchStats(self.name)  # related changes that named no document: progress still
        stats.related_changes, stats.related_queued = fanned_out.related_changes, fanned_out.documents
        stats.duration_seconds = time.monotonic() - started
        return stats

    async def _fan_out_related(self, conn: Connection) -> FanOut:
        """The changes of related tables become changes of the documents they affect, in one
        transaction with their deletion (source/related.py)."""
        if not self.mirror.related:
            return FanOut()
        table = self.table
        everything = fan_out_all(table.statements.qualified_table, table.statements.key_columns)
        try:
            async with claim_transaction(conn):
                return await fan_out(conn, self.name, table.relations, everything)
        except FanOutFailed as exc:
            if classify(exc.error) != "mirror":
                raise exc.error from exc  # server trouble: retried like any batch
            raise MirrorError(self.name, str(exc)) from exc

    async def _claim_and_sync(
        self, conn: Connection, *, after_truncate: bool
    ) -> BatchStats | Literal["truncate first"] | None:
        try:
            return await self._claim_and_sync_sized(conn, after_truncate=after_truncate)
        except Exception:
            self.batch_sizer.failed()
            raise

    async def _claim_and_sync_sized(
        self, conn: Connection, *, after_truncate: bool
    ) -> BatchStats | Literal["truncate first"] | None:
        async with claim_transaction(conn):
            started = time.monotonic()
            # One batch of the mirror reads at a time: batches in flight then take turns, each
            # claiming and reading while the other waits for Redis or the model, instead of all
            # reading at once and leaving Redis idle.
            async with self._reading:
                size = self.batch_sizer.size
                batch = await changes.claim(conn, self.name, size, after_truncate=after_truncate)
                if batch.truncate_queued:
                    return TRUNCATE_FIRST
                if not batch.change_ids:
                    return None
                plan = self._plan(batch.keys, await load_rows(conn, self.table, batch.keys))
            # The claim is checked after each model call; a worker frozen past the claim timeout
            # anywhere else writes versions Redis refuses when a peer already wrote newer ones.
            try:
                stats = await self._embed(plan, keepalive=lambda: conn.execute("SELECT 1"))
                refused = await self._write(plan, stats)
            except ResponseError as exc:
                if "WRONGTYPE" in str(exc) or "wrong Redis type" in str(exc):  # HSET / JSON.SET
                    raise await self._foreign_keys_error(batch.keys) from exc
                raise
            stats.synced_at = time.time()
            stats.freshness_seconds = await self._acknowledge(conn, plan, batch, refused)
            await record_last_sync(self.sink.client, self.name, stats.synced_at)
        self.batch_sizer.record(len(batch.change_ids), time.monotonic() - started)
        self._summarise(stats, plan, batch)
        return stats

    async def _foreign_keys_error(self, keys: list[RowKey]) -> MirrorError:
        foreign = await self.sink.foreign_keys(keys)
        named = ", ".join(f"{key} ({kind})" for key, kind in sorted(foreign.items())[:5])
        return MirrorError(
            self.name,
            f"keys under the prefix {self.mirror.index.index.prefix!r} hold another Redis type than the "
            f"mirror's documents: {named or 'see the Redis error'}; remove them or give the mirror a prefix "
            "of its own",
        )

    @staticmethod
    def _summarise(stats: BatchStats, plan: _Plan, batch: ClaimedBatch) -> None:
        stats.changes = len(batch.change_ids)
        failed = {f.key for f in plan.failures}
        stats.upserted = len(plan.documents)
        stats.deleted = len([k for k in plan.deletes if k not in failed])  # rows gone, not failed ones
        stats.failed, stats.failures, stats.errors = len(plan.failures), plan.failures, dict(plan.errors)

    async def _acknowledge(
        self, conn: Connection, plan: _Plan, batch: ClaimedBatch, refused: set[RowKey]
    ) -> list[float]:
        """Deletes the claimed changes and records each row's outcome. Returns the freshness of the
        batch (see changes.acknowledge), measured now that Redis acknowledged it: A key's version is
        the id of its newest captured change, so the claimed changes that are versions are exactly
        the user writes it made searchable; what backfills, resyncs, repairs and retries queue are
        not writes of a user, and would only measure the queue."""
        failed = {f.key for f in plan.failures}
        gone = [(k, v) for k, v in plan.versioned_deletes() if k not in failed]
        synced = [d.key for d in plan.documents] + [k for k, _ in gone]  # a deleted row fails no more
        versions = {plan.versions[k] for k in synced if k not in refused}
        ages = await changes.acknowledge(
            conn, self.name, batch.change_ids, versions.intersection(batch.change_ids)
        )
        recovered = [k for k in synced if k in batch.failing]
        await changes.record_outcome(conn, self.name, plan.failures, recovered, self.options.retry)
        await changes.forget_deleted_versions(
            conn, self.name, gone, related=self.mirror.documents is not None
        )
        return ages

    async def resync_if_forgotten(self, conn: Connection) -> bool:
        """Resyncs the mirror where Redis forgot it or its generation changed (see resync.py); True
        when it did. Cheap, so the idle worker looks on every wake-up. A table whose capture is gone
        (dropped and created again without `migrate`) pauses the mirror first: resyncing it now
        would report it in sync while its changes are not captured."""
        problem = await capture_problem(conn, self.mirror)
        if problem is not None:
            raise MirrorError(self.name, problem)
        created, self.index_created = self.index_created, False
        return await self._resyncs.if_forgotten(conn, index_created=created)

    async def resync(self, conn: Connection, reason: str) -> None:
        """After a write was refused for want of a marker, an index, or of this writer's generation."""
        await self._resyncs.after_refusal(conn, reason)

    async def _sync_truncate(self, conn: Connection) -> bool:
        """A TRUNCATE re-queues every key the mirror has in Redis, and every failing row (which
        has none); re-reading them deletes the ones whose rows are gone."""
        async with claim_transaction(conn):
            marker = await changes.claim_truncate(conn, self.name)
            if marker is None:
                return False
            async for keys in self.sink.scan_row_keys():
                await changes.enqueue(conn, self.name, keys)
            await changes.enqueue_failed(conn, self.name)
            await changes.acknowledge(conn, self.name, [marker])
        log.info("truncate_queued", mirror=self.name)
        return True

    def _plan(self, keys: list[RowKey], loaded: LoadedRows) -> _Plan:
        plan = _Plan(loaded.versions)
        for key in keys:
            row = loaded.rows.get(key)
            if row is None:
                plan.deletes.append(key)
                continue
            if key in loaded.duplicated:
                problem = (
                    f"{self.mirror.documents} has {loaded.duplicated[key]} rows with this key; a document "
                    "is one row (aggregate the joined rows, e.g. string_agg or array_agg)"
                )
                self._fail(plan, key, RowError(self.name, key, DOCUMENTS_FIELD, problem), stage="document")
                continue
            try:
                document = self._builder.build(key, row)
            except RowError as exc:
                self._fail(plan, key, exc, stage="document")
                continue
            document.version = loaded.versions[key]
            plan.documents.append(document)
        return plan

    def _fail(self, plan: _Plan, key: RowKey, exc: RowError, *, stage: str) -> None:
        # The row can no longer be represented: its old document would be stale, so it goes too.
        log.error(
            "row_failed", mirror=self.name, key=list(key), stage=stage, field=exc.field, error=exc.problem
        )
        plan.failures.append(RowFailure(key, exc.field, exc.problem))
        plan.deletes.append(key)
        plan.errors[stage] += 1

    async def _embed(self, plan: _Plan, keepalive: Keepalive) -> BatchStats:
        stats = BatchStats(self.name)
        if self._model is None or self.mirror.embed is None or not plan.documents:
            return stats
        stored = await self.sink.stored_text_hashes([d.key for d in plan.documents])
        plan.keep_vector = {d.key for d, h in zip(plan.documents, stored, strict=True) if h == d.text_hash}
        reusable = [d for d, h in zip(plan.documents, stored, strict=True) if h and h == d.reusable_hash]
        copied = await self._copy_old_vectors(reusable)
        todo = [d for d in plan.documents if d.key not in plan.keep_vector and d.key not in copied]
        if self.mirror.chunked:
            await self._embed_chunks(plan, todo, stats, keepalive)
            return stats
        stats.embedding_skipped = len(plan.documents) - len(todo)
        stats.embedded = len(todo)
        if todo:
            texts = [d.text or "" for d in todo]
            vectors = await self._model.embed(texts, keepalive, stats.embed_call_seconds)
            self._attach_vectors(plan, todo, vectors)
        return stats

    async def _embed_chunks(
        self, plan: _Plan, todo: list[Document], stats: BatchStats, keepalive: Keepalive
    ) -> None:
        """A chunked mirror counts chunks: a chunk whose text the document already held keeps its
        vector, the others are embedded (a document whose whole text is unchanged keeps them all)."""
        assert self._model is not None
        stored = await self.sink.stored_chunk_vectors([d.key for d in todo])
        pending: list[tuple[Document, Chunk]] = []
        vector = self.mirror.vector_field
        dims = int(vector.attrs.dims) if vector is not None else 0
        for document, held in zip(todo, stored, strict=True):
            for chunk in document.chunks or []:
                kept = held.get(chunk.text_hash)
                chunk.vector = kept if kept is not None and kept.shape == (dims,) else None
                if chunk.vector is None:
                    pending.append((document, chunk))
        stats.embedded = len(pending)
        every = sum(len(d.chunks or []) for d in plan.documents)
        stats.embedding_skipped = every - len(pending)
        if pending:
            texts = [chunk.text for _, chunk in pending]
            vectors = await self._model.embed(texts, keepalive, stats.embed_call_seconds)
            self._attach_chunk_vectors(plan, pending, vectors)

    def _attach_chunk_vectors(
        self, plan: _Plan, pending: list[tuple[Document, Chunk]], vectors: list[object]
    ) -> None:
        self._attach(plan, pending, vectors, "a chunk of this row's text")

    async def _copy_old_vectors(self, documents: list[Document]) -> set[RowKey]:
        """While new vectors are made beside the old ones: a text the same model already embedded
        gets its old vector copied (a template change that leaves it as it was costs no model call)."""
        if self._reuse is None or not documents:
            return set()
        copied = set()
        old = await self.sink.stored_vectors([d.key for d in documents], *self._reuse)
        for document, vector in zip(documents, old, strict=True):
            if vector is not None:
                document.vector = vector
                copied.add(document.key)
        return copied

    def _attach_vectors(self, plan: _Plan, todo: list[Document], vectors: list[object]) -> None:
        self._attach(plan, [(document, document) for document in todo], vectors, "this row's text")

    def _attach(
        self,
        plan: _Plan,
        targets: Sequence[tuple[Document, Document | Chunk]],
        vectors: list[object],
        what: str,
    ) -> None:
        """Each vector checked and given to its document (or chunk); a row the model failed on, or
        whose vector does not fit the field, fails whole."""
        assert self.mirror.embed is not None
        source = self.mirror.embed.field
        bad: set[RowKey] = set()
        for (document, target), vector in zip(targets, vectors, strict=True):
            if document.key in bad:
                continue
            try:
                if isinstance(vector, Exception):
                    problem = f"the model failed on {what}: {type(vector).__name__}: {vector}"
                    raise RowError(self.name, document.key, source, problem) from vector
                target.vector = self._builder.vector(document.key, vector, source)
            except RowError as exc:
                self._fail(plan, document.key, exc, stage="embed")
                bad.add(document.key)
        plan.documents = [d for d in plan.documents if d.key not in bad]

    async def _write(self, plan: _Plan, stats: BatchStats) -> set[RowKey]:
        """Writes the plan; returns the keys Redis refused as older than what it holds."""
        if self._failures_seen is None:
            self._failures_seen, _ = await self.sink.indexing_failures()
        started = time.monotonic()
        refused = await self.sink.write(
            plan.documents, plan.versioned_deletes(), keep_vector=plan.keep_vector
        )
        stats.redis_write_seconds = time.monotonic() - started
        stats.refused_stale = len(refused)
        if refused:
            # Only a worker that lost its claim (frozen past the claim timeout) should see this.
            log.warning("stale_writes_refused", mirror=self.name, keys=[list(k) for k in refused])
        failures_now, reason = await self.sink.indexing_failures()
        if failures_now > self._failures_seen and plan.documents:
            await self._report_refused(plan, reason)
        self._failures_seen = failures_now
        return set(refused)

    async def _report_refused(self, plan: _Plan, reason: str | None) -> None:
        """Documents the index refused fail like bad rows, and leave Redis: an unindexed key under
        the prefix would be invisible to queries yet counted as mirrored."""
        refused = set(await self.sink.not_indexed([d.key for d in plan.documents]))
        for key in refused:
            problem = "Redis refused to index the document" + (f": {reason}" if reason else "")
            log.error("document_not_indexed", mirror=self.name, key=self.sink.key(key), error=problem)
            plan.failures.append(RowFailure(key, INDEX_REFUSED_FIELD, problem))
            plan.errors["index"] += 1
        plan.documents = [d for d in plan.documents if d.key not in refused]
        gone = [(key, plan.versions[key]) for key in refused]
        await self.sink.write([], gone, keep_vector=set())


_Columns = dict[str, tuple[str, int]]


def _shape(table: SourceTable, read: set[str]) -> tuple[_Columns, _Columns]:
    """What the mirror reads of its table: each such column's type and number (a column dropped and
    added again gets a new number), in the table and in the documents view (whose definition is
    followed by follow_documents)."""
    columns = {name: (c.sql_type, c.attnum) for name, c in table.columns.items() if name in read}
    values = {name: (c.sql_type, c.attnum) for name, c in table.value_columns.items() if name in read}
    return columns, values
