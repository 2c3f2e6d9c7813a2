"""Renders a mirror's text template over a row's columns."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from vecmirror.config import template_columns


class TemplateValueError(ValueError):
    def __init__(self, column: str, problem: str) -> None:
        self.column = column
        super().__init__(problem)


def render(template: str, row: Mapping[str, Any]) -> str:
    """`str.format` over the row; a NULL column is an error, not the text "None"."""
    for column in template_columns(template):
        if row.get(column) is None:
            raise TemplateValueError(column, f"column {column!r} is NULL, the template needs it")
    return template.format(**row)


def content_hash(model: str, text: str) -> str:
    """Identifies what the vector was computed from: the same text under another model differs."""
    digest = hashlib.sha256()
    digest.update(model.encode())
    digest.update(b"\0")
    digest.update(text.encode())
    return digest.hexdigest()[:32]
