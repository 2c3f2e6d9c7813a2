"""index_differences against FT.INFO replies as our Redis (search 2.10) gives them."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from redisvl.schema import IndexSchema

from vecmirror.config import parse_config
from vecmirror.index.manage import index_differences

# FT.INFO of the JSON index below, as redis-py returns it (RESP2, decoded).
JSON_INFO: dict[str, Any] = {
    "index_definition": {"key_type": "JSON", "prefixes": ["doc"], "default_score": 1.0},
    "attributes": [
        ["identifier", "$.c", "attribute", "c", "type", "TEXT", "WEIGHT", 1.0],
        ["identifier", "$.labels", "attribute", "labels", "type", "TAG", "SEPARATOR", "|"],
        ["identifier", "$.n", "attribute", "n", "type", "NUMERIC"],
        [
            "identifier", "$.e", "attribute", "e", "type", "VECTOR",
            "algorithm", "HNSW", "data_type", "FLOAT32", "dim", 4, "distance_metric", "COSINE",
            "M", 8, "ef_construction", 100,
        ],
    ],
}  # fmt: skip

JSON_FIELDS: list[dict[str, Any]] = [
    {"name": "c", "type": "text"},
    {"name": "$.labels", "as_name": "labels", "type": "tag", "attrs": {"separator": "|"}},
    {"name": "n", "type": "numeric"},
    {
        "name": "e",
        "type": "vector",
        "attrs": {
            "algorithm": "hnsw",
            "dims": 4,
            "distance_metric": "cosine",
            "m": 8,
            "ef_construction": 100,
        },
    },
]

HASH_INFO: dict[str, Any] = {
    "index_definition": {"key_type": "HASH", "prefixes": ["item"], "default_score": 1.0},
    "attributes": [
        ["identifier", "t", "attribute", "t", "type", "TEXT", "WEIGHT", 2.0, "SORTABLE", "NOSTEM"],
        ["identifier", "g", "attribute", "g", "type", "TAG", "SEPARATOR", ",", "CASESENSITIVE"],
        ["identifier", "p", "attribute", "p", "type", "NUMERIC", "SORTABLE", "UNF"],
        ["identifier", "loc", "attribute", "loc", "type", "GEO"],
        [
            "identifier", "v", "attribute", "v", "type", "VECTOR",
            "algorithm", "FLAT", "data_type", "FLOAT32", "dim", 4, "distance_metric", "L2",
        ],
    ],
}  # fmt: skip

HASH_FIELDS: list[dict[str, Any]] = [
    {"name": "t", "type": "text", "attrs": {"weight": 2, "sortable": True, "no_stem": True}},
    {"name": "g", "type": "tag", "attrs": {"case_sensitive": True}},
    {"name": "p", "type": "numeric", "attrs": {"sortable": True}},
    {"name": "loc", "type": "geo"},
    {
        "name": "v",
        "type": "vector",
        "attrs": {"algorithm": "flat", "dims": 4, "distance_metric": "l2", "block_size": 8},
    },
]


def schema(storage: str, fields: list[dict[str, Any]], prefix: Any = None) -> IndexSchema:
    prefix = prefix if prefix is not None else ("doc" if storage == "json" else "item")
    vector = next(f["name"] for f in fields if f["type"] == "vector")
    raw = {
        "name": "m",
        "table": "t",
        "vector_column": vector,
        "index": {
            "index": {"name": "idx", "prefix": prefix, "storage_type": storage},
            "fields": copy.deepcopy(fields),
        },
    }
    return parse_config({"mirrors": [raw]}).mirrors[0].index


def with_field(fields: list[dict[str, Any]], name: str, **attrs: Any) -> list[dict[str, Any]]:
    changed = copy.deepcopy(fields)
    for field in changed:
        if field.get("as_name", field["name"]) == name:
            field.setdefault("attrs", {}).update(attrs)
    return changed


def test_identical_json_index() -> None:
    assert index_differences(schema("json", JSON_FIELDS), JSON_INFO) == []


def test_identical_hash_index() -> None:
    assert index_differences(schema("hash", HASH_FIELDS), HASH_INFO) == []


def as_bytes(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, list):
        return [as_bytes(v) for v in value]
    if isinstance(value, dict):
        return {as_bytes(k): as_bytes(v) for k, v in value.items()}
    return value


def flat(mapping: dict[str, Any]) -> list[Any]:
    return [item for pair in mapping.items() for item in pair]


def resp3(attributes: list[Any]) -> dict[str, Any]:
    """The RESP3 shape of one attribute: a map, flags in a list."""
    result: dict[str, Any] = {"flags": []}
    position = 0
    while position < len(attributes):
        item = attributes[position]
        if item in {"SORTABLE", "NOSTEM", "CASESENSITIVE", "UNF"}:
            result["flags"].append(item)
            position += 1
        else:
            result[item] = attributes[position + 1]
            position += 2
    return result


@pytest.mark.parametrize("info", [JSON_INFO, HASH_INFO])
def test_other_reply_shapes_compare_the_same(info: dict[str, Any]) -> None:
    fields = JSON_FIELDS if info is JSON_INFO else HASH_FIELDS
    wanted = schema("json" if info is JSON_INFO else "hash", fields)
    # RESP2 from redis.asyncio: the definition as a flat list, strings as bytes, numbers as text
    resp2 = {
        "index_definition": as_bytes(flat({**info["index_definition"], "default_score": "1"})),
        "attributes": [
            [as_bytes(str(i)) if isinstance(i, int | float) else as_bytes(i) for i in a]
            for a in info["attributes"]
        ],
    }
    assert index_differences(wanted, resp2) == []
    # RESP3: maps all the way down, flags in a list; bytes unless decode_responses
    maps = {
        "index_definition": info["index_definition"],
        "attributes": [resp3(a) for a in info["attributes"]],
    }
    assert index_differences(wanted, maps) == []
    assert index_differences(wanted, as_bytes(maps)) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (dict(name="e", dims=8), "field 'e': dim is 8 in the config, 4 in Redis"),
        (
            dict(name="e", distance_metric="l2"),
            "field 'e': distance_metric is 'L2' in the config, 'COSINE' in Redis",
        ),
        (dict(name="e", m=16), "field 'e': M is 16 in the config, 8 in Redis"),
        (
            dict(name="e", ef_construction=200),
            "field 'e': ef_construction is 200 in the config, 100 in Redis",
        ),
        (
            dict(name="e", datatype="float64"),
            "field 'e': data_type is 'FLOAT64' in the config, 'FLOAT32' in Redis",
        ),
        (dict(name="labels", separator=","), "field 'labels': SEPARATOR is ',' in the config, '|' in Redis"),
        (dict(name="c", weight=2), "field 'c': WEIGHT is 2.0 in the config, 1.0 in Redis"),
        (dict(name="c", no_stem=True), "field 'c': NOSTEM is on in the config, off in Redis"),
        (dict(name="n", sortable=True), "field 'n': SORTABLE is on in the config, off in Redis"),
        (
            dict(name="labels", case_sensitive=True),
            "field 'labels': CASESENSITIVE is on in the config, off in Redis",
        ),
    ],
)
def test_changed_field_properties(change: dict[str, Any], expected: str) -> None:
    name = change.pop("name")
    assert index_differences(schema("json", with_field(JSON_FIELDS, name, **change)), JSON_INFO) == [expected]


def test_changed_algorithm() -> None:
    fields = with_field(JSON_FIELDS, "e")
    fields[-1]["attrs"] = {"algorithm": "flat", "dims": 4, "distance_metric": "cosine"}
    differences = index_differences(schema("json", fields), JSON_INFO)
    assert "field 'e': algorithm is 'FLAT' in the config, 'HNSW' in Redis" in differences


def test_flags_turned_off_in_the_config() -> None:
    fields = with_field(HASH_FIELDS, "t", sortable=False)
    fields = with_field(fields, "g", case_sensitive=False)
    assert index_differences(schema("hash", fields), HASH_INFO) == [
        "field 'g': CASESENSITIVE is off in the config, on in Redis",
        "field 't': SORTABLE is off in the config, on in Redis",
    ]


def test_changed_field_type() -> None:
    fields = copy.deepcopy(HASH_FIELDS)
    fields[3] = {"name": "loc", "type": "text"}
    differences = index_differences(schema("hash", fields), HASH_INFO)
    assert differences[0] == "field 'loc': type is 'TEXT' in the config, 'GEO' in Redis"


def test_changed_json_path() -> None:
    fields = copy.deepcopy(JSON_FIELDS)
    fields[0] = {"name": "c", "path": "$.body.c", "type": "text"}
    assert index_differences(schema("json", fields), JSON_INFO) == [
        "field 'c': identifier is '$.body.c' in the config, '$.c' in Redis"
    ]


def test_changed_prefix() -> None:
    assert index_differences(schema("json", JSON_FIELDS, prefix="docs"), JSON_INFO) == [
        "prefix: config ['docs'], Redis ['doc']"
    ]


def test_changed_storage() -> None:
    fields = [
        {k: v for k, v in f.items() if k != "as_name"} | {"name": f.get("as_name", f["name"])}
        for f in JSON_FIELDS
    ]
    differences = index_differences(schema("hash", fields, prefix="doc"), JSON_INFO)
    assert differences[0] == "storage_type: config HASH, Redis JSON"
    assert "field 'c': identifier is 'c' in the config, '$.c' in Redis" in differences


def test_missing_and_extra_fields() -> None:
    fields = [f for f in JSON_FIELDS if f["name"] != "n"] + [{"name": "extra", "type": "numeric"}]
    assert index_differences(schema("json", fields), JSON_INFO) == [
        "field 'extra': in the config, not in the index",
        "field 'n': in the index, not in the config",
    ]


def test_a_field_named_like_a_flag_is_still_a_value() -> None:
    info = copy.deepcopy(HASH_INFO)
    info["attributes"][3] = ["identifier", "SORTABLE", "attribute", "SORTABLE", "type", "GEO"]
    fields = copy.deepcopy(HASH_FIELDS)
    fields[3] = {"name": "SORTABLE", "type": "geo"}
    assert index_differences(schema("hash", fields), info) == []
