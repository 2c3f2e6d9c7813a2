"""Long documents (embed.chunks): recall of a fact in the last paragraph, the chunked sync's rate
against a raw `model.encode` of the same chunks, and Redis bytes per row, in one run.

    .venv/bin/python bench/long_documents.py --rows 300     # HNSW; chunks of 200 and 128 tokens
    BENCH_ALGORITHM=flat .venv/bin/python bench/long_documents.py --rows 300
    # also BENCH_MAX_TOKENS=200,128 and BENCH_EF_RUNTIME=10,200,2000 (HNSW: recall at each width)

Generates `--rows` articles of 1,000-5,000 words of report prose whose last paragraph ends with one
unique fact ("In 1987 Orlando the lighthouse keeper painted a tin drum at the night market."). The
same articles are mirrored by one model object on its default backend: whole (the model reads the
first 256 tokens) and chunked at each of BENCH_MAX_TOKENS (`overlap_tokens` an eighth). Prints
recall@1 of each fact asked as written and said another way ("the lighthouse keeper who painted a
tin drum at the night market"), the sync's seconds, the memory per row (MEMORY USAGE of the documents, and the
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
    "Lena",
    "Oskar",
    "Farida",
    "Hugo",
    "Noor",
    "Ewa",
    "Tariq",
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
    "cartographer",
    "chimney sweep",
    "glassblower",
    "puppeteer",
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
    "engraved",
    "borrowed",
    "dismantled",
    "restored",
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
    "a clockwork parrot",
    "a cedar harp",
    "a crystal decanter",
    "a wool tapestry",
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
    "the sugar refinery",
    "the ski jump",
    "the paper mill",
    "the lunar crater exhibit",
    "the mountain monastery",
    "the tram depot",
]
SIZE = 19  # a prime: the parts' formulas separate any two of the SIZE * SIZE = 361 facts
TOPICS = ["shipping schedules", "railway maintenance", "municipal budgets", "library renovations"]
# The contract's example, and the size that found facts best here (64 cut more facts in two).
MAX_TOKENS = [int(size) for size in os.environ.get("BENCH_MAX_TOKENS", "200,128").split(",")]
ALGORITHM = os.environ.get("BENCH_ALGORITHM", "hnsw")
# HNSW's recall over chunks depends on the search's width: each width is asked (FLAT is exact).
EF_RUNTIMES: list[int | None] = (
    [int(ef) for ef in os.environ.get("BENCH_EF_RUNTIME", "10,200,2000").split(",")]
    if ALGORITHM == "hnsw"
    else [None]
)
TABLE = "CREATE TABLE {table} (id integer PRIMARY KEY, title text NOT NULL, body text NOT NULL)"
FIELDS = [
    {"name": "title", "type": "text"},
    {
        "name": "embedding",
        "type": "vector",
        "attrs": {"algorithm": ALGORITHM, "dims": 384, "distance_metric": "cosine"}
        | ({"m": int(os.environ["BENCH_M"]), "ef_construction": 500} if "BENCH_M" in os.environ else {}),
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
    """A fact of five parts that shares at most one part with any other article's fact (the parts are
    a, b, a+b, a+2b and a+3b modulo a prime, so two facts that agreed on two would be one article),
    and the same fact said another way. Drawn at random, 300 facts shared three or four parts often
    enough that a fact was no longer unique."""
    a, b = divmod(number, SIZE)
    who, job, verb = NAMES[(a + 3 * b) % SIZE], JOBS[a % SIZE], VERBS[(a + 2 * b) % SIZE]
    what, where = OBJECTS[b], PLACES[(a + b) % SIZE]
    year = random.Random(10_000 + number).randint(1900, 2020)
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
    sentences.append(fact_and_question(number)[0])  # the last paragraph's last sentence
    paragraphs = [" ".join(sentences[i : i + 6]) for i in range(0, len(sentences), 6)]
    return "\n\n".join(paragraphs)


async def measure(urls: StackUrls, rows: int) -> None:
    embedder = default_embedder()
    articles = [(n, f"Report {n}", article(n)) for n in range(rows)]

    async def load(conn: asyncpg.Connection) -> None:
        await conn.executemany("INSERT INTO articles VALUES ($1, $2, $3)", articles)

    layouts: list[tuple[str, dict[str, int] | None]] = [("whole", None)]
    layouts += [(f"chunks{size}", {"max_tokens": size, "overlap_tokens": size // 8}) for size in MAX_TOKENS]
    print(f"{rows} articles, {sum(len(a[2].split()) for a in articles) / rows:.0f} words on average")
    print(f"{ALGORITHM} index")
    print(f"{'layout':10} {'ef':>5} {'recall@1 fact':>14} {'paraphrase':>11} {'sync s':>8} {'bytes/row':>10}")
    for name, chunking in layouts:
        async with phase(urls, name, {"articles": TABLE}, [mirror(name, chunking)], load) as p:
            started = time.perf_counter()
            await run_command(p.settings, p.config, once=True, embedder_factory=lambda _spec: embedder)
            seconds = time.perf_counter() - started
            size = await _bytes_per_row(p.redis, name, rows)
            for ef in EF_RUNTIMES:
                recall = await _recall(p.settings, p.config, name, rows, embedder, ef)
                found = f"{recall[0]:14.3f} {recall[1]:11.3f}"
                print(f"{name:10} {ef or '-':>5} {found} {seconds:8.1f} {size:10.0f}")
            if chunking is not None:  # each size's sync against a raw encode of its own chunks
                await _against_raw(embedder, p.config.mirrors[0], articles, seconds)


async def _recall(
    settings: Any, config: Any, name: str, rows: int, embedder: Embedder, ef_runtime: int | None
) -> tuple[float, float]:
    """recall@1 of the facts asked as they are written, and said another way."""
    found = [0, 0]
    async with MirrorSearch.open(settings, config, lambda _spec: embedder) as search:
        for number in range(rows):
            for way, asked in enumerate(fact_and_question(number)):
                hits = await search.knn(name, text=asked, k=1, ef_runtime=ef_runtime)
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
