"""Embedding speed: vecmirror end to end against plain sentence-transformers, on three corpora.

    .venv/bin/python bench/embedding_speed.py             # 1,500 short, 600 medium, 150 long texts
    .venv/bin/python bench/embedding_speed.py --scale 0.2 # the same, a fifth of each (bench-quick)

What a user would otherwise run is the baseline: `SentenceTransformer(model).encode(texts,
batch_size=64)` with torch, over all texts at once. vecmirror's figure is `vecmirror run --once`
with the default backend, from rows queued in Postgres to vectors in Redis (claims, reads, writes
included). Where the CPU computes bfloat16 in hardware, the same plain call under torch's bfloat16
autocast is shown too: what a user who knows that switch would run. All run in this process, one
after the other, on the same texts, so the ratio is taken in one run. Accuracy compares the vectors
vecmirror wrote into Redis with torch fp32's: the mean and least cosine, and recall@10 of 100 of
the texts asked as queries of the corpus.

The machine's limit: the model's FLOPs per token (its dense layers' multiply-adds, twice, plus
attention over the text's own length) times the tokens vecmirror embedded per second, over the GEMM
rate reached on this machine in the same run (a 2048 x 2048 matmul, best of 5; float32: the better of
torch and onnxruntime) in the precision of the default backend's matrix products: bfloat16 for
torch-bf16, else float32.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from common import default_embedder, phase, temporary_stack
from corpus import _paragraph

from vecmirror.commands import run_command
from vecmirror.config import DEFAULT_MODEL, ModelSpec
from vecmirror.pipeline.embedder import Embedder, backend_for, cpu_has_fast_bf16, resolve_model
from vecmirror.stack import StackUrls

CORPORA = {"short": (1500, 5, 20), "medium": (600, 30, 80), "long": (150, 150, 400)}  # texts, words
ALGORITHM = os.environ.get("BENCH_ALGORITHM", "hnsw")  # flat: what Redis' HNSW inserts cost the sync
TABLE = "CREATE TABLE {table} (id integer PRIMARY KEY, body text NOT NULL)"
QUERIES, K = 100, 10
GEMM_SIZE = 2048


@dataclass(frozen=True)
class Speed:
    corpus: str
    texts: int
    plain: float  # rows/s
    plain_bf16: float | None  # rows/s, under bfloat16 autocast where the CPU computes it in hardware
    ours: float  # rows/s
    mean_cosine: float
    least_cosine: float
    recall: float
    limit_share: float

    @property
    def ratio(self) -> float:
        return self.ours / self.plain

    def row(self) -> str:
        bf16 = "n/a" if self.plain_bf16 is None else f"{self.plain_bf16:.1f}"
        rates = f"{self.plain:.1f} | {bf16} | {self.ours:.1f} | {self.ratio:.2f}x"
        accuracy = f"{self.mean_cosine:.6f} | {self.least_cosine:.6f} | {self.recall:.3f}"
        return f"| {self.corpus} | {self.texts} | {rates} | {accuracy} | {self.limit_share:.0%} |"


HEADER = (
    "| corpus | texts | plain sentence-transformers rows/s | the same in bfloat16 rows/s | vecmirror rows/s "
    "| ratio | mean cosine | least cosine | recall@10 | share of the machine's limit |\n"
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
)


def texts_of(corpus: str, scale: float) -> list[str]:
    count, shortest, longest = CORPORA[corpus]
    rng = random.Random(corpus)
    return [_paragraph(rng, rng.randint(shortest, longest)) for _ in range(max(20, round(count * scale)))]


def gemm_flops(dtype: torch.dtype = torch.float32) -> float:
    """The GEMM FLOP/s reached here in `dtype`, the machine's practical limit: the best of torch's and
    (float32) onnxruntime's, since either may be the faster library on a CPU (MKL's paths on AMD
    are not its best; onnxruntime's MLAS reached twice its rate on a Zen CPU)."""
    a, b = torch.randn(GEMM_SIZE, GEMM_SIZE, dtype=dtype), torch.randn(GEMM_SIZE, GEMM_SIZE, dtype=dtype)
    rates = [_best_rate(lambda: torch.mm(a, b))]
    if dtype == torch.float32:
        session, feeds = _onnx_matmul(a.numpy(), b.numpy())
        rates.append(_best_rate(lambda: session.run(None, feeds)))
    return max(rates)


