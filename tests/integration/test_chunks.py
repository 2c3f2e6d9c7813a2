"""Long documents (embed.chunks), end to end on real servers with the real model: each row is one
JSON document holding its chunks, KNN ranks rows by their nearest chunk, and an edit re-embeds only
the chunks whose text changed."""

from __future__ import annotations

import json
import random
import threading
from typing import Any

import asyncpg
import numpy as np
import pytest
import redis

from helpers import json_doc, keys, sync_once
from processes import vecmirror
from vecmirror.commands import migrate_command, verify_command
from vecmirror.config import parse_config
from vecmirror.errors import ConfigError
from vecmirror.query.checks import target_of
from vecmirror.query.search import MirrorSearch

ARTICLES = 8
FACTS = [
    "The lighthouse keeper Orlando painted the harbour door teal in the winter of 1987.",
    "A violinist named Petra tuned her instrument with a tuning fork made of meteorite iron.",
    "The bakery on Mill Street sells a cardamom bun shaped like a seahorse every Tuesday.",
    "Engineers cooled the telescope mirror with liquid nitrogen poured from copper kettles.",
    "The chess club elected a parrot called Admiral as its honorary treasurer.",
    "Farmers in the valley grow purple carrots under glass domes heated by volcanic springs.",
    "The museum guard Tomasz collects umbrellas forgotten by visitors since 1962.",
    "A glacier hiker found a bicycle bell frozen in blue ice above the mountain pass.",
]
TOPICS = ["shipping schedules", "railway maintenance", "municipal budgets", "library renovations"]


def filler(rng: random.Random, words: int) -> str:
    """Paragraphs of plausible report prose about a few dull topics: none of the facts."""
    sentences = []
    while sum(len(s.split()) for s in sentences) < words:
        topic = rng.choice(TOPICS)
        number = rng.randint(2, 90)
        sentences.append(
            rng.choice(
                [
                    f"The committee reviewed {topic} for the {number}th time this quarter.",
                    f"Reports on {topic} were filed with {number} pages of appendices.",
                    f"Staff noted that {topic} remained within the planned limits.",
                    f"A survey of {topic} covered {number} districts and their offices.",
                ]
            )
        )
    paragraphs = [" ".join(sentences[i : i + 6]) for i in range(0, len(sentences), 6)]
    return "\n\n".join(paragraphs)


def article(number: int, words: int = 900) -> str:
    rng = random.Random(number)
    return filler(rng, words) + "\n\n" + FACTS[number % len(FACTS)]


MIRROR: dict[str, Any] = {
    "name": "articles",
    "table": "public.articles",
    "embed": {
        "field": "embedding",
        "template": "{title}\n\n{body}",
        "chunks": {"max_tokens": 128, "overlap_tokens": 16},
    },
    "index": {
        "index": {"name": "articles_idx", "prefix": "article", "storage_type": "json"},
        "fields": [
            {"name": "title", "type": "text"},
            {"name": "section", "type": "tag"},
            {
                "name": "embedding",
                "type": "vector",
                "attrs": {"algorithm": "flat", "dims": 384, "distance_metric": "cosine"},
            },
        ],
    },
}


@pytest.fixture
async def articles(pg: asyncpg.Connection, write_config: Any, settings_for: Any) -> Any:
    await pg.execute(
        "CREATE TABLE articles "
        "(id integer PRIMARY KEY, title text NOT NULL, body text NOT NULL, section text)"
    )
    await pg.executemany(
        "INSERT INTO articles VALUES ($1, $2, $3, $4)",
        [(n, f"Report {n}", article(n), "even" if n % 2 == 0 else "odd") for n in range(ARTICLES)],
    )
    path, config = write_config([MIRROR])
    settings = settings_for(path)
    await migrate_command(settings, config)
    return settings, config


def chunks_of(client: redis.Redis, number: int) -> list[dict[str, Any]]:
    stored: list[dict[str, Any]] = json_doc(client, f"article:{number}")["_vm_chunks"]
    return stored


async def nearest(settings: Any, config: Any, text: str, **options: Any) -> Any:
    async with MirrorSearch.open(settings, config) as search:
        return await search.knn("articles", text=text, k=3, **options)


