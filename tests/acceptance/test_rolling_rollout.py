"""A rolling rollout of a changed mirrors file, as Kubernetes does it: `vecmirror migrate` with the new
file (the release's migrate Job), a worker of the new file started beside the running one of the old
file, the old one stopped 10 s later, while users keep writing and a reader keeps querying the index
by its configured name. Real servers, the real model, real `vecmirror run` subprocesses.

Once the queue drains: the reader never saw an error, a smaller count or fewer than 10 KNN hits
(the online rebuild's switch is invisible to it); every row is filterable on the field the new file
added and holds the vector of the new template's text; `vecmirror verify` agrees, and `vecmirror
status` says the mirror is ok. Adding only a filter field re-embeds nothing."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from processes import DrainedProcess, free_port, start_worker, until, vecmirror
from vecmirror.sink.writer import search_result_ids

ROWS = 300
INDEX = "docs_idx"  # the configured index.name: what users query, before and after the switch
PREFIX = "doc"
DIMS = 384
OLD_TEMPLATE = "{title}"
NEW_TEMPLATE = "{title}. {body}"
OVERLAP_SECONDS = 10.0  # the new worker runs beside the old one this long (the required scenario)
SETTLE_TIMEOUT = 180.0  # generous: the model embeds ~50 texts/s on a 2-core CPU, shared by two workers
TABLE = (
    "CREATE TABLE docs (id integer PRIMARY KEY, title text NOT NULL, body text NOT NULL,"
    " rank integer NOT NULL)"
)
TOPICS = (
    "cats purring on a warm windowsill",
    "a recipe for sourdough bread",
    "the history of the Roman aqueducts",
    "tuning a PostgreSQL server for writes",
    "birds migrating south in autumn",
    "a beginner's guide to sailing",
    "black holes and the event horizon",
    "growing tomatoes on a balcony",
    "the rules of chess openings",
    "jazz musicians of the 1950s",
    "repairing a bicycle puncture",
    "volcanoes of Iceland",
)
BODIES = (
    "It is short.",
    "Read it twice before you start.",
    "Everything you need fits in one bag.",
    "Nobody agrees on the details.",
    "The pictures tell most of it.",
)


def _mirror(template: str, *, rank: bool, model: Path | None = None, dims: int = DIMS) -> dict[str, Any]:
    fields: list[dict[str, Any]] = [{"name": "title", "type": "text"}]
    if rank:
        fields.append({"name": "rank", "type": "numeric"})
    fields.append(
        {
            "name": "embedding",
            "type": "vector",
            "attrs": {"algorithm": "hnsw", "dims": dims, "distance_metric": "cosine", "datatype": "float32"},
        }
    )
    return {
        "name": "docs",
        "table": "public.docs",
        "embed": {"field": "embedding", "template": template, **({"model": str(model)} if model else {})},
        "index": {"index": {"name": INDEX, "prefix": PREFIX, "storage_type": "hash"}, "fields": fields},
    }


def _write_config(path: Path, mirror: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"mirrors": [mirror]}, sort_keys=False))
    return path


def _title(row: int, revision: int) -> str:
    return f"{TOPICS[(row + revision) % len(TOPICS)]}, note {row} revision {revision}"


def _body(row: int, revision: int) -> str:
    return f"{BODIES[(row * 7 + revision) % len(BODIES)]} (row {row}, edit {revision})"


def _render(template: str, title: str, body: str) -> str:
    return template.format(title=title, body=body)


def _worker_env(cli_env: dict[str, str], port: int) -> dict[str, str]:
    return {
        **cli_env,
        "VECMIRROR_HTTP_HOST": "127.0.0.1",
        "VECMIRROR_HTTP_PORT": str(port),
        "VECMIRROR_POLL_INTERVAL": "1",
        "VECMIRROR_METRICS_INTERVAL": "0.5",
        "VECMIRROR_ERROR_BACKOFF": "0.2",
    }


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): float(s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _embeddings(port: int, outcome: str) -> float:
    """The worker's model use: texts it embedded (computed) or whose stored vector it kept (skipped)."""
    return _scrape(port).get(("vecmirror_embeddings_total", (("mirror", "docs"), ("outcome", outcome))), 0.0)


