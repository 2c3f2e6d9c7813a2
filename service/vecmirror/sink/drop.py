"""The Redis side of a mirror removed from the mirrors file: find its index and keys, and delete them
on request (`vecmirror migrate --drop-data`).

Since schema 0006 Postgres records each mirror's layout (`Layout`: index name, key prefixes, key
separator, storage type; vecmirror.mirrors_v1, then vecmirror.removed_mirrors_v1 once removed), and
that says exactly what to delete:

- the index answering for the recorded name (itself, or the alias's target after an online rebuild)
  and the rebuild generations of that name (`<name>__<digest>`) over the same prefixes, dropped
  without their documents, unless a configured mirror is queried through it or names it;
- every key under a recorded prefix and separator (`<prefix><separator>…`) that vecmirror wrote
  (`_vm_key`) and no configured mirror owns, and the tombstones of such keys;
- the marker, the last-sync key and the config lease.

Keys vecmirror did not write are left and listed, even those the index held: FT.DROPINDEX … DD would
take every key the index's prefixes reach (prefix `doc` reaches `docs2:…`, another mirror's).

A mirror installed before 0006 and removed before its next `migrate` has no recorded layout. Its
index and prefix are then found in Redis, as before 0006:

- the indexes no configured mirror names (FT._LIST), each with its prefixes and documents (FT.INFO);
- one document of each, whose `_vm_key` says vecmirror wrote it and whose `_vm_gen` (when documents
  carry generations) names the marker, `vecmirror:marker:<mirror>`, of the same generation.

An index whose documents carry the removed mirror's generation is its index. Failing that, a single
removed mirror and a single unclaimed vecmirror index are taken to belong together. Anything else is
ambiguous: the candidates are listed and nothing is deleted.

Deleting such a found index: FT.DROPINDEX … DD (the documents the index holds; without DD when its
prefixes reach a configured mirror's keys), then a SCAN of each prefix for the documents it does not
hold (refused by the index) that vecmirror wrote (`_vm_key`), the tombstones under the prefix, the
marker, the last-sync key and the config lease. Keys under a configured mirror's prefix and keys
vecmirror did not write are never deleted.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as redis
from redisvl.index.storage import BaseStorage

from vecmirror.config import META_KEY_FIELD, OWN_KEY_PREFIX, MirrorConfig
from vecmirror.index.rollout import answering_index
from vecmirror.sink.cluster import index_names, scan_pages, unlink_keys
from vecmirror.sink.keys import document_key, key_pattern, recorded_layout
from vecmirror.sink.observe import document_count
from vecmirror.sink.slots import own_key_slot
from vecmirror.sink.versioned import TOMBSTONE, lease_keys, legacy_lease_keys, own_slot_keys

SCAN_COUNT = 1000
SAMPLES = 100  # documents read from an index to find one no configured mirror owns
GENERATION_FIELD = "_vm_gen"  # as sink/versioned.py's META_GENERATION_FIELD (documents since 0005)
MARKER_GENERATION = "generation"


def marker_key(mirror: str) -> str:
    return f"{OWN_KEY_PREFIX}marker:{mirror}"


def last_sync_key(mirror: str) -> str:
    return f"{OWN_KEY_PREFIX}last_sync:{mirror}"


def own_keys(mirror: str) -> list[str]:
    """The keys vecmirror keeps of a mirror under its own prefix, named by the mirror: its marker,
    last sync, config lease (of a rolling update; hash-tagged and as named before slots), and every
    slot's guard and lease."""
    return [
        marker_key(mirror),
        last_sync_key(mirror),
        *lease_keys(mirror),
        *legacy_lease_keys(mirror),
        *own_slot_keys(mirror),
    ]


def tombstone_patterns(prefix: str) -> list[str]:
    """The tombstones of documents under the prefix: `vecmirror:tombstone:{tag}<key>` (in the
    document's slot) and, from before slots, `vecmirror:tombstone:<key>`."""
    head = f"{OWN_KEY_PREFIX}{TOMBSTONE}:"
    return [f"{head}{{*}}{_glob_escape(prefix)}*", f"{head}{_glob_escape(prefix)}*"]


