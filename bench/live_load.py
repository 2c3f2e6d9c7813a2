"""A real `vecmirror run` process under load: commit-to-searchable latency at half its capacity,
its peak RSS and its CPU seconds per 1,000 rows.

    .venv/bin/python bench/live_load.py --bulk-rows 256 --load-seconds 20

The worker is a subprocess (`python -m vecmirror.cli run`, HTTP server on), measured from outside
through /proc: CPU = utime + stime of the process (all its threads), peak RSS = VmHWM. Phases:
  bulk inserts:  --bulk-rows rows in one COPY, until all are searchable: the worker's capacity;
  bulk updates:  one UPDATE of a non-embedded column on every row, until the queue is empty;
  steady load:   one-row INSERT transactions at --load-share (0.5) of that capacity for
                 --load-seconds, each timed from its COMMIT returning to the moment FT.SEARCH
                 finds its document (polled every 10 ms; INKEYS over the rows still waited for).
The worker's own `vecmirror_freshness_seconds` histogram is scraped before and after the steady
load and its quantiles estimated from the buckets (as Prometheus' histogram_quantile does), for
comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from common import Phase, percentiles, phase, temporary_stack
from corpus import COLUMNS, TABLE_DDL, embed_mirror, make_row, make_rows
from prometheus_client.parser import text_string_to_metric_families

from vecmirror.sink.keys import document_key
from vecmirror.sink.writer import search_result_ids
from vecmirror.stack import StackUrls

TABLE = "live_docs"
POLL_SECONDS = 0.01
WAIT_TIMEOUT = 600.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Usage:
    rows: int
    seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.rows / self.seconds

    @property
    def cpu_per_1000(self) -> float:
        return self.cpu_seconds * 1000 / self.rows


@dataclass
class LiveResult:
    bulk_inserts: Usage
    bulk_updates: Usage
    steady: Usage
    target_rate: float
    latencies: list[float] = field(default_factory=list)
    metric_quantiles: tuple[float, float] = (float("nan"), float("nan"))
    peak_rss_bytes: int = 0
    ready_rss_bytes: int = 0  # once started, model loaded, nothing synced yet
    startup_seconds: float = 0.0

    @property
    def p50_p99(self) -> tuple[float, float]:
        p50, p99 = percentiles(self.latencies, 50, 99)
        return p50, p99


class WorkerProcess:
    """`vecmirror run` as a child process, observed through /proc and its /metrics."""

    def __init__(self, env: Phase, directory: Path) -> None:
        config = directory / "live.yaml"
        config.write_text(yaml.safe_dump({"mirrors": [embed_mirror("live", TABLE)]}))
        self.port = _free_port()
        variables = {
            "VECMIRROR_DATABASE_URL": env.settings.require_database_url(),
            "VECMIRROR_REDIS_URL": env.settings.require_redis_url(),
            "VECMIRROR_CONFIG": str(config),
            "VECMIRROR_HTTP_HOST": "127.0.0.1",
            "VECMIRROR_HTTP_PORT": str(self.port),
            "VECMIRROR_LOG_FORMAT": "json",
            "VECMIRROR_LOG_LEVEL": "warning",
            "HF_HUB_OFFLINE": "1",
        }
        self.log = directory / "worker.log"
        self.started = time.perf_counter()
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "vecmirror.cli", "run"],
                env=os.environ | variables,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime

    def memory_bytes(self, entry: str) -> int:
        """VmHWM (peak RSS) or VmRSS from /proc/PID/status."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{entry}:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {entry} in /proc/PID/status")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as reply:
                return int(reply.status), reply.read().decode()
        except OSError:
            return 0, ""

    def freshness_buckets(self) -> dict[float, float]:
        """Cumulative counts of the freshness histogram by upper bound."""
        _, text = self.get("/metrics")
        buckets: dict[float, float] = {}
        for family in text_string_to_metric_families(text):
            if family.name == "vecmirror_freshness_seconds":
                for sample in family.samples:
                    if sample.name.endswith("_bucket"):
                        bound = float(sample.labels["le"])
                        buckets[bound] = buckets.get(bound, 0.0) + sample.value
        return buckets

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"vecmirror run exited with {self.process.returncode}; see {self.log}")


