"""A prefix or storage change applied online: the new generation's documents are new keys.

An index reads the keys under its prefixes, and a key holds one Redis type: another prefix, or
another storage type, means other keys. (Another storage type under the same prefix would need the
same key names to hold two types: it needs a new prefix too, and the config says so.) The new index
generation is created over the config's prefix and filled like any rebuild (index/rollout.py), each
row written to its new key. Meanwhile the index users query keeps answering from the old keys: a row
deleted meanwhile leaves it at once (its old key goes with it), a row changed meanwhile shows its
previous values there until the switch, a row inserted meanwhile shows only after it. Once
switched, every document of the mirror under the old prefix is deleted (settle_keys). The marker
records where the documents are (`keys_at`), so a crash in between deletes them on the next start.

Key names change under users' feet only because they asked for it (a new prefix): vecmirror never
invents key names of its own.
"""

from __future__ import annotations

from typing import Any, Literal

import redis.asyncio as redis
import structlog

from vecmirror.config import MirrorConfig
from vecmirror.index.manage import index_definition
from vecmirror.sink.cluster import scan_pages, unlink_keys
from vecmirror.sink.keys import KEYS_AT_FIELD, KeyLayout, owned_documents, recorded_layout

log = structlog.get_logger(__name__)
PAGE = 1000


def served_layout(info: dict[str, Any], separator: str) -> KeyLayout:
    """The layout of the index users query (FT.INFO names no separator: the recorded one)."""
    definition = index_definition(info)
    prefixes = tuple(str(_text(p)) for p in definition.get("prefixes") or [])
    return KeyLayout(prefixes, separator, str(_text(definition.get("key_type"))).upper())


def rekey_problem(config: KeyLayout, served: KeyLayout) -> str | None:
    """Why the documents cannot move from the served layout to the config's online (None: they
    can, or they stay)."""
    if config.same_keys(served):
        return None
    if config.starts() == served.starts():
        return (
            f"storage_type: the config's {config.storage} under the same prefix as the index's "
            f"{served.storage}: a key holds one type, so change index.prefix too and the documents "
            "move to new keys online"
        )
    if config.storage != served.storage:
        return None  # an index reads only keys of its own type: prefixes may overlap
    # An index reads every key that starts with one of its prefixes as written, separator or not
    # (prefix `doc` reads `docs:1` and `doc-1`).
    for new in config.prefixes:
        for old in served.prefixes:
            if new == old:
                return (
                    f"key_separator: another separator under the same prefix {old!r}: the old index "
                    "would read the new keys; change index.prefix too and the documents move online"
                )
            if new.startswith(old) or old.startswith(new):
                return (
                    f"prefix: the new prefix {new!r} and the old {old!r} overlap (an index reads every "
                    "key starting with its prefix), so each index would read the other's documents "
                    "during the move: choose a prefix that neither begins nor starts with the old one"
                )
    return None


Settled = Literal["same", "moved", "pending"]


async def settle_keys(
    client: redis.Redis, marker: str, mirror: MirrorConfig, generation: str | None
) -> Settled:
    """Once the index users query reads the config's keys: the documents under the layout the
    marker recorded, when another, are deleted (those of this mirror's generation only), then the
    config's layout is recorded: `moved`. `pending`: the generation is not loaded yet, the next
    wake-up deletes them."""
    layout = KeyLayout.of(mirror)
    recorded = await recorded_layout(client, marker)
    if recorded is not None and recorded.same_keys(layout):
        return "same"
    if recorded is None:
        await _record(client, marker, layout)
        return "same"
    if generation is None:
        return "pending"
    removed = await delete_documents(client, recorded, generation)
    log.info("old_keys_removed", mirror=mirror.name, prefixes=list(recorded.prefixes), documents=removed)
    await _record(client, marker, layout)
    return "moved"


async def delete_documents(client: redis.Redis, layout: KeyLayout, generation: str) -> int:
    """Deletes the documents of `generation` under `layout`: keys of its storage type holding
    vecmirror's key field and that generation. Anything else there is left alone."""
    removed = 0
    for start in layout.starts():
        async for keys in scan_pages(client, _glob(start) + "*", PAGE):  # every primary's
            owned = await owned_documents(client, keys, layout.storage, generation)
            removed += await unlink_keys(client, owned)  # one slot per UNLINK
    return removed


_RECORD_SCRIPT = f"""
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then
    return 0
end
return redis.call('HSET', KEYS[1], '{KEYS_AT_FIELD}', ARGV[1])
"""


async def _record(client: redis.Redis, marker: str, layout: KeyLayout) -> None:
    """Only a HASH marker is written: one made here would stand for a sync that never happened."""
    await client.register_script(_RECORD_SCRIPT)(keys=[marker], args=[layout.dump()])


def _glob(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
