"""Row keys → Redis keys, and the SCAN pattern of a mirror's keys."""

from __future__ import annotations

import fnmatch
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vecmirror.config import MirrorConfig, parse_config
from vecmirror.sink.keys import document_key, key_pattern


def mirror(prefix: Any = "doc", key_separator: str | None = None) -> MirrorConfig:
    index: dict[str, Any] = {"name": "idx", "prefix": prefix, "storage_type": "hash"}
    if key_separator is not None:
        index["key_separator"] = key_separator
    raw = {
        "name": "docs",
        "table": "docs",
        "index": {"index": index, "fields": [{"name": "t", "type": "text"}]},
    }
    return parse_config({"mirrors": [raw]}).mirrors[0]


def test_single_key() -> None:
    assert document_key(mirror(), ["1"]) == "doc:1"
    assert document_key(mirror(), ["b:2"]) == "doc:b:2"  # a single key is used as it is
    assert document_key(mirror(), ["a-1"]) == "doc:a-1"


def test_composite_key() -> None:
    assert document_key(mirror(), ["acme", "42"]) == "doc:acme:42"
    assert document_key(mirror(), ("acme", "42", "x")) == "doc:acme:42:x"


def test_composite_key_parts_cannot_collide() -> None:
    first = document_key(mirror(), ["a:b", "c"])
    second = document_key(mirror(), ["a", "b:c"])
    assert first != second
    assert first == "doc:a%3Ab:c"
    assert document_key(mirror(), ["a%3Ab", "c"]) == "doc:a%253Ab:c"


@given(
    st.tuples(st.text(max_size=5), st.text(max_size=5)), st.tuples(st.text(max_size=5), st.text(max_size=5))
)
def test_composite_keys_are_one_to_one(a: tuple[str, str], b: tuple[str, str]) -> None:
    assert (document_key(KEYS_MIRROR, a) == document_key(KEYS_MIRROR, b)) == (a == b)


KEYS_MIRROR = mirror()


def test_custom_key_separator() -> None:
    config = mirror("doc", "/")
    assert document_key(config, ["1"]) == "doc/1"
    assert document_key(config, ["acme", "42"]) == "doc/acme:42"  # parts are always joined with ':'
    assert key_pattern(config) == "doc/*"


@pytest.mark.parametrize(("prefix", "separator"), [("doc:", None), ("doc::", None), ("doc/", "/")])
def test_a_prefix_ending_in_the_separator_is_not_doubled(prefix: str, separator: str | None) -> None:
    config = mirror(prefix, separator)
    sep = separator or ":"
    assert document_key(config, ["1"]) == f"doc{sep}1"
    assert key_pattern(config) == f"doc{sep}*"


def test_a_list_of_prefixes_uses_the_first() -> None:
    assert document_key(mirror(["doc", "old"]), ["1"]) == "doc:1"


def test_key_pattern() -> None:
    assert key_pattern(mirror()) == "doc:*"


@pytest.mark.parametrize(
    ("prefix", "pattern"),
    [
        ("d*c", r"d\*c:*"),
        ("d?c", r"d\?c:*"),
        ("d[a]c", r"d\[a\]c:*"),
        ("d\\c", r"d\\c:*"),
    ],
)
def test_key_pattern_escapes_glob_characters(prefix: str, pattern: str) -> None:
    config = mirror(prefix)
    assert key_pattern(config) == pattern
    own = document_key(config, ["1"])
    assert redis_glob_match(pattern, own)
    assert not redis_glob_match(pattern, "dXc:1")


def redis_glob_match(pattern: str, key: str) -> bool:
    """Redis glob semantics for the characters used here: backslash escapes the next one."""
    translated = "".join(f"[{c}]" if escaped else c for c, escaped in _glob_tokens(pattern))
    return fnmatch.fnmatchcase(key, translated)


def _glob_tokens(pattern: str) -> list[tuple[str, bool]]:
    tokens: list[tuple[str, bool]] = []
    chars = iter(pattern)
    for char in chars:
        tokens.append((next(chars), True) if char == "\\" else (char, False))
    return tokens
