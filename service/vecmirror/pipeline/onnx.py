"""The ONNX backends: a model's sentence-transformers pipeline run by onnxruntime.

The first use of a model exports it into the model cache (VECMIRROR_MODEL_CACHE; see
onnx_export.py for how and why); later processes read the export in under a second. Texts are
tokenized by the model's own tokenizer with its own maximum sequence length, as sentence-transformers
does, so both backends see the same tokens; runs group texts of similar length (see plan_runs).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from vecmirror.errors import StartupError
from vecmirror.pipeline.embedder import SerialEmbedder, Vectors, check_model_source, resolve_model

log = structlog.get_logger(__name__)

# Bumped when the exported files change shape, so older exports are made again.
EXPORT_FORMAT = 1
METADATA_FILE = "vecmirror-onnx.json"
EXPORT_DIRECTORY_MODE = 0o755  # readable by all: see _export_into_place
OUTPUT_NAME = "sentence_embedding"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class ExportedModel:
    """One model's export: its graphs, its tokenizer files and what running them needs."""

    directory: Path
    max_seq_length: int
    dimension: int
    input_names: tuple[str, ...]

    def graph(self, *, quantized: bool) -> Path:
        return self.directory / ("model-int8.onnx" if quantized else "model.onnx")

    def metadata(self) -> dict[str, Any]:
        return {
            "max_seq_length": self.max_seq_length,
            "dimension": self.dimension,
            "input_names": list(self.input_names),
        }

    @classmethod
    def read(cls, directory: Path) -> ExportedModel:
        raw = json.loads((directory / METADATA_FILE).read_text())
        return cls(directory, int(raw["max_seq_length"]), int(raw["dimension"]), tuple(raw["input_names"]))


class OnnxRunner:
    """One onnxruntime session and the model's tokenizer: texts in, one vector per text out."""

    def __init__(self, exported: ExportedModel, *, quantized: bool, providers: Sequence[Any]) -> None:
        import onnxruntime
        import torch  # loaded by transformers anyway
        from tokenizers import Tokenizer
        from transformers import AutoTokenizer

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: its warnings go to stderr, around our JSON logs
        # One thread per core torch would use: OMP_NUM_THREADS (a pod's CPU limit) bounds both
        # backends, where onnxruntime alone would start one per core of the whole machine.
        options.intra_op_num_threads = torch.get_num_threads()
        # The arena keeps the peak of the largest batch for good: 2.2 GB after 64 texts of 256 tokens
        # against 0.6 GB without it, at no measurable cost in speed.
        options.enable_cpu_mem_arena = False
        self._session = onnxruntime.InferenceSession(
            str(exported.graph(quantized=quantized)), options, providers=list(providers)
        )
        # The model's own fast tokenizer, called directly: it tokenizes a whole call's texts at
        # once in Rust (releasing the GIL), where the transformers wrapper costs a Python round per
        # call. It truncates as sentence-transformers does, at the model's maximum sequence length.
        backend = AutoTokenizer.from_pretrained(str(exported.directory)).backend_tokenizer
        self._tokenizer: Tokenizer = Tokenizer.from_str(backend.to_str())
        self._tokenizer.enable_truncation(exported.max_seq_length)
        self._tokenizer.no_padding()
        self._exported = exported

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def max_tokens(self) -> int:
        return self._exported.max_seq_length

    def tokenize(self, texts: list[str]) -> list[Any]:
        """Each text's tokens (a `tokenizers.Encoding`), special tokens included."""
        return list(self._tokenizer.encode_batch(texts))

    def run(self, encodings: Sequence[Any]) -> Vectors:
        """One session run over tokenized texts, padded to the longest of them."""
        longest = max(len(encoding.ids) for encoding in encodings)
        feeds = {name: np.zeros((len(encodings), longest), dtype=np.int64) for name in INPUT_FIELDS}
        for row, encoding in enumerate(encodings):
            for name, field in INPUT_FIELDS.items():
                values = getattr(encoding, field)
                feeds[name][row, : len(values)] = values
        inputs = {name: feeds[name] for name in self._exported.input_names}
        (vectors,) = self._session.run([OUTPUT_NAME], inputs)
        return np.asarray(vectors, dtype=np.float32)

    def embed_texts(self, texts: list[str]) -> Vectors:
        """The texts in one run (the export's own check against torch)."""
        return self.run(self.tokenize(texts))


# The graph's inputs, from each text's Encoding: padding is token 0, mask 0, segment 0.
INPUT_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