def tombstoned_key(tombstone: str) -> str:
    """The document key a tombstone (of either naming) stands for."""
    slotted = own_key_slot(TOMBSTONE, tombstone)
    return slotted[1] if slotted is not None else tombstone.removeprefix(f"{OWN_KEY_PREFIX}{TOMBSTONE}:")


@dataclass(frozen=True)
class Layout:
    """What a mirror writes in Redis, as `migrate` recorded it in Postgres (0006)."""

    index: str  # the name users query: an index, or an alias of its rebuilt generation
    prefixes: tuple[str, ...]  # as in the mirrors file (FT.CREATE … PREFIX)
    separator: str
    storage: str  # hash or json

    @classmethod
    def from_record(cls, record: Any) -> Layout:
        """From a row of `redis_layouts` (source/sql/mirrors.sql)."""
        return cls(
            record["index_name"],
            tuple(record["key_prefixes"]),
            record["key_separator"],
            record["storage_type"],
        )

    def key_prefixes(self) -> tuple[str, ...]:
        """How every document key starts (as RedisVL builds keys: the prefix without trailing
        separators, then the separator), so prefix `doc` does not reach `docs2:…`. A prefix that
        would reach every key (none, or separators only) is left out: never scan everything."""
        starts = (str(BaseStorage._key("", prefix, self.separator)) for prefix in self.prefixes)
        return tuple(dict.fromkeys(start for start in starts if start))

    def generation(self, name: str) -> bool:
        """Whether an index of this name is a rebuild generation of the recorded index
        (index/rollout.py's generation_name)."""
        return re.fullmatch(re.escape(self.index) + r"__[0-9a-f]{10}", name) is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "prefixes": list(self.prefixes),
            "key_separator": self.separator,
            "storage_type": self.storage,
        }


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
    """What Redis holds of a removed mirror. With a recorded layout, index is the index answering
    for its name (None: there is none, or it is a configured mirror's: index_owner); without,
    index None means not found (candidates: ambiguous)."""

    mirror: str
    index: OrphanIndex | None
    marker: bool
    candidates: tuple[str, ...] = ()
    layout: Layout | None = None  # as Postgres recorded it; None: found in Redis by guessing
    index_owner: str | None = None  # the configured mirror queried through the recorded index
    counted: int | None = None  # its documents, counted key by key (the index holds others too)

    @property
    def ambiguous(self) -> bool:
        return self.index is None and bool(self.candidates)

    @property
    def documents(self) -> int:
        if self.counted is not None:
            return self.counted
        return 0 if self.index is None else self.index.documents

    def describe(self) -> str:
        if self.layout is not None:
            prefixes = ", ".join(self.layout.prefixes)
            where = f"{self.documents} documents under prefix {prefixes}"
            if self.index_owner is not None:
                owner = f"mirror {self.index_owner!r} is queried through it"
                return f"{where} (index {self.layout.index} is kept: {owner})"
            if self.index is None:
                return f"{where} (no index {self.layout.index} in Redis)"
            return f"{where} and index {self.layout.index}"
        if self.index is None:
            if self.ambiguous:
                return f"its index is one of {', '.join(self.candidates)} (cannot tell which)"
            return "no index of it found in Redis"
        prefixes = ", ".join(self.index.prefixes) or "(none)"
        return f"{self.index.documents} documents under prefix {prefixes} and index {self.index.name}"

    def as_dict(self) -> dict[str, Any]:
        if self.layout is not None:
            index = None if self.index is None else self.layout.index
            prefixes = list(self.layout.prefixes)
        else:
            index = None if self.index is None else self.index.name
            prefixes = [] if self.index is None else list(self.index.prefixes)
        return {
            "index": index,
            "prefixes": prefixes,
            "documents": self.documents,
            "marker": self.marker,
            "candidates": list(self.candidates),
        }

    def recorded(self) -> dict[str, Any] | None:
        """The layout Postgres recorded (None: found by guessing), and whose index it now is."""
        if self.layout is None:
            return None
        return {**self.layout.as_dict(), "index_kept_for": self.index_owner}