def _best_rate(multiply: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        multiply()
        best = min(best, time.perf_counter() - started)
    return 2 * GEMM_SIZE**3 / best


def _onnx_matmul(a: np.ndarray, b: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
    """One float32 MatMul as an onnxruntime session, and its inputs."""
    import onnxruntime
    from onnx import TensorProto, helper

    shape = [GEMM_SIZE, GEMM_SIZE]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "gemm",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session, {"a": a, "b": b}


def flops_per_token(model: torch.nn.Module, mean_length: float) -> float:
    """Twice the dense layers' weights (each weight is one multiply-add per token), plus attention's
    two products over the text's own length in every layer."""
    dense = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    config = model[0].auto_model.config
    attention = 4 * mean_length * config.hidden_size * config.num_hidden_layers
    return 2.0 * dense + attention


def plain_model() -> Any:
    """What a user would otherwise load: sentence-transformers on torch."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_model(DEFAULT_MODEL), device="cpu")


async def measure(
    urls: StackUrls, scale: float, plain: Any = None, ours: Embedder | None = None
) -> list[Speed]:
    plain = plain or plain_model()
    ours = ours or default_embedder()
    backend = backend_for(ModelSpec(DEFAULT_MODEL), None)
    limits = {dtype: gemm_flops(dtype) for dtype in (torch.float32, torch.bfloat16)}
    limit = limits[torch.bfloat16 if backend == "torch-bf16" else torch.float32]
    results = []
    for corpus in CORPORA:
        texts = texts_of(corpus, scale)
        plain.encode(texts[:64], batch_size=64)  # warm both: first calls allocate
        ours.embed(texts[:64])
        started = time.perf_counter()
        expected = np.asarray(plain.encode(texts, batch_size=64, show_progress_bar=False), dtype=np.float32)
        plain_seconds = time.perf_counter() - started
        plain_bf16 = _plain_bf16_rate(plain, texts) if cpu_has_fast_bf16() else None
        got, seconds = await _end_to_end(urls, corpus, texts, ours)
        tokens = [int(mask.sum()) for mask in plain.tokenize(texts)["attention_mask"]]  # unpadded
        mean_length = float(np.mean(tokens))
        share = sum(tokens) / seconds * flops_per_token(plain, mean_length) / limit
        cosines = (
            (got * expected).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
        )
        results.append(
            Speed(
                corpus,
                len(texts),
                len(texts) / plain_seconds,
                plain_bf16,
                len(texts) / seconds,
                float(cosines.mean()),
                float(cosines.min()),
                _recall(got, expected),
                share,
            )
        )
    gemms = ", ".join(
        f"{str(dtype).removeprefix('torch.')} {flops / 1e9:.0f}" for dtype, flops in limits.items()
    )
    print(f"default backend here: {backend}; GEMM GFLOP/s here: {gemms}")
    return results


def _plain_bf16_rate(plain: Any, texts: list[str]) -> float:
    """rows/s of the plain call under bfloat16 autocast (warmed first: a new dtype allocates)."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain.encode(texts[:64], batch_size=64)
        started = time.perf_counter()
        plain.encode(texts, batch_size=64, show_progress_bar=False)
    return len(texts) / (time.perf_counter() - started)


async def _end_to_end(
    urls: StackUrls, corpus: str, texts: list[str], embedder: Embedder
) -> tuple[np.ndarray, float]:
    """`vecmirror run --once` over the texts queued as rows; the vectors it wrote, in row order."""
    name = f"speed_{corpus}"
    mirror = {
        "name": name,
        "table": "texts",
        "embed": {"field": "embedding", "template": "{body}"},
        "index": {
            "index": {"name": f"{name}_idx", "prefix": name, "storage_type": "hash"},
            "fields": [
                {
                    "name": "embedding",
                    "type": "vector",
                    "attrs": {"algorithm": ALGORITHM, "dims": 384, "distance_metric": "cosine"},
                }
            ],
        },
    }
    async with phase(urls, name, {"texts": TABLE}, [mirror]) as p:
        await p.conn.copy_records_to_table("texts", records=list(enumerate(texts)), columns=["id", "body"])
        started = time.perf_counter()
        await run_command(p.settings, p.config, once=True, embedder_factory=lambda _spec: embedder)
        seconds = time.perf_counter() - started
        raw = [await p.redis.hget(f"{name}:{n}", "embedding") for n in range(len(texts))]
    return np.stack([np.frombuffer(v or b"", dtype=np.float32) for v in raw]), seconds


def _recall(got: np.ndarray, expected: np.ndarray) -> float:
    """recall@10 of the first texts as queries: torch's neighbours found with vecmirror's vectors."""
    queries = min(QUERIES, len(got))
    found = 0
    for q in range(queries):
        truth = set(np.argsort(-(expected @ expected[q]))[:K])
        found += len(truth & set(np.argsort(-(got @ expected[q]))[:K]))
    return found / (queries * K)


def table(results: list[Speed]) -> str:
    return "\n".join([HEADER, *(r.row() for r in results)])


def main() -> None:
    parser = argparse.ArgumentParser(description="Embedding speed against plain sentence-transformers.")
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    with temporary_stack() as urls:
        print(table(asyncio.run(measure(urls, args.scale))))


if __name__ == "__main__":
    main()
