"""The Redis side of a mirror removed from the mirrors file: find its index and keys, and delete them
on request (`vecmirror migrate --drop-data`).

A removed mirror is no longer in the file, and Postgres does not record its index or prefix, so they
are found in Redis:

- the indexes no configured mirror names (FT._LIST), each with its prefixes and documents (FT.INFO);
- one document of each, whose `_vm_key` says vecmirror wrote it and whose `_vm_gen` (when documents
  carry generations) names the marker, `vecmirror:marker:<mirror>`, of the same generation.

An index whose documents carry the removed mirror's generation is its index. Failing that, a single
removed mirror and a single unclaimed vecmirror index are taken to belong together. Anything else is
ambiguous: the candidates are listed and nothing is deleted.

Deleting: FT.DROPINDEX … DD (the documents the index holds), then a SCAN of each prefix for the
documents it does not hold (refused by the index) that vecmirror wrote (`_vm_key`), the tombstones
under the prefix, the marker and the last-sync key. Keys under a configured mirror's prefix and keys
vecmirror did not write are never deleted.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as redis

from vecmirror.config import META_KEY_FIELD, OWN_KEY_PREFIX, MirrorConfig
from vecmirror.index.rollout import answering_index
from vecmirror.sink.keys import key_pattern

SCAN_COUNT = 1000
GENERATION_FIELD = "_vm_gen"  # as sink/versioned.py's META_GENERATION_FIELD (documents since 0005)
MARKER_GENERATION = "generation"


def marker_key(mirror: str) -> str:
    return f"{OWN_KEY_PREFIX}marker:{mirror}"


def last_sync_key(mirror: str) -> str:
    return f"{OWN_KEY_PREFIX}last_sync:{mirror}"


def tombstone_pattern(prefix: str) -> str:
    return f"{OWN_KEY_PREFIX}tombstone:{_glob_escape(prefix)}*"


@dataclass(frozen=True)
class OrphanIndex:
    """An index no configured mirror names."""

    name: str
    prefixes: tuple[str, ...]
    documents: int
    storage: str  # HASH or JSON
    written_by_vecmirror: bool  # a sampled document has _vm_key (an empty index: unknown, False)
    generation: str | None  # the sampled document's _vm_gen
    sample: str | None = None  # that document's key

    def key_prefixes(self) -> tuple[str, ...]:
        """The prefixes with the separator the sampled document's key shows after its prefix, so
        that prefix `doc` does not reach `docs2:…`, another mirror's keys."""
        return tuple(_with_separator(prefix, self.sample or "") for prefix in self.prefixes)


def _with_separator(prefix: str, sample: str) -> str:
    after = sample[len(prefix) : len(prefix) + 1] if sample.startswith(prefix) else ""
    if not after or after.isalnum() or prefix.endswith(after):
        return prefix
    return prefix + after


@dataclass(frozen=True)
class MirrorData:
    """What Redis holds of a removed mirror. index None: not found (candidates: ambiguous)."""

    mirror: str
    index: OrphanIndex | None
    marker: bool
    candidates: tuple[str, ...] = ()

    @property
    def ambiguous(self) -> bool:
        return self.index is None and bool(self.candidates)

    @property
    def documents(self) -> int:
        return 0 if self.index is None else self.index.documents

    def describe(self) -> str:
        if self.index is None:
            if self.ambiguous:
                return f"its index is one of {', '.join(self.candidates)} (cannot tell which)"
            return "no index of it found in Redis"
        prefixes = ", ".join(self.index.prefixes) or "(none)"
        return f"{self.index.documents} documents under prefix {prefixes} and index {self.index.name}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": None if self.index is None else self.index.name,
            "prefixes": [] if self.index is None else list(self.index.prefixes),
            "documents": self.documents,
            "marker": self.marker,
            "candidates": list(self.candidates),
        }


@dataclass
class DropReport:
    mirror: str
    index: str | None = None
    documents: int = 0  # deleted with the index (DD)
    other_keys: int = 0  # documents the index did not hold, tombstones, marker, last sync
    foreign: list[str] = field(default_factory=list)  # left alone: vecmirror did not write them


