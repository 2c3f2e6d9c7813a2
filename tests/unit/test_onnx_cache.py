"""The ONNX export cache, with a stand-in exporter: made once, reused, shared by racing processes,
remade when the model's files change, and an unwritable cache reported as what to fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vecmirror.errors import StartupError
from vecmirror.pipeline import onnx
from vecmirror.pipeline.onnx import METADATA_FILE, ExportedModel, ensure_exported, export_name

METADATA = {"max_seq_length": 256, "dimension": 384, "input_names": ["input_ids", "attention_mask"]}


class FakeExporter:
    """Writes what a real export writes, minus the graphs' content; counts its calls."""

    def __init__(self) -> None:
        self.exports: list[Path] = []
        self.quantized: list[Path] = []

    def export(self, source: str, directory: Path) -> None:
        self.exports.append(directory)
        (directory / "model.onnx").write_text(f"graph of {source}")
        (directory / METADATA_FILE).write_text(json.dumps(METADATA))

    def quantize(self, exported: ExportedModel, target: Path) -> None:
        self.quantized.append(target)
        target.write_text("int8 " + exported.graph(quantized=False).read_text())


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> FakeExporter:
    fake = FakeExporter()
    monkeypatch.setattr(onnx, "_export", fake.export)
    monkeypatch.setattr(onnx, "_quantize", fake.quantize)
    return fake


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "model.safetensors").write_bytes(b"weights")
    (directory / "modules.json").write_text("[]")
    return directory


def test_a_model_is_exported_once_then_read_from_the_cache(
    exporter: FakeExporter, model_dir: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first = ensure_exported("my-model", str(model_dir), cache, quantized=False)
    again = ensure_exported("my-model", str(model_dir), cache, quantized=False)
    assert len(exporter.exports) == 1 and first == again
    assert first.directory.parent == cache / "onnx" and first.directory.name.startswith("my-model-")
    assert (first.max_seq_length, first.dimension) == (256, 384)
    assert first.input_names == ("input_ids", "attention_mask")
    assert [p.name for p in (cache / "onnx").iterdir()] == [first.directory.name]  # no scratch left
    # Readable by every user: an image exports as root at build time and runs as another user.
    assert first.directory.stat().st_mode & 0o777 == 0o755


def test_int8_weights_are_made_from_the_float_export_once(
    exporter: FakeExporter, model_dir: Path, tmp_path: Path
) -> None:
    exported = ensure_exported("my-model", str(model_dir), tmp_path, quantized=True)
    ensure_exported("my-model", str(model_dir), tmp_path, quantized=True)
    assert len(exporter.exports) == 1 and len(exporter.quantized) == 1
    assert exported.graph(quantized=True).read_text() == f"int8 graph of {model_dir}"
    assert sorted(p.name for p in exported.directory.iterdir()) == [
        "model-int8.onnx",
        "model.onnx",
        METADATA_FILE,
    ]


def test_a_process_that_loses_the_race_uses_the_winners_export(
    monkeypatch: pytest.MonkeyPatch, model_dir: Path, tmp_path: Path
) -> None:
    target = tmp_path / "onnx" / export_name("my-model", str(model_dir))

    def export_while_another_process_finishes(source: str, directory: Path) -> None:
        FakeExporter().export(source, directory)
        target.mkdir(parents=True)
        (target / METADATA_FILE).write_text(json.dumps({**METADATA, "dimension": 768}))
        (target / "model.onnx").write_text("the winner's graph")

    monkeypatch.setattr(onnx, "_export", export_while_another_process_finishes)
    exported = ensure_exported("my-model", str(model_dir), tmp_path, quantized=False)
    assert exported.dimension == 768 and exported.directory == target
    assert exported.graph(quantized=False).read_text() == "the winner's graph"
    assert [p.name for p in (tmp_path / "onnx").iterdir()] == [target.name]


def test_a_failed_export_leaves_nothing_behind(
    monkeypatch: pytest.MonkeyPatch, model_dir: Path, tmp_path: Path
) -> None:
    def failing_export(source: str, directory: Path) -> None:
        (directory / "model.onnx").write_text("half a graph")
        raise StartupError(f"model {source!r} could not be exported to ONNX")

    monkeypatch.setattr(onnx, "_export", failing_export)
    with pytest.raises(StartupError, match="could not be exported"):
        ensure_exported("my-model", str(model_dir), tmp_path, quantized=False)
    assert list((tmp_path / "onnx").iterdir()) == []


def test_changed_model_files_get_an_export_of_their_own(
    exporter: FakeExporter, model_dir: Path, tmp_path: Path
) -> None:
    before = ensure_exported("my-model", str(model_dir), tmp_path, quantized=False)
    (model_dir / "model.safetensors").write_bytes(b"fine-tuned weights")
    after = ensure_exported("my-model", str(model_dir), tmp_path, quantized=False)
    assert before.directory != after.directory and len(exporter.exports) == 2


def test_names_are_safe_directory_names_for_hub_models_and_paths() -> None:
    name = export_name("org/model name:v2", "org/model name:v2")
    assert name.startswith("org_model_name_v2-") and "/" not in name
    assert export_name("a/b", "a/b") != export_name("a_b", "a_b")


def test_an_unwritable_cache_says_which_setting_to_change(
    exporter: FakeExporter, model_dir: Path, tmp_path: Path
) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    with pytest.raises(StartupError, match="VECMIRROR_MODEL_CACHE") as refused:
        ensure_exported("my-model", str(model_dir), not_a_directory / "cache", quantized=False)
    assert "embed.backend: torch" in str(refused.value) and exporter.exports == []
