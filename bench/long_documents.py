"""Long documents (embed.chunks): recall of a fact in the last paragraph, the chunked sync's rate
against a raw `model.encode` of the same chunks, and Redis bytes per row, in one run.

    .venv/bin/python bench/long_documents.py --rows 300     # BENCH_MAX_TOKENS=64 for smaller chunks

Generates `--rows` articles of 1,000-5,000 words of report prose, each ending with one unique fact
("In 1987 Orlando the lighthouse keeper painted a tin drum at the night market."). The same articles
are mirrored twice by one model object on its default backend: whole (the model reads the first 256
tokens) and chunked (`max_tokens` 200, `overlap_tokens` a eighth of it). Prints recall@1 of each
fact asked as written and said another way ("the lighthouse keeper who painted a tin drum at the
night market"), the sync's seconds, the memory per row (MEMORY USAGE of the documents, and the
vector index), and the chunked sync's chunks/s against a raw encode of exactly those chunk texts
(ratio = raw seconds / sync seconds).
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import asyncpg
from common import default_embedder, phase, run_bench

from vecmirror.commands import run_command
from vecmirror.pipeline.chunks import chunker
from vecmirror.pipeline.embedder import Embedder
from vecmirror.query.search import MirrorSearch
from vecmirror.stack import StackUrls

NAMES = [
    "Orlando",
    "Petra",
    "Tomasz",
    "Ines",
    "Kwame",
    "Yuki",
    "Selma",
    "Ravi",
    "Marta",
    "Bruno",
    "Aiko",
    "Dmitri",
]
JOBS = [
    "lighthouse keeper",
    "violinist",
    "baker",
    "glacier guide",
    "museum guard",
    "ferry pilot",
    "beekeeper",
    "astronomer",
    "blacksmith",
    "florist",
    "locksmith",
    "surgeon",
    "tailor",
    "diver",
    "falconer",
]
VERBS = [
    "repaired",
    "painted",
    "photographed",
    "buried",
    "sold",
    "carved",
    "stole",
    "polished",
    "smuggled",
    "auctioned",
    "rescued",
    "weighed",
    "hid",
    "launched",
    "tuned",
]
OBJECTS = [
    "a brass telescope",
    "a wooden rowboat",
    "a porcelain owl",
    "a marble chess set",
    "a copper kettle",
    "a silk kite",
    "an iron anchor",
    "a glass harmonica",
    "a leather saddle",
    "a jade comb",
    "a pewter lantern",
    "a walnut cradle",
    "a tin drum",
    "a velvet cloak",
    "a bronze bell",
]
PLACES = [
    "the old salt mine",
    "the flooded quarry",
    "the cathedral roof",
    "the night market",
    "the ice rink",
    "the abandoned observatory",
    "the ferry terminal",
    "the botanical garden",
    "the railway bridge",
    "the desert oasis",
    "the volcano crater",
    "the fishing village",
    "the orchid greenhouse",
]
TOPICS = ["shipping schedules", "railway maintenance", "municipal budgets", "library renovations"]
MAX_TOKENS = int(os.environ.get("BENCH_MAX_TOKENS", "200"))
TABLE = "CREATE TABLE {table} (id integer PRIMARY KEY, title text NOT NULL, body text NOT NULL)"
FIELDS = [
    {"name": "title", "type": "text"},
    {
        "name": "embedding",
        "type": "vector",
        "attrs": {"algorithm": "hnsw", "dims": 384, "distance_metric": "cosine"},
    },
]


def mirror(name: str, chunks: dict[str, int] | None) -> dict[str, Any]:
    embed: dict[str, Any] = {"field": "embedding", "template": "{title}\n\n{body}"}
    if chunks is not None:
        embed["chunks"] = chunks
    return {
        "name": name,
        "table": "articles",
        "embed": embed,
        "index": {"index": {"name": f"{name}_idx", "prefix": name, "storage_type": "json"}, "fields": FIELDS},
    }


def fact_and_question(number: int) -> tuple[str, str]:
    """A fact made of several rare words, and the same fact said another way."""
    rng = random.Random(10_000 + number)
    who, job, verb = rng.choice(NAMES), rng.choice(JOBS), rng.choice(VERBS)
    what, where, year = rng.choice(OBJECTS), rng.choice(PLACES), rng.randint(1900, 2020)
    fact = f"In {year} {who} the {job} {verb} {what} at {where}."
    return fact, f"the {job} who {verb} {what} at {where}"


def article(number: int) -> str:
    rng = random.Random(number)
    words = rng.randint(1000, 5000)
    sentences: list[str] = []
    while sum(len(s.split()) for s in sentences) < words:
        topic, count = rng.choice(TOPICS), rng.randint(2, 90)
        sentences.append(
            rng.choice(
                [
                    f"The committee reviewed {topic} for the {count}th time this quarter.",
                    f"Reports on {topic} were filed with {count} pages of appendices.",
                    f"Staff noted that {topic} remained within the planned limits.",
                    f"A survey of {topic} covered {count} districts and their offices.",
                ]
            )
        )
    paragraphs = [" ".join(sentences[i : i + 6]) for i in range(0, len(sentences), 6)]
    return "\n\n".join([*paragraphs, fact_and_question(number)[0]])


async def measure(urls: StackUrls, rows: int) -> None:
    embedder = default_embedder()
    articles = [(n, f"Report {n}", article(n)) for n in range(rows)]

    async def load(conn: asyncpg.Connection) -> None:
        await conn.executemany("INSERT INTO articles VALUES ($1, $2, $3)", articles)

    chunks = {"max_tokens": MAX_TOKENS, "overlap_tokens": MAX_TOKENS // 8}
    print(f"{rows} articles, {sum(len(a[2].split()) for a in articles) / rows:.0f} words on average")
    print(f"{'layout':10} {'recall@1 fact':>14} {'paraphrase':>11} {'sync s':>8} {'bytes/row':>10}")
    for name, chunking in (("whole", None), ("chunked", chunks)):
        async with phase(urls, name, {"articles": TABLE}, [mirror(name, chunking)], load) as p:
            started = time.perf_counter()
            await run_command(p.settings, p.config, once=True, embedder_factory=lambda _spec: embedder)
            seconds = time.perf_counter() - started
            recall = await _recall(p.settings, p.config, name, rows, embedder)
            size = await _bytes_per_row(p.redis, name, rows)
            print(f"{name:10} {recall[0]:14.3f} {recall[1]:11.3f} {seconds:8.1f} {size:10.0f}")
            if chunking is not None:
                await _against_raw(embedder, p.config.mirrors[0], articles, seconds)


async def _recall(
    settings: Any, config: Any, name: str, rows: int, embedder: Embedder
) -> tuple[float, float]:
    """recall@1 of the facts asked as they are written, and said another way."""
    found = [0, 0]
    async with MirrorSearch.open(settings, config, lambda _spec: embedder) as search:
        for number in range(rows):
            for way, asked in enumerate(fact_and_question(number)):
                hits = await search.knn(name, text=asked, k=1, ef_runtime=200)
                found[way] += bool(hits) and hits[0].id == f"{name}:{number}"
    return found[0] / rows, found[1] / rows


async def _bytes_per_row(client: Any, name: str, rows: int) -> float:
    documents = 0
    for number in range(rows):
        documents += int(await client.memory_usage(f"{name}:{number}") or 0)
    info = await client.execute_command("FT.INFO", f"{name}_idx")
    pairs = info if isinstance(info, dict) else dict(zip(info[::2], info[1::2], strict=True))
    vector_mb = float(pairs.get(b"vector_index_sz_mb", pairs.get("vector_index_sz_mb", 0)))
    return (documents + vector_mb * 1024 * 1024) / rows


async def _against_raw(
    embedder: Embedder, mirror: Any, articles: list[tuple[int, str, str]], sync: float
) -> None:
    """The same chunk texts encoded by the same model object in one call: what the sync cannot beat."""
    split = chunker(embedder, mirror.embed.chunks, mirror.name)
    texts = [piece for _, title, body in articles for piece in split(f"{title}\n\n{body}")]
    started = time.perf_counter()
    embedder.embed(texts)
    raw = time.perf_counter() - started
    print(
        f"chunks: {len(texts)} ({len(texts) / len(articles):.1f} per row); sync {len(texts) / sync:.1f} "
        f"chunks/s, raw encode {len(texts) / raw:.1f} chunks/s: ratio {raw / sync:.2f}"
    )


def main() -> None:
    run_bench("Long documents: recall, chunked sync rate and bytes per row.", 300, measure)


if __name__ == "__main__":
    main()