async def left_behind(client: redis.Redis, known: set[str]) -> list[str]:
    """Mirrors whose marker is in Redis that neither the file nor Postgres knows: removed earlier,
    their data kept. (A Redis shared with another vecmirror deployment shows its mirrors here too.)"""
    names: set[str] = set()
    async for keys in _scan(client, _glob_escape(f"{OWN_KEY_PREFIX}marker:") + "*"):
        names.update(k.removeprefix(f"{OWN_KEY_PREFIX}marker:") for k in keys)
    return sorted(names - known)


async def locate(
    client: redis.Redis, removed: Sequence[str], configured: Sequence[MirrorConfig]
) -> dict[str, MirrorData]:
    """Each removed mirror's index and marker, as far as Redis tells."""
    if not removed:
        return {}
    wanted = {m.index.index.name for m in configured}
    # A configured mirror rebuilt online is queried through an alias: its index has another name.
    wanted |= {name for name in [await answering_index(client, n) for n in sorted(wanted)] if name}
    names = [_text(n) for n in await client.execute_command("FT._LIST")]  # type: ignore[no-untyped-call]
    orphans = [await _orphan(client, n) for n in sorted(names) if n not in wanted]
    owners = await _marker_generations(client)  # generation -> mirror
    found: dict[str, MirrorData] = {}
    for mirror in removed:
        own = [o for o in orphans if o.generation is not None and owners.get(o.generation) == mirror]
        marker = bool(await client.exists(marker_key(mirror)))
        found[mirror] = (
            MirrorData(mirror, own[0], marker) if len(own) == 1 else MirrorData(mirror, None, marker)
        )
    unclaimed = [
        o
        for o in orphans
        if o.written_by_vecmirror
        and (o.generation is None or o.generation not in owners)
        and o not in [d.index for d in found.values()]
    ]
    open_mirrors = [m for m in removed if found[m].index is None]
    for mirror in open_mirrors:
        data = found[mirror]
        if len(open_mirrors) == 1 and len(unclaimed) == 1:
            found[mirror] = MirrorData(mirror, unclaimed[0], data.marker)
        elif unclaimed:
            found[mirror] = MirrorData(mirror, None, data.marker, tuple(o.name for o in unclaimed))
    return found


async def drop(client: redis.Redis, data: MirrorData, configured: Sequence[MirrorConfig]) -> DropReport:
    """Deletes what vecmirror wrote for a removed mirror (see the module's docstring)."""
    report = DropReport(data.mirror)
    keep = [re.compile(_glob_to_regex(key_pattern(m))) for m in configured]
    if data.index is not None:
        report.index, report.documents = data.index.name, data.index.documents
        await client.execute_command("FT.DROPINDEX", data.index.name, "DD")  # type: ignore[no-untyped-call]
        for prefix in data.index.key_prefixes():
            await _drop_documents(client, prefix, keep, report)
            async for keys in _scan(client, tombstone_pattern(prefix)):
                kept = [k for k in keys if not _kept(k.removeprefix(f"{OWN_KEY_PREFIX}tombstone:"), keep)]
                report.other_keys += await _unlink(client, kept)
    report.other_keys += await _unlink(client, [marker_key(data.mirror), last_sync_key(data.mirror)])
    return report


async def _drop_documents(
    client: redis.Redis, prefix: str, keep: Sequence[re.Pattern[str]], report: DropReport
) -> None:
    """Documents under the prefix the index did not hold (it refused them): vecmirror's only."""
    async for keys in _scan(client, _glob_escape(prefix) + "*"):
        candidates = [k for k in keys if not _kept(k, keep) and not k.startswith(OWN_KEY_PREFIX)]
        ours = await _written_by_vecmirror(client, candidates)
        report.foreign += [k for k, mine in zip(candidates, ours, strict=True) if not mine]
        report.other_keys += await _unlink(
            client, [k for k, mine in zip(candidates, ours, strict=True) if mine]
        )


