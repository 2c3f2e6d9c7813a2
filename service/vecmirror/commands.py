"""What each CLI command does, as coroutines the CLI runs and the tests can call directly."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import click
import redis.asyncio as redis
import structlog
from redis.exceptions import RedisError
from tqdm import tqdm

from vecmirror.app import App, check_migrated, open_app, redis_client
from vecmirror.boundary import (
    IndexMissingError,
    UnknownMirrorError,
    connect_postgres,
    redis_location,
    require_query_engine,
    translate,
    translated,
)
from vecmirror.config import Config, MirrorConfig
from vecmirror.errors import QueryError, VecmirrorError
from vecmirror.ops.plan import Plan, build_plan, format_plan
from vecmirror.ops.status import MirrorStatus, format_status, mirror_status
from vecmirror.ops.verify import Drift, Verifier
from vecmirror.pipeline.embedder import EmbedderFactory
from vecmirror.query.results import Hit
from vecmirror.query.search import MirrorSearch
from vecmirror.run.serve import serve
from vecmirror.run.sync import BatchStats
from vecmirror.run.worker import DrainStats
from vecmirror.settings import Settings
from vecmirror.sink.drop import DropReport, MirrorData, drop, left_behind, locate
from vecmirror.source import Connection, changes
from vecmirror.source.backfill import count_rows, queue_all_rows, start_backfill
from vecmirror.source.failures import FailedRow, discard_failed, list_failed, retry_failed
from vecmirror.source.migrate import MigrateReport, migrate
from vecmirror.source.sql import QUERIES
from vecmirror.source.tables import inspect_table

log = structlog.get_logger(__name__)


@dataclass
class Removal:
    """What became of a removed mirror's Redis data: found (kept), deleted, or not looked at."""

    mirror: str
    data: MirrorData | None = None
    dropped: DropReport | None = None
    unseen: str | None = None  # why Redis was not inspected (migrate without --drop-data goes on)

    def line(self) -> str:
        if self.dropped is not None:
            d = self.dropped
            where = f"index {d.index} and its {d.documents} documents" if d.index else "no index found"
            foreign = f"; left {len(d.foreign)} keys vecmirror did not write" if d.foreign else ""
            return f"deleted {self.mirror!r}: {where}, {d.other_keys} other keys{foreign}"
        if self.data is None:
            return f"kept {self.mirror!r}'s data in Redis (not inspected: {self.unseen})"
        return f"kept {self.mirror!r}: {self.data.describe()}; `vecmirror migrate --drop-data` deletes them"

    def as_dict(self) -> dict[str, Any]:
        dropped = None if self.dropped is None else vars(self.dropped)
        data = None if self.data is None else self.data.as_dict()
        return {"mirror": self.mirror, "redis": data, "deleted": dropped, "unseen": self.unseen}


async def migrate_command(settings: Settings, config: Config) -> MigrateReport:
    report, _ = await migrate_and_remove(settings, config)
    return report


async def migrate_and_remove(
    settings: Settings, config: Config, *, drop_data: bool = False
) -> tuple[MigrateReport, list[Removal]]:
    """Without `drop_data` Redis is read only when mirrors are removed, to say what stays there
    (Redis out of reach is then no error). With it, a removed mirror's index must be known before
    Postgres changes, and its Redis data goes once Postgres committed."""
    with translated(settings):
        conn = await connect_postgres(settings)
        try:
            removed, registered = await _removed_mirrors(conn, config)
            located, unseen = await _locate_removed(settings, config, removed, registered, drop_data)
            report = await migrate(conn, config)
        finally:
            await conn.close()
        earlier = [name for name in located if name not in removed]  # --drop-data only
        removals = [Removal(name, located.get(name), unseen=unseen) for name in [*report.removed, *earlier]]
        if drop_data and removals:
            async with redis_client(settings) as client:
                for removal in removals:
                    if removal.data is not None:
                        removal.dropped = await drop(client, removal.data, config.mirrors)
        return report, removals


