"""Making the ONNX files: a sentence-transformers pipeline traced with torch.onnx, and its int8 copy.

Why torch.onnx and not sentence-transformers' own `backend="onnx"`: that backend loads and exports
through optimum-onnx, whose only release (0.1.0) needs transformers < 4.58, while sentence-transformers
6 needs transformers >= 5. So the model's whole pipeline (transformer, pooling, normalization:
whatever its modules.json lists) is traced into one graph, its tokenizer saved beside it, and the
graph checked against the torch vectors before it is kept. int8 weights come from onnxruntime's own
dynamic quantization, which needs no optimum either.

Imported only when an export is missing: it loads torch, which running an export does not need.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from transformers.utils import logging as transformers_logging

from vecmirror.errors import StartupError
from vecmirror.pipeline.embedder import model_load_error
from vecmirror.pipeline.onnx import METADATA_FILE, OUTPUT_NAME, ExportedModel, OnnxRunner

# Texts the fresh export must embed as torch does, or it is refused (a graph traced wrongly).
PROBES = (
    "a",
    "vecmirror keeps Redis search indexes equal to PostgreSQL tables, embeddings included.",
    "Ünïcödé, emoji 🙂 and numbers 12345 too",
)
MIN_PROBE_COSINE = 0.9999


class _Pipeline(torch.nn.Module):
    """Tensors in the tokenizer's order → the sentence-transformers modules → one vector per text."""

    def __init__(self, transformer: SentenceTransformer, input_names: tuple[str, ...]) -> None:
        super().__init__()
        self.transformer = transformer
        self.input_names = input_names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        features = dict(zip(self.input_names, tensors, strict=True))
        embeddings: torch.Tensor = self.transformer(features)[OUTPUT_NAME]
        return embeddings


def export(source: str, directory: Path) -> None:
    """The float32 graph, the tokenizer and the metadata of model `source`, written into directory."""
    # Loading prints a progress bar otherwise, which garbles JSON logs.
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    # Eager attention: SDPA's export guards every softmax with IsNaN + Where, a fifth of the run time.
    try:
        transformer = SentenceTransformer(source, device="cpu", model_kwargs={"attn_implementation": "eager"})
    except OSError as exc:  # not "cannot write the export": the model itself could not be read
        raise model_load_error(source, exc) from exc
    max_seq_length, dimension = transformer.max_seq_length, transformer.get_embedding_dimension()
    # A static-embedding model reads texts of any length: its maximum is infinite.
    if max_seq_length is None or dimension is None or not math.isfinite(max_seq_length):
        raise StartupError(
            f"model {source!r} reports no finite maximum sequence length or no output dimension: "
            "use embed.backend: torch for it"
        )
    exported = ExportedModel(
        directory=directory,
        max_seq_length=int(max_seq_length),
        dimension=int(dimension),
        input_names=tuple(transformer.tokenizer.model_input_names),
    )
    try:
        with _quiet("torch.onnx"):
            _trace(transformer, exported)
    except Exception as exc:  # the exporter's own errors, whatever their type
        raise StartupError(
            f"model {source!r} could not be exported to ONNX ({type(exc).__name__}: "
            f"{next(iter(str(exc).splitlines()), '')}); "
            "use embed.backend: torch for it"
        ) from exc
    transformer.tokenizer.save_pretrained(str(directory))
    _check_against_torch(source, transformer, exported)
    (directory / METADATA_FILE).write_text(json.dumps(exported.metadata(), indent=2))


def _trace(transformer: SentenceTransformer, exported: ExportedModel) -> None:
    examples = transformer.tokenizer(list(PROBES), padding=True, return_tensors="pt")
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    torch.onnx.export(
        _Pipeline(transformer, exported.input_names).eval(),
        tuple(examples[name] for name in exported.input_names),
        str(exported.graph(quantized=False)),
        input_names=list(exported.input_names),
        output_names=[OUTPUT_NAME],
        dynamic_shapes=(tuple({0: batch, 1: sequence} for _ in exported.input_names),),
        dynamo=True,
        external_data=False,
        verbose=False,
    )


def _check_against_torch(source: str, transformer: SentenceTransformer, exported: ExportedModel) -> None:
    expected = np.asarray(transformer.encode(list(PROBES), show_progress_bar=False), dtype=np.float32)
    got = OnnxRunner(exported, quantized=False, providers=["CPUExecutionProvider"]).embed_texts(list(PROBES))
    cosines = (expected * got).sum(axis=1) / (np.linalg.norm(expected, axis=1) * np.linalg.norm(got, axis=1))
    if float(cosines.min()) < MIN_PROBE_COSINE:
        raise StartupError(
            f"the ONNX export of model {source!r} does not reproduce its torch vectors "
            f"(cosine {float(cosines.min()):.5f}); use embed.backend: torch for it"
        )


def quantize(exported: ExportedModel, target: Path) -> None:
    """int8 weights with one scale per output channel: one scale per tensor (the default) moves
    all-MiniLM-L6-v2's vectors to a mean cosine of 0.92 against torch; per channel keeps 0.99."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # It advises pre-processing through the root logger; the exporter already optimized the graph.
    with _quiet(""):
        quantize_dynamic(
            exported.graph(quantized=False),
            target,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
        )


@contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """The exporter warns (deprecations, unused axis names) and logs operators it skips: none of it
    concerns the user, and a test run that turns warnings into errors would end on them."""
    chatty = logging.getLogger(logger)
    level = chatty.level
    chatty.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        chatty.setLevel(level)
