"""JSON mirrors with fields over arrays (`$.tags[*]`): every query mode, the Python API and the CLI
(`--json` and the table), gives back the whole array, not its first value.

RediSearch answers RETURN (and LOAD) of such a field's name with the first value its path matches;
vecmirror asks for the array's own path under the field's name instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest

from helpers import sync_once
from processes import vecmirror
from vecmirror.commands import migrate_command
from vecmirror.query import MirrorSearch, tag
from vecmirror.query.results import array_paths, return_whole_arrays

ITEMS_TABLE = """
CREATE TABLE items (
    id integer PRIMARY KEY,
    title text NOT NULL,
    tags text[],
    scores integer[],
    v real[] NOT NULL
)
"""

FLAT_L2 = {"algorithm": "flat", "dims": 2, "distance_metric": "l2"}
ITEMS_MIRROR: dict[str, Any] = {
    "name": "items",
    "table": "public.items",
    "vector_column": "v",
    "index": {
        "index": {"name": "items_idx", "prefix": "item", "storage_type": "json"},
        "fields": [
            {"name": "title", "type": "text", "path": "$.title"},
            {"name": "tags", "type": "tag", "path": "$.tags[*]"},
            {"name": "scores", "type": "numeric", "path": "$.scores[*]"},
            {"name": "v", "type": "vector", "attrs": FLAT_L2},
        ],
    },
}

RED = ["red", "box", "big"]


@pytest.fixture
async def items(pg: asyncpg.Connection, write_config: Any, settings_for: Any) -> tuple[Path, Any, Any]:
    await pg.execute(ITEMS_TABLE)
    await pg.execute(
        "INSERT INTO items VALUES (1, 'red box', $1, '{1,2,3}', '{0,0}'), "
        "(2, 'blue box', '{blue}', '{7}', '{1,1}'), (3, 'no tags', NULL, NULL, '{3,3}')",
        RED,
    )
    path, config = write_config([ITEMS_MIRROR])
    settings = settings_for(path)
    await migrate_command(settings, config)
    await sync_once(settings, config)
    return path, settings, config


async def test_knn_range_and_fused_hits_carry_whole_arrays(items: tuple[Path, Any, Any]) -> None:
    _, settings, config = items
    async with MirrorSearch.open(settings, config) as search:
        knn = await search.knn("items", vector=[0, 0], k=3)
        filtered = await search.knn("items", vector=[5, 5], k=3, filter=tag("tags").any_of("big"))
        near = await search.range("items", vector=[0, 0], radius=2.5, return_fields=["tags"])
        fused = await search.hybrid("items", text="box", vector=[0, 0], k=2, text_weight=0.5)
    assert [(h.id, h.fields.get("tags"), h.fields.get("scores")) for h in knn] == [
        ("item:1", RED, [1, 2, 3]),
        ("item:2", ["blue"], [7]),
        ("item:3", None, None),
    ]
    assert [(h.id, h.fields["tags"]) for h in filtered] == [("item:1", RED)]
    assert [(h.id, h.fields) for h in near] == [("item:1", {"tags": RED}), ("item:2", {"tags": ["blue"]})]
    assert {h.id: h.fields["tags"] for h in fused} == {"item:1": RED, "item:2": ["blue"]}


async def test_cli_query_prints_whole_arrays(items: tuple[Path, Any, Any], cli_env: dict[str, str]) -> None:
    path, _, _ = items
    args = ["query", "items", "--vector", "[0, 0]", "--k", "1", "--config", str(path)]
    as_json = vecmirror(cli_env, *args, "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)[0] == {
        "id": "item:1",
        "distance": 0.0,
        "score": 1.0,
        "title": "red box",
        "tags": RED,
        "scores": [1, 2, 3],
    }
    table = vecmirror(cli_env, *args, "--return", "tags")
    assert table.returncode == 0, table.stderr
    assert "item:1  tags=['red', 'box', 'big']" in table.stdout


def test_only_json_array_fields_are_rewritten_once() -> None:
    from vecmirror.config import parse_config

    config = parse_config({"mirrors": [ITEMS_MIRROR]})
    fields = config.mirrors[0].value_fields
    assert array_paths(fields, is_json=True) == {"tags": "$.tags", "scores": "$.scores"}
    assert array_paths(fields, is_json=False) == {}

    search = SimpleNamespace(_return_fields=["title", "tags", "vector_distance"])
    aggregate = SimpleNamespace(_loadfields=["@__key", "@tags", "title"])
    for _ in range(2):  # a second call changes nothing
        return_whole_arrays(search, {"tags": "$.tags"})
        return_whole_arrays(aggregate, {"tags": "$.tags"})
    assert search._return_fields == ["title", "$.tags", "AS", "tags", "vector_distance"]
    assert aggregate._loadfields == ["@__key", "$.tags", "AS", "tags", "title"]