async def measure_live(urls: StackUrls, bulk_rows: int, load_seconds: float, load_share: float) -> LiveResult:
    directory = Path(tempfile.mkdtemp(prefix="vecmirror-bench-live-"))
    async with phase(urls, "live", {TABLE: TABLE_DDL}, [embed_mirror("live", TABLE)]) as env:
        worker = WorkerProcess(env, directory)
        try:
            result = await _measure(env, worker, bulk_rows, load_seconds, load_share)
        finally:
            worker.stop()
    shutil.rmtree(directory)  # kept when something failed: its worker.log says why
    return result


async def _measure(
    env: Phase, worker: WorkerProcess, bulk_rows: int, load_seconds: float, load_share: float
) -> LiveResult:
    await _until(worker, lambda: _ready(worker, env), "the worker to be ready")
    startup, ready_rss = time.perf_counter() - worker.started, worker.memory_bytes("VmRSS")
    inserts = await _bulk_inserts(env, worker, bulk_rows)
    updates = await _bulk_updates(env, worker, bulk_rows)
    target = inserts.rate * load_share
    before = worker.freshness_buckets()
    latencies, steady = await _steady_load(env, worker, bulk_rows, target, load_seconds)
    quantiles = _histogram_quantiles(before, worker.freshness_buckets(), (0.5, 0.99))
    result = LiveResult(inserts, updates, steady, target, latencies, quantiles)
    result.peak_rss_bytes, result.ready_rss_bytes = worker.memory_bytes("VmHWM"), ready_rss
    result.startup_seconds = startup
    return result


async def _ready(worker: WorkerProcess, env: Phase) -> bool:
    status, _ = await asyncio.to_thread(worker.get, "/readyz")
    return status == 200 and await _queue_empty(env)


async def _queue_empty(env: Phase) -> bool:
    return bool(await env.conn.fetchval("SELECT NOT EXISTS (SELECT FROM vecmirror.changes_v1)"))


async def _until(worker: WorkerProcess, done: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT_TIMEOUT
    while not await done():
        worker.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}; see {worker.log}")
        await asyncio.sleep(POLL_SECONDS * 5)


async def _bulk_inserts(env: Phase, worker: WorkerProcess, rows: int) -> Usage:
    cpu, started = worker.cpu_seconds(), time.perf_counter()
    records = [r.record() for r in make_rows(0, rows)]
    await env.conn.copy_records_to_table(TABLE, records=records, columns=COLUMNS)
    await _until(worker, lambda: _indexed(env, rows), f"{rows} documents")
    return Usage(rows, time.perf_counter() - started, worker.cpu_seconds() - cpu)


async def _indexed(env: Phase, expected: int) -> bool:
    info = await env.redis.ft("live_idx").info()  # type: ignore[no-untyped-call]
    return int(info["num_docs"]) >= expected and await _queue_empty(env)


async def _bulk_updates(env: Phase, worker: WorkerProcess, rows: int) -> Usage:
    cpu, started = worker.cpu_seconds(), time.perf_counter()
    await env.conn.execute(f"UPDATE {TABLE} SET stock = stock + 1")
    await _until(worker, lambda: _queue_empty(env), "the updates to be synced")
    return Usage(rows, time.perf_counter() - started, worker.cpu_seconds() - cpu)


