"""Text queries with the mirror's own model, and the fused text+vector mode, end to end."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from helpers import DOCS_MIRROR, DOCS_TABLE, sync_once
from vecmirror.commands import migrate_command
from vecmirror.query import MirrorSearch, tag


@pytest.fixture
async def docs(pg: asyncpg.Connection, write_config: Any, settings_for: Any, embedder_factory: Any) -> Any:
    await pg.execute(DOCS_TABLE)
    path, config = write_config([DOCS_MIRROR])
    settings = settings_for(path)
    await migrate_command(settings, config)
    await pg.execute(
        "INSERT INTO docs VALUES (1, 'Kittens', 'Young cats play with yarn', 'pets'), "
        "(2, 'Barn', 'Cats hunt mice in the barn', 'farm'), (3, 'Puppies', 'Young dogs chew shoes', 'pets'), "
        "(4, 'Rockets', 'Rockets reach orbit', 'space'), (5, 'Mice', 'Pet mice need small cages', 'pets')"
    )
    await sync_once(settings, config, embedder_factory)
    return settings, config


async def test_text_is_embedded_with_the_mirrors_model(
    docs: Any, embedder: Any, embedder_factory: Any
) -> None:
    settings, config = docs
    async with MirrorSearch.open(settings, config, embedder_factory) as search:
        by_text = await search.knn("docs", text="space travel", k=5)
        by_vector = await search.knn("docs", vector=embedder.embed(["space travel"])[0].tolist(), k=5)
    assert [h.id for h in by_text] == [h.id for h in by_vector]
    assert by_text[0].id == "doc:4"
    assert by_text[0].fields["genre"] == ["space"] and by_text[0].score == pytest.approx(
        1 / (1 + by_text[0].distance)
    )


async def test_fused_mode_between_pure_vector_and_pure_text(docs: Any, embedder_factory: Any) -> None:
    settings, config = docs
    async with MirrorSearch.open(settings, config, embedder_factory) as search:
        knn = await search.knn("docs", text="mice", k=5)
        vector_only = await search.hybrid("docs", text="mice", k=5, text_weight=0.0, text_field="content")
        text_only = await search.hybrid("docs", text="mice", k=5, text_weight=1.0, text_field="content")
        filtered = await search.hybrid("docs", text="mice", k=5, filter=tag("genre").any_of("pets"))
    assert [h.id for h in vector_only] == [h.id for h in knn]
    assert [h.distance for h in vector_only] == pytest.approx([h.distance for h in knn], abs=1e-5)
    assert {h.id for h in text_only[:2]} == {"doc:2", "doc:5"}  # the two that say "mice"
    assert text_only[0].score > text_only[2].score
    assert {h.id for h in filtered} == {"doc:1", "doc:3", "doc:5"}