async def test_a_fact_in_the_last_paragraph_finds_its_article(
    redis_client: redis.Redis, articles: Any, embedder_factory: Any, cli_env: dict[str, str]
) -> None:
    settings, config = articles
    await sync_once(settings, config, embedder_factory)
    assert keys(redis_client, "article:*") == {f"article:{n}" for n in range(ARTICLES)}
    stored = chunks_of(redis_client, 5)
    assert len(stored) > 4  # far past the model's window
    assert [c["pos"] for c in stored] == list(range(len(stored)))
    assert FACTS[5] in stored[-1]["text"]
    assert all(len(c["embedding"]) == 384 for c in stored)

    for number in range(ARTICLES):
        (first, *_) = await nearest(settings, config, FACTS[number])
        assert first.id == f"article:{number}"
        assert first.chunk is not None and FACTS[number] in first.chunk["text"]
        assert first.chunk["position"] == len(chunks_of(redis_client, number)) - 1
    # Rows, not chunks: three hits are three articles; and every chunk when asked for.
    hits = await nearest(settings, config, FACTS[3], chunks=True)
    assert len({hit.id for hit in hits}) == 3
    assert hits[0].chunks is not None and len(hits[0].chunks) == len(chunks_of(redis_client, 3))
    assert [c["distance"] for c in hits[0].chunks] == sorted(c["distance"] for c in hits[0].chunks)
    filtered = await nearest(settings, config, FACTS[3], filter="@section:{even}")
    assert all(int(hit.id.split(":")[1]) % 2 == 0 for hit in filtered)
    (drift,) = await verify_command(settings, config, None, repair=False)
    assert drift.clean, drift.lines()

    # The CLI: the nearest chunk under each hit, or every chunk with --chunks.
    args = ["query", "articles", FACTS[6], "--k", "2", "--config", str(settings.config)]
    shown = vecmirror(cli_env, *args)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[1].split()[3] == "article:6"
    assert f"chunk {len(chunks_of(redis_client, 6)) - 1}: " in shown.stdout.splitlines()[2]
    every = json.loads(vecmirror(cli_env, *args, "--chunks", "--json").stdout)
    assert len(every[0]["chunks"]) == len(chunks_of(redis_client, 6))
    assert every[0]["chunk"] == every[0]["chunks"][0]


async def test_edits_re_embed_only_the_chunks_that_changed(
    pg: asyncpg.Connection, redis_client: redis.Redis, articles: Any, embedder: Any, embedder_factory: Any
) -> None:
    settings, config = articles
    await sync_once(settings, config, embedder_factory)
    before = chunks_of(redis_client, 5)

    # The middle paragraph changed: the chunks around it are embedded again, the others kept.
    body = article(5)
    paragraphs = body.split("\n\n")
    middle = len(paragraphs) // 2
    paragraphs[middle] = "The annual regatta was cancelled because of fog over the estuary."
    calls = embedder.texts_embedded
    await pg.execute("UPDATE articles SET body = $1 WHERE id = 5", "\n\n".join(paragraphs))
    await sync_once(settings, config, embedder_factory)
    after = chunks_of(redis_client, 5)
    embedded = embedder.texts_embedded - calls
    changed = {c["hash"] for c in after} - {c["hash"] for c in before}
    assert 0 < embedded == len(changed) < len(after)
    kept = {c["hash"]: c["embedding"] for c in before}
    for chunk in after:
        if chunk["hash"] in kept:  # copied, not embedded again (JSON keeps doubles to ~1e-9)
            np.testing.assert_allclose(chunk["embedding"], kept[chunk["hash"]], atol=1e-7)

    # Shortened to one paragraph: one chunk, none of the old ones left behind.
    await pg.execute("UPDATE articles SET body = 'A short note.' WHERE id = 3")
    await sync_once(settings, config, embedder_factory)
    assert [c["text"] for c in chunks_of(redis_client, 3)] == ["Report 3\n\nA short note."]
    (first, *_) = await nearest(settings, config, "A short note.")
    assert first.id == "article:3" and first.chunk is not None and first.chunk["position"] == 0

    # Another column only: no model call, the chunks stay.
    calls = embedder.texts_embedded
    await pg.execute("UPDATE articles SET section = 'archived' WHERE id = 5")
    await sync_once(settings, config, embedder_factory)
    assert embedder.texts_embedded == calls
    assert chunks_of(redis_client, 5) == after

    await pg.execute("DELETE FROM articles WHERE id = 2")
    await sync_once(settings, config, embedder_factory)
    assert "article:2" not in keys(redis_client, "article:*")
    await pg.execute("TRUNCATE articles")
    await sync_once(settings, config, embedder_factory)
    assert keys(redis_client, "article:*") == set()


