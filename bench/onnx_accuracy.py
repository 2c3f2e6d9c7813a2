"""Speed and accuracy of the ONNX backends against torch, on the same texts, batch size and process.

    .venv/bin/python bench/onnx_accuracy.py --texts 3000 --queries 100

Builds a deterministic corpus of product notes (a dozen topics, 3 to 400 words, some past the model's
256 tokens) and short queries; embeds both with every backend in interleaved chunks, so a neighbour
on a shared CPU slows each backend alike; and prints a Markdown table: rows/s (wall clock and per
CPU-second of this process), the speed-up over torch, the cosine of each vector to torch's, and the
recall@10 of brute-force KNN (the ten nearest corpus texts by the backend's vectors vs by torch's).
Each backend runs as vecmirror runs it on a CPU (torch in batches of --batch-size, onnx and onnx-int8
one text per run, see pipeline/onnx.py), and torch and onnx also at the other's texts per run.
The rule for a default backend: mean cosine >= 0.99 and recall@10 >= 0.98, and faster than torch.
No servers are needed; the exports go to VECMIRROR_MODEL_CACHE (made once, not timed).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import numpy as np

from vecmirror.config import DEFAULT_MODEL, Backend, ModelSpec
from vecmirror.pipeline.embedder import Embedder, SentenceTransformerEmbedder, Vectors, load_embedder
from vecmirror.pipeline.onnx import OnnxEmbedder
from vecmirror.settings import Settings

K = 10
TOPICS = {
    "kitchen": "knife pan skillet oven kettle blender whisk spatula cast-iron nonstick simmer sear",
    "garden": "hose rake shovel soil compost seeds tomato planter pruning mulch lawn sprinkler",
    "audio": "headphones speaker amplifier bass treble bluetooth earbuds noise-cancelling microphone",
    "camera": "lens shutter aperture tripod sensor autofocus mirrorless zoom flash exposure megapixel",
    "running": "shoes marathon cushioning trail pace stride laces sole heel sprint treadmill",
    "coffee": "espresso grinder beans roast crema filter pour-over barista milk frother aroma",
    "camping": "tent sleeping-bag lantern stove backpack waterproof trail firewood compass hammock",
    "office": "desk chair monitor keyboard mouse ergonomic lamp notebook stapler drawer cable",
    "pets": "dog cat leash collar kibble litter toy aquarium grooming treats scratching-post",
    "bikes": "bicycle helmet gears chain brakes saddle tires pedals frame suspension handlebar",
    "baby": "stroller diapers crib bottle pacifier onesie car-seat rattle blanket monitor wipes",
    "gaming": "console controller joystick headset graphics framerate keyboard rgb latency cartridge",
}
COMMON_WORDS = (
    "the a it this that very really quite great poor good bad works broke arrived quickly slowly "
    "after before week month use daily price value quality recommend return would again my our "
    "was is feels looks sturdy flimsy cheap expensive small large light heavy easy hard"
)
COMMON = COMMON_WORDS.split()
OPENERS = ("I bought this", "We ordered the", "Gift for my sister:", "Second purchase of the", "Review:")


def corpus(count: int, rng: np.random.Generator) -> list[str]:
    """Notes mostly about one topic with a second one mixed in; lengths log-normal, 3-400 words."""
    topics = [words.split() for words in TOPICS.values()]
    texts = []
    for _ in range(count):
        main, other = rng.choice(len(topics), size=2, replace=False)
        words = int(np.clip(rng.lognormal(mean=3.8, sigma=0.9), 3, 400))
        pool = topics[main] * 3 + topics[other] + COMMON * 2
        body = " ".join(rng.choice(pool, size=words))
        texts.append(f"{OPENERS[int(rng.integers(len(OPENERS)))]} {body}")
    return texts


def queries(count: int, rng: np.random.Generator) -> list[str]:
    topics = [words.split() for words in TOPICS.values()]
    made = []
    for _ in range(count):
        topic = topics[int(rng.integers(len(topics)))]
        made.append(" ".join(rng.choice(topic + COMMON, size=int(rng.integers(2, 9)))))
    return made


@dataclass
class Run:
    embedder: Embedder
    wall: float = 0.0
    cpu: float = 0.0
    parts: list[Vectors] = field(default_factory=list)

    def embed(self, texts: list[str]) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.parts.append(self.embedder.embed(texts))
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu

    def vectors(self) -> Vectors:
        return np.concatenate(self.parts)


def embed_interleaved(runs: dict[str, Run], texts: list[str], chunk: int) -> None:
    """Chunk by chunk, every run in a rotating order: machine noise is shared out evenly."""
    order = list(runs)
    for number, start in enumerate(range(0, len(texts), chunk)):
        shift = number % len(order)
        for label in order[shift:] + order[:shift]:
            runs[label].embed(texts[start : start + chunk])


def configurations(settings: Settings) -> dict[str, Embedder]:
    """Each backend as vecmirror runs it, and torch and onnx at the other's number of texts per run."""
    batch, cache = settings.embed_batch_size, settings.model_cache

    def spec(backend: Backend) -> ModelSpec:
        return ModelSpec(DEFAULT_MODEL, backend)

    return {
        f"torch ({batch})": load_embedder(spec("torch"), settings),
        "torch (1)": SentenceTransformerEmbedder(DEFAULT_MODEL, device=settings.device, batch_size=1),
        f"onnx ({batch})": OnnxEmbedder(DEFAULT_MODEL, quantized=False, cache=cache, texts_per_run=batch),
        "onnx (1)": load_embedder(spec("onnx"), settings),
        "onnx-int8 (1)": load_embedder(spec("onnx-int8"), settings),
    }


