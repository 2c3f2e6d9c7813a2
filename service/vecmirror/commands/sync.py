"""`run` (the worker, once or until a signal) and `backfill`."""

from __future__ import annotations

import signal
from collections.abc import Sequence
from typing import Any

import structlog
from tqdm import tqdm

from vecmirror.app import App, open_app
from vecmirror.boundary import (
    translated,
)
from vecmirror.commands.servers import check_servers, mirrors_named
from vecmirror.config import Config
from vecmirror.pipeline.embedder import EmbedderFactory
from vecmirror.run.serve import serve
from vecmirror.run.sync import BatchStats
from vecmirror.run.worker import DrainStats
from vecmirror.settings import Settings
from vecmirror.source import changes
from vecmirror.source.backfill import count_rows, queue_all_rows, start_backfill

log = structlog.get_logger(__name__)


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
