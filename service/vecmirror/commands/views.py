"""`query`, `verify`, `failed` and `status`, and how their results are printed."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import click
import redis.asyncio as redis
import structlog

from vecmirror.app import check_migrated
from vecmirror.boundary import (
    IndexMissingError,
    connect_postgres,
    redis_location,
    translated,
)
from vecmirror.commands.servers import both_servers, check_servers, mirrors_named
from vecmirror.config import Config, MirrorConfig
from vecmirror.connections import open_redis
from vecmirror.errors import QueryError
from vecmirror.index.rollout import answering_index
from vecmirror.ops.status import MirrorStatus, format_status, mirror_status
from vecmirror.ops.verify import Drift, Verifier
from vecmirror.pipeline.embedder import EmbedderFactory
from vecmirror.query.results import Hit
from vecmirror.query.search import MirrorSearch
from vecmirror.settings import Settings
from vecmirror.source import Connection
from vecmirror.source.failures import FailedRow, discard_failed, list_failed, retry_failed
from vecmirror.source.tables import inspect_table

log = structlog.get_logger(__name__)


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
    chunks: bool = False  # a chunked mirror's hits with every chunk, nearest first


async def query_command(
    settings: Settings, config: Config, request: QueryRequest, embedder_factory: EmbedderFactory | None = None
) -> list[Hit]:
    """--range: a range query (k is its limit); --text-weight: fused text+vector; otherwise KNN."""
    (mirror,) = mirrors_named(settings, config, [request.mirror])
    with translated(settings):
        await check_servers(settings, config, postgres=False)
        if not await _answers(settings, mirror.index.index.name):
            raise IndexMissingError(
                f"mirror {mirror.name!r}: Redis at {redis_location(settings.require_redis_url())} has no "
                f"index {mirror.index.index.name!r}: `vecmirror run` creates it"
            )
        return await _search(settings, config, request, embedder_factory)


async def _answers(settings: Settings, name: str) -> bool:
    """Whether an index answers for the name: itself, or after an online rebuild the generation its
    alias points to (FT._LIST lists no alias)."""
    async with open_redis(settings) as client:
        return await answering_index(client, name) is not None


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
                chunks=request.chunks,
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
                chunks=request.chunks,
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
            chunks=request.chunks,
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
        for chunk in hit.chunks or ([hit.chunk] if hit.chunk is not None else []):
            text = _short(chunk["text"], 90)
            click.echo(f"{'':>3}  {chunk['distance']:9.4f}  chunk {chunk['position']}: {text}")


def _short(value: object, limit: int = 60) -> str:
    text = str(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"