def top_k(query_vectors: Vectors, corpus_vectors: Vectors) -> np.ndarray:
    scores = query_vectors @ corpus_vectors.T  # unit vectors: cosine similarity
    return np.argsort(-scores, axis=1, kind="stable")[:, :K]


def recall(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(e)) / K for g, e in zip(got, expected, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--texts", type=int, default=3000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=256, help="texts per backend turn")
    parser.add_argument("--seed", type=int, default=6)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    texts, asked = corpus(args.texts, rng), queries(args.queries, rng)
    settings = Settings(embed_batch_size=args.batch_size)
    runs = {label: Run(embedder) for label, embedder in configurations(settings).items()}
    for run in runs.values():
        run.embedder.embed(texts[: args.batch_size])  # warm-up, not timed
    embed_interleaved(runs, texts, args.chunk)
    query_vectors = {label: run.embedder.embed(asked) for label, run in runs.items()}
    words = [len(text.split()) for text in texts]
    print(
        f"{len(texts)} texts ({np.median(words):.0f} words median, {max(words)} max), {len(asked)} "
        f"queries, batch size {args.batch_size}, model {DEFAULT_MODEL}\n"
    )
    print_table(runs, query_vectors)


def print_table(runs: dict[str, Run], query_vectors: dict[str, Vectors]) -> None:
    """Speed-up, cosine and recall against the first run: torch as vecmirror runs it."""
    reference_label, reference = next(iter(runs.items()))
    expected = top_k(query_vectors[reference_label], reference.vectors())
    columns = ["rows/s", "rows per CPU-s", "speed-up", "mean cosine", "min cosine", "recall@10"]
    print("| backend (texts per run) | " + " | ".join(columns) + " |")
    print("| --- |" + " ---: |" * len(columns))
    for label, run in runs.items():
        vectors = run.vectors()
        cosines = cosine(vectors, reference.vectors())
        got = recall(top_k(query_vectors[label], vectors), expected)
        rows = len(vectors)
        speed = f"{rows / run.wall:.1f} | {rows / run.cpu:.1f} | {reference.wall / run.wall:.2f}x"
        print(f"| {label} | {speed} | {cosines.mean():.5f} | {cosines.min():.5f} | {got:.3f} |")


def cosine(a: Vectors, b: Vectors) -> np.ndarray:
    return np.asarray((a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))


if __name__ == "__main__":
    main()
