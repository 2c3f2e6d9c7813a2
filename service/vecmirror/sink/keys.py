"""The one place that turns a row key into a Redis key, the way RedisVL formats keys; and where a
mirror's documents are (KeyLayout), as its marker records it."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
from redisvl.index.storage import BaseStorage

from vecmirror.config import META_KEY_FIELD, MirrorConfig, index_prefix
from vecmirror.sink.versioned import META_GENERATION_FIELD

KEYS_AT_FIELD = "keys_at"  # of the mirror's marker HASH: its documents' KeyLayout, as JSON (index/rekey.py)
# Composite primary keys are joined with this, whatever the index's key separator is.
KEY_PART_SEPARATOR = ":"
# In a composite key each part has these escaped, so ("a:b", "c") and ("a", "b:c") stay two keys.
_PART_ESCAPES = str.maketrans({"%": "%25", KEY_PART_SEPARATOR: "%3A"})


def document_key(mirror: MirrorConfig, key_parts: Sequence[str]) -> str:
    separator = mirror.index.index.key_separator
    return str(BaseStorage._key(key_id(key_parts), index_prefix(mirror), separator))


def key_id(key_parts: Sequence[str]) -> str:
    """What follows the prefix and separator in a row's Redis key."""
    if len(key_parts) == 1:
        return key_parts[0]
    return KEY_PART_SEPARATOR.join(part.translate(_PART_ESCAPES) for part in key_parts)


def key_pattern(mirror: MirrorConfig) -> str:
    """A SCAN pattern matching every key this mirror owns (glob characters in the prefix escaped)."""
    prefix = document_key(mirror, [""])
    return re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"


@dataclass(frozen=True)
class KeyLayout:
    """Where a mirror's documents are: under which prefixes, joined by which separator, of which
    Redis type (HASH or JSON)."""

    prefixes: tuple[str, ...]
    separator: str
    storage: str

    @classmethod
    def of(cls, mirror: MirrorConfig) -> KeyLayout:
        prefix = mirror.index.index.prefix
        prefixes = (prefix,) if isinstance(prefix, str) else tuple(prefix)
        return cls(prefixes, mirror.index.index.key_separator, mirror.storage.upper())

    @classmethod
    def parse(cls, text: str) -> KeyLayout:
        recorded = json.loads(text)
        return cls(tuple(recorded["prefixes"]), recorded["separator"], recorded["storage"])

    def dump(self) -> str:
        return json.dumps(
            {"prefixes": list(self.prefixes), "separator": self.separator, "storage": self.storage}
        )

    def same_keys(self, other: KeyLayout) -> bool:
        return (self.starts(), self.storage) == (other.starts(), other.storage)

    def starts(self) -> tuple[str, ...]:
        """How each document key begins (RedisVL drops a prefix's trailing separator)."""
        return tuple(str(BaseStorage._key("", prefix, self.separator)) for prefix in self.prefixes)

    def key(self, ident: str) -> str:
        """The key of a row whose key_id is `ident` (under the first prefix, as document_key)."""
        return str(BaseStorage._key(ident, self.prefixes[0] if self.prefixes else "", self.separator))


async def delete_old_keys(
    client: redis.Redis, layout: KeyLayout, key_ids: Sequence[str], generation: str
) -> None:
    """During a move: rows deleted leave the index users query at once (their old keys go, when
    they are this mirror's documents: another mirror may use the old prefix by then)."""
    keys = [layout.key(ident) for ident in key_ids]
    owned = await owned_documents(client, keys, layout.storage, generation) if keys else []
    if owned:
        await unlink_each(client, owned)


async def unlink_each(client: redis.Redis, keys: Sequence[str]) -> None:
    """UNLINK of keys of any slots: a command per key, in one pipeline (a sharded Redis refuses one
    command over keys of several slots)."""
    async with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.execute_command("UNLINK", key)
        await pipe.execute()


async def owned_documents(client: redis.Redis, keys: list[str], storage: str, generation: str) -> list[str]:
    """Which of these keys are documents vecmirror wrote in `generation`, of `storage` (HASH or
    JSON): another mirror's documents, or anything else under a prefix, are not."""
    async with client.pipeline(transaction=False) as pipe:
        for key in keys:
            if storage == "JSON":
                pipe.execute_command("JSON.GET", key, f"$.{META_KEY_FIELD}", f"$.{META_GENERATION_FIELD}")
            else:
                pipe.hmget(key, META_KEY_FIELD, META_GENERATION_FIELD)
        replies = await pipe.execute(raise_on_error=False)  # another type answers WRONGTYPE
    return [key for key, reply in zip(keys, replies, strict=True) if _of(reply, storage) == generation]


def _of(reply: Any, storage: str) -> str | None:
    """The generation of a document vecmirror wrote (None: not one, or not of this storage)."""
    if reply is None or isinstance(reply, Exception):
        return None
    if storage == "JSON":
        values = json.loads(_text(reply))
        if not values.get(f"$.{META_KEY_FIELD}") or not values.get(f"$.{META_GENERATION_FIELD}"):
            return None
        return str(values[f"$.{META_GENERATION_FIELD}"][0])
    key_field, generation = reply
    return None if key_field is None or generation is None else _text(generation)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_FIELD_SCRIPT = f"""
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then
    return false
end
return redis.call('HGET', KEYS[1], '{KEYS_AT_FIELD}')
"""


async def recorded_layout(client: redis.Redis, marker: str) -> KeyLayout | None:
    raw = await _field(client, marker)
    return None if raw is None else KeyLayout.parse(raw)


async def _field(client: redis.Redis, marker: str) -> str | None:
    """The recorded layout (a marker from before generations, a STRING, records none)."""
    raw = await client.register_script(_FIELD_SCRIPT)(keys=[marker])
    return None if raw is None or raw is False else _text(raw)