async def _written_by_vecmirror(client: redis.Redis, keys: Sequence[str]) -> list[bool]:
    """Whether each key is a document vecmirror wrote (a HASH or JSON key with _vm_key)."""
    async with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.type(key)
        kinds = [_text(k) for k in await pipe.execute()]
    async with client.pipeline(transaction=False) as pipe:
        for key, kind in zip(keys, kinds, strict=True):
            if kind == "hash":
                pipe.hexists(key, META_KEY_FIELD)
            elif kind == "ReJSON-RL":
                pipe.execute_command("JSON.TYPE", key, f"$.{META_KEY_FIELD}")
            else:
                pipe.exists("")  # a placeholder: 0
        replies = await pipe.execute()
    return [bool(r) and r != [] for r in replies]


async def _orphan(client: redis.Redis, name: str) -> OrphanIndex:
    info = _mapping(await client.execute_command("FT.INFO", name))  # type: ignore[no-untyped-call]
    definition = _mapping(info.get("index_definition") or [])
    prefixes = tuple(_text(p) for p in definition.get("prefixes") or [])
    storage = _text(definition.get("key_type") or "HASH").upper()
    documents = int(float(_text(info.get("num_docs") or 0)))
    sample = await _sample(client, name)
    if sample is None:
        return OrphanIndex(name, prefixes, documents, storage, False, None)
    has_key, generation = await _meta(client, sample, storage)
    return OrphanIndex(name, prefixes, documents, storage, has_key, generation, sample)


async def _sample(client: redis.Redis, index: str) -> str | None:
    reply = await client.execute_command("FT.SEARCH", index, "*", "NOCONTENT", "LIMIT", 0, 1)  # type: ignore[no-untyped-call]
    if isinstance(reply, dict):  # RESP3
        results = reply.get("results") or reply.get(b"results") or []
        return _text(results[0].get("id") or results[0].get(b"id")) if results else None
    return _text(reply[1]) if len(reply) > 1 else None


async def _meta(client: redis.Redis, key: str, storage: str) -> tuple[bool, str | None]:
    if storage == "JSON":
        raw = await client.execute_command("JSON.GET", key, f"$.{META_KEY_FIELD}", f"$.{GENERATION_FIELD}")  # type: ignore[no-untyped-call]
        values = json.loads(_text(raw)) if raw else {}
        generations = values.get(f"$.{GENERATION_FIELD}") or []
        return bool(values.get(f"$.{META_KEY_FIELD}")), (str(generations[0]) if generations else None)
    meta_key, generation = await client.hmget(key, [META_KEY_FIELD, GENERATION_FIELD])
    return meta_key is not None, None if generation is None else _text(generation)


async def _marker_generations(client: redis.Redis) -> dict[str, str]:
    """generation -> mirror, from every marker that is a HASH (markers before generations: none)."""
    owners: dict[str, str] = {}
    async for keys in _scan(client, _glob_escape(f"{OWN_KEY_PREFIX}marker:") + "*"):
        for key in keys:
            if _text(await client.type(key)) != "hash":
                continue
            generation = await client.hget(key, MARKER_GENERATION)
            if generation is not None:
                owners[_text(generation)] = key.removeprefix(f"{OWN_KEY_PREFIX}marker:")
    return owners


async def _scan(client: redis.Redis, pattern: str) -> AsyncIterator[list[str]]:
    cursor = 0
    while True:
        cursor, keys = await client.scan(cursor, match=pattern, count=SCAN_COUNT)
        if keys:
            yield [_text(k) for k in keys]
        if cursor == 0:
            return


async def _unlink(client: redis.Redis, keys: Iterable[str]) -> int:
    keys = list(keys)
    return int(await client.unlink(*keys)) if keys else 0


def _kept(key: str, keep: Sequence[re.Pattern[str]]) -> bool:
    return any(pattern.fullmatch(key) for pattern in keep)


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _glob_to_regex(pattern: str) -> str:
    """key_pattern's glob (escaped prefix, then `*`) as a regular expression."""
    body = re.sub(r"\\(.)", r"\1", pattern[:-1])
    return re.escape(body) + ".*"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _mapping(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return {_text(k): v for k, v in raw.items()}
    items = list(raw)
    return {_text(k): v for k, v in zip(items[::2], items[1::2], strict=False)}
