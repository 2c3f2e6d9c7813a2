"""Sorting texts by length and splitting them into model calls must not change any row's vector."""

from __future__ import annotations

from typing import Any

import numpy as np

from vecmirror.pipeline.embedder import FakeEmbedder
from vecmirror.sync import MirrorSync


async def test_sorted_chunked_embedding_keeps_each_rows_vector() -> None:
    fake = FakeEmbedder(8)
    sync: Any = MirrorSync.__new__(MirrorSync)
    sync._embedder, sync._embed_batch_size = fake, 2
    texts = ["a much longer text than the others", "short", "mid length", "x", "another long one here"]
    vectors = await sync._embed_texts(texts)
    for text, vector in zip(texts, vectors, strict=True):
        np.testing.assert_array_equal(vector, fake.embed([text])[0])
    assert fake.calls == 3 + len(texts)  # three chunks of at most two, then one call per check