async def _removed_mirrors(conn: Connection, config: Config) -> tuple[list[str], set[str]]:
    """The registered mirrors the file lacks, and every registered mirror."""
    if not await conn.fetchval("SELECT to_regclass('vecmirror.mirrors_v1') IS NOT NULL"):
        return [], set()
    names = {r["name"] for r in await conn.fetch(QUERIES["installed_mirrors"])}
    return sorted(names - {m.name for m in config.mirrors}), names


async def _locate_removed(
    settings: Settings, config: Config, removed: list[str], registered: set[str], drop_data: bool
) -> tuple[dict[str, MirrorData], str | None]:
    """Each removed mirror's data in Redis; without `drop_data`, a Redis out of reach is the reason
    it was not looked at instead of an error."""
    if not removed and not drop_data:
        return {}, None
    try:
        async with redis_client(settings) as client:
            await _require_redis(client, config)
            if drop_data:  # also the mirrors removed earlier whose data was kept
                known = {m.name for m in config.mirrors} | registered
                removed = [*removed, *await left_behind(client, known)]
            located = await locate(client, removed, config.mirrors)
    except (VecmirrorError, RedisError) as exc:
        if drop_data:
            raise
        error = exc if isinstance(exc, VecmirrorError) else translate(exc, settings) or exc
        log.warning("removed_mirror_data_unseen", error=str(error))
        return {}, str(error)
    ambiguous = [d for d in located.values() if d.ambiguous]
    if drop_data and ambiguous:
        raise AmbiguousIndexError(
            "; ".join(f"mirror {d.mirror!r}: {d.describe()}" for d in ambiguous)
            + ": nothing was changed; drop the right index by hand (FT.DROPINDEX NAME DD) and run "
            "`vecmirror migrate` without --drop-data"
        )
    return located, None


class AmbiguousIndexError(VecmirrorError):
    """`--drop-data` cannot tell which index belonged to a removed mirror."""


async def plan_command(settings: Settings, config: Config, *, drop_data: bool = False) -> Plan:
    """What `migrate` (and the first `run` after it) would do; writes nothing."""
    with translated(settings):
        conn = await connect_postgres(settings)
        try:
            async with redis_client(settings) as client:
                await _require_redis(client, config)
                return await build_plan(conn, client, config, drop_data=drop_data)
        finally:
            await conn.close()


def print_plan(plan: Plan, *, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(plan.as_dict(), ensure_ascii=False))
        return
    for line in format_plan(plan):
        click.echo(line)


async def check_servers(settings: Settings, config: Config, *, postgres: bool = True) -> set[str]:
    """Before anything slow (a model load): Postgres takes the login and holds the migrated schema
    and every mirror's triggers, Redis takes its login and has the Query Engine. Returns the
    names of Redis' indexes."""
    if postgres:
        conn = await connect_postgres(settings)
        try:
            await check_migrated(conn, config)
        finally:
            await conn.close()
    async with redis_client(settings) as client:
        return await _require_redis(client, config)


@asynccontextmanager
async def both_servers(settings: Settings, config: Config) -> AsyncIterator[tuple[Connection, redis.Redis]]:
    """A Postgres connection whose schema is current and a Redis client with the Query Engine, for
    the commands that read both; a server they cannot use is one error naming it."""
    with translated(settings):
        conn = await connect_postgres(settings)
        try:
            await check_migrated(conn, config)
            async with redis_client(settings) as client:
                await _require_redis(client, config)
                yield conn, client
        finally:
            await conn.close()


async def _require_redis(client: redis.Redis, config: Config) -> set[str]:
    return await require_query_engine(client, json_storage=any(m.storage == "json" for m in config.mirrors))


def mirrors_named(settings: Settings, config: Config, names: Sequence[str]) -> list[MirrorConfig]:
    """The mirrors a command names, checked before any server is touched."""
    known = {m.name: m for m in config.mirrors}
    for name in names:
        if name not in known:
            raise UnknownMirrorError(
                f"no mirror {name!r} in the mirrors file {settings.config} (its mirrors: {', '.join(known)})"
            )
    return [known[name] for name in names]


