"""Named SQL blocks: split by `-- name:`, no duplicates, each with its one-line why."""

from __future__ import annotations

import re
from importlib.resources import files

import pytest

from vecmirror.source.sql import QUERIES, parse_named_sql

QUERY_FILES = [files("vecmirror.source.sql").joinpath(f).read_text() for f in ("queries.sql", "mirrors.sql")]


def test_blocks_are_split_by_name() -> None:
    text = (
        "-- preamble, ignored\nSELECT 0;\n\n"
        "-- name: first\n-- Why.\nSELECT 1;\n\n"
        "-- name: second\nSELECT 2;\n"
    )
    assert parse_named_sql(text) == {"first": "-- Why.\nSELECT 1;", "second": "SELECT 2;"}


def test_no_blocks() -> None:
    assert parse_named_sql("-- only a preamble\nSELECT 1;\n") == {}
    assert parse_named_sql("") == {}


def test_a_name_must_be_a_whole_line() -> None:
    text = "-- name: real\nSELECT '-- name: inside';\n  -- name: indented\nSELECT 1;\n"
    assert list(parse_named_sql(text)) == ["real"]


def test_duplicate_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="query 'twice' is defined twice"):
        parse_named_sql("-- name: twice\nSELECT 1;\n-- name: once\nSELECT 2;\n-- name: twice\nSELECT 3;\n")


def test_the_bundled_file_parses_into_queries() -> None:
    parsed = [parse_named_sql(text) for text in QUERY_FILES]
    assert {name: sql for part in parsed for name, sql in part.items()} == QUERIES
    names = [n for text in QUERY_FILES for n in re.findall(r"^-- name: (\w+)\s*$", text, re.MULTILINE)]
    assert len(names) == len(set(names)) == len(QUERIES)  # no name in two files either
    for needed in ("claim_changes", "delete_changes", "save_backfill", "record_mirror_error"):
        assert needed in QUERIES


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_every_block_starts_with_its_why(name: str) -> None:
    body = QUERIES[name]
    first, _, rest = body.partition("\n")
    assert first.startswith("-- ") and len(first) > len("-- ") + 10, f"{name}: first line must say why"
    sql = "\n".join(line for line in rest.splitlines() if not line.lstrip().startswith("--")).strip()
    assert sql, f"{name}: the block has no SQL"
