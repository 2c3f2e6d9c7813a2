"""`migrate` (with a removed mirror's Redis data kept or dropped) and `plan` (what it would do)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import click
import structlog
from redis.exceptions import RedisError

from vecmirror.boundary import (
    connect_postgres,
    translate,
    translated,
)
from vecmirror.commands.servers import require_redis
from vecmirror.config import Config
from vecmirror.connections import open_redis
from vecmirror.errors import VecmirrorError
from vecmirror.ops.plan import Plan, build_plan, format_plan, recorded_redis_layouts
from vecmirror.settings import Settings
from vecmirror.sink.drop import DropReport, Layout, MirrorData, drop, left_behind, locate
from vecmirror.source import Connection
from vecmirror.source.migrate import MigrateReport, forget_removed_layout, migrate
from vecmirror.source.sql import QUERIES

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
            if d.index:
                where = f"index {d.index} and its {d.documents} documents"
            elif d.index_kept_for:
                where = f"{d.documents} documents (its index is kept: mirror {d.index_kept_for!r}'s)"
            else:
                where = "no index found" + (f", {d.documents} documents" if d.documents else "")
            foreign = f"; left {len(d.foreign)} keys vecmirror did not write" if d.foreign else ""
            return f"deleted {self.mirror!r}: {where}, {d.other_keys} other keys{foreign}"
        if self.data is None:
            return f"kept {self.mirror!r}'s data in Redis (not inspected: {self.unseen})"
        return f"kept {self.mirror!r}: {self.data.describe()}; `vecmirror migrate --drop-data` deletes them"

    def as_dict(self) -> dict[str, Any]:
        dropped = None if self.dropped is None else vars(self.dropped)
        data = None if self.data is None else self.data.as_dict()
        recorded = None if self.data is None else self.data.recorded()
        return {
            "mirror": self.mirror,
            "redis": data,
            "recorded": recorded,
            "deleted": dropped,
            "unseen": self.unseen,
        }


async def migrate_command(settings: Settings, config: Config) -> MigrateReport:
    report, _ = await migrate_and_remove(settings, config)
    return report


async def migrate_and_remove(
    settings: Settings, config: Config, *, drop_data: bool = False
) -> tuple[MigrateReport, list[Removal]]:
    """Without `drop_data` Redis is read only when mirrors are removed, to say what stays there
    (Redis out of reach is then no error). With it, a removed mirror's index must be known before
    Postgres changes, and its Redis data goes once Postgres committed. A removed mirror's data is
    found by the layout Postgres recorded of it (0006), else by guessing in Redis (sink/drop.py)."""
    with translated(settings):
        conn = await connect_postgres(settings)
        try:
            removed, registered = await _removed_mirrors(conn, config)
            layouts, gone = await recorded_redis_layouts(conn)
            located, unseen = await _locate_removed(
                settings, config, removed, registered, drop_data, layouts=layouts, gone=gone
            )
            report = await migrate(conn, config)
            earlier = [name for name in located if name not in removed]  # --drop-data only
            removals = [
                Removal(name, located.get(name), unseen=unseen) for name in [*report.removed, *earlier]
            ]
            if drop_data and removals:
                async with open_redis(settings) as client:
                    for removal in removals:
                        if removal.data is not None:
                            removal.dropped = await drop(client, removal.data, config.mirrors)
                            await forget_removed_layout(conn, removal.mirror)
        finally:
            await conn.close()
        return report, removals


async def _removed_mirrors(conn: Connection, config: Config) -> tuple[list[str], set[str]]:
    """The registered mirrors the file lacks, and every registered mirror."""
    if not await conn.fetchval("SELECT to_regclass('vecmirror.mirrors_v1') IS NOT NULL"):
        return [], set()
    names = {r["name"] for r in await conn.fetch(QUERIES["installed_mirrors"])}
    return sorted(names - {m.name for m in config.mirrors}), names


async def _locate_removed(
    settings: Settings,
    config: Config,
    removed: list[str],
    registered: set[str],
    drop_data: bool,
    *,
    layouts: dict[str, Layout],
    gone: set[str],
) -> tuple[dict[str, MirrorData], str | None]:
    """Each removed mirror's data in Redis; without `drop_data`, a Redis out of reach is the reason
    it was not looked at instead of an error. `layouts`: what Postgres recorded of each mirror;
    `gone`: the mirrors removed earlier whose recorded layout was kept."""
    if not removed and not drop_data:
        return {}, None
    try:
        async with open_redis(settings) as client:
            await require_redis(client, config)
            if drop_data:  # also the mirrors removed earlier whose data was kept
                known = {m.name for m in config.mirrors} | registered
                earlier = {*await left_behind(client, known), *gone} - known
                removed = [*removed, *sorted(earlier)]
            located = await locate(client, removed, config.mirrors, layouts)
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
            async with open_redis(settings) as client:
                await require_redis(client, config)
                return await build_plan(conn, client, config, drop_data=drop_data)
        finally:
            await conn.close()


def print_plan(plan: Plan, *, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(plan.as_dict(), ensure_ascii=False))
        return
    for line in format_plan(plan):
        click.echo(line)