def _stop(worker: subprocess.Popen[str], name: str) -> list[dict[str, Any]]:
    """SIGTERM, which must exit 0; returns the worker's JSON log lines (every one must parse)."""
    worker.send_signal(signal.SIGTERM)
    try:
        out, err = worker.communicate(timeout=60)
    finally:
        worker.kill()
    assert worker.returncode == 0, f"worker {name} exited {worker.returncode}: {err[-3000:]}"
    return [json.loads(line) for line in (out + err).splitlines() if line.strip()]


def _kill(worker: DrainedProcess | None) -> None:
    if worker is not None and worker.poll() is None:
        worker.kill()
        worker.communicate()


def _ft_info(client: redis.Redis) -> dict[str, Any] | None:
    try:
        reply = client.execute_command("FT.INFO", INDEX)  # type: ignore[no-untyped-call]
    except redis.ResponseError:
        return None
    if isinstance(reply, dict):  # redis-py parses FT.INFO's reply
        return {_text(k): v for k, v in reply.items()}
    return {_text(k): v for k, v in zip(reply[::2], reply[1::2], strict=True)}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _count(client: redis.Redis, query: str = "*") -> int:
    reply = client.execute_command("FT.SEARCH", INDEX, query, "LIMIT", 0, 0, "DIALECT", 2)  # type: ignore[no-untyped-call]
    return _total(reply)


def _total(reply: Any) -> int:
    """FT.SEARCH's total, in RESP3 (a map) or RESP2 (a flat list) form."""
    total: Any = (
        reply.get(b"total_results", reply.get("total_results")) if isinstance(reply, dict) else reply[0]
    )
    return int(total)


def _query_vector(dims: int) -> bytes:
    vector = np.random.default_rng(7).standard_normal(dims).astype(np.float32)
    return (vector / np.linalg.norm(vector)).astype(np.float32).tobytes()


def _vector_field(info: dict[str, Any]) -> dict[str, Any]:
    """The vector field of an index as FT.INFO shows it: identifier, dim, ..."""
    for attribute in info["attributes"]:
        if isinstance(attribute, dict):
            properties = {_text(k): v for k, v in attribute.items()}
        else:
            properties = {_text(k): v for k, v in zip(attribute[::2], attribute[1::2], strict=False)}
        if _text(properties.get("type", "")) == "VECTOR":
            return properties
    raise AssertionError(f"{INDEX} has no vector field")


def _dims(info: dict[str, Any]) -> int:
    return int(_text(_vector_field(info)["dim"]))


def _vector_at(client: redis.Redis) -> str:
    """Where the index users query reads vectors: `embedding`, or where new vectors were made."""
    info = _ft_info(client)
    assert info is not None
    return _text(_vector_field(info)["identifier"])


@dataclass
class Reader:
    """Queries the index by its configured name every 100 ms, as users do throughout the rollout:
    the number of documents (which never legitimately drops: nothing is deleted) and a KNN 10."""

    redis_url: str
    samples: int = 0
    largest: int = 0
    errors: list[str] = field(default_factory=list)
    drops: list[str] = field(default_factory=list)
    short: list[str] = field(default_factory=list)
    answering: list[str] = field(default_factory=list)  # the real indexes that answered, in order
    # KNN queries asked again because the index switched to other dims between FT.INFO and the
    # query: a client whose model changed must switch its query vectors at that moment (README).
    dims_switches: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="rollout-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self) -> None:
        self.stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the reader did not stop"

    def _run(self) -> None:
        client = redis.Redis.from_url(self.redis_url, socket_timeout=30)
        try:
            while not self.stop.is_set():
                self._sample(client)
                self.stop.wait(0.1)
        finally:
            client.close()

    def _sample(self, client: redis.Redis) -> None:
        at = f"t={time.monotonic() - self._started:.2f}s"
        try:
            count = _count(client)
            knn = self._knn(client, at)
            info = _ft_info(client)
        except redis.RedisError as error:
            self.errors.append(f"{at}: {type(error).__name__}: {error}")
            return
        self.samples += 1
        if count < self.largest:
            self.drops.append(f"{at}: {count} documents after {self.largest}")
        self.largest = max(self.largest, count)
        hits = len(search_result_ids(knn))
        if hits < 10:
            self.short.append(f"{at}: KNN 10 returned {hits} hits (total {_total(knn)})")
        name = "(FT.INFO found no index)" if info is None else _text(info["index_name"])
        if not self.answering or self.answering[-1] != name:
            self.answering.append(name)

    def _knn(self, client: redis.Redis, at: str) -> Any:
        """KNN 10 with a query vector of the dims the index has now; asked once more when the index
        switched to other dims in between (and only then)."""
        info = _ft_info(client)
        dims = _dims(info) if info is not None else DIMS
        try:
            return _knn(client, dims)
        except redis.ResponseError:
            info = _ft_info(client)
            if info is None or _dims(info) == dims:
                raise
            self.dims_switches.append(f"{at}: {dims} -> {_dims(info)}")
            return _knn(client, _dims(info))


