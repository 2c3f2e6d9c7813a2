"""HashEncoder and JsonEncoder: documents as Redis stores them."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from vecmirror.config import META_HASH_FIELD, META_KEY_FIELD, META_VERSION_FIELD, MirrorConfig, parse_config
from vecmirror.pipeline.documents import Document, DocumentBuilder
from vecmirror.pipeline.embedder import FakeEmbedder
from vecmirror.sink.encode import HashEncoder, JsonEncoder, tag_separator, vector_bytes


def mirror(storage: str, fields: list[dict[str, Any]], datatype: str = "float32") -> MirrorConfig:
    vector = {"name": "v", "type": "vector", "attrs": {"algorithm": "flat", "dims": 4, "datatype": datatype}}
    raw = {
        "name": "items",
        "table": "items",
        "vector_column": "vec",
        "index": {
            "index": {"name": "items_idx", "prefix": "item", "storage_type": storage},
            "fields": [*fields, vector],
        },
    }
    return parse_config({"mirrors": [raw]}).mirrors[0]


HASH_FIELDS: list[dict[str, Any]] = [
    {"name": "title", "type": "text"},
    {"name": "genre", "type": "tag"},
    {"name": "labels", "type": "tag", "attrs": {"separator": "|"}},
    {"name": "price", "type": "numeric"},
]


def test_hash_mapping() -> None:
    config = mirror("hash", HASH_FIELDS)
    row = {
        "title": "Lamp",
        "genre": ["a", "b"],
        "labels": ["red", "urgent"],
        "price": 12,
        "vec": [1, 2, 3, 4],
    }
    document = DocumentBuilder(config).build(("acme", "7"), row)
    document.text_hash = "abc"
    mapping = HashEncoder(config).mapping(document)
    assert mapping[META_KEY_FIELD] == '["acme", "7"]'
    assert json.loads(str(mapping[META_KEY_FIELD])) == ["acme", "7"]
    assert mapping[META_HASH_FIELD] == "abc"
    assert mapping["title"] == "Lamp"
    assert mapping["genre"] == "a,b"
    assert mapping["labels"] == "red|urgent"
    assert mapping["price"] == 12
    raw = mapping["v"]
    assert isinstance(raw, bytes) and len(raw) == 16
    assert np.frombuffer(raw, dtype=np.float32).tolist() == [1.0, 2.0, 3.0, 4.0]
    assert HashEncoder.removed(document) == []


def test_hash_mapping_without_hash_or_vector_and_with_nulls() -> None:
    config = mirror("hash", HASH_FIELDS)
    document = Document(("1",), {"title": "x", "genre": None, "labels": None, "price": None})
    mapping = HashEncoder(config).mapping(document)
    # the stored vector and hash stay as they are; the version is always written
    assert set(mapping) == {META_KEY_FIELD, META_VERSION_FIELD, "title"}
    assert HashEncoder.removed(document) == ["genre", "labels", "price"]


def test_hash_vector_from_the_model() -> None:
    config = mirror("hash", HASH_FIELDS)
    vector = FakeEmbedder(dimension=4).embed(["some text"])[0]
    document = Document(("1",), {"title": "t"}, vector=DocumentBuilder(config).vector(("1",), vector, "v"))
    raw = HashEncoder(config).mapping(document)["v"]
    assert isinstance(raw, bytes)
    assert np.array_equal(np.frombuffer(raw, dtype=np.float32), vector)


def test_hash_vector_in_other_datatypes() -> None:
    for datatype in ("float64", "float16", "bfloat16"):
        config = mirror("hash", HASH_FIELDS, datatype)
        document = DocumentBuilder(config).build(("1",), {"vec": [0.5, -1, 2, 4]})
        raw = HashEncoder(config).mapping(document)["v"]
        itemsize = 8 if datatype == "float64" else 2
        assert isinstance(raw, bytes) and len(raw) == 4 * itemsize
        assert vector_bytes(np.asarray([0.5, -1.0, 2.0, 4.0]), datatype) == raw


ROUND_TRIP_MIRROR = mirror("hash", HASH_FIELDS)


@given(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=4, max_size=4))
def test_hash_vector_bytes_round_trip(values: list[float]) -> None:
    config = ROUND_TRIP_MIRROR
    document = DocumentBuilder(config).build(("1",), {"vec": values})
    raw = HashEncoder(config).mapping(document)["v"]
    assert isinstance(raw, bytes)
    assert np.frombuffer(raw, dtype=np.float32).tolist() == values
    # and a bytea column holding those bytes gives the same vector back
    again = DocumentBuilder(config).build(("1",), {"vec": raw})
    assert again.vector is not None and again.vector.tolist() == values


JSON_FIELDS: list[dict[str, Any]] = [
    {"name": "title", "type": "text"},
    {"name": "$.meta.labels", "as_name": "labels", "type": "tag", "attrs": {"separator": "|"}},
    {"name": "tags", "path": "$.meta.tags[*]", "type": "tag"},
    {"name": "price", "path": "$.shop.price", "type": "numeric"},
    {"name": "scores", "path": "$.scores[*]", "type": "numeric"},
]


def test_json_document_nested_paths_and_arrays() -> None:
    config = mirror("json", JSON_FIELDS)
    row = {
        "title": "Lamp",
        "labels": ["red", "urgent"],
        "tags": ["a", "b"],
        "price": "19.5",
        "scores": [1, 2.5],
        "vec": [1, 0, 0, 0],
    }
    document = DocumentBuilder(config).build(("acme", "1"), row)
    document.version = 42
    body = JsonEncoder(config).document(document, with_nulls=False)
    assert body == {
        META_KEY_FIELD: ["acme", "1"],
        META_VERSION_FIELD: 42,
        "title": "Lamp",
        "meta": {"labels": "red|urgent", "tags": ["a", "b"]},
        "shop": {"price": 19.5},
        "scores": [1, 2.5],
        "v": [1.0, 0.0, 0.0, 0.0],
    }
    assert json.loads(json.dumps(body)) == body


def test_json_scalar_on_an_array_path_becomes_a_one_element_array() -> None:
    config = mirror("json", JSON_FIELDS)
    document = Document(("1",), {"tags": "solo", "scores": 3, "labels": "x|y"})
    body = JsonEncoder(config).document(document, with_nulls=False)
    assert body["meta"] == {"labels": "x|y", "tags": ["solo"]}
    assert body["scores"] == [3]


def test_json_nulls_only_for_merge() -> None:
    config = mirror("json", JSON_FIELDS)
    document = Document(("1",), {"title": "t", "labels": None, "tags": None, "price": None, "scores": None})
    document.text_hash = "h"
    assert JsonEncoder(config).document(document, with_nulls=False) == {
        META_KEY_FIELD: ["1"],
        META_VERSION_FIELD: 0,
        META_HASH_FIELD: "h",
        "title": "t",
    }
    merged = JsonEncoder(config).document(document, with_nulls=True)
    assert merged == {
        META_KEY_FIELD: ["1"],
        META_VERSION_FIELD: 0,
        META_HASH_FIELD: "h",
        "title": "t",
        "meta": {"labels": None, "tags": None},
        "shop": {"price": None},
        "scores": None,
    }
    assert "v" not in merged  # a merge keeps the stored vector


def test_json_vector_from_bytes_is_a_list_of_floats() -> None:
    config = mirror("json", JSON_FIELDS, "bfloat16")
    import ml_dtypes

    raw = np.asarray([0.5, 1, 2, 3]).astype(ml_dtypes.bfloat16).tobytes()
    document = DocumentBuilder(config).build(("1",), {"vec": raw})
    body = JsonEncoder(config).document(document, with_nulls=False)
    assert body["v"] == [0.5, 1.0, 2.0, 3.0]
    json.dumps(body)


def test_tag_separator_default() -> None:
    config = mirror("hash", HASH_FIELDS)
    assert tag_separator(config.index.fields["genre"]) == ","
    assert tag_separator(config.index.fields["labels"]) == "|"
