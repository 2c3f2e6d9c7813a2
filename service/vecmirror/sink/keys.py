"""The one place that turns a row key into a Redis key, the way RedisVL formats keys."""

from __future__ import annotations

import re
from collections.abc import Sequence

from redisvl.index.storage import BaseStorage

from vecmirror.config import MirrorConfig, index_prefix

# Composite primary keys are joined with this, whatever the index's key separator is.
KEY_PART_SEPARATOR = ":"
# In a composite key each part has these escaped, so ("a:b", "c") and ("a", "b:c") stay two keys.
_PART_ESCAPES = str.maketrans({"%": "%25", KEY_PART_SEPARATOR: "%3A"})


def document_key(mirror: MirrorConfig, key_parts: Sequence[str]) -> str:
    separator = mirror.index.index.key_separator
    if len(key_parts) == 1:
        key_id = key_parts[0]
    else:
        key_id = KEY_PART_SEPARATOR.join(part.translate(_PART_ESCAPES) for part in key_parts)
    return str(BaseStorage._key(key_id, index_prefix(mirror), separator))


def key_pattern(mirror: MirrorConfig) -> str:
    """A SCAN pattern matching every key this mirror owns (glob characters in the prefix escaped)."""
    prefix = document_key(mirror, [""])
    return re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"
