"""Soak: steady mixed writes against a `vecmirror run` worker that is SIGKILLed and restarted,
then a drain and a full check that Redis is exactly what the tables say (invariant P).

    .venv/bin/python bench/soak.py --minutes 60                 # the real soak (not run in CI)
    .venv/bin/python bench/soak.py --minutes 3 --out /tmp/s.md  # a short one

Starts the embedded stack in a temporary directory, fills a PRODUCTS-like table (precomputed
vectors: no model), runs `vecmirror migrate` and `vecmirror run` as subprocesses, and then for
--minutes: a writer loop makes --rate changes a second (inserts, vector and other updates,
deletes, primary-key changes, a share of poison rows and their healing), the worker is killed
with SIGKILL every --kill-every seconds and started again, and its RSS (VmRSS) and the queue depth
are sampled every --sample-every seconds. --docs-rate adds a small DOCS-like table embedded by the
real model. At the end the load stops, the queue must drain, and `vecmirror verify --json` plus an
independent check of keys, versions, index counts and dead letters must find no drift. The summary
is printed and written to --out (bench/SOAK.md); the exit status is 1 if anything drifted or the
worker ever exited by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import asyncpg
import redis
import yaml

from vecmirror.config import META_VERSION_FIELD, MirrorConfig, parse_config
from vecmirror.sink.keys import document_key, key_pattern
from vecmirror.stack import StackUrls, stack_down, stack_up

DIMS = 16
PRODUCTS: dict[str, Any] = {
    "name": "soak_products",
    "table": "soak_products",
    "vector_column": "vec",
    "index": {
        "index": {"name": "soak_products_idx", "prefix": "soakp", "storage_type": "hash"},
        "fields": [
            {"name": "name", "type": "text"},
            {"name": "price", "type": "numeric"},
            {"name": "vec", "type": "vector", "attrs": {"algorithm": "hnsw", "dims": DIMS}},
        ],
    },
}
DOCS: dict[str, Any] = {
    "name": "soak_docs",
    "table": "soak_docs",
    "embed": {"field": "embedding", "template": "{title}: {body}"},
    "index": {
        "index": {"name": "soak_docs_idx", "prefix": "soakd", "storage_type": "hash"},
        "fields": [
            {"name": "title", "type": "text"},
            {"name": "body", "type": "text"},
            {"name": "embedding", "type": "vector", "attrs": {"algorithm": "hnsw", "dims": 384}},
        ],
    },
}
WORDS = ["river", "mountain", "city", "music", "rocket", "garden", "recipe", "engine", "market", "storm"]
PRODUCT_OPS = {"insert": 15, "delete": 15, "change_key": 10, "update_vector": 30, "update_other": 30}
DOCS_ROWS = 200


@dataclass(frozen=True)
class Options:
    minutes: float
    rate: float
    kill_every: float
    sample_every: float
    rows: int
    poison_share: float
    docs_rate: float
    drain_timeout: float
    out: Path

    @property
    def mirrors(self) -> list[dict[str, Any]]:
        return [PRODUCTS, DOCS] if self.docs_rate > 0 else [PRODUCTS]


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="how long the load runs")
    parser.add_argument("--rate", type=float, default=50.0, help="product changes per second")
    parser.add_argument("--kill-every", type=float, default=30.0, help="seconds between SIGKILLs (0: never)")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--rows", type=int, default=5000, help="product rows loaded before the soak")
    parser.add_argument("--poison-share", type=float, default=0.01, help="share of changes making a bad row")
    parser.add_argument("--docs-rate", type=float, default=0.0, help="docs changes per second (real model)")
    parser.add_argument("--drain-timeout", type=float, default=300.0, help="seconds the final drain may take")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("SOAK.md"))
    return Options(**vars(parser.parse_args(argv)))


# ---- the worker process ----


class WorkerProcess:
    """`vecmirror run` as a subprocess, its output appended to one log file across restarts
    (a pipe nobody reads would fill up and block the worker)."""

    def __init__(self, env: dict[str, str], config: Path, log: TextIO) -> None:
        self._env, self._config, self._log = env, config, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.starts = 0
        self.kills = 0
        self.crashes: list[int] = []  # exit codes of exits nobody asked for

    def start(self) -> None:
        command = [sys.executable, "-m", "vecmirror.cli", "run", "--config", str(self._config)]
        self.proc = subprocess.Popen(command, env=self._env, stdout=self._log, stderr=subprocess.STDOUT)
        self.started_at = time.monotonic()
        self.starts += 1

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs; the claim's transaction dies with the connection."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.kills += 1

    def restart_if_exited(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            self.crashes.append(self.proc.returncode)
            self.start()

    def stop(self) -> None:
        """SIGTERM: the graceful shutdown; SIGKILL if it takes longer than the grace period allows."""
        if self.pid is None or self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def rss_kib(self) -> int | None:
        pid = self.pid
        if pid is None:
            return None
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:  # it exited between the check and the read
            return None
        line = next((line for line in status.splitlines() if line.startswith("VmRSS:")), None)
        return int(line.split()[1]) if line else None


# ---- the load ----


@dataclass
class ProductModel:
    """The skus the writer made, so it picks existing rows without asking Postgres."""

    skus: list[str] = field(default_factory=list)
    poison: set[str] = field(default_factory=set)
    next_id: int = 0

    def new_sku(self) -> str:
        self.next_id += 1
        return f"s{self.next_id}"

    def add(self, sku: str) -> None:
        self.skus.append(sku)

    def remove(self, sku: str) -> None:
        # Swap with the last one and pop: nothing shifts, and the order does not matter.
        index = self.skus.index(sku)
        self.skus[index] = self.skus[-1]
        self.skus.pop()
        self.poison.discard(sku)


def vector(rng: random.Random) -> list[float]:
    return [rng.uniform(-1, 1) for _ in range(DIMS)]


class Writer:
    """One statement per change, at a steady rate; the model follows each. The two tables' loops
    run side by side, each on a connection of its own."""

    def __init__(
        self, conn: asyncpg.Connection, docs_conn: asyncpg.Connection, rng: random.Random, options: Options
    ) -> None:
        self._conn, self._docs_conn, self._rng, self._options = conn, docs_conn, rng, options
        self.products = ProductModel()
        self.ops: Counter[str] = Counter()
        self._docs_next = DOCS_ROWS

    async def preload(self) -> None:
        rows = []
        for _ in range(self._options.rows):
            sku = self.products.new_sku()
            self.products.add(sku)
            rows.append((sku, self._rng.choice(WORDS), self._rng.randint(1, 999), vector(self._rng)))
        await self._conn.executemany("INSERT INTO soak_products VALUES ($1, $2, $3, $4)", rows)
        if self._options.docs_rate > 0:
            await self._conn.execute(
                "INSERT INTO soak_docs SELECT g, 'doc ' || g, 'body of document ' || g "
                f"FROM generate_series(1, {DOCS_ROWS}) g"
            )

    async def run(self, deadline: float, rate: float, step: Callable[[], Awaitable[None]]) -> None:
        """Calls `step` `rate` times a second until the deadline, catching up after a slow step."""
        if rate <= 0:
            return
        started = time.monotonic()
        done = 0
        while time.monotonic() < deadline:
            await step()
            done += 1
            await asyncio.sleep(max(0.0, started + done / rate - time.monotonic()))

    async def product_step(self) -> None:
        kind = self._rng.choices(list(PRODUCT_OPS), weights=list(PRODUCT_OPS.values()))[0]
        if not self.products.skus:
            kind = "insert"
        elif self._rng.random() < self._options.poison_share:
            kind = "poison"
        await getattr(self, f"_{kind}")()
        self.ops[kind] += 1

    async def _insert(self) -> None:
        sku = self.products.new_sku()
        await self._conn.execute(
            "INSERT INTO soak_products VALUES ($1, $2, $3, $4)",
            sku,
            self._rng.choice(WORDS),
            self._rng.randint(1, 999),
            vector(self._rng),
        )
        self.products.add(sku)

    async def _delete(self) -> None:
        sku = self._rng.choice(self.products.skus)
        await self._conn.execute("DELETE FROM soak_products WHERE sku = $1", sku)
        self.products.remove(sku)

    async def _change_key(self) -> None:
        old, new = self._rng.choice(self.products.skus), self.products.new_sku()
        await self._conn.execute("UPDATE soak_products SET sku = $1 WHERE sku = $2", new, old)
        was_poison = old in self.products.poison
        self.products.remove(old)
        self.products.add(new)
        if was_poison:
            self.products.poison.add(new)

    async def _update_vector(self) -> None:
        """A good vector: heals a poison row too."""
        sku = self._rng.choice(self.products.skus)
        await self._conn.execute("UPDATE soak_products SET vec = $1 WHERE sku = $2", vector(self._rng), sku)
        self.products.poison.discard(sku)

    async def _update_other(self) -> None:
        sku = self._rng.choice(self.products.skus)
        await self._conn.execute(
            "UPDATE soak_products SET price = $1, name = $2 WHERE sku = $3",
            self._rng.randint(1, 999),
            self._rng.choice(WORDS),
            sku,
        )

    async def _poison(self) -> None:
        """A vector of the wrong length: the row fails, is retried, then dead-lettered."""
        sku = self._rng.choice(self.products.skus)
        await self._conn.execute("UPDATE soak_products SET vec = '{1,2}' WHERE sku = $1", sku)
        self.products.poison.add(sku)

    async def docs_step(self) -> None:
        """Re-embedded text (most changes), an insert or a delete of the small DOCS-like table."""
        roll = self._rng.random()
        if roll < 0.1:
            self._docs_next += 1
            await self._docs_conn.execute(
                "INSERT INTO soak_docs VALUES ($1, $2, $3)", self._docs_next, "new doc", "fresh text"
            )
        elif roll < 0.2:
            await self._docs_conn.execute(
                "DELETE FROM soak_docs WHERE id = $1", self._rng.randint(1, self._docs_next)
            )
        else:
            body = " ".join(self._rng.choices(WORDS, k=self._rng.randint(5, 40)))
            await self._docs_conn.execute(
                "UPDATE soak_docs SET body = $1 WHERE id = $2", body, self._rng.randint(1, self._docs_next)
            )
        self.ops["docs"] += 1


# ---- kills and samples ----


STARTUP = 5.0  # seconds: RSS samples of a worker this young show its start-up, not its steady state


@dataclass(frozen=True)
class Sample:
    elapsed: float  # seconds since the load started
    pid: int | None
    age: float  # seconds since this worker started
    rss_kib: int | None
    queue: int

    @property
    def steady_rss(self) -> int | None:
        return self.rss_kib if self.age >= STARTUP else None


async def supervise(worker: WorkerProcess, deadline: float, kill_every: float) -> None:
    """SIGKILL every `kill_every` seconds, then a new worker; one that exited by itself is counted
    (a crash) and started again too."""
    next_kill = time.monotonic() + kill_every if kill_every > 0 else float("inf")
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        worker.restart_if_exited()
        if time.monotonic() >= next_kill:
            await asyncio.to_thread(worker.kill)
            worker.start()
            next_kill += kill_every


async def sample(
    worker: WorkerProcess, conn: asyncpg.Connection, started: float, deadline: float, every: float
) -> list[Sample]:
    samples = []
    while time.monotonic() < deadline:
        queue = await conn.fetchval("SELECT count(*) FROM vecmirror.changes_v1")
        now = time.monotonic()
        samples.append(Sample(now - started, worker.pid, now - worker.started_at, worker.rss_kib(), queue))
        await asyncio.sleep(every)
    return samples


async def wait_for_drain(conn: asyncpg.Connection, worker: WorkerProcess, timeout: float) -> float:
    """Seconds until the queue was empty (failing rows' later attempts included)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        worker.restart_if_exited()
        if not await conn.fetchval("SELECT count(*) FROM vecmirror.changes_v1"):
            return time.monotonic() - started
        await asyncio.sleep(0.5)
    return float("nan")


# ---- verification (invariant P, as tests/invariant.py checks it) ----


@dataclass
class Verification:
    rows: int = 0
    documents: int = 0
    problems: list[str] = field(default_factory=list)


def run_verify(env: dict[str, str], config: Path, result: Verification) -> None:
    """vecmirror's own check: missing, extra and stale documents (fields, hashes, vector lengths)."""
    command = [sys.executable, "-m", "vecmirror.cli", "verify", "--config", str(config), "--json"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0 and not done.stdout.strip():
        result.problems.append(f"vecmirror verify failed: {done.stderr.strip()[-500:]}")
        return
    for drift in json.loads(done.stdout):
        for kind in ("missing", "extra", "stale"):
            if drift[kind]:
                result.problems.append(
                    f"verify {drift['mirror']}: {len(drift[kind])} {kind}: {drift[kind][:5]}"
                )


async def check_mirror(
    conn: asyncpg.Connection, client: redis.Redis, mirror: MirrorConfig, poison: set[tuple[str, ...]]
) -> Verification:
    """Independent of vecmirror's verify: the keys, each stored version against Postgres' own,
    the index's document count, and the dead letters against the rows known to be bad."""
    result = Verification()
    key_columns = {"soak_products": "ARRAY[t.sku]", "soak_docs": "ARRAY[t.id::text]"}[mirror.table_name]
    rows = await conn.fetch(
        f"SELECT {key_columns} AS k, coalesce(v.version, 0) AS version FROM {mirror.table_name} t "
        f"LEFT JOIN vecmirror.versions_v1 v ON v.mirror = $1 AND v.row_key = {key_columns}",
        mirror.name,
    )
    expected = {document_key(mirror, r["k"]): r["version"] for r in rows if tuple(r["k"]) not in poison}
    stored = {k.decode() for k in client.scan_iter(match=key_pattern(mirror), count=1000)}
    result.rows, result.documents = len(rows), len(stored)
    _compare_keys(result, mirror.name, set(expected), stored)
    _compare_versions(result, client, expected, stored)
    _compare_index(result, client, mirror, len(expected))
    await _compare_dead_letters(result, conn, mirror.name, poison)
    return result


def _compare_keys(result: Verification, name: str, expected: set[str], stored: set[str]) -> None:
    if expected - stored:
        result.problems.append(
            f"{name}: {len(expected - stored)} documents missing: {sorted(expected - stored)[:5]}"
        )
    if stored - expected:
        result.problems.append(
            f"{name}: {len(stored - expected)} documents extra: {sorted(stored - expected)[:5]}"
        )


def _compare_versions(
    result: Verification, client: redis.Redis, expected: dict[str, int], stored: set[str]
) -> None:
    keys = sorted(set(expected) & stored)
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hget(key, META_VERSION_FIELD)
        held = pipe.execute()
    wrong = [
        (k, int(v or -1), expected[k]) for k, v in zip(keys, held, strict=True) if int(v or -1) != expected[k]
    ]
    if wrong:
        result.problems.append(f"{len(wrong)} documents at another version than their row: {wrong[:5]}")


def _compare_index(result: Verification, client: redis.Redis, mirror: MirrorConfig, rows: int) -> None:
    info: Any = client.ft(mirror.index.index.name).info()  # type: ignore[no-untyped-call]
    if int(info["num_docs"]) != rows:
        result.problems.append(
            f"{mirror.name}: index holds {info['num_docs']} documents, {rows} rows in scope"
        )
    if int(info["hash_indexing_failures"]):
        result.problems.append(
            f"{mirror.name}: {info['hash_indexing_failures']} documents refused by the index"
        )


async def _compare_dead_letters(
    result: Verification, conn: asyncpg.Connection, name: str, poison: set[tuple[str, ...]]
) -> None:
    rows = await conn.fetch("SELECT row_key, retry_at FROM vecmirror.failed_v1 WHERE mirror = $1", name)
    dead = {tuple(r["row_key"]) for r in rows}
    if dead != poison:
        result.problems.append(f"{name}: dead letters differ from bad rows: {sorted(dead ^ poison)[:5]}")
    if any(r["retry_at"] is not None for r in rows):
        result.problems.append(f"{name}: a bad row still has attempts left after the drain")


# ---- the run ----


@dataclass
class Report:
    options: Options
    load_seconds: float = 0.0
    ops: Counter[str] = field(default_factory=Counter)
    samples: list[Sample] = field(default_factory=list)
    kills: int = 0
    starts: int = 0
    crashes: list[int] = field(default_factory=list)
    drain_seconds: float = 0.0
    queue_at_end: int = 0
    verification: Verification = field(default_factory=Verification)
    events: Counter[str] = field(default_factory=Counter)


async def prepare(conn: asyncpg.Connection, env: dict[str, str], config: Path) -> None:
    await conn.execute(
        "CREATE TABLE soak_products (sku text PRIMARY KEY, name text, price numeric, vec real[])"
    )
    await conn.execute("CREATE TABLE soak_docs (id int PRIMARY KEY, title text NOT NULL, body text)")
    command = [sys.executable, "-m", "vecmirror.cli", "migrate", "--config", str(config)]
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=120)


async def load(worker: WorkerProcess, writer: Writer, conn: asyncpg.Connection, options: Options) -> Report:
    report = Report(options)
    started = time.monotonic()
    deadline = started + options.minutes * 60
    sampling = asyncio.create_task(sample(worker, conn, started, deadline, options.sample_every))
    await asyncio.gather(
        writer.run(deadline, options.rate, writer.product_step),
        writer.run(deadline, options.docs_rate, writer.docs_step),
        supervise(worker, deadline, options.kill_every),
    )
    report.samples = await sampling
    report.load_seconds = time.monotonic() - started
    return report


async def soak(urls: StackUrls, options: Options, workdir: Path) -> Report:
    config = workdir / "soak.yaml"
    config.write_text(yaml.safe_dump({"mirrors": options.mirrors}, sort_keys=False))
    env = worker_env(urls)
    writer_conn, docs_conn, sampler_conn = [await asyncpg.connect(urls.database_url) for _ in range(3)]
    await prepare(writer_conn, env, config)
    writer = Writer(writer_conn, docs_conn, random.Random(20_240_601), options)
    await writer.preload()
    with (workdir / "worker.log").open("a") as log:
        worker = WorkerProcess(env, config, log)
        worker.start()
        try:
            report = await load(worker, writer, sampler_conn, options)
            await finish(report, worker, writer, sampler_conn, env, config, urls)
        finally:
            worker.stop()
    report.events = log_events(workdir / "worker.log")
    for conn in (writer_conn, docs_conn, sampler_conn):
        await conn.close()
    return report


async def finish(
    report: Report,
    worker: WorkerProcess,
    writer: Writer,
    conn: asyncpg.Connection,
    env: dict[str, str],
    config: Path,
    urls: StackUrls,
) -> None:
    """The load has stopped: drain, then verify with the worker still running (idle)."""
    report.drain_seconds = await wait_for_drain(conn, worker, report.options.drain_timeout)
    report.queue_at_end = await conn.fetchval("SELECT count(*) FROM vecmirror.changes_v1")
    report.ops, report.kills, report.starts = writer.ops, worker.kills, worker.starts
    report.crashes = list(worker.crashes)
    run_verify(env, config, report.verification)
    client = redis.Redis.from_url(urls.redis_url)
    try:
        for raw in report.options.mirrors:
            mirror = parse_config({"mirrors": [raw]}).mirrors[0]
            poison: set[tuple[str, ...]] = (
                {(sku,) for sku in writer.products.poison} if raw is PRODUCTS else set()
            )
            checked = await check_mirror(conn, client, mirror, poison)
            report.verification.rows += checked.rows
            report.verification.documents += checked.documents
            report.verification.problems += checked.problems
    finally:
        client.close()


def worker_env(urls: StackUrls) -> dict[str, str]:
    return {
        **os.environ,
        "VECMIRROR_DATABASE_URL": urls.database_url,
        "VECMIRROR_REDIS_URL": urls.redis_url,
        "VECMIRROR_LOG_FORMAT": "json",
        "VECMIRROR_POLL_INTERVAL": "1",
        # The count check runs within each worker's life (kills come every 30 s by default), so
        # drift it finds during the soak shows in the log's events.
        "VECMIRROR_CHECK_INTERVAL": "20",
        # Bad rows reach the dead-letter table within seconds (0.5 + 1 + 2 + 4), not minutes.
        "VECMIRROR_ROW_RETRY_BACKOFF": "0.5",
        "HF_HUB_OFFLINE": "1",
    }


def log_events(path: Path) -> Counter[str]:
    """How often the worker logged each warning and error, and ran the count check (crashes print
    tracebacks, not JSON)."""
    events: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict):
            continue
        if record.get("level") in ("warning", "error") or record.get("event") == "mirror_checked":
            events[str(record.get("event"))] += 1
    return events


