"""Mirror definitions and small helpers shared by the integration and acceptance tests."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import redis

from vecmirror.commands import run_command
from vecmirror.config import Config
from vecmirror.errors import StartupError
from vecmirror.settings import Settings
from vecmirror.sink.writer import search_result_ids
from vecmirror.source.tables import inspect_table

DOCS_TABLE = """
CREATE TABLE docs (
    id integer PRIMARY KEY,
    title text NOT NULL,
    content text,
    genre text
)
"""

DOCS_MIRROR: dict[str, Any] = {
    "name": "docs",
    "table": "public.docs",
    "embed": {"field": "embedding", "template": "{title}: {content}"},
    "index": {
        "index": {"name": "docs_idx", "prefix": "doc", "storage_type": "hash"},
        "fields": [
            {"name": "title", "type": "text"},
            {"name": "content", "type": "text"},
            {"name": "genre", "type": "tag"},
            {
                "name": "embedding",
                "type": "vector",
                "attrs": {"algorithm": "hnsw", "dims": 384, "distance_metric": "l2", "datatype": "float32"},
            },
        ],
    },
}

# Texts every embedding backend must handle: empty, one word, unicode and emoji, and one far past
# the model's 256 tokens.
ODD_TEXTS = [
    "",
    "cat",
    "Young cats play with yarn",
    "Rockets reach orbit after a long countdown; the crew waves from the capsule.",
    "Ünïcödé, emoji 🙂 and numbers 12345",
    " ".join(f"word{i}" for i in range(600)),
]

PRODUCTS_TABLE = """
CREATE TABLE products (
    sku text PRIMARY KEY,
    name text NOT NULL,
    price numeric,
    vec real[]
)
"""

PRODUCTS_MIRROR: dict[str, Any] = {
    "name": "products",
    "table": "products",
    "vector_column": "vec",
    "index": {
        "index": {"name": "products_idx", "prefix": "product", "storage_type": "hash"},
        "fields": [
            {"name": "name", "type": "text"},
            {"name": "price", "type": "numeric"},
            {
                "name": "vec",
                "type": "vector",
                "attrs": {"algorithm": "flat", "dims": 4, "distance_metric": "cosine", "block_size": 64},
            },
        ],
    },
}

NOTES_TABLE = """
CREATE TABLE notes (
    tenant text NOT NULL,
    id integer NOT NULL,
    body text NOT NULL,
    labels text,
    v double precision[],
    PRIMARY KEY (tenant, id)
)
"""

NOTES_MIRROR: dict[str, Any] = {
    "name": "notes",
    "table": "public.notes",
    "vector_column": "v",
    "index": {
        "index": {"name": "notes_idx", "prefix": "note", "storage_type": "json"},
        "fields": [
            {"name": "body", "type": "text"},
            {"name": "$.meta.labels", "as_name": "labels", "type": "tag", "attrs": {"separator": "|"}},
            {
                "name": "v",
                "type": "vector",
                "attrs": {
                    "algorithm": "hnsw",
                    "dims": 3,
                    "distance_metric": "cosine",
                    "m": 8,
                    "ef_construction": 64,
                    "ef_runtime": 20,
                    "epsilon": 0.05,
                    "initial_cap": 100,
                },
            },
        ],
    },
}


async def sync_once(settings: Settings, config: Config, embedder_factory: Any = None) -> Any:
    return await run_command(settings, config, once=True, embedder_factory=embedder_factory)


def hash_doc(client: redis.Redis, key: str) -> dict[str, bytes]:
    return {k.decode(): v for k, v in client.hgetall(key).items()}


def json_doc(client: redis.Redis, key: str) -> Any:
    raw = client.execute_command("JSON.GET", key)
    return None if raw is None else json.loads(raw)


def keys(client: redis.Redis, pattern: str) -> set[str]:
    return {k.decode() for k in client.scan_iter(match=pattern)}


def vector_of(doc: dict[str, bytes], field: str = "embedding") -> np.ndarray[Any, Any]:
    return np.frombuffer(doc[field], dtype=np.float32)


def vector_at(client: redis.Redis, index: str) -> str:
    """Where the index users query reads vectors: the field's name, or where an online
    re-embedding moved them (FT.INFO's identifier)."""
    for attribute in client.ft(index).info()["attributes"]:
        properties = dict(zip(attribute[::2], attribute[1::2], strict=False))
        if properties.get(b"type", properties.get("type")) in (b"VECTOR", "VECTOR"):
            identifier = properties.get(b"identifier", properties.get("identifier"))
            return identifier.decode() if isinstance(identifier, bytes) else str(identifier)
    raise AssertionError(f"{index} has no vector field")


def search_ids(client: redis.Redis, index: str, query: str) -> set[str]:
    reply = client.execute_command("FT.SEARCH", index, query, "NOCONTENT", "LIMIT", 0, 1000, "DIALECT", 2)
    return set(search_result_ids(reply))


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@contextlib.contextmanager
def stack_directory() -> Iterator[Path]:
    """Outside pytest's temporary root: the servers run as another user (Postgres refuses root), and
    every pytest session that starts resets that root to mode 0700, which would cut a server of a
    session already running (its own data directory becomes unreadable to it: a PANIC)."""
    directory = Path(tempfile.mkdtemp(prefix="vecmirror-test-stack-"))
    try:
        yield directory / "stack"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def shape_problem(conn: Any, mirror: Any) -> str | None:
    """What the worker's table check (inspect_table, run every VECMIRROR_CHECK_INTERVAL) says."""
    try:
        await inspect_table(conn, mirror)
    except StartupError as exc:
        return str(exc)
    return None


PARTS_MIRROR: dict[str, Any] = {
    **PRODUCTS_MIRROR,
    "name": "parts",
    "table": "parts",
    "index": {
        **PRODUCTS_MIRROR["index"],
        "index": {"name": "parts_idx", "prefix": "part", "storage_type": "hash"},
    },
}


async def two_mirrors(pg: Any, write_config: Any, settings_for: Any, poll: float) -> Any:
    """Mirrors `products` and `parts` of one row each, migrated: one to trouble, one that goes on.
    Returns the config's path, the settings (quick retries, `poll` seconds between polls) and config."""
    from vecmirror.commands import migrate_command

    await pg.execute(PRODUCTS_TABLE)
    await pg.execute(PRODUCTS_TABLE.replace("products", "parts"))
    for table in ("products", "parts"):
        await pg.execute(f"INSERT INTO {table} VALUES ('a', 'A', 1, '{{1,2,3,4}}')")
    path, config = write_config([PRODUCTS_MIRROR, PARTS_MIRROR])
    settings = settings_for(path, error_backoff=0.05, poll_interval=poll)
    await migrate_command(settings, config)
    return path, settings, config


async def three_docs_on(
    backend: str, pg: Any, write_config: Any, settings_for: Any, **settings: Any
) -> tuple[Path, Settings, Config]:
    """The docs mirror on `backend`, migrated, with three rows synced once by the default factory
    (which takes the backend from the mirrors file). Returns the config's path, settings and config."""
    import copy

    from vecmirror.commands import migrate_command

    mirror = copy.deepcopy(DOCS_MIRROR)
    mirror["embed"]["backend"] = backend
    path, config = write_config([mirror])
    vm_settings = settings_for(path, **settings)
    await pg.execute(DOCS_TABLE)
    await migrate_command(vm_settings, config)
    await pg.execute(
        "INSERT INTO docs VALUES (1, 'Kittens', 'Young cats play with yarn', 'pets'), "
        "(2, 'Rockets', 'Rockets reach orbit', 'space'), (3, 'Mice', 'Pet mice need small cages', 'pets')"
    )
    await sync_once(vm_settings, config)
    return path, vm_settings, config