def plan_runs(lengths: Sequence[int], *, tokens_per_run: int, texts_per_run: int) -> list[list[int]]:
    """Texts (by their token counts) grouped into session runs, longest first: a run takes texts
    while its padded size (texts x longest) stays within `tokens_per_run` and it holds at most
    `texts_per_run`. Sorted by length, a run's texts are of nearly one length, so it pads little
    however the texts arrived; the budget keeps a run's activations in the caches whatever that
    length is: 16 texts of 256 tokens, or 200 titles."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    runs: list[list[int]] = []
    for index in order:
        if (
            runs
            and len(runs[-1]) < texts_per_run
            and (len(runs[-1]) + 1) * lengths[runs[-1][0]] <= tokens_per_run
        ):
            runs[-1].append(index)
        else:
            runs.append([index])
    return runs


class OnnxEmbedder(SerialEmbedder):
    """The Embedder protocol over onnxruntime; counts its calls like SentenceTransformerEmbedder."""

    def __init__(
        self,
        model: str,
        *,
        quantized: bool,
        cache: Path,
        device: str | None = None,
        texts_per_run: int | None = None,
        tokens_per_run: int | None = None,
    ) -> None:
        exported = ensure_exported(model, resolve_model(model), cache, quantized=quantized)
        self._runner = OnnxRunner(exported, quantized=quantized, providers=providers_for(device))
        super().__init__(model)
        self._dimension = exported.dimension
        # int8 runs each text alone: its activations are scaled over the whole input, so in a
        # shared run a text's vector would depend on the other texts (and their padding).
        self._texts_per_run = 1 if quantized else (texts_per_run or TEXTS_PER_RUN)
        on_gpu = CUDA in self.providers
        self._tokens_per_run = tokens_per_run or (GPU_TOKENS_PER_RUN if on_gpu else CPU_TOKENS_PER_RUN)

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def providers(self) -> list[str]:
        return self._runner.providers

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (a `tokenizers.Tokenizer`), for splitting texts into chunks."""
        return self._runner.tokenizer

    @property
    def max_tokens(self) -> int:
        return self._runner.max_tokens

    def _encode(self, texts: list[str]) -> Vectors:
        # A text that comes twice in a call (a default value, a repeated title) is run once.
        unique = list(dict.fromkeys(texts))
        encodings = self._runner.tokenize(unique)
        lengths = [len(encoding.ids) for encoding in encodings]
        vectors = np.empty((len(unique), self._dimension), dtype=np.float32)
        for run in plan_runs(lengths, tokens_per_run=self._tokens_per_run, texts_per_run=self._texts_per_run):
            vectors[run] = self._runner.run([encodings[i] for i in run])
        if len(unique) == len(texts):
            return vectors
        position = {text: i for i, text in enumerate(unique)}
        return vectors[[position[text] for text in texts]]


# Measured on all-MiniLM-L6-v2 over three corpora (bench/embedding_speed.py, 2 cores): see README,
# "Embedding speed". A run's padded tokens: its texts x the longest of them.
CPU_TOKENS_PER_RUN = 1024
GPU_TOKENS_PER_RUN = 65_536
TEXTS_PER_RUN = 64


def providers_for(device: str | None) -> list[Any]:
    """onnxruntime's CUDA provider for a cuda device (or no device, where it is installed), else CPU."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    wants_cuda = device is None or device.startswith("cuda")
    if wants_cuda and CUDA in available:
        _, _, index = (device or "cuda").partition(":")
        return [(CUDA, {"device_id": int(index or 0)}), CPU]
    if device is not None and device != "cpu":
        log.warning("onnx_device_unavailable", device=device, providers=available, using="cpu")
    return [CPU]


def ensure_exported(model: str, source: str, cache: Path, *, quantized: bool) -> ExportedModel:
    """The export of `model` (loaded from `source`) under `cache`, made now if it is missing.

    Processes starting together on an empty cache each export into a directory of their own and
    rename it into place: the first rename wins, the others use its export."""
    directory = cache / "onnx" / export_name(model, source)
    missing = not (directory / METADATA_FILE).exists()
    if missing:  # an export made at an image's build needs no model files at run time
        check_model_source(model, source)
    try:
        if missing:
            _export_into_place(model, source, directory)
        exported = ExportedModel.read(directory)
        if quantized and not exported.graph(quantized=True).exists():
            _quantize_into_place(exported)
    except OSError as exc:
        raise StartupError(
            f"cannot write the ONNX export of model {model!r} under {cache}: {exc.strerror or exc}; "
            "set VECMIRROR_MODEL_CACHE to a writable directory, or use embed.backend: torch"
        ) from exc
    return exported


def export_name(model: str, source: str) -> str:
    """A directory name that changes when the model's files change."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", model).strip("_.")[-60:]
    identity = {"format": EXPORT_FORMAT, "model": model, "source": source, "files": _stamps(Path(source))}
    return f"{slug}-{hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]}"


def _stamps(directory: Path) -> list[tuple[str, int, int]]:
    """Names, sizes and modification times of a local model's files (a hub name has none)."""
    if not directory.is_dir():
        return []
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    return [(str(p.relative_to(directory)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def _export_into_place(model: str, source: str, directory: Path) -> None:
    directory.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log.info("onnx_export_started", model=model, directory=str(directory))
    scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=directory.parent))
    try:
        _export(source, scratch)
        # mkdtemp makes it private (0700); an image's build-time export (root) is read by its
        # non-root user, and an export holds nothing the model's files do not.
        scratch.chmod(EXPORT_DIRECTORY_MODE)
        try:
            scratch.rename(directory)
        except OSError:
            if not (directory / METADATA_FILE).exists():
                raise  # no other process's finished export is there: a real failure
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("onnx_export_finished", model=model, seconds=round(time.perf_counter() - started, 1))


def _quantize_into_place(exported: ExportedModel) -> None:
    target = exported.graph(quantized=True)
    scratch = target.with_name(f".{target.name}.{os.getpid()}")
    log.info("onnx_quantize_started", directory=str(exported.directory))
    try:
        _quantize(exported, scratch)
        os.replace(scratch, target)  # atomic: a reader sees no file or the whole file
    finally:
        scratch.unlink(missing_ok=True)


# Imported when called: the exporter loads torch, which running an export does not need.
def _export(source: str, directory: Path) -> None:
    from vecmirror.pipeline.onnx_export import export

    export(source, directory)


def _quantize(exported: ExportedModel, target: Path) -> None:
    from vecmirror.pipeline.onnx_export import quantize

    quantize(exported, target)
