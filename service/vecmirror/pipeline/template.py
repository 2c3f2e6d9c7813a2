"""Renders a mirror's text template over a row's columns, and hashes what a vector is computed from."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from vecmirror.config import Backend, template_columns

# Backends whose vectors are torch's (bench/onnx_accuracy.py: onnx cosine 1.00000, recall@10 1.000;
# bench/embedding_speed.py: torch-bf16 mean cosine 0.99996 or more): a text embedded by one of them
# needs no new vector under another. Any other backend, present or future, changes the vectors, so
# the content hash names it. An unset backend is the device's default, torch, torch-bf16 or onnx,
# which differs between nodes: a rolling update over unlike CPUs must not re-embed anything
# (tests/unit/test_documents.py checks that every default is listed here).
EXACT_BACKENDS: frozenset[Backend] = frozenset({"torch", "torch-bf16", "onnx"})


class TemplateValueError(ValueError):
    def __init__(self, column: str, problem: str) -> None:
        self.column = column
        super().__init__(problem)


class Template:
    """A template parsed once, rendered for many rows."""

    def __init__(self, template: str) -> None:
        self._template = template
        self._columns = tuple(template_columns(template))

    def render(self, row: Mapping[str, Any]) -> str:
        """`str.format` over the row; a NULL column is an error, not the text "None"."""
        for column in self._columns:
            if row.get(column) is None:
                raise TemplateValueError(column, f"column {column!r} is NULL, the template needs it")
        return self._template.format_map(row)


def render(template: str, row: Mapping[str, Any]) -> str:
    """`str.format` over the row; a NULL column is an error, not the text "None"."""
    return Template(template).render(row)


class ContentHasher:
    """Identifies what a vector was computed from: the text, the model, and the backend unless it
    is exact. The model's part is hashed once, then copied for each text."""

    def __init__(
        self,
        model: str,
        backend: Backend | None = None,
        *,
        moved_to: str | None = None,
        chunks: str | None = None,
    ) -> None:
        self._source = hashlib.sha256()
        self._source.update(model.encode())
        self._source.update(b"\0")
        if chunks is not None:
            # A whole text split otherwise (embed.chunks) has other vectors: chunk settings count.
            self._source.update(b"\0chunks\0" + chunks.encode() + b"\0")
        if backend is not None and backend not in EXACT_BACKENDS:
            # Postgres text holds no NUL, so no text can spell this part under an exact backend.
            self._source.update(backend.encode())
            self._source.update(b"\0")
        if moved_to is not None:
            # A vector written elsewhere (an online re-embedding, index/rollout.py) is new even for
            # an unchanged text: hashes made before the move never match.
            self._source.update(b"\0at\0" + moved_to.encode() + b"\0")

    def __call__(self, text: str) -> str:
        digest = self._source.copy()
        digest.update(text.encode())
        return digest.hexdigest()[:32]


def content_hash(model: str, text: str, backend: Backend | None = None) -> str:
    """The same text under another model, or on a backend that is not exact, hashes differently."""
    return ContentHasher(model, backend)(text)