@dataclass
class DropReport:
    mirror: str
    index: str | None = None  # the index dropped (the recorded name, or the one found)
    documents: int = 0  # documents deleted: with the index (DD), or key by key
    other_keys: int = 0  # documents the index did not hold (DD), tombstones, marker, last sync
    foreign: list[str] = field(default_factory=list)  # left alone: vecmirror did not write them
    indexes: list[str] = field(default_factory=list)  # every index dropped, by its own name
    index_kept_for: str | None = None  # the recorded index is this configured mirror's: kept


async def left_behind(client: redis.Redis, known: set[str]) -> list[str]:
    """Mirrors whose marker is in Redis that neither the file nor Postgres knows: removed earlier,
    their data kept. (A Redis shared with another vecmirror deployment shows its mirrors here too.)"""
    names: set[str] = set()
    async for keys in _scan(client, _glob_escape(f"{OWN_KEY_PREFIX}marker:") + "*"):
        names.update(k.removeprefix(f"{OWN_KEY_PREFIX}marker:") for k in keys)
    return sorted(names - known)


async def locate(
    client: redis.Redis,
    removed: Sequence[str],
    configured: Sequence[MirrorConfig],
    recorded: Mapping[str, Layout] | None = None,
) -> dict[str, MirrorData]:
    """Each removed mirror's index and marker: by the layout Postgres recorded of it, else as far
    as Redis tells."""
    if not removed:
        return {}
    recorded = recorded or {}
    queried = await _queried_indexes(client, configured)
    found: dict[str, MirrorData] = {}
    for mirror in removed:
        layout = recorded.get(mirror)
        if layout is not None:
            found[mirror] = await _recorded_data(client, mirror, layout, configured, queried)
    guessed = [m for m in removed if m not in found]  # no layout recorded: installed before 0006
    if not guessed:
        return found

    def claimed(name: str) -> bool:  # a recorded mirror's index, or a rebuild generation of it
        return name in queried or any(name == r.index or r.generation(name) for r in recorded.values())

    names = await index_names(client)  # on a cluster, every primary's
    keep = _keep_patterns(configured)
    orphans = [await _orphan(client, n, keep) for n in sorted(names) if not claimed(n)]
    claimed_targets = {d.index.name for d in found.values() if d.index is not None}
    orphans = [o for o in orphans if o.name not in claimed_targets]
    owners = await _marker_generations(client)  # generation -> mirror
    for mirror in guessed:
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
        and o not in [found[m].index for m in guessed]
    ]
    open_mirrors = [m for m in guessed if found[m].index is None]
    for mirror in open_mirrors:
        data = found[mirror]
        if len(open_mirrors) == 1 and len(unclaimed) == 1:
            found[mirror] = MirrorData(mirror, unclaimed[0], data.marker)
        elif unclaimed:
            found[mirror] = MirrorData(mirror, None, data.marker, tuple(o.name for o in unclaimed))
    return found


async def _queried_indexes(client: redis.Redis, configured: Sequence[MirrorConfig]) -> dict[str, str]:
    """index -> configured mirror, for every index a configured mirror names or is queried through
    (after an online rebuild its name is an alias of an index with another name)."""
    queried = {m.index.index.name: m.name for m in configured}
    for name, mirror in sorted(queried.items()):
        answering = await answering_index(client, name)
        if answering is not None:
            queried.setdefault(answering, mirror)
    return queried


async def _recorded_data(
    client: redis.Redis,
    mirror: str,
    layout: Layout,
    configured: Sequence[MirrorConfig],
    queried: Mapping[str, str],
) -> MirrorData:
    """What Redis holds of a removed mirror whose layout Postgres recorded. Its documents are the
    index's when that index reaches no configured mirror's keys; otherwise they are counted."""
    marker = bool(await client.exists(marker_key(mirror)))
    answering = await answering_index(client, layout.index)
    owner = queried.get(layout.index) or (None if answering is None else queried.get(answering))
    index = None if answering is None or owner is not None else await _orphan(client, answering)
    counted = None
    if index is None or _reaches(index.prefixes, configured):
        keep = _keep_patterns(configured)
        counted = sum([await _count_documents(client, start, keep) for start in layout.key_prefixes()])
    return MirrorData(mirror, index, marker, layout=layout, index_owner=owner, counted=counted)