async def run_command(
    settings: Settings,
    config: Config,
    *,
    once: bool,
    stop_signals: Sequence[signal.Signals] = (),
    embedder_factory: EmbedderFactory | None = None,
) -> DrainStats | None:
    """--once drains and returns its totals; otherwise the worker runs with its HTTP server and
    side tasks (vecmirror.run.serve) until a stop signal, and returns None."""
    with translated(settings):
        await check_servers(settings, config)
        if not once:
            await serve(settings, config, stop_signals=stop_signals, embedder_factory=embedder_factory)
            return None
        async with open_app(settings, config, embedder_factory) as app:
            return await app.worker().run_once()


async def backfill_command(
    settings: Settings,
    config: Config,
    mirror_name: str | None,
    embedder_factory: EmbedderFactory | None = None,
) -> None:
    names = [mirror_name] if mirror_name else [m.name for m in config.mirrors]
    mirrors_named(settings, config, names)
    with translated(settings):
        await check_servers(settings, config)
        async with open_app(settings, config, embedder_factory) as app:
            for name in names:
                await _backfill_one(app, name)


async def _backfill_one(app: App, name: str) -> None:
    sync = next(s for s in app.syncs if s.name == name)
    async with app.pool.acquire() as conn:
        await sync.resync_if_forgotten(conn)  # the mirror's generation; a forgotten or renewed one resyncs
        resumed = not await start_backfill(conn, name)
        total = await count_rows(conn, sync.table)
        with tqdm(total=total, desc=f"{name}: queued", unit="row", initial=0) as bar:
            if resumed:
                bar.set_postfix_str("resuming an interrupted backfill")
            await queue_all_rows(conn, sync.table, app.settings.backfill_batch_size, bar.update)
        remaining = await changes.pending(conn, name)
    with tqdm(total=remaining, desc=f"{name}: synced", unit="change") as bar:
        await app.worker(on_batch=lambda stats: _advance(bar, stats, name)).drain()


def _advance(bar: tqdm[Any], stats: BatchStats, name: str) -> None:
    if stats.mirror == name:
        bar.update(stats.changes)


@dataclass(frozen=True)
class QueryRequest:
    mirror: str
    text: str | None = None
    vector: list[float] | None = None
    k: int = 10
    filter_expression: str | None = None
    return_fields: list[str] = field(default_factory=list)
    offset: int = 0
    ef_runtime: int | None = None
    radius: float | None = None
    epsilon: float | None = None
    text_weight: float | None = None
    text_field: str | None = None


async def query_command(
    settings: Settings, config: Config, request: QueryRequest, embedder_factory: EmbedderFactory | None = None
) -> list[Hit]:
    """--range: a range query (k is its limit); --text-weight: fused text+vector; otherwise KNN."""
    (mirror,) = mirrors_named(settings, config, [request.mirror])
    with translated(settings):
        indexes = await check_servers(settings, config, postgres=False)
        if mirror.index.index.name not in indexes:
            raise IndexMissingError(
                f"mirror {mirror.name!r}: Redis at {redis_location(settings.require_redis_url())} has no "
                f"index {mirror.index.index.name!r}: `vecmirror run` creates it"
            )
        return await _search(settings, config, request, embedder_factory)


async def _search(
    settings: Settings, config: Config, request: QueryRequest, embedder_factory: EmbedderFactory | None
) -> list[Hit]:
    fields = request.return_fields or None
    async with MirrorSearch.open(settings, config, embedder_factory) as search:
        if request.radius is not None:
            return await search.range(
                request.mirror,
                radius=request.radius,
                text=request.text,
                vector=request.vector,
                epsilon=request.epsilon,
                filter=request.filter_expression,
                limit=request.k,
                return_fields=fields,
            )
        if request.text_weight is not None:
            if request.text is None:
                raise QueryError(
                    "--text-weight needs a TEXT to match: the fused mode ranks by text and vector"
                )
            return await search.hybrid(
                request.mirror,
                text=request.text,
                vector=request.vector,
                k=request.k,
                text_weight=request.text_weight,
                text_field=request.text_field,
                filter=request.filter_expression,
                return_fields=fields,
            )
        return await search.knn(
            request.mirror,
            text=request.text,
            vector=request.vector,
            k=request.k,
            filter=request.filter_expression,
            return_fields=fields,
            ef_runtime=request.ef_runtime,
            offset=request.offset,
        )