# ---- the summary ----


def mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def minute_table(samples: list[Sample]) -> list[str]:
    lines = [
        "| minute | samples | workers | RSS min MiB | RSS max MiB | RSS last MiB | queue max |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    minutes = sorted({int(s.elapsed // 60) for s in samples})
    for minute in minutes:
        chunk = [s for s in samples if int(s.elapsed // 60) == minute]
        rss = [s.steady_rss for s in chunk if s.steady_rss is not None]
        pids = {s.pid for s in chunk if s.pid is not None}
        lines.append(
            f"| {minute + 1} | {len(chunk)} | {len(pids)} | {mib(min(rss, default=None))} | "
            f"{mib(max(rss, default=None))} | {mib(rss[-1] if rss else None)} | "
            f"{max(s.queue for s in chunk)} |"
        )
    return lines


def drift_count(report: Report) -> int:
    return len(report.verification.problems)


def summary(report: Report) -> str:
    options, verification = report.options, report.verification
    rss = [s.steady_rss for s in report.samples if s.steady_rss is not None]
    changed = sum(report.ops.values())
    kinds = ", ".join(f"{kind} {count}" for kind, count in report.ops.most_common())
    lines = [
        "# vecmirror soak",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPUs: `bench/soak.py "
        f"--minutes {options.minutes:g} --rate {options.rate:g} --kill-every {options.kill_every:g} "
        f"--rows {options.rows} --poison-share {options.poison_share:g} --docs-rate {options.docs_rate:g}`",
        "",
        "| | |",
        "|---|---|",
        f"| load duration | {report.load_seconds / 60:.1f} min |",
        f"| rows changed (one statement each) | {changed} ({kinds}) |",
        f"| worker kills (SIGKILL) / starts | {report.kills} / {report.starts} |",
        f"| worker exits nobody asked for | {len(report.crashes)} {report.crashes or ''} |",
        f"| drain after the load | {report.drain_seconds:.1f} s |",
        f"| queue depth at end | {report.queue_at_end} |",
        f"| rows verified / documents | {verification.rows} / {verification.documents} |",
        f"| drift found (must be 0) | {drift_count(report)} |",
        f"| RSS min / max / final (steady) | {mib(min(rss, default=None))} / {mib(max(rss, default=None))} / "
        f"{mib(rss[-1] if rss else None)} MiB |",
        f"| worker warnings, errors and count checks | {dict(report.events.most_common()) or 'none'} |",
        "",
        f"RSS is the worker's VmRSS, sampled every {options.sample_every:g} s, leaving out each worker's "
        f"first {STARTUP:g} s (start-up); every restart starts a new process. Per minute:",
        "",
        *minute_table(report.samples),
    ]
    lines += ["", "Drift:", "", *(f"- {p}" for p in verification.problems)] if verification.problems else []
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    workdir = Path(tempfile.mkdtemp(prefix="vecmirror-soak-"))
    try:
        report = asyncio.run(soak(stack_up(workdir / "stack"), options, workdir))
    finally:
        stack_down(workdir / "stack")
    text = summary(report)
    print(text)
    options.out.write_text(text)
    print(f"written to {options.out}; worker log in {workdir / 'worker.log'}")
    return 1 if drift_count(report) or report.crashes or report.queue_at_end else 0


if __name__ == "__main__":
    sys.exit(main())