async def drop(client: redis.Redis, data: MirrorData, configured: Sequence[MirrorConfig]) -> DropReport:
    """Deletes what vecmirror wrote for a removed mirror (see the module's docstring)."""
    if data.layout is not None:
        return await _drop_recorded(client, data.mirror, data.layout, configured)
    report = DropReport(data.mirror)
    keep = _keep_patterns(configured)
    if data.index is not None:
        report.index = data.index.name
        report.indexes.append(data.index.name)
        with_documents = not _reaches(data.index.prefixes, configured)  # DD takes all it reaches
        if with_documents:
            report.documents = data.index.documents
            await client.execute_command("FT.DROPINDEX", data.index.name, "DD")  # type: ignore[no-untyped-call]
        else:
            await client.execute_command("FT.DROPINDEX", data.index.name)  # type: ignore[no-untyped-call]
        for prefix in data.index.key_prefixes():
            deleted = await _drop_documents(client, prefix, keep, report)
            if with_documents:  # those the index did not hold (it refused them)
                report.other_keys += deleted
            else:
                report.documents += deleted
            report.other_keys += await _drop_tombstones(client, prefix, keep)
    report.other_keys += await _unlink(client, own_keys(data.mirror))
    return report


async def _drop_recorded(
    client: redis.Redis, mirror: str, layout: Layout, configured: Sequence[MirrorConfig]
) -> DropReport:
    """Deletes exactly what the recorded layout says the mirror wrote: its index (and rebuild
    generations) without DD, then its documents and tombstones key by key, then its own keys."""
    report = DropReport(mirror)
    queried = await _queried_indexes(client, configured)
    report.index_kept_for = queried.get(layout.index)
    if report.index_kept_for is None:
        await _drop_recorded_indexes(client, layout, queried, report)
    report.index = layout.index if report.indexes else None
    keep = _keep_patterns(configured)
    # A mirror removed in the middle of a move to new keys (index/rekey.py) still has documents
    # under the layout its marker records.
    moved_from = await recorded_layout(client, marker_key(mirror))
    starts = (*layout.key_prefixes(), *(moved_from.starts() if moved_from is not None else ()))
    for start in dict.fromkeys(starts):
        report.documents += await _drop_documents(client, start, keep, report)
        report.other_keys += await _drop_tombstones(client, start, keep)
    report.other_keys += await _unlink(client, own_keys(mirror))
    return report


async def _drop_recorded_indexes(
    client: redis.Redis, layout: Layout, queried: Mapping[str, str], report: DropReport
) -> None:
    """The index answering for the recorded name, then its rebuild generations over the same
    prefixes, all without their documents; none a configured mirror is queried through."""
    # An alias may hide an index of its own name during a switch: drop until nothing answers.
    while (answering := await answering_index(client, layout.index)) is not None:
        if answering in report.indexes or answering in queried:
            report.index_kept_for = queried.get(answering)
            break
        await client.execute_command("FT.DROPINDEX", answering)  # type: ignore[no-untyped-call]
        report.indexes.append(answering)
    names = await index_names(client)  # on a cluster, every primary's
    for name in sorted(n for n in names if layout.generation(n)):
        if name in queried or name in report.indexes:
            continue
        if set((await _orphan(client, name)).prefixes) == set(layout.prefixes):
            await client.execute_command("FT.DROPINDEX", name)  # type: ignore[no-untyped-call]
            report.indexes.append(name)


def _keep_patterns(configured: Sequence[MirrorConfig]) -> list[re.Pattern[str]]:
    """Every key a configured mirror owns: never deleted for a removed one."""
    return [re.compile(_glob_to_regex(key_pattern(m))) for m in configured]


