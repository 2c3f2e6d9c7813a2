"""What a sharded mirror must look like once the queue has drained, read node by node with plain
clients (each sees only its own keys): every row's document on the master owning its slot, with the
row's fields and version; nothing else there but vecmirror's own keys (`vecmirror:*`); a deleted
row's tombstone in its document's slot; each node's copy of the index counting that node's documents.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import asyncpg
import redis

from vecmirror.config import META_KEY_FIELD, META_VERSION_FIELD, OWN_KEY_PREFIX, MirrorConfig
from vecmirror.sink.keys import document_key
from vecmirror.sink.slots import slot_of

TOMBSTONE_HEAD = f"{OWN_KEY_PREFIX}tombstone:"


class Row(NamedTuple):
    """What a row's document must hold: its text fields (None: the field is absent), its version."""

    key_parts: tuple[str, ...]
    fields: dict[str, str | None]
    version: int


async def expected_rows(pg: asyncpg.Connection, mirror: MirrorConfig, select: str) -> dict[str, Row]:
    """The documents the table asks for, by Redis key. `select` returns `key` (the key's text) and
    the mirrored text fields, each `::text`; the version comes from vecmirror's own ledger (0: the
    row has not changed since capture began)."""
    rows = await pg.fetch(
        f"SELECT s.*, coalesce(v.version, 0) AS vm_version FROM ({select}) s LEFT JOIN"
        " vecmirror.versions_v1 v ON v.mirror = $1 AND v.row_key = ARRAY[s.key]",
        mirror.name,
    )
    expected = {}
    for row in rows:
        fields = dict(row)  # asyncpg's Record iterates over values: its items come from a dict
        key, version = fields.pop("key"), fields.pop("vm_version")
        expected[document_key(mirror, [key])] = Row((key,), fields, version)
    return expected


@contextmanager
def _node(url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(url)
    try:
        yield client
    finally:
        client.close()


def owned_slots(url: str) -> set[int]:
    """The slots the master at `url` serves, by its own CLUSTER SLOTS."""
    with _node(url) as client:
        port = int(client.connection_pool.connection_kwargs["port"])
        ranges: Any = client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
    return {
        slot
        for first, last, (_, master_port, *_), *_ in ranges
        if master_port == port
        for slot in range(first, last + 1)
    }


def node_keys(url: str) -> set[str]:
    with _node(url) as client:
        return {key.decode() for key in client.scan_iter(count=1000)}


def assert_documents_on_their_shards(
    node_urls: list[str], mirror: MirrorConfig, expected: dict[str, Row], vector_field: str, dims: int
) -> None:
    """Each row's document on the node owning its slot, right fields and version; no stray key."""
    placed: dict[str, str] = {}
    indexed = 0
    for url in node_urls:
        slots = owned_slots(url)
        stored = node_keys(url)
        documents = {key for key in stored if not key.startswith(OWN_KEY_PREFIX)}
        stray = documents - set(expected)
        assert not stray, f"{url}: keys that are no row's document: {sorted(stray)[:10]}"
        misplaced = {key for key in stored if slot_of(key) not in slots}
        assert not misplaced, f"{url}: keys of slots it does not own: {sorted(misplaced)[:10]}"
        _assert_tombstones(url, stored, expected)
        with _node(url) as client:
            for key in documents:
                _assert_document(url, client, key, expected[key], vector_field, dims)
                placed[key] = url
        indexed += _assert_index_counts(url, mirror, len(documents))
    assert indexed, f"no node holds the index {mirror.index.index.name}"
    missing = set(expected) - set(placed)
    assert not missing, f"rows without a document on any shard: {sorted(missing)[:10]}"


def _assert_document(url: str, client: redis.Redis, key: str, row: Row, vector_field: str, dims: int) -> None:
    held = {field.decode(): value for field, value in client.hgetall(key).items()}
    where = f"{url} {key}"
    assert held.get(META_KEY_FIELD) == json.dumps(list(row.key_parts)).encode(), (
        where,
        held.get(META_KEY_FIELD),
    )
    assert held.get(META_VERSION_FIELD) == str(row.version).encode(), (
        f"{where}: version {held.get(META_VERSION_FIELD)!r}, the row is at {row.version}"
    )
    for name, value in row.fields.items():
        assert held.get(name) == (None if value is None else value.encode()), (where, name, held.get(name))
    assert len(held.get(vector_field, b"")) == 4 * dims, f"{where}: no {dims}-d FLOAT32 vector"


def _assert_tombstones(url: str, stored: set[str], expected: dict[str, Row]) -> None:
    """A tombstone names a document key in its own slot, and no live row has one."""
    for key in stored:
        if not key.startswith(TOMBSTONE_HEAD):
            continue
        tag_and_key = key.removeprefix(TOMBSTONE_HEAD)
        assert tag_and_key.startswith("{") and "}" in tag_and_key, f"{url}: a tombstone without a slot: {key}"
        document = tag_and_key.partition("}")[2]
        assert slot_of(key) == slot_of(document), f"{url}: {key} is not in the slot of {document}"
        assert document not in expected, f"{url}: a live row keeps a tombstone: {key}"


def _assert_index_counts(url: str, mirror: MirrorConfig, documents: int) -> bool:
    """Where the node holds the index (without a coordinator: the node owning the slot of its name,
    which indexes that node's keys only), it counts every document the node holds and refused none.
    Returns whether the node holds it."""
    name = mirror.index.index.name
    with _node(url) as client:
        if name.encode() not in client.execute_command("FT._LIST"):  # type: ignore[no-untyped-call]
            return False
        info: Any = client.ft(name).info()
    assert int(info["num_docs"]) == documents, (
        f"{url}: index counts {info['num_docs']}, node holds {documents}"
    )
    assert int(info["hash_indexing_failures"]) == 0, f"{url}: {info['hash_indexing_failures']} failures"
    return True


def tombstoned(node_urls: list[str]) -> set[str]:
    """The document keys that have a tombstone, over every node."""
    return {
        key.removeprefix(TOMBSTONE_HEAD).partition("}")[2]
        for url in node_urls
        for key in node_keys(url)
        if key.startswith(TOMBSTONE_HEAD)
    }


def guards_per_node(node_urls: list[str], mirror: str) -> list[int]:
    """How many slot guards of the mirror each node holds (every slot it owns should have one)."""
    head = f"{OWN_KEY_PREFIX}guard:"
    return [
        sum(1 for key in node_keys(url) if key.startswith(head) and key.endswith("}" + mirror))
        for url in node_urls
    ]