def _knn(client: redis.Redis, dims: int) -> Any:
    return client.execute_command(  # type: ignore[no-untyped-call]
        "FT.SEARCH", INDEX, "*=>[KNN 10 @embedding $vec AS d]", "PARAMS", 2, "vec", _query_vector(dims),
        "NOCONTENT", "LIMIT", 0, 10, "DIALECT", 2,
    )  # fmt: skip


@dataclass
class Writer:
    """A user's writes throughout the rollout, one statement every 100 ms on a thread of its own: an
    update of a random row, and with `inserts` a new row now and then. Nothing is deleted."""

    database_url: str
    changes_text: bool  # updates change the title (the embedded text); else only body and rank
    inserts: bool
    ops: int = 0
    inserted: int = 0
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._main, name="rollout-writer")

    def start(self) -> None:
        self._thread.start()

    def finish(self) -> None:
        self.stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the writer did not stop"
        assert not self.errors, self.errors

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        conn = await asyncpg.connect(self.database_url)
        rng = random.Random(20261204)
        next_id = ROWS + 1
        try:
            while not self.stop.is_set():
                revision = self.ops + 1
                if self.inserts and rng.random() < 0.1:
                    await conn.execute(
                        "INSERT INTO docs VALUES ($1, $2, $3, $4)",
                        next_id,
                        _title(next_id, revision),
                        _body(next_id, revision),
                        revision % 50,
                    )
                    next_id += 1
                    self.inserted += 1
                else:
                    row = rng.randint(1, next_id - 1)
                    column = "title" if self.changes_text else "body"
                    text = _title(row, revision) if self.changes_text else _body(row, revision)
                    await conn.execute(
                        f"UPDATE docs SET {column} = $2, rank = $3 WHERE id = $1", row, text, revision % 50
                    )
                self.ops += 1
                await asyncio.sleep(0.1)
        except Exception as error:
            self.errors.append(f"{type(error).__name__}: {error}")
        finally:
            await conn.close()


@dataclass
class Rollout:
    reader: Reader
    writer: Writer
    logs_a: list[dict[str, Any]]
    logs_b: list[dict[str, Any]]
    computed_b: float  # texts worker B embedded (its /metrics)
    skipped_b: float  # texts whose stored vector worker B kept
    status: dict[str, Any]
    verify: subprocess.CompletedProcess[str]
    vectors_before: dict[str, bytes]
    b_started_at: datetime  # UTC, as the workers' log timestamps


@dataclass(frozen=True)
class Servers:
    """What each rollout runs against: Postgres and Redis, and the CLI's environment for both."""

    pg: asyncpg.Connection
    database_url: str
    redis: redis.Redis
    redis_url: str
    cli_env: dict[str, str]


@pytest.fixture
def servers(
    pg: asyncpg.Connection,
    database_url: str,
    redis_client: redis.Redis,
    redis_url: str,
    cli_env: dict[str, str],
) -> Servers:
    return Servers(pg, database_url, redis_client, redis_url, cli_env)