def _reaches(prefixes: Iterable[str], configured: Sequence[MirrorConfig]) -> bool:
    """Whether an index over these prefixes holds keys a configured mirror owns (FT.CREATE's
    PREFIX matches any key starting with it: `doc` holds `docs2:1`)."""
    starts = [document_key(m, [""]) for m in configured]
    return any(s.startswith(p) or p.startswith(s) for p in prefixes for s in starts)


async def _drop_documents(
    client: redis.Redis, prefix: str, keep: Sequence[re.Pattern[str]], report: DropReport
) -> int:
    """Deletes the documents under the prefix that vecmirror wrote (`_vm_key`) and no configured
    mirror owns; lists the others in report.foreign. Returns how many were deleted."""
    deleted = 0
    async for candidates, ours in _documents(client, prefix, keep):
        report.foreign += [k for k, mine in zip(candidates, ours, strict=True) if not mine]
        deleted += await _unlink(client, [k for k, mine in zip(candidates, ours, strict=True) if mine])
    return deleted


async def _count_documents(client: redis.Redis, prefix: str, keep: Sequence[re.Pattern[str]]) -> int:
    """How many documents _drop_documents would delete under the prefix."""
    return sum([sum(ours) async for _, ours in _documents(client, prefix, keep)])


async def _documents(
    client: redis.Redis, prefix: str, keep: Sequence[re.Pattern[str]]
) -> AsyncIterator[tuple[list[str], list[bool]]]:
    """The keys under the prefix no configured mirror owns, a SCAN page at a time, each with
    whether vecmirror wrote it."""
    async for keys in _scan(client, _glob_escape(prefix) + "*"):
        candidates = [k for k in keys if not _kept(k, keep) and not k.startswith(OWN_KEY_PREFIX)]
        if candidates:
            yield candidates, await _written_by_vecmirror(client, candidates)


async def _drop_tombstones(client: redis.Redis, prefix: str, keep: Sequence[re.Pattern[str]]) -> int:
    deleted = 0
    # The slotted pattern's `{*}` may reach past a tag: only a tombstone of a key under the
    # prefix is the removed mirror's.
    for pattern in tombstone_patterns(prefix):
        async for keys in _scan(client, pattern):
            stood_for = [(k, tombstoned_key(k)) for k in keys]
            gone = [k for k, key in stood_for if key.startswith(prefix) and not _kept(key, keep)]
            deleted += await _unlink(client, gone)
    return deleted


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


async def _orphan(client: redis.Redis, name: str, keep: Sequence[re.Pattern[str]] = ()) -> OrphanIndex:
    """An index as FT.INFO describes it, with a sampled document no configured mirror owns (an
    index over `doc` also holds `docs2:…`, whose generation would name another mirror)."""
    info = _mapping(await client.execute_command("FT.INFO", name))  # type: ignore[no-untyped-call]
    definition = _mapping(info.get("index_definition") or [])
    prefixes = tuple(_text(p) for p in definition.get("prefixes") or [])
    storage = _text(definition.get("key_type") or "HASH").upper()
    documents = await document_count(client, info)
    sample = await _sample(client, name, keep)
    if sample is None:
        return OrphanIndex(name, prefixes, documents, storage, False, None)
    has_key, generation = await _meta(client, sample, storage)
    return OrphanIndex(name, prefixes, documents, storage, has_key, generation, sample)


async def _sample(client: redis.Redis, index: str, keep: Sequence[re.Pattern[str]]) -> str | None:
    reply = await client.execute_command("FT.SEARCH", index, "*", "NOCONTENT", "LIMIT", 0, SAMPLES)  # type: ignore[no-untyped-call]
    if isinstance(reply, dict):  # RESP3
        results = reply.get("results") or reply.get(b"results") or []
        ids = [_text(r.get("id") or r.get(b"id")) for r in results]
    else:
        ids = [_text(i) for i in reply[1:]]
    return next((i for i in ids if not _kept(i, keep)), None)


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
    async for keys in scan_pages(client, pattern, SCAN_COUNT):  # every primary's on a cluster
        yield keys


async def _unlink(client: redis.Redis, keys: Iterable[str]) -> int:
    """One UNLINK per hash slot: a sharded Redis refuses one over several (CROSSSLOT)."""
    return await unlink_keys(client, keys)


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
