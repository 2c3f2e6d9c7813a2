"""DocumentBuilder and check_vector: a row's columns checked and converted into index field values."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import numpy as np
import pytest

from vecmirror.config import (
    BACKENDS,
    BF16_CPU_BACKEND,
    CPU_BACKEND,
    CUDA_BACKEND,
    DEFAULT_MODEL,
    Backend,
    MirrorConfig,
    parse_config,
)
from vecmirror.errors import RowError
from vecmirror.pipeline.documents import DocumentBuilder, check_vector
from vecmirror.pipeline.embedder import FakeEmbedder
from vecmirror.pipeline.template import EXACT_BACKENDS, Template, TemplateValueError, content_hash, render


def mirror(
    storage: str = "hash", *, embed: bool = False, datatype: str = "float32", backend: Backend | None = None
) -> MirrorConfig:
    fields: list[dict[str, Any]] = [
        {"name": "title", "type": "text"},
        {"name": "genre", "type": "tag"},
        {"name": "price", "type": "numeric"},
        {"name": "location", "type": "geo"},
        {"name": "v", "type": "vector", "attrs": {"algorithm": "flat", "dims": 4, "datatype": datatype}},
    ]
    if storage == "json":
        fields += [
            {"name": "labels", "path": "$.labels[*]", "type": "tag"},
            {"name": "scores", "path": "$.scores[*]", "type": "numeric"},
            {"name": "places", "path": "$.places[*]", "type": "geo"},
        ]
    raw: dict[str, Any] = {
        "name": "items",
        "table": "items",
        "index": {
            "index": {"name": "items_idx", "prefix": "item", "storage_type": storage},
            "fields": fields,
        },
    }
    if embed:
        raw["embed"] = {"field": "v", "template": "{title}: {body}", "model": "fake", "backend": backend}
    else:
        raw["vector_column"] = "vec"
    return parse_config({"mirrors": [raw]}).mirrors[0]


ROW: dict[str, Any] = {
    "title": "Lamp",
    "genre": "home",
    "price": 19.5,
    "location": "2.35,48.85",
    "vec": [1.0, 0.0, 0.0, 0.0],
    "body": "a lamp",
}


def build(row: dict[str, Any], config: MirrorConfig | None = None, key: tuple[str, ...] = ("7",)) -> Any:
    return DocumentBuilder(config or mirror()).build(key, row)


def field_value(name: str, value: Any, config: MirrorConfig | None = None) -> Any:
    return build({**ROW, name: value}, config).fields[name]


def row_error(
    row: dict[str, Any], config: MirrorConfig | None = None, key: tuple[str, ...] = ("7",)
) -> RowError:
    with pytest.raises(RowError) as caught:
        build(row, config, key)
    return caught.value


def test_a_plain_row() -> None:
    document = build(ROW)
    assert document.key == ("7",)
    assert document.fields == {"title": "Lamp", "genre": "home", "price": 19.5, "location": "2.35,48.85"}
    assert document.vector is not None and document.vector.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert document.text is None and document.text_hash is None


def test_null_columns_become_none_fields() -> None:
    document = build({**ROW, "genre": None, "price": None, "location": None})
    assert document.fields["genre"] is None and document.fields["price"] is None
    assert document.fields["location"] is None


def test_embedding_mirror_renders_and_hashes_the_template() -> None:
    config = mirror(embed=True)
    document = build(ROW, config)
    assert document.text == "Lamp: a lamp"
    assert document.text_hash == content_hash("fake", "Lamp: a lamp")
    assert document.vector is None  # the model fills it later
    vector = FakeEmbedder(dimension=4).embed([document.text])[0]
    checked = DocumentBuilder(config).vector(document.key, vector, "v")
    assert np.allclose(checked, vector)


def test_the_content_hash_depends_on_the_model_and_the_text() -> None:
    assert content_hash("a", "text") != content_hash("b", "text")
    assert content_hash("a", "text") != content_hash("a", "text!")
    assert content_hash("a", "bc") != content_hash("ab", "c")
    assert render("{a} {b}", {"a": 1, "b": Decimal("2.5")}) == "1 2.5"


def test_the_content_hash_is_what_earlier_releases_stored() -> None:
    # Documents in Redis hold these hashes: a different one would re-embed every row synced again.
    assert content_hash(DEFAULT_MODEL, "Lamp: a lamp") == "6b06e4c14bb3b73784e8aaf9d024db88"
    assert content_hash("fake", "Lamp: a lamp") == "f2ca620a0baa33918961fbc9b4f8d503"


@pytest.mark.parametrize("backend", [None, "torch", "onnx"])
def test_exact_backends_hash_like_the_default(backend: Backend | None) -> None:
    # torch and onnx give the same vectors: switching between them keeps the stored ones.
    assert content_hash(DEFAULT_MODEL, "Lamp: a lamp", backend) == "6b06e4c14bb3b73784e8aaf9d024db88"


def test_an_approximate_backend_changes_the_hash() -> None:
    # onnx-int8's vectors are only close to torch's: a text embedded by another backend is embedded again.
    assert content_hash("a", "text", "onnx-int8") != content_hash("a", "text")
    assert content_hash("a", "text", "onnx-int8") != content_hash("a", "text!", "onnx-int8")
    assert content_hash("a", "text", "onnx-int8") != content_hash("b", "text", "onnx-int8")


def test_every_backend_but_onnx_int8_is_exact_and_so_are_the_device_defaults() -> None:
    # An unset backend hashes as exact because each device's default is.
    assert {CPU_BACKEND, BF16_CPU_BACKEND, CUDA_BACKEND} <= EXACT_BACKENDS
    assert set(BACKENDS) - EXACT_BACKENDS == {"onnx-int8"}


@pytest.mark.parametrize("backend", [None, "torch", "torch-bf16", "onnx", "onnx-int8"])
def test_the_builder_hashes_with_the_mirrors_backend(backend: Backend | None) -> None:
    config = mirror(embed=True, backend=backend)
    assert build(ROW, config).text_hash == content_hash("fake", "Lamp: a lamp", backend)


def test_one_builder_serves_many_rows_and_their_failures() -> None:
    builder = DocumentBuilder(mirror("json", embed=True))
    rows = [
        {**ROW, "labels": ["a"], "scores": [1], "places": []},
        {**ROW, "labels": ["b"], "scores": [1, "x"], "places": []},  # fails: scores
        {**ROW, "title": "Desk", "body": None},  # fails: the template's body
        {**ROW, "title": "Desk", "labels": None, "scores": "2", "places": [[1, 2]]},
    ]
    built: list[Any] = []
    for n, row in enumerate(rows):
        try:
            built.append(builder.build((str(n),), row))
        except RowError as exc:
            built.append((exc.key, exc.field))
    assert built[0].fields["labels"] == ["a"] and built[0].text == "Lamp: a lamp"
    assert built[1:3] == [(["1"], "scores"), (["2"], "body")]
    assert built[3].fields["labels"] is None and built[3].fields["scores"] == 2.0
    assert built[3].fields["places"] == ["1.0,2.0"]
    assert built[3].text == "Desk: a lamp" and built[3].text_hash == content_hash("fake", "Desk: a lamp")


def test_a_template_renders_repeated_columns_and_literal_braces() -> None:
    template = Template("{a} {{literal}} {a}{b}")
    assert [template.render({"a": "x", "b": n}) for n in (1, 2)] == ["x {literal} x1", "x {literal} x2"]
    with pytest.raises(TemplateValueError, match="column 'b' is NULL, the template needs it"):
        template.render({"a": "x", "b": None})


def test_a_null_template_column_names_mirror_key_and_column() -> None:
    error = row_error({**ROW, "body": None}, mirror(embed=True), ("acme", "42"))
    assert (error.mirror, error.key, error.field) == ("items", ["acme", "42"], "body")
    assert "'body' is NULL" in error.problem
    assert str(error).startswith("mirror 'items', row key ['acme', '42'], field 'body': ")


def test_a_missing_template_column_is_an_error_too() -> None:
    row = {k: v for k, v in ROW.items() if k != "body"}
    assert row_error(row, mirror(embed=True)).field == "body"


def test_model_vectors_of_the_wrong_size_are_row_errors() -> None:
    config = mirror(embed=True)
    vector = FakeEmbedder(dimension=5).embed(["x"])[0]
    with pytest.raises(RowError) as caught:
        DocumentBuilder(config).vector(("1",), vector, "v")
    assert caught.value.field == "v"
    assert caught.value.problem == "the vector has 5 values, the index expects dims=4"


# --- TEXT / TAG / NUMERIC / GEO -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Lamp", "Lamp"),
        (42, "42"),
        (Decimal("1.50"), "1.50"),
        (True, "True"),
        ({"a": [1, "é"]}, '{"a": [1, "é"]}'),
        (["x", "y"], '["x", "y"]'),
        (datetime(2024, 1, 2, 3, 4, 5), "2024-01-02 03:04:05"),
    ],
)
def test_text(value: Any, expected: str) -> None:
    assert field_value("title", value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("home", "home"),
        ("a,b", "a,b"),  # a scalar keeps its separators: Redis splits it
        (["a", "b", None], ["a", "b"]),
        (("x",), ["x"]),
        ([], []),
        (True, "true"),
        (False, "false"),
        (3, "3"),
        ([1, True], ["1", "true"]),
    ],
)
def test_tag(value: Any, expected: Any) -> None:
    assert field_value("genre", value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (19.5, 19.5),
        (7, 7),
        (10**20, 10**20),
        ("12.5", 12.5),
        (" 3 ", 3.0),
        ("1e3", 1000.0),
        (Decimal("120.00"), 120.0),
        (True, 1),
        (False, 0),
        (datetime(2024, 1, 1, tzinfo=UTC), 1704067200.0),
        (datetime(2024, 1, 1, 2, tzinfo=timezone(timedelta(hours=2))), 1704067200.0),
        (datetime(2024, 1, 1), 1704067200.0),  # without a time zone: UTC, whatever the machine's
        (date(2024, 1, 1), 1704067200.0),
        (timedelta(minutes=2), 120.0),
    ],
)
def test_numeric(value: Any, expected: Any) -> None:
    converted = field_value("price", value)
    assert converted == expected and type(converted) is type(expected)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("abc", "'abc' is not a number"),
        ("", "'' is not a number"),
        ([1, 2], "is not a number"),
        (float("nan"), "NaN is not a valid NUMERIC value"),
        ("NaN", "NaN is not a valid NUMERIC value"),
        (Decimal("NaN"), "NaN is not a valid NUMERIC value"),
        (float("inf"), "is not a finite number"),
        (Decimal("-Infinity"), "is not a finite number"),
    ],
)
def test_numeric_errors_name_the_field(value: Any, problem: str) -> None:
    error = row_error({**ROW, "price": value}, key=("sku-1",))
    assert (error.mirror, error.key, error.field) == ("items", ["sku-1"], "price")
    assert problem in error.problem


class Point(tuple[float, float]):
    @property
    def x(self) -> float:
        return self[0]

    @property
    def y(self) -> float:
        return self[1]


class XY:
    x = 2.35
    y = 48.85


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2.35,48.85", "2.35,48.85"),
        ([2.35, 48.85], "2.35,48.85"),
        ((Decimal("2.5"), 48), "2.5,48.0"),
        (Point((2.35, 48.85)), "2.35,48.85"),
        (XY(), "2.35,48.85"),
        ("999,999", "999,999"),  # left to Redis, which refuses it and says why
    ],
)
def test_geo(value: Any, expected: str) -> None:
    assert field_value("location", value) == expected


def test_geo_pair_of_text_is_a_row_error() -> None:
    assert row_error({**ROW, "location": ["east", "north"]}).field == "location"


def test_json_array_paths_keep_lists() -> None:
    config = mirror("json")
    row = {**ROW, "labels": ["a", None, "b"], "scores": ["1.5", 2], "places": [[1, 2], "3,4"]}
    document = build(row, config)
    assert document.fields["labels"] == ["a", "b"]
    assert document.fields["scores"] == [1.5, 2]
    assert document.fields["places"] == ["1.0,2.0", "3,4"]
    single = build({**ROW, "labels": "a", "scores": 3, "places": [1, 2]}, config)
    assert (single.fields["labels"], single.fields["scores"], single.fields["places"]) == ("a", 3, "1.0,2.0")


def test_an_array_element_that_is_not_a_number_fails_the_row() -> None:
    error = row_error({**ROW, "labels": [], "scores": [1, "x"], "places": []}, mirror("json"))
    assert error.field == "scores" and "'x' is not a number" in error.problem


# --- vectors ----------------------------------------------------------------------------------------------


def test_check_vector_accepts_lists_arrays_and_decimals() -> None:
    assert check_vector([1, 2, 3, 4], 4, "float32").tolist() == [1.0, 2.0, 3.0, 4.0]
    assert check_vector((1.5, -2, 0, 1e-3), 4, "float32").tolist() == [1.5, -2.0, 0.0, 1e-3]
    assert check_vector([Decimal("0.25"), 1, 2, 3], 4, "float64").tolist() == [0.25, 1.0, 2.0, 3.0]
    array = np.arange(4, dtype=np.float32)
    assert check_vector(array, 4, "float32").tolist() == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("datatype", ["float32", "float64", "float16", "bfloat16", "int8", "uint8"])
def test_check_vector_decodes_bytes_in_the_fields_datatype(datatype: str) -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    if datatype == "bfloat16":
        import ml_dtypes

        raw = np.asarray(values).astype(ml_dtypes.bfloat16).tobytes()
    else:
        raw = np.asarray(values, dtype=datatype).tobytes()
    for value in (raw, bytearray(raw), memoryview(raw)):
        assert check_vector(value, 4, datatype).tolist() == values


def test_float32_bytes_from_a_bytea_column() -> None:
    raw = np.asarray([0.1, 0.2, 0.3, 0.4], dtype=np.float32).tobytes()
    vector = build({**ROW, "vec": raw}).vector
    assert vector is not None
    assert vector.astype(np.float32).tobytes() == raw


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (None, "the vector is NULL"),
        ([1, 2], "the vector has 2 values, the index expects dims=4"),
        ([1, 2, 3, 4, 5], "the vector has 5 values, the index expects dims=4"),
        ([], "the vector has 0 values, the index expects dims=4"),
        ([[1, 2], [3, 4]], "the vector has 4 values, the index expects dims=4"),
        ([1, math.nan, 3, 4], "the vector contains NaN or infinite values"),
        ([1, math.inf, 3, 4], "the vector contains NaN or infinite values"),
        ([Decimal("NaN"), 1, 2, 3], "the vector contains NaN or infinite values"),
        ([1, None, 3, 4], "the vector has NULL elements"),
        (["a", "b", "c", "d"], "must be an array of numbers"),
        ("[1,2,3,4]", "must be an array of numbers, got str"),
        (7, "must be an array of numbers, got int"),
        (np.zeros(3, dtype=np.float32).tobytes(), "the vector has 3 values, the index expects dims=4"),
        (b"\x00" * 15, "not a whole number of float32 values"),
        (np.asarray([1, np.nan, 0, 0], dtype=np.float32).tobytes(), "NaN or infinite"),
        ([1e39, 0, 0, 0], "too large for float32"),
    ],
)
def test_bad_vectors_are_row_errors_naming_the_column(value: Any, problem: str) -> None:
    error = row_error({**ROW, "vec": value})
    assert (error.mirror, error.field) == ("items", "vec")
    assert problem in error.problem


@pytest.mark.parametrize(
    ("value", "datatype"), [([0.5, 1, 2, 3], "int8"), ([300, 0, 0, 0], "uint8"), ([-1, 0, 0, 0], "uint8")]
)
def test_integer_vectors_must_fit(value: list[float], datatype: str) -> None:
    error = row_error({**ROW, "vec": value}, mirror(datatype=datatype))
    assert f"not {datatype} integers" in error.problem


def test_check_vector_raises_value_errors() -> None:
    with pytest.raises(ValueError, match="dims=3"):
        check_vector([1.0], 3, "float32")
