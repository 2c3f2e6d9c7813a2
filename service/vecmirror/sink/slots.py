"""Hash slots: where a key lives in a sharded Redis, and the names of vecmirror's own keys, each in
the slot of what it guards.

A Lua script (and MULTI) on a sharded Redis (OSS cluster, or a proxy endpoint of Redis Cloud,
Redis Software, Azure Managed Redis) may touch the keys of one hash slot only. So every key a write
script reads beside a document (its tombstone, its slot's guard and lease) carries a hash tag that
puts it in the document's slot. The tag is not the document key itself (a key may hold braces of
its own, which would change which part is hashed) but the shortest name of the slot: for each of
the 16,384 slots, the first string over [0-9A-Za-z] (shortest first) that hashes to it. The table
is fixed by that rule, so every version of vecmirror names a key alike.
"""

from __future__ import annotations

from functools import cache
from itertools import product
from string import ascii_letters, digits

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from vecmirror.config import OWN_KEY_PREFIX

SLOTS = REDIS_CLUSTER_HASH_SLOTS
_ALPHABET = digits + ascii_letters


def slot_of(key: str) -> int:
    """The hash slot of a key, as Redis computes it (its hash tag, else the whole key)."""
    return int(key_slot(key.encode()))


@cache
def _tags() -> tuple[str, ...]:
    found: dict[int, str] = {}
    for length in range(1, 4):
        for letters in product(_ALPHABET, repeat=length):
            tag = "".join(letters)
            found.setdefault(slot_of(tag), tag)
        if len(found) == SLOTS:
            return tuple(found[slot] for slot in range(SLOTS))
    raise AssertionError("three characters name every slot")  # pragma: no cover (checked in tests)


def slot_tag(slot: int) -> str:
    """The hash tag (braces included) that puts a key in `slot`."""
    return "{" + _tags()[slot] + "}"


def own_key(kind: str, slot: int, name: str) -> str:
    """One of vecmirror's own keys, of `kind`, for `name`, in `slot`."""
    return f"{OWN_KEY_PREFIX}{kind}:{slot_tag(slot)}{name}"


def own_key_beside(kind: str, key: str) -> str:
    """vecmirror's own key of `kind` for a document key, in the document's slot."""
    return own_key(kind, slot_of(key), key)


def own_key_slot(kind: str, own: str) -> tuple[int, str] | None:
    """The slot and name of an own key of `kind` (None: not one, e.g. a name from before slots)."""
    head = f"{OWN_KEY_PREFIX}{kind}:{{"
    if not own.startswith(head) or "}" not in own[len(head) :]:
        return None
    tag, _, name = own[len(head) :].partition("}")
    slot = slot_of("{" + tag + "}")
    return (slot, name) if _tags()[slot] == tag else None