async def verify_command(
    settings: Settings, config: Config, mirror_name: str | None, *, repair: bool
) -> list[Drift]:
    """Compares each mirror's table with Redis; with `repair`, queues every drifted key."""
    mirrors = mirrors_named(
        settings, config, [mirror_name] if mirror_name else [m.name for m in config.mirrors]
    )
    async with both_servers(settings, config) as (conn, client):
        return [await _verify_one(settings, conn, client, mirror, repair=repair) for mirror in mirrors]


async def _verify_one(
    settings: Settings, conn: Connection, client: redis.Redis, mirror: MirrorConfig, *, repair: bool
) -> Drift:
    table = await inspect_table(conn, mirror)
    verifier = Verifier(mirror, table, client, max_text_length=settings.max_text_length)
    drift = await verifier.verify(conn)
    if repair:
        queued = await verifier.repair(conn, drift)
        log.info("drift_queued", mirror=mirror.name, keys=queued)
    return drift


async def failed_command(
    settings: Settings,
    action: str,
    mirror: str | None,
    keys: list[tuple[str, ...]] | None,
    config: Config | None = None,
) -> list[FailedRow] | int:
    """`config` (needed with a mirror) says which mirrors exist; only the schema is checked, so a
    mirror added to the file but not yet migrated does not hide the others' failures."""
    if mirror is not None and config is not None:
        mirrors_named(settings, config, [mirror])
    with translated(settings):
        conn = await connect_postgres(settings)
        try:
            await check_migrated(conn, Config(mirrors=()))
            if action == "list":
                return await list_failed(conn, mirror, keys)
            if action == "retry":
                return await retry_failed(conn, mirror, keys)
            return await discard_failed(conn, mirror, keys)
        finally:
            await conn.close()


async def status_command(settings: Settings, config: Config) -> list[MirrorStatus]:
    """Each mirror's queue, dead letters, table rows, index and last sync, read from the servers.
    A server it cannot use is an error that names it and says why: unreachable, refusing the login,
    lacking the schema or the Query Engine."""
    async with both_servers(settings, config) as (conn, client):
        return [await mirror_status(conn, client, mirror) for mirror in config.mirrors]


def print_status(statuses: Sequence[MirrorStatus], *, as_json: bool) -> None:
    now = time.time()
    if as_json:
        click.echo(json.dumps([s.as_dict(now) for s in statuses], ensure_ascii=False))
        return
    click.echo(format_status(statuses, now))


def print_drift(drifts: Sequence[Drift], *, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([d.as_dict() for d in drifts], ensure_ascii=False))
        return
    for drift in drifts:
        for line in drift.lines():
            click.echo(line)


def print_failed(rows: Sequence[FailedRow], *, as_json: bool) -> None:
    if as_json:
        payload = [
            {
                "mirror": r.mirror,
                "key": list(r.key),
                "field": r.field,
                "error": r.error,
                "failed_at": r.failed_at.isoformat(),
                "attempts": r.attempts,
                "retry_at": None if r.retry_at is None else r.retry_at.isoformat(),
            }
            for r in rows
        ]
        click.echo(json.dumps(payload, ensure_ascii=False))
        return
    for row in rows:
        click.echo(
            f"{row.mirror}  {list(row.key)}  {row.field}: {row.error}  "
            f"({row.attempts} attempts, {row.state}; last {row.failed_at:%Y-%m-%d %H:%M:%S})"
        )
    if not rows:
        click.echo("no failed rows")


def print_hits(hits: Sequence[Hit], *, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([h.as_dict() for h in hits], ensure_ascii=False))
        return
    if not hits:
        click.echo("no hits")
        return
    click.echo(f"{'#':>3}  {'distance':>9}  {'score':>7}  id  fields")
    for rank, hit in enumerate(hits, start=1):
        fields = "  ".join(f"{k}={_short(v)}" for k, v in hit.fields.items())
        click.echo(f"{rank:>3}  {hit.distance:9.4f}  {hit.score:7.4f}  {hit.id}  {fields}")


def _short(value: object, limit: int = 60) -> str:
    text = str(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"