async def _steady_load(
    env: Phase, worker: WorkerProcess, first_id: int, rate: float, seconds: float
) -> tuple[list[float], Usage]:
    """One-row INSERTs on a fixed schedule (open loop: a slow commit does not slow the next one's
    start), each timed until FT.SEARCH finds it."""
    waiting: dict[str, float] = {}
    latencies: list[float] = []
    mirror = env.config.mirrors[0]
    count = max(1, round(rate * seconds))
    cpu, started = worker.cpu_seconds(), time.perf_counter()
    poller = asyncio.create_task(_poll_searchable(env, waiting, latencies), name="bench-poller")
    for n in range(count):
        await asyncio.sleep(max(0.0, started + n / rate - time.perf_counter()))
        row = make_row(first_id + n)
        await env.conn.execute(
            f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            *row.record(),
        )
        waiting[document_key(mirror, [str(row.id)])] = time.perf_counter()
    await _until(worker, lambda: _none_waiting(waiting, poller), "the steady load's documents")
    poller.cancel()
    usage = Usage(count, time.perf_counter() - started, worker.cpu_seconds() - cpu)
    return latencies, usage


async def _none_waiting(waiting: dict[str, float], poller: asyncio.Task[None]) -> bool:
    if poller.done():
        poller.result()  # the poller's error, raised here
        raise RuntimeError("the poller stopped")
    return not waiting


async def _poll_searchable(env: Phase, waiting: dict[str, float], latencies: list[float]) -> None:
    index = f"{env.config.mirrors[0].index.index.name}"
    while True:
        keys = list(waiting)
        if keys:
            reply = await env.redis.execute_command(  # type: ignore[no-untyped-call]
                "FT.SEARCH", index, "*", "INKEYS", len(keys), *keys, "NOCONTENT", "LIMIT", 0, len(keys)
            )
            now = time.perf_counter()
            for key in search_result_ids(reply):
                latencies.append(now - waiting.pop(key))
        await asyncio.sleep(POLL_SECONDS)


def _histogram_quantiles(
    before: dict[float, float], after: dict[float, float], quantiles: tuple[float, float]
) -> tuple[float, float]:
    """Quantiles of the observations made between two scrapes, interpolated within buckets."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return float("nan"), float("nan")
    low, high = (_bucket_quantile(bounds, counts, q) for q in quantiles)
    return low, high


def _bucket_quantile(bounds: list[float], cumulative: list[float], q: float) -> float:
    rank = q * cumulative[-1]
    previous_bound, previous_count = 0.0, 0.0
    for bound, count in zip(bounds, cumulative, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return previous_bound
            share = (rank - previous_count) / (count - previous_count) if count > previous_count else 1.0
            return previous_bound + (bound - previous_bound) * share
        previous_bound, previous_count = bound, count
    return previous_bound


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def summary(result: LiveResult) -> str:
    p50, p99 = result.p50_p99
    lines = [
        f"{name}: {usage.rows} rows in {usage.seconds:.1f} s ({usage.rate:.1f} rows/s), "
        f"{usage.cpu_per_1000:.1f} CPU s per 1,000 rows"
        for name, usage in (
            ("bulk inserts", result.bulk_inserts),
            ("bulk updates", result.bulk_updates),
            ("steady load", result.steady),
        )
    ]
    m50, m99 = result.metric_quantiles
    lines.append(
        f"latency at {result.target_rate:.1f} rows/s: p50 {p50 * 1000:.0f} ms  p99 {p99 * 1000:.0f} ms "
        f"(worker's histogram: p50 {m50 * 1000:.0f} ms, p99 {m99 * 1000:.0f} ms); "
        f"peak RSS {result.peak_rss_bytes / 2**20:.0f} MiB"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="A vecmirror run process under load.")
    parser.add_argument("--bulk-rows", type=int, default=256)
    parser.add_argument("--load-seconds", type=float, default=20.0)
    parser.add_argument("--load-share", type=float, default=0.5)
    args = parser.parse_args()
    with temporary_stack() as urls:
        print(summary(asyncio.run(measure_live(urls, args.bulk_rows, args.load_seconds, args.load_share))))


if __name__ == "__main__":
    main()