async def _rollout(servers: Servers, old: Path, new: Path, *, changes_text: bool) -> Rollout:
    """A service running the old file, then the rollout of the new one under reads and writes."""
    pg, database_url, redis_client, redis_url, cli_env = (
        servers.pg,
        servers.database_url,
        servers.redis,
        servers.redis_url,
        servers.cli_env,
    )
    await pg.execute(TABLE)
    rows = [(row, _title(row, 0), _body(row, 0), row % 50) for row in range(1, ROWS + 1)]
    await pg.copy_records_to_table("docs", records=rows)
    migrated = vecmirror(cli_env, "migrate", "--config", str(old))
    assert migrated.returncode == 0, migrated.stderr
    port_a, port_b = free_port(), free_port()
    started_a = start_worker(_worker_env(cli_env, port_a), old)
    worker_a: DrainedProcess | None = started_a
    worker_b: DrainedProcess | None = None
    reader = Reader(redis_url)
    writer = Writer(database_url, changes_text=changes_text, inserts=changes_text)
    try:
        await until(
            lambda: _settled(pg, redis_client, switched=False), SETTLE_TIMEOUT, "worker A's first sync"
        )
        assert _count(redis_client) == ROWS
        vectors_before = _vectors(redis_client)
        reader.start()
        writer.start()
        await until(
            _at_least(lambda: min(reader.samples, writer.ops), 10), 30, "reads and writes to start", every=0.2
        )

        # The release: its migrate Job, then the new pod; the old pod goes 10 s after the new one started.
        migrated = vecmirror(cli_env, "migrate", "--config", str(new))
        assert migrated.returncode == 0, migrated.stderr
        b_started_at = datetime.now(UTC)
        started_b = start_worker(_worker_env(cli_env, port_b), new)
        worker_b = started_b
        await asyncio.sleep(OVERLAP_SECONDS)
        assert started_b.poll() is None, "worker B exited during the overlap"
        logs_a = await asyncio.to_thread(_stop, started_a, "A")
        worker_a = None
        ops = writer.ops
        await until(_at_least(lambda: writer.ops - ops, 20), 30, "writes after worker A stopped", every=0.2)
        writer.finish()

        await until(
            lambda: _settled(pg, redis_client, switched=True), SETTLE_TIMEOUT, "the rollout to settle"
        )
        samples = reader.samples
        await until(_at_least(lambda: reader.samples - samples, 5), 30, "reads after the rollout", every=0.2)
        reader.finish()
        computed_b, skipped_b = _embeddings(port_b, "computed"), _embeddings(port_b, "skipped")
        statuses = vecmirror(cli_env, "status", "--json", "--config", str(new))
        assert statuses.returncode == 0, statuses.stderr
        verified = vecmirror(cli_env, "verify", "--config", str(new))
        logs_b = await asyncio.to_thread(_stop, started_b, "B")
        worker_b = None
    finally:
        reader.stop.set()
        writer.stop.set()
        _kill(worker_a)
        _kill(worker_b)
    [status] = json.loads(statuses.stdout)
    return Rollout(
        reader, writer, logs_a, logs_b, computed_b, skipped_b, status, verified, vectors_before, b_started_at
    )


def _at_least(value: Callable[[], int], wanted: int) -> Callable[[], Awaitable[bool]]:
    async def reached() -> bool:
        return value() >= wanted

    return reached


async def _settled(pg: asyncpg.Connection, client: redis.Redis, *, switched: bool) -> bool:
    """Nothing queued, no walk over the table pending, Redis done indexing; after the rollout, the
    configured name answers from the new index generation (`<index.name>__<digest>`)."""
    walks = await pg.fetchval("SELECT count(*) FROM vecmirror.mirrors_v1 WHERE backfill_state <> 'done'")
    if walks or await pg.fetchval("SELECT count(*) FROM vecmirror.changes_v1"):
        return False
    info = _ft_info(client)
    if info is None or int(info["indexing"]) or float(info["percent_indexed"]) < 1:
        return False
    answering = _text(info["index_name"])
    table_rows = await pg.fetchval("SELECT count(*) FROM docs")
    if int(info["num_docs"]) != table_rows:
        return False
    return answering.startswith(f"{INDEX}__") if switched else answering == INDEX


