"""Every query mistake is refused before Redis is called, with a message saying what to fix.

The Redis client points at a port where nothing listens: a call that reached Redis would raise a
connection error instead of the QueryError these tests expect.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as redis

from vecmirror.config import parse_config
from vecmirror.errors import QueryError
from vecmirror.pipeline.embedder import FakeEmbedder
from vecmirror.query import MirrorSearch, num, tag, text


def mirror(name: str, algorithm: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "table": name,
        "index": {
            "index": {"name": f"{name}_idx", "prefix": name},
            "fields": [
                {"name": "title", "type": "text"},
                {"name": "genre", "type": "tag"},
                {"name": "price", "type": "numeric"},
                {"name": "vec", "type": "vector", "attrs": {"algorithm": algorithm, "dims": 4}},
            ],
        },
        **extra,
    }


CONFIG = parse_config(
    {
        "mirrors": [
            mirror("flat", "flat", vector_column="vec"),
            mirror("hnsw", "hnsw", embed={"field": "vec", "template": "{title}", "model": "fake"}),
        ]
    }
)


@pytest.fixture
async def search() -> AsyncIterator[MirrorSearch]:
    client = redis.Redis(port=1, socket_connect_timeout=0.2)
    try:
        yield MirrorSearch(CONFIG, client, lambda _: FakeEmbedder(4))
    finally:
        await client.aclose()


VECTOR = [1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.knn("nope", vector=VECTOR), r"unknown mirror 'nope' \(configured: flat, hnsw\)"),
        (lambda s: s.knn("flat", vector=[1.0, 2.0]), r"has shape \(2,\), the field 'vec' expects 4 numbers"),
        (lambda s: s.knn("flat", vector=["a", "b", "c", "d"]), "must be a list of numbers"),
        (lambda s: s.knn("flat", vector=[1.0, float("nan"), 0.0, 0.0]), "contains NaN or infinite"),
        (lambda s: s.knn("flat", text="cats"), "has no embed model: query it with a vector"),
        (lambda s: s.knn("hnsw"), "give either a text or a vector, not both or neither"),
        (lambda s: s.knn("hnsw", text="a", vector=VECTOR), "give either a text or a vector"),
        (lambda s: s.knn("flat", vector=VECTOR, ef_runtime=50), "ef_runtime only applies to HNSW fields"),
        (lambda s: s.knn("hnsw", vector=VECTOR, ef_runtime=0), r"ef_runtime must be a whole number ≥ 1"),
        (lambda s: s.knn("flat", vector=VECTOR, k=0), "k/limit must be a whole number of at least 1"),
        (lambda s: s.knn("flat", vector=VECTOR, offset=-1), "offset must be a whole number of at least 0"),
        (lambda s: s.knn("flat", vector=VECTOR, return_fields=["colour"]), "unknown field 'colour'; known"),
        (lambda s: s.knn("flat", vector=VECTOR, return_fields=["vec"]), "ask for vectors with with_vectors"),
        (lambda s: s.knn("flat", vector=VECTOR, filter=tag("colour").any_of("x")), "unknown field 'colour'"),
        (
            lambda s: s.knn("flat", vector=VECTOR, filter=tag("price").any_of("x")),
            "treats 'price' as TAG, but it is a NUMERIC field",
        ),
        (
            lambda s: s.knn("flat", vector=VECTOR, filter=num("genre").gt(1)),
            "treats 'genre' as NUMERIC, but it is a TAG field",
        ),
        (
            lambda s: s.knn("flat", vector=VECTOR, filter=text("genre").matches("x")),
            "treats 'genre' as TEXT, but it is a TAG field",
        ),
        (lambda s: s.knn("flat", vector=VECTOR, filter="@genre:{pets"), r"malformed filter .*unclosed"),
        (lambda s: s.knn("flat", vector=VECTOR, filter="@price:[1 2))"), r"malformed filter .*unbalanced"),
        (lambda s: s.knn("flat", vector=VECTOR, filter="@colour:{x}"), "unknown field 'colour'"),
        (lambda s: s.range("flat", vector=VECTOR, radius=-1), "radius must be a number ≥ 0"),
        (lambda s: s.range("flat", vector=VECTOR, radius=0.5, epsilon=0.1), "epsilon only applies to HNSW"),
        (lambda s: s.range("hnsw", vector=VECTOR, radius=0.5, epsilon=0), "epsilon must be a number > 0"),
        (
            lambda s: s.hybrid("flat", text="x", vector=VECTOR, text_weight=2),
            "text_weight must be between 0 and 1",
        ),
        (
            lambda s: s.hybrid("flat", text="x", vector=VECTOR, text_field="genre"),
            "'genre' is not a TEXT field",
        ),
    ],
)
async def test_refused_before_redis(search: MirrorSearch, call: Any, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        await call(search)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: tag("g").any_of(), "give at least one tag value"),
        (lambda: tag("g").any_of(" "), "tag values must be non-empty strings"),
        (lambda: num("p").between(5, 1), r"empty range, 5 > 1"),
        (lambda: num("p").between(1, 5, inclusive="both-ish"), "inclusive must be one of"),
        (lambda: num("p").gt(float("nan")), "nan is not a number"),
        (lambda: text("t").matches("?!"), "has no words to match"),
        (lambda: text("t").prefix("a"), "a prefix must be one word of at least 2 characters"),
        (lambda: text("t").prefix("two words"), "a prefix must be one word"),
    ],
)
def test_filter_builder_refuses_malformed_conditions(build: Any, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        build()


def test_filter_builder_output() -> None:
    where = (tag("genre").any_of("sci-fi", "a b") | ~num("price").between(1, 5, inclusive="right")) & text(
        "title"
    ).prefix("ca")
    assert str(where) == r"((@genre:{sci\-fi|a\ b} | (-@price:[(1 5])) @title:ca*)"
