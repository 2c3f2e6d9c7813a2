"""The mirrors file's `documents:` and `related:` (README, "Documents from several tables")."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from vecmirror.config import parse_config
from vecmirror.errors import ConfigError

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> dict[str, Any]:
    """The YAML of the README's section, verbatim: PyYAML reads its bare `on:` as `True`."""
    section = README.read_text().split("### Documents from several tables", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert block is not None
    raw: dict[str, Any] = yaml.safe_load(block[1])
    return raw


def test_the_readme_example_loads_with_its_bare_on_keys() -> None:
    (mirror,) = parse_config(readme_example()).mirrors
    assert mirror.documents == "public.product_docs"
    categories, product_tags, tags = mirror.related
    assert categories.on == {"category_id": "id"}
    assert product_tags.on == {"id": "product_id"}
    assert tags.keys is not None and "ANY($1)" in tags.keys
    assert len({r.relation_id for r in mirror.related}) == 3


def problems_of(change: Any) -> list[str]:
    raw = readme_example()
    change(raw["mirrors"][0])
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    return caught.value.problems


def test_a_relation_names_one_way_to_its_documents() -> None:
    def both(mirror: dict[str, Any]) -> None:
        mirror["related"][0]["keys"] = "SELECT 1 WHERE 1 = ANY($1)"

    def neither(mirror: dict[str, Any]) -> None:
        mirror["related"][0].pop(True)

    expected = "set one of `on` (a column pair) or `keys` (a query), not both"
    assert any(expected in p and "related.0" in p for p in problems_of(both))
    assert any(expected in p and "related.0" in p for p in problems_of(neither))


def test_keys_must_read_the_changed_keys_and_related_needs_documents() -> None:
    def no_parameter(mirror: dict[str, Any]) -> None:
        mirror["related"][2]["keys"] = "SELECT product_id FROM product_tags WHERE tag_id = $10"

    def no_documents(mirror: dict[str, Any]) -> None:
        mirror.pop("documents")

    assert any("related.2.keys" in p and "$1" in p for p in problems_of(no_parameter))
    assert any(
        "related: its tables' columns can only reach documents through a view" in p
        for p in problems_of(no_documents)
    )


def test_an_empty_on_is_refused() -> None:
    def empty(mirror: dict[str, Any]) -> None:
        mirror["related"][0][True] = {}

    assert any("related.0.on" in p for p in problems_of(empty))
