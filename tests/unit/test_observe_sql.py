"""The read-only SQL of /metrics and `vecmirror status` (observe.sql): named blocks, each with its why,
and none that writes."""

from __future__ import annotations

import re

import pytest

from vecmirror.source.observe import OBSERVE_QUERIES


def test_the_blocks_the_code_uses_are_there() -> None:
    assert set(OBSERVE_QUERIES) == {"queue_state"}


@pytest.mark.parametrize("name", sorted(OBSERVE_QUERIES))
def test_every_block_says_why_and_only_reads(name: str) -> None:
    first, _, sql = OBSERVE_QUERIES[name].partition("\n")
    assert first.startswith("-- ") and len(first) > 20, f"{name}: first line must say why"
    code = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    assert code.lstrip().upper().startswith("SELECT")
    assert not re.search(r"\b(INSERT|UPDATE|DELETE|TRUNCATE|ALTER|DROP|CREATE)\b", code, re.IGNORECASE)
