"""The one place that turns a row key into a Redis key, the way RedisVL formats keys."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as redis
from redisvl.index.storage import BaseStorage

from vecmirror.config import MirrorConfig, index_prefix

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


async def delete_old_keys(client: redis.Redis, layout: KeyLayout, key_ids: Sequence[str]) -> None:
    """During a move: rows deleted leave the index users query at once (their old keys go)."""
    if key_ids:
        await client.unlink(*(layout.key(ident) for ident in key_ids))
