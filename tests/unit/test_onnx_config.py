"""embed.backend in the mirrors file, one model per (model, backend) pair, and the ONNX device choice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnxruntime
import pytest
from structlog.testing import capture_logs

from vecmirror.app import load_embedders
from vecmirror.config import BACKENDS, DEFAULT_MODEL, ModelSpec, parse_config
from vecmirror.errors import ConfigError
from vecmirror.pipeline import embedder as embedder_module
from vecmirror.pipeline.embedder import Embedder, FakeEmbedder, backend_for, cpu_has_fast_bf16
from vecmirror.pipeline.onnx import providers_for

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


def mirror(name: str, **embed: str) -> dict[str, Any]:
    return {
        "name": name,
        "table": name,
        "embed": {"field": "v", "template": "{body}", **embed},
        "index": {
            "index": {"name": f"{name}_idx", "prefix": name},
            "fields": [{"name": "v", "type": "vector", "attrs": {"algorithm": "flat", "dims": 8}}],
        },
    }


def test_every_backend_is_accepted_and_unset_means_the_devices_default() -> None:
    cases = [(mirror("a"), None), *((mirror("a", backend=b), b) for b in BACKENDS)]
    for raw, backend in cases:
        embed = parse_config({"mirrors": [raw]}).mirrors[0].embed
        assert embed is not None and embed.spec == ModelSpec(DEFAULT_MODEL, backend)


@pytest.mark.parametrize(("fast_bf16", "cpu_default"), [(False, "onnx"), (True, "torch-bf16")])
def test_the_default_backend_follows_the_cpu_and_is_torch_on_cuda(
    monkeypatch: pytest.MonkeyPatch, fast_bf16: bool, cpu_default: str
) -> None:
    monkeypatch.setattr(embedder_module, "cpu_has_fast_bf16", lambda: fast_bf16)
    default = ModelSpec(DEFAULT_MODEL)
    assert [backend_for(default, device) for device in (None, "cpu", "cuda", "cuda:1")] == [
        cpu_default,
        cpu_default,
        "torch",
        "torch",
    ]
    assert backend_for(ModelSpec(DEFAULT_MODEL, "onnx-int8"), "cuda") == "onnx-int8"
    assert backend_for(ModelSpec(DEFAULT_MODEL, "torch"), "cpu") == "torch"
    assert backend_for(ModelSpec(DEFAULT_MODEL, "onnx"), "cpu") == "onnx"


CPUINFO = "processor\t: 0\nmodel name\t: a CPU\nflags\t\t: fpu sse avx512f {extra}\n\nprocessor\t: 1\n"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [("amx_bf16 amx_tile", True), ("avx512_bf16", True), ("amx_tile", False), ("avx512f", False)],
)
def test_fast_bf16_is_read_from_the_cpu_flags(tmp_path: Path, extra: str, expected: bool) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(extra=extra))
    assert cpu_has_fast_bf16(cpuinfo) is expected


def test_no_cpu_flags_file_means_no_fast_bf16(tmp_path: Path) -> None:
    assert cpu_has_fast_bf16(tmp_path / "absent") is False


def test_an_unknown_backend_names_the_mirror_key_and_the_choices() -> None:
    raw = {"mirrors": [mirror("a", backend="tensorrt"), mirror("b", backend="ONNX")]}
    with pytest.raises(ConfigError) as refused:
        parse_config(raw)
    assert refused.value.problems == [
        "mirror 'a': embed.backend: Input should be 'torch', 'torch-bf16', 'onnx' or 'onnx-int8'",
        "mirror 'b': embed.backend: Input should be 'torch', 'torch-bf16', 'onnx' or 'onnx-int8'",
    ]


def test_mirrors_share_a_loaded_model_only_on_the_same_backend() -> None:
    raw = {
        "mirrors": [
            mirror("a", backend="onnx"),
            mirror("b", backend="onnx"),
            mirror("c", backend="torch"),
            mirror("e"),
            mirror("d", backend="onnx-int8", model="other/model"),
        ]
    }
    loaded: list[ModelSpec] = []

    def factory(spec: ModelSpec) -> Embedder:
        loaded.append(spec)
        return FakeEmbedder(8, model=spec.model)

    embedders = load_embedders(parse_config(raw), factory)
    assert loaded == [
        ModelSpec(DEFAULT_MODEL, "onnx"),
        ModelSpec(DEFAULT_MODEL, "torch"),
        ModelSpec(DEFAULT_MODEL, None),
        ModelSpec("other/model", "onnx-int8"),
    ]
    assert set(embedders) == set(loaded)


def test_cuda_uses_onnxruntimes_cuda_provider_when_it_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU])
    assert providers_for("cuda") == [(CUDA, {"device_id": 0}), CPU]
    assert providers_for("cuda:1") == [(CUDA, {"device_id": 1}), CPU]
    assert providers_for(None) == [(CUDA, {"device_id": 0}), CPU]  # like torch: a GPU when there is one
    assert providers_for("cpu") == [CPU]


def test_cuda_without_the_cuda_provider_runs_on_the_cpu_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CPU])
    with capture_logs() as logs:
        assert providers_for("cuda") == [CPU]
        assert providers_for(None) == [CPU]
        assert providers_for("cpu") == [CPU]
    assert logs == [
        {
            "event": "onnx_device_unavailable",
            "device": "cuda",
            "providers": [CPU],
            "using": "cpu",
            "log_level": "warning",
        }
    ]
