"""The ONNX backends against torch on the real model: close vectors, the same neighbours, results that
do not depend on batching, the model's own truncation; then a mirror on each backend end to end."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest
import redis
from structlog.testing import capture_logs

from helpers import (
    DOCS_MIRROR,
    DOCS_TABLE,
    ODD_TEXTS,
    hash_doc,
    sync_once,
    three_docs_on,
    vector_at,
    vector_of,
)
from processes import vecmirror
from vecmirror.commands import migrate_command, verify_command
from vecmirror.config import DEFAULT_MODEL, Backend, ModelSpec
from vecmirror.pipeline.embedder import Embedder, SentenceTransformerEmbedder, load_embedder
from vecmirror.pipeline.onnx import OnnxEmbedder
from vecmirror.query import MirrorSearch
from vecmirror.settings import Settings

TEXTS = [*ODD_TEXTS, "Pet mice need small cages and fresh water every day."]
CORPUS = [
    f"{animal} {verb} {place}"
    for animal in ("cats", "dogs", "mice", "horses", "parrots")
    for verb in ("sleep in", "run around", "hide under")
    for place in ("the barn", "a sofa", "the garden", "a rocket")
]
QUERIES = ["a cat on the couch", "space travel", "farm animals", "small rodents hiding", "birds talking"]


@pytest.fixture(scope="session")
def torch_embedder() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def onnx(model_cache: Path) -> OnnxEmbedder:
    embedder = load_embedder(ModelSpec(DEFAULT_MODEL, "onnx"), Settings(model_cache=model_cache))
    assert isinstance(embedder, OnnxEmbedder)
    return embedder


@pytest.fixture(scope="session")
def onnx_int8(model_cache: Path) -> OnnxEmbedder:
    embedder = load_embedder(ModelSpec(DEFAULT_MODEL, "onnx-int8"), Settings(model_cache=model_cache))
    assert isinstance(embedder, OnnxEmbedder)
    return embedder


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))


def neighbours(embedder: Embedder, k: int = 5) -> list[list[int]]:
    scores = embedder.embed(QUERIES) @ embedder.embed(CORPUS).T
    return [list(row) for row in np.argsort(-scores, axis=1, kind="stable")[:, :k]]


def test_float_onnx_vectors_equal_torchs(onnx: OnnxEmbedder, torch_embedder: Embedder) -> None:
    got, expected = onnx.embed(TEXTS), torch_embedder.embed(TEXTS)
    assert got.shape == (len(TEXTS), 384) and got.dtype == np.float32
    assert cosines(got, expected).min() > 0.9999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # the Normalize module ran
    assert neighbours(onnx) == neighbours(torch_embedder)


def test_int8_vectors_stay_close_to_torchs(onnx_int8: OnnxEmbedder, torch_embedder: Embedder) -> None:
    similarity = cosines(onnx_int8.embed(TEXTS), torch_embedder.embed(TEXTS))
    assert similarity.mean() > 0.98 and similarity.min() > 0.95
    # int8 may swap neighbours that are nearly tied (this corpus has many), but torch's nearest one
    # stays among its five nearest.
    for got, expected in zip(neighbours(onnx_int8), neighbours(torch_embedder), strict=True):
        assert expected[0] in got


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_batching_does_not_change_any_vector(backend: Backend, model_cache: Path) -> None:
    spec, settings = ModelSpec(DEFAULT_MODEL, backend), Settings(model_cache=model_cache)
    together = load_embedder(spec, settings).embed(TEXTS)
    in_threes = load_embedder(spec, Settings(model_cache=model_cache, embed_batch_size=3)).embed(TEXTS)
    alone = np.concatenate([load_embedder(spec, settings).embed([text]) for text in TEXTS])
    np.testing.assert_allclose(in_threes, together, atol=1e-5)
    np.testing.assert_allclose(alone, together, atol=1e-5)


def test_float_vectors_do_not_depend_on_the_texts_run_with_them(
    onnx: OnnxEmbedder, model_cache: Path
) -> None:
    # On a CPU each text runs alone; on a GPU texts share runs, padded to the longest of them.
    for texts_per_run in (2, 64):
        shared = OnnxEmbedder(DEFAULT_MODEL, quantized=False, cache=model_cache, texts_per_run=texts_per_run)
        np.testing.assert_allclose(shared.embed(TEXTS), onnx.embed(TEXTS), atol=1e-5)


def test_text_past_the_models_length_is_truncated_like_torch_does(
    onnx: OnnxEmbedder, torch_embedder: Embedder
) -> None:
    long = " ".join(f"word{i}" for i in range(600))
    got = onnx.embed([long, long + " and a different ending"])
    np.testing.assert_allclose(got[0], got[1], atol=1e-6)
    assert cosines(got[:1], torch_embedder.embed([long]))[0] > 0.9999


def test_the_export_is_made_once_per_cache(onnx: OnnxEmbedder, model_cache: Path) -> None:
    with capture_logs() as logs:
        again = load_embedder(ModelSpec(DEFAULT_MODEL, "onnx"), Settings(model_cache=model_cache))
    assert [e["event"] for e in logs if e["event"].startswith("onnx_")] == []
    np.testing.assert_array_equal(again.embed(TEXTS[:3]), onnx.embed(TEXTS[:3]))
    assert again.model == DEFAULT_MODEL and again.dimension == 384


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
async def test_a_mirror_on_an_onnx_backend_syncs_and_answers_queries(
    backend: str,
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    write_config: Any,
    settings_for: Any,
    cli_env: dict[str, str],
    model_cache: Path,
    onnx: OnnxEmbedder,
    onnx_int8: OnnxEmbedder,
    tmp_path: Path,
) -> None:
    path, settings, config = await three_docs_on(
        backend, pg, write_config, settings_for, model_cache=model_cache
    )
    stored = vector_of(hash_doc(redis_client, "doc:2"))
    same_backend = onnx if backend == "onnx" else onnx_int8
    np.testing.assert_allclose(stored, same_backend.embed(["Rockets: Rockets reach orbit"])[0], atol=1e-5)
    async with MirrorSearch.open(settings, config) as search:
        hits = await search.knn("docs", text="space travel", k=3)
    assert hits[0].id == "doc:2"
    # The CLI on an empty cache: it exports on first use, with no step of its own and no noise on stdout.
    env = {**cli_env, "VECMIRROR_MODEL_CACHE": str(tmp_path / "empty-cache")}
    answer = vecmirror(env, "query", "docs", "kittens and yarn", "--k", "1", "--json", "--config", str(path))
    assert answer.returncode == 0, answer.stderr
    assert [hit["id"] for hit in json.loads(answer.stdout)] == ["doc:1"]
    events = [json.loads(line)["event"] for line in answer.stderr.splitlines()]
    assert events[:2] == ["onnx_export_started", "onnx_export_finished"]


async def test_switching_to_int8_re_embeds_unchanged_text_and_exact_backends_keep_it(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    write_config: Any,
    settings_for: Any,
    model_cache: Path,
    onnx_int8: OnnxEmbedder,
) -> None:
    await pg.execute(DOCS_TABLE)
    path, config = write_config([DOCS_MIRROR])  # no backend: this CPU's default, torch-bf16 or onnx
    settings = settings_for(path, model_cache=model_cache)
    await migrate_command(settings, config)
    await pg.execute(
        "INSERT INTO docs VALUES (1, 'Kittens', 'Young cats play with yarn', 'pets'), "
        "(2, 'Rockets', 'Rockets reach orbit', 'space')"
    )
    await sync_once(settings, config)
    before = hash_doc(redis_client, "doc:1")

    async def switch(backend: str, genre: str) -> Any:
        """The mirror moves to `backend`, then row 1 changes a column its text does not use."""
        mirror = copy.deepcopy(DOCS_MIRROR)
        mirror["embed"]["backend"] = backend
        path, config = write_config([mirror])
        await pg.execute("UPDATE docs SET genre = $1 WHERE id = 1", genre)
        await sync_once(settings_for(path, model_cache=model_cache), config)
        return config

    # torch and the default are exact backends: the stored vector is kept, under the same hash.
    await switch("torch", "cats")
    after = hash_doc(redis_client, "doc:1")
    assert after["genre"] == b"cats"
    assert (after["embedding"], after["_vm_hash"]) == (before["embedding"], before["_vm_hash"])

    # int8's vectors differ: the unchanged text is embedded again.
    assert vector_at(redis_client, "docs_idx") == "embedding"  # nothing moved: the same vectors
    config = await switch("onnx-int8", "kittens")
    after = hash_doc(redis_client, "doc:1")
    assert after["genre"] == b"kittens" and after["_vm_hash"] != before["_vm_hash"]
    expected = onnx_int8.embed(["Kittens: Young cats play with yarn", "Rockets: Rockets reach orbit"])
    # Made beside the old ones (index/rollout.py), which went once the new index answered.
    moved_to = vector_at(redis_client, "docs_idx")
    assert moved_to.startswith("embedding__") and "embedding" not in after
    np.testing.assert_allclose(vector_of(after, moved_to), expected[0], atol=1e-5)
    # The row that did not change is read again too (the backend changed: index/rollout.py's
    # embedding digest), so no document keeps the default backend's vector.
    np.testing.assert_allclose(vector_of(hash_doc(redis_client, "doc:2"), moved_to), expected[1], atol=1e-5)
    [drift] = await verify_command(settings, config, None, repair=False)
    assert drift.clean, drift.lines()


def test_a_model_of_unbounded_text_length_asks_for_the_torch_backend(tmp_path: Path) -> None:
    """A static-embedding model (any text length: its maximum is infinite) crashed the export with
    a raw OverflowError on the default CPU backend; start-up now names the model and the fix."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    from tokenizers import Tokenizer

    from vecmirror.errors import StartupError
    from vecmirror.pipeline.embedder import resolve_model

    tokenizer = Tokenizer.from_file(str(Path(resolve_model(DEFAULT_MODEL)) / "tokenizer.json"))
    static = tmp_path / "static-16"
    SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_dim=16)], device="cpu").save(
        str(static)
    )
    settings = Settings(model_cache=tmp_path / "cache")
    with pytest.raises(StartupError, match=r"no finite maximum sequence length.*embed\.backend: torch"):
        load_embedder(ModelSpec(str(static), "onnx"), settings)
    assert load_embedder(ModelSpec(str(static), "torch"), settings).dimension == 16