def test_chunks_need_json_documents_and_fit_in_the_model() -> None:
    hashed = {
        **MIRROR,
        "index": {**MIRROR["index"], "index": {**MIRROR["index"]["index"], "storage_type": "hash"}},
    }
    with pytest.raises(ConfigError, match=r"embed\.chunks: needs index\.index\.storage_type json"):
        parse_config({"mirrors": [hashed]})
    overlapping = {**MIRROR, "embed": {**MIRROR["embed"], "chunks": {"max_tokens": 64, "overlap_tokens": 64}}}
    with pytest.raises(ConfigError, match="overlap_tokens must be smaller than max_tokens"):
        parse_config({"mirrors": [overlapping]})


async def test_chunking_switched_on_and_off_online(
    redis_client: redis.Redis, articles: Any, write_config: Any, embedder_factory: Any
) -> None:
    """A mirror of whole texts becomes a chunked one through the online rebuild (a new index
    generation fills beside the old one, then the name switches), and back."""
    settings, config = articles
    whole = {**MIRROR, "embed": {k: v for k, v in MIRROR["embed"].items() if k != "chunks"}}
    _, config = write_config([whole])
    await migrate_command(settings, config)
    await sync_once(settings, config, embedder_factory)
    assert "_vm_chunks" not in json_doc(redis_client, "article:5")
    (first, *_) = await nearest(settings, config, FACTS[5])
    assert first.chunk is None

    _, config = write_config([MIRROR])
    await migrate_command(settings, config)
    await sync_once(settings, config, embedder_factory)
    document = json_doc(redis_client, "article:5")
    assert len(document["_vm_chunks"]) > 4 and "embedding" not in document
    (first, *_) = await nearest(settings, config, FACTS[5])
    assert first.id == "article:5" and first.chunk is not None and FACTS[5] in first.chunk["text"]
    (drift,) = await verify_command(settings, config, None, repair=False)
    assert drift.clean, drift.lines()

    # Off again (a config never seen before: an older one would be a rollback, see the lease).
    unchunked = {**whole, "embed": {**whole["embed"], "template": "{title}: {body}"}}
    _, config = write_config([unchunked])
    await migrate_command(settings, config)
    await sync_once(settings, config, embedder_factory)
    document = json_doc(redis_client, "article:5")
    assert "_vm_chunks" not in document
    (drift,) = await verify_command(settings, config, None, repair=False)
    assert drift.clean, drift.lines()


async def test_a_reader_never_sees_a_row_with_chunks_of_two_versions_or_none(
    pg: asyncpg.Connection, redis_url: str, articles: Any, embedder_factory: Any
) -> None:
    """Every sentence of version v says `edition-v`: a read of the row's chunks while its text is
    rewritten (longer, shorter) finds chunks of one edition only, always at least one."""
    settings, config = articles
    await sync_once(settings, config, embedder_factory)

    def edition(version: int) -> str:
        sentences = 20 + 90 * (version % 2)  # long and short editions in turn: chunks come and go
        return "\n\n".join(
            " ".join(f"Sentence {s} of edition-{version} about the harbour." for s in range(p, p + 5))
            for p in range(0, sentences, 5)
        )

    seen: list[tuple[bool, set[str]]] = []  # (chunks there and in order, the editions they say)
    stop = threading.Event()

    def read() -> None:
        client = redis.Redis.from_url(redis_url)
        while not stop.is_set():
            stored = json_doc(client, "article:5")
            chunks = stored.get("_vm_chunks", []) if stored else []
            editions = {word for c in chunks for word in c["text"].split() if word.startswith("edition-")}
            in_order = bool(chunks) and [c["pos"] for c in chunks] == list(range(len(chunks)))
            seen.append((in_order, editions))
        client.close()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for version in range(1, 7):
            await pg.execute("UPDATE articles SET body = $1 WHERE id = 5", edition(version))
            await sync_once(settings, config, embedder_factory)
    finally:
        stop.set()
        reader.join()
    assert all(whole for whole, _ in seen), "a read found no chunks, or chunks out of order"
    assert all(len(editions) <= 1 for _, editions in seen), "a read found chunks of two editions"
    assert {"edition-1", "edition-6"} <= set().union(*(editions for _, editions in seen))


