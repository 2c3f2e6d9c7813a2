"""Sorting texts by length and splitting them into model calls must not change any row's vector,
and a text the model fails on must fail alone."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vecmirror.pipeline.batch_embed import BatchEmbedder
from vecmirror.pipeline.embedder import FakeEmbedder, Vectors


class _Pings:
    def __init__(self) -> None:
        self.count = 0

    async def __call__(self) -> None:
        self.count += 1


async def test_sorted_chunked_embedding_keeps_each_rows_vector() -> None:
    fake = FakeEmbedder(8)
    pings = _Pings()
    texts = ["a much longer text than the others", "short", "mid length", "x", "another long one here"]
    vectors = await BatchEmbedder(fake, 2).embed(texts, pings)
    for text, vector in zip(texts, vectors, strict=True):
        np.testing.assert_array_equal(vector, fake.embed([text])[0])
    assert fake.calls == 3 + len(texts)  # three chunks of at most two, then one call per check
    assert pings.count == 3  # the claim is kept alive after every model call


class _FailsOn(FakeEmbedder):
    def __init__(self, poison: str) -> None:
        super().__init__(4)
        self.poison = poison

    def embed(self, texts: Sequence[str]) -> Vectors:
        if self.poison in texts:
            raise RuntimeError("tokenizer exploded")
        return super().embed(texts)


async def test_a_text_the_model_fails_on_fails_alone() -> None:
    model = _FailsOn("bad")
    texts = ["one", "two", "bad", "three", "four", "five"]
    vectors = await BatchEmbedder(model, 8).embed(texts, _Pings())
    failed = [t for t, v in zip(texts, vectors, strict=True) if isinstance(v, Exception)]
    assert failed == ["bad"]
    assert "tokenizer exploded" in str(vectors[2])
    for text, vector in zip(texts, vectors, strict=True):
        if text != "bad":
            np.testing.assert_array_equal(vector, FakeEmbedder(4).embed([text])[0])