def _vectors(client: redis.Redis) -> dict[str, bytes]:
    at = _vector_at(client)
    keys = sorted(_text(k) for k in client.scan_iter(match=f"{PREFIX}:*", count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hget(key, at)
    return dict(zip(keys, pipe.execute(), strict=True))


def _documents(client: redis.Redis, ids: list[int]) -> list[dict[str, bytes]]:
    pipe = client.pipeline(transaction=False)
    for row in ids:
        pipe.hgetall(f"{PREFIX}:{row}")
    return [{_text(k): v for k, v in doc.items()} for doc in pipe.execute()]


def _check_reader(rollout: Rollout) -> None:
    reader = rollout.reader
    assert not reader.errors, f"the reader got errors querying {INDEX!r}: {reader.errors[:10]}"
    assert not reader.drops, f"the document count of {INDEX!r} dropped: {reader.drops[:10]}"
    assert not reader.short, f"KNN 10 on {INDEX!r} returned fewer than 10 hits: {reader.short[:10]}"
    # At 100 ms intervals over the 10 s overlap and what follows: ~150 on a 2-core CPU, fewer when busy.
    assert reader.samples >= 50, f"the reader sampled only {reader.samples} times"
    # It read across the switch: the old index answered first, the new generation last.
    assert reader.answering[0] == INDEX and reader.answering[-1].startswith(f"{INDEX}__"), reader.answering
    assert reader.largest >= ROWS


def _check_rollout_logs(rollout: Rollout) -> None:
    events = [line["event"] for line in rollout.logs_b]
    for name in ("index_rebuild_started", "index_switched"):
        assert name in events, f"worker B never logged {name}: {sorted(set(events))}"
    switched = next(line for line in rollout.logs_b if line["event"] == "index_switched")
    assert switched["index"] == INDEX and switched["dropped"] == INDEX
    for logs, name in ((rollout.logs_a, "A"), (rollout.logs_b, "B")):
        crashed = [line for line in logs if line["event"] in ("run_crashed", "mirror_step_crashed")]
        assert not crashed, f"worker {name}: {crashed}"


async def _check_rows(
    pg: asyncpg.Connection, client: redis.Redis, rollout: Rollout, *, vectors: tuple[Made, Made] | None
) -> None:
    """Every row is a document filterable on the new field, with the row's values now and (with
    `vectors`: the new file's, the old file's) the vector the new file makes of it; `vecmirror
    verify` with the new file agrees. Every row that is not is named, with what the old file's
    worker A did meanwhile."""
    rows = await pg.fetch("SELECT id, title, body, rank FROM docs ORDER BY id")
    status = rollout.status
    assert (status["pending"], status["table_rows"], status["documents"]) == (0, len(rows), len(rows)), status
    docs = _documents(client, [r["id"] for r in rows])
    filterable = _count(client, "@rank:[-inf +inf]")
    without_rank = [f"{PREFIX}:{r['id']}" for r, doc in zip(rows, docs, strict=True) if "rank" not in doc]
    stale = [
        f"{PREFIX}:{r['id']} (rank {_text(doc['rank'])}, title {_text(doc.get('title', b''))!r} in Redis; "
        f"{r['rank']}, {r['title']!r} in Postgres)"
        for r, doc in zip(rows, docs, strict=True)
        if "rank" in doc and (float(doc["rank"]) != r["rank"] or _text(doc.get("title", b"")) != r["title"])
    ]
    wrong_vectors = _not_made_by(*vectors, rows, docs, _vector_at(client)) if vectors else []
    problems = []
    if filterable != len(rows) or without_rank:
        problems.append(
            f"{filterable} of {len(rows)} rows are filterable on @rank (the NUMERIC field the new file "
            f"added); {len(without_rank)} documents have no rank, e.g. {without_rank[:10]}"
        )
    if stale:
        problems.append(
            f"{len(stale)} documents hold a rank or title that is not the row's, e.g. {stale[:5]}"
        )
    if wrong_vectors:
        problems.append(
            f"{len(wrong_vectors)} documents hold a vector that is not the new file's, "
            f"e.g. {wrong_vectors[:10]}"
        )
    assert not problems, (
        "after the rollout: "
        + "; ".join(problems)
        + f". {_blame(rollout)}. `vecmirror verify --config new` said: "
        + (rollout.verify.stdout + rollout.verify.stderr)[:1500]
    )
    assert rollout.verify.returncode == 0, rollout.verify.stdout + rollout.verify.stderr
    # Settled means `status` says so too: worker B syncs the mirror, worker A is gone.
    assert (status["state"], status["error"]) == ("ok", None), (
        f"`vecmirror status` still shows the mirror {status['state']} since {status['error_since']} after "
        f"the rollout settled (worker A exited; worker B synced it last at {status['last_sync']}): "
        f"{status['error']!r}; worker A logged mirror_paused at "
        f"{[line['timestamp'] for line in rollout.logs_a if line['event'] == 'mirror_paused']}, worker B "
        f"synced its first batch at {_first_batch(rollout.logs_b)}"
    )


def _first_batch(logs: list[dict[str, Any]]) -> str | None:
    return next((line["timestamp"] for line in logs if line["event"] == "batch_synced"), None)


def _blame(rollout: Rollout) -> str:
    """What worker A (old file) wrote once worker B (new file) ran: fenced off, it writes nothing."""
    batches = [
        line
        for line in rollout.logs_a
        if line["event"] == "batch_synced"
        and line["rows"] > 0
        and datetime.fromisoformat(line["timestamp"]) >= rollout.b_started_at
    ]
    if not batches:
        return "Worker A (old file) wrote no document after worker B (new file) started: worker B left these"
    upserted = sum(line["upserted"] for line in batches)
    embedded = sum(line["embedded"] for line in batches)
    return (
        f"Worker A (old file: no rank field, template {OLD_TEMPLATE!r}) synced {len(batches)} batches "
        f"({upserted} documents written, {embedded} texts embedded) after worker B (new file) started, "
        f"during the {OVERLAP_SECONDS:.0f} s overlap, rows worker B had read (or queued to read again for "
        "its rebuild) included: the old file's writes are not fenced off by the newer config"
    )


@dataclass(frozen=True)
class Made:
    """How a file makes its vectors: the model (None: the default, all-MiniLM-L6-v2), the template."""

    template: str
    model: Path | None = None
    dims: int = DIMS


@cache
def _model(path: Path | None) -> Any:
    """The model as sentence-transformers runs it (vecmirror's torch backend; its ONNX default gives
    the same vectors). Both models end in a Normalize module: their vectors have length 1."""
    from sentence_transformers import SentenceTransformer

    from vecmirror.config import DEFAULT_MODEL
    from vecmirror.pipeline.embedder import resolve_model

    return SentenceTransformer(str(path) if path else resolve_model(DEFAULT_MODEL), device="cpu")


def _encode(made: Made, rows: list[asyncpg.Record]) -> np.ndarray[Any, Any]:
    texts = [_render(made.template, r["title"], r["body"]) for r in rows]
    vectors = np.asarray(
        _model(made.model).encode(texts, batch_size=64, convert_to_numpy=True), dtype=np.float32
    )
    unit: np.ndarray[Any, Any] = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return unit


def _not_made_by(
    new: Made, old: Made, rows: list[asyncpg.Record], docs: list[dict[str, bytes]], at: str
) -> list[str]:
    """Every stored vector (at `at`) is the new file's model's embedding of its template's text of
    its row (cosine > 0.999); returns the rows whose vector is not, each saying what it is instead."""
    wanted, before = _encode(new, rows), _encode(old, rows) if old.dims == new.dims else None
    wrong = []
    for i, (row, doc) in enumerate(zip(rows, docs, strict=True)):
        stored = np.frombuffer(doc.get(at, b""), dtype=np.float32)
        if stored.shape != (new.dims,):
            wrong.append(f"{PREFIX}:{row['id']}: no {new.dims}-d vector stored at {at!r}")
            continue
        stored = stored / np.linalg.norm(stored)
        cosine_new = float(stored @ wanted[i])
        if cosine_new > 0.999:
            continue
        cosine_old = float(stored @ before[i]) if before is not None else 0.0
        made_from = "the OLD file's vector" if cosine_old > 0.999 else "neither file's vector of the row now"
        wrong.append(f"{PREFIX}:{row['id']}: {made_from} (cosine {cosine_new:.4f} new, {cosine_old:.4f} old)")
    return wrong


async def test_rolling_rollout_adding_a_numeric_field_and_changing_the_template(
    servers: Servers, tmp_path: Path
) -> None:
    old = _write_config(tmp_path / "old.yaml", _mirror(OLD_TEMPLATE, rank=False))
    new = _write_config(tmp_path / "new.yaml", _mirror(NEW_TEMPLATE, rank=True))
    rollout = await _rollout(servers, old, new, changes_text=True)
    assert rollout.writer.inserted > 0 and rollout.writer.ops >= 60, rollout.writer
    _check_reader(rollout)
    _check_rollout_logs(rollout)
    _check_vectors_moved(rollout, servers.redis)
    assert not rollout.reader.dims_switches, rollout.reader.dims_switches
    await _check_rows(servers.pg, servers.redis, rollout, vectors=(Made(NEW_TEMPLATE), Made(OLD_TEMPLATE)))


async def test_adding_only_a_filter_field_re_embeds_nothing(servers: Servers, tmp_path: Path) -> None:
    old = _write_config(tmp_path / "old.yaml", _mirror(OLD_TEMPLATE, rank=False))
    new = _write_config(tmp_path / "new.yaml", _mirror(OLD_TEMPLATE, rank=True))
    # The writer changes body (no field, not in the template) and rank only: no text to embed.
    rollout = await _rollout(servers, old, new, changes_text=False)
    assert rollout.writer.ops >= 60, rollout.writer
    _check_reader(rollout)
    _check_rollout_logs(rollout)
    assert not any(line["event"] == "old_vectors_removed" for line in rollout.logs_b)
    assert _vector_at(servers.redis) == "embedding"  # the vectors stayed where they were

    # Worker B read every row again for the new index, and embedded none of them.
    embedded_b = sum(line["embedded"] for line in rollout.logs_b if line["event"] == "batch_synced")
    assert rollout.computed_b == 0 and embedded_b == 0, (rollout.computed_b, embedded_b)
    assert rollout.skipped_b > 0, "worker B rewrote no document"
    assert _vectors(servers.redis) == rollout.vectors_before, "a stored vector changed"
    await _check_rows(servers.pg, servers.redis, rollout, vectors=None)


async def test_rolling_rollout_of_another_model_with_other_dims(
    servers: Servers, tmp_path: Path, minilm_256: Path
) -> None:
    """384 dims to 256, another model: the old index keeps answering from the old vectors while the
    new ones are made beside them, then the name switches to the new generation in one command."""
    old_made, new_made = Made(OLD_TEMPLATE), Made(OLD_TEMPLATE, minilm_256, dims=256)
    old = _write_config(tmp_path / "old.yaml", _mirror(OLD_TEMPLATE, rank=False))
    new = _write_config(tmp_path / "new.yaml", _mirror(OLD_TEMPLATE, rank=True, model=minilm_256, dims=256))
    rollout = await _rollout(servers, old, new, changes_text=True)
    assert rollout.writer.inserted > 0 and rollout.writer.ops >= 60, rollout.writer
    _check_reader(rollout)
    _check_rollout_logs(rollout)
    _check_vectors_moved(rollout, servers.redis)
    # Every row embedded again by the new model (the writer's rows too, some more than once).
    assert rollout.computed_b >= ROWS, rollout.computed_b
    await _check_rows(servers.pg, servers.redis, rollout, vectors=(new_made, old_made))


def _check_vectors_moved(rollout: Rollout, client: redis.Redis) -> None:
    """The new vectors were made beside the old ones, which went once the new index answered."""
    at = _vector_at(client)
    assert at.startswith("embedding__"), at
    removed = [line for line in rollout.logs_b if line["event"] == "old_vectors_removed"]
    assert removed and removed[0]["at"] == "embedding", removed
    left = [key for key, vector in _old_vectors(client).items() if vector is not None]
    assert not left, f"{len(left)} documents still hold the old vector, e.g. {left[:5]}"


def _old_vectors(client: redis.Redis) -> dict[str, bytes | None]:
    keys = sorted(_text(k) for k in client.scan_iter(match=f"{PREFIX}:*", count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hget(key, "embedding")
    return dict(zip(keys, pipe.execute(), strict=True))
