"""Long texts split into chunks the model reads whole (a mirror's `embed.chunks`).

The splitting is semantic-text-splitter's (Rust): the largest pieces that fit `max_tokens` of the
model's own tokenizer, trying paragraphs, then lines, sentences, words and characters, with
`overlap_tokens` of each chunk repeated at the start of the next. Tokens are counted as the model
reads them, special tokens included, so a chunk of `max_tokens` is never truncated by the model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from semantic_text_splitter import TextSplitter
from tokenizers import Tokenizer

from vecmirror.config import ChunksConfig
from vecmirror.errors import StartupError

Split = Callable[[str], list[str]]


def chunker(embedder: Any, chunks: ChunksConfig, mirror: str) -> Split:
    """How the mirror's texts are split: by the model's tokenizer where the embedder has one (a
    test's fake model has none: its texts are split by characters)."""
    tokenizer: Tokenizer | None = getattr(embedder, "tokenizer", None)
    if tokenizer is None:
        splitter = TextSplitter(capacity=chunks.max_tokens, overlap=chunks.overlap_tokens)
        return _non_empty(splitter)
    window = int(getattr(embedder, "max_tokens", chunks.max_tokens))
    if chunks.max_tokens > window:
        raise StartupError(
            f"mirror {mirror!r}: embed.chunks.max_tokens is {chunks.max_tokens}, but the model reads "
            f"at most {window} tokens: a longer chunk would be cut"
        )
    counting = Tokenizer.from_str(tokenizer.to_str())  # a copy: the model's own truncates and pads
    counting.no_truncation()
    counting.no_padding()
    # The splitter counts a chunk's own tokens; the model reads them between its special ones.
    own = chunks.max_tokens - len(counting.encode("").ids)
    splitter = TextSplitter.from_huggingface_tokenizer(
        counting, capacity=own, overlap=min(chunks.overlap_tokens, own - 1)
    )
    return _bounded(_non_empty(splitter), own * CHARACTERS_PER_TOKEN)


# A word the tokenizer does not know is one [UNK] token however long it is (20,000 characters with
# no space, say): a chunk of few tokens but many characters is split again by characters, or its
# vector would say nothing of it. Generous: a token of English averages about four characters.
CHARACTERS_PER_TOKEN = 12


def _bounded(split: Split, characters: int) -> Split:
    by_characters = TextSplitter(capacity=characters)

    def bounded(text: str) -> list[str]:
        pieces: list[str] = []
        for piece in split(text):
            pieces += list(by_characters.chunks(piece)) if len(piece) > characters else [piece]
        return pieces

    return bounded


def _non_empty(splitter: TextSplitter) -> Split:
    """A text of only whitespace still has one chunk (the splitter would give none)."""

    def split(text: str) -> list[str]:
        return list(splitter.chunks(text)) or [text]

    return split