async def test_a_row_that_repeats_itself_hides_no_other_row(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    write_config: Any,
    settings_for: Any,
    embedder_factory: Any,
) -> None:
    """One row of 15,000 words that are all the same: its repeated chunks hold no vectors of their
    own, so the HNSW graph is not filled with equal vectors and every row is still found (an
    adversary's index of that shape missed an exact match)."""
    await pg.execute(
        "CREATE TABLE articles "
        "(id integer PRIMARY KEY, title text NOT NULL, body text NOT NULL, section text)"
    )
    await pg.execute("INSERT INTO articles VALUES (1, 'echo', repeat('word ', 15000), 'a')")
    await pg.executemany(
        "INSERT INTO articles VALUES ($1, $2, $3, 'b')",
        [(n, f"Note {n}", FACTS[n - 2]) for n in range(2, 10)],
    )
    hnsw = {
        **MIRROR["index"]["fields"][2],
        "attrs": {"algorithm": "hnsw", "dims": 384, "distance_metric": "cosine"},
    }
    mirror = {**MIRROR, "index": {**MIRROR["index"], "fields": [*MIRROR["index"]["fields"][:2], hnsw]}}
    path, config = write_config([mirror])
    settings = settings_for(path)
    await migrate_command(settings, config)
    await sync_once(settings, config, embedder_factory)
    echo = chunks_of(redis_client, 1)
    assert len(echo) > 100
    assert sum("embedding" in c for c in echo) == len({c["hash"] for c in echo}) < 4
    for n in range(2, 10):
        (first, *_) = await nearest(settings, config, FACTS[n - 2])
        assert first.id == f"article:{n}" and first.distance < 0.2  # its text, with its title
    (drift,) = await verify_command(settings, config, None, repair=False)
    assert drift.clean, drift.lines()


async def test_verify_repair_rewrites_drifted_chunks(
    redis_client: redis.Redis, articles: Any, embedder: Any, embedder_factory: Any
) -> None:
    settings, config = articles
    await sync_once(settings, config, embedder_factory)
    redis_client.execute_command("JSON.DEL", "article:1", "$._vm_chunks")
    redis_client.execute_command("JSON.SET", "article:2", "$._vm_chunks[0].pos", "5")
    redis_client.execute_command("JSON.SET", "article:3", "$._vm_chunks[1].embedding", "[1, 2, 3]")
    (drift,) = await verify_command(settings, config, None, repair=True)
    assert sorted(drift.stale) == [("1",), ("2",), ("3",)]
    calls = embedder.texts_embedded
    await sync_once(settings, config, embedder_factory)
    # Only what was lost is embedded again: article 1's chunks, and article 3's broken one.
    assert embedder.texts_embedded - calls == len(chunks_of(redis_client, 1)) + 1
    (drift,) = await verify_command(settings, config, None, repair=False)
    assert drift.clean, drift.lines()


async def test_a_hit_shows_fields_and_chunks_of_one_version(
    redis_client: redis.Redis, articles: Any, embedder_factory: Any
) -> None:
    """The hits' chunks are read after the search: the hit's fields are read with them, so both
    are of one version of the row, and a row deleted in between is no hit."""
    settings, config = articles
    await sync_once(settings, config, embedder_factory)
    async with MirrorSearch.open(settings, config) as search:
        hits = await search.knn("articles", text=FACTS[4], k=2)
        assert hits[0].id == "article:4"
        redis_client.execute_command("JSON.SET", "article:4", "$.title", '"Report 4, revised"')
        redis_client.delete(hits[1].id)
        target = target_of(config, "articles")
        again = await search._with_chunks(target, hits, hits[0].chunk and [1.0] * 384, ["title"], every=False)
    assert [hit.id for hit in again] == ["article:4"]
    assert again[0].fields == {"title": "Report 4, revised"}
