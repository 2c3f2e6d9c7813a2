"""New vectors made beside the old ones (index/rollout.py, place_vectors): another model, dims or
template builds them at `<field>__<digest>`, the index users query keeps answering from the old
ones until the new generation takes over, then the old ones go. Real servers, real models (the
default and a 256-dims one made from it, see conftest's minilm_256)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest
import redis
from prometheus_client import CollectorRegistry
from redis.commands.search.query import Query

from helpers import DOCS_MIRROR, PRODUCTS_MIRROR, PRODUCTS_TABLE, hash_doc, json_doc, vector_at, vector_of
from invariant import assert_invariant
from vecmirror.app import open_app
from vecmirror.commands import (
    migrate_and_remove,
    migrate_command,
    plan_command,
    status_command,
    verify_command,
)
from vecmirror.config import ModelSpec
from vecmirror.ops.metrics import Metrics
from vecmirror.ops.plan import format_plan, rebuild_note
from vecmirror.ops.status import format_status
from vecmirror.pipeline.embedder import Embedder, load_embedder
from vecmirror.query.search import MirrorSearch
from vecmirror.settings import Settings

ROWS = 30
TABLE = "CREATE TABLE docs (id integer PRIMARY KEY, title text NOT NULL, content text, genre text)"


def _mirror(*, storage: str = "hash", template: str = "{title}: {content}", model: Path | None = None) -> Any:
    fields = [dict(f) for f in DOCS_MIRROR["index"]["fields"]]
    if model is not None:
        fields[-1] = {**fields[-1], "attrs": {**fields[-1]["attrs"], "dims": 256}}
    embed = {**DOCS_MIRROR["embed"], "template": template, **({"model": str(model)} if model else {})}
    index = {**DOCS_MIRROR["index"], "index": {**DOCS_MIRROR["index"]["index"], "storage_type": storage}}
    return {**DOCS_MIRROR, "embed": embed, "index": {**index, "fields": fields}}


@dataclass(frozen=True)
class World:
    """What every test here uses: both servers, the config and settings makers, the models."""

    pg: asyncpg.Connection
    redis: redis.Redis
    redis_url: str
    write_config: Any
    settings_for: Any
    factory: Any

    def parts(self) -> tuple[asyncpg.Connection, redis.Redis, str, Any, Any, Any]:
        return self.pg, self.redis, self.redis_url, self.write_config, self.settings_for, self.factory


@pytest.fixture
def world(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    redis_url: str,
    write_config: Any,
    settings_for: Any,
    embedder: Embedder,
) -> World:
    return World(pg, redis_client, redis_url, write_config, settings_for, _factory(embedder))


def _factory(embedder: Embedder) -> Any:
    """The session's default model, any other model loaded as `run` loads it."""

    def load(spec: ModelSpec) -> Embedder:
        return embedder if spec == ModelSpec() else load_embedder(spec, Settings())

    return load


async def _fill(pg: asyncpg.Connection) -> None:
    await pg.execute(TABLE)
    await pg.execute(
        "INSERT INTO docs SELECT g, 'Title ' || g, 'Content number ' || g, 'g' FROM generate_series(1, $1) g",
        ROWS,
    )


async def _run(settings: Settings, config: Any, factory: Any) -> Any:
    await migrate_command(settings, config)
    async with open_app(settings, config, factory) as app:
        worker = app.worker()
        await worker.run_once()
    return worker


def _computed(worker: Any) -> float:
    return float(worker.metrics.embeddings.labels("docs", "computed")._value.get())


def _knn_hits(client: redis.Redis, dims: int) -> int:
    query = Query("*=>[KNN 10 @embedding $v AS d]").return_fields("d").dialect(2).paging(0, 10)
    return len(client.ft("docs_idx").search(query, {"v": np.ones(dims, dtype=np.float32).tobytes()}).docs)


async def test_json_documents_keep_the_old_vectors_until_the_new_model_takes_over(
    world: World, minilm_256: Path
) -> None:
    """JSON documents are written whole (JSON.SET): the old vector path is carried over, so the old
    index answers KNN over every row while the new model's vectors (other dims) are made."""
    pg, redis_client, redis_url, write_config, settings_for, factory = world.parts()
    await _fill(pg)
    path, config = write_config([_mirror(storage="json")])
    await _run(settings_for(path), config, factory)
    path, config = write_config([_mirror(storage="json", model=minilm_256)])
    settings = settings_for(path, batch_size=5, max_batch_size=5)
    await migrate_command(settings, config)
    async with open_app(settings, config, factory) as app:
        [sync] = app.syncs
        moved_to = sync.mirror.vector_at
        assert moved_to is not None and moved_to.startswith("$.embedding__") and sync.rebuild_into
        worker = app.worker()
        await worker.prepare()
        async with app.pool.acquire() as conn:
            stats = await sync.sync_batch(conn)
        assert stats is not None and stats.embedded == 5
        # Mid-fill: the old index still answers from the old vectors, over every row.
        assert redis_client.ft("docs_idx").info()["num_docs"] in (str(ROWS), ROWS)
        assert _knn_hits(redis_client, 384) == 10
        written = [json_doc(redis_client, f"doc:{i}") for i in range(1, ROWS + 1)]
        both = [d for d in written if "embedding" in d and moved_to.removeprefix("$.") in d]
        assert len(both) == 5 and all(len(d["embedding"]) == 384 for d in both)
        await worker.run_once()
    assert _knn_hits(redis_client, 256) == 10
    assert vector_at(redis_client, "docs_idx") == moved_to
    document = json_doc(redis_client, "doc:7")
    assert "embedding" not in document and len(document[moved_to.removeprefix("$.")]) == 256
    expected = factory(ModelSpec(str(minilm_256))).embed(["Title 7: Content number 7"])[0]
    assert float(np.dot(document[moved_to.removeprefix("$.")], expected)) > 0.999
    # `query` embeds with the new model and returns the vectors from where they are now.
    async with MirrorSearch.open(settings, config, factory) as search:
        [hit] = await search.knn("docs", text="Title 7: Content number 7", k=1, with_vectors=True)
    assert hit.id == "doc:7" and hit.vector is not None and len(hit.vector) == 256
    await assert_invariant(pg, redis_url, config.mirrors[0])


async def test_unchanged_texts_are_copied_and_a_restart_mid_fill_goes_on(world: World) -> None:
    """A template that renders some rows as before: their vectors are copied to the new place, not
    embedded again. A worker stopped mid-fill and started again finishes the same generation, and
    embeds nothing it already embedded."""
    pg, redis_client, redis_url, write_config, settings_for, factory = world.parts()
    await _fill(pg)
    await pg.execute("UPDATE docs SET content = '' WHERE id <= 10")
    path, config = write_config([_mirror(template="{title}{content}")])
    await _run(settings_for(path), config, factory)
    before = vector_of(hash_doc(redis_client, "doc:3"))
    # The new template renders rows 1-10 (empty content) exactly as before: "Title N".
    path, config = write_config([_mirror(template="{content}{title}")])
    settings = settings_for(path, batch_size=5, max_batch_size=5)
    await migrate_command(settings, config)
    async with open_app(settings, config, factory) as app:
        target = app.syncs[0].rebuild_into
        worker = app.worker()
        await worker.prepare()
        first = 0
        async with app.pool.acquire() as conn:
            while first < 10:  # stopped mid-fill
                stats = await app.syncs[0].sync_batch(conn)
                assert stats is not None
                first += stats.embedded
    async with open_app(settings, config, factory) as app:
        assert app.syncs[0].rebuild_into == target
        worker = await _drain(app)
    assert 10 <= first < ROWS - 10 and first + _computed(worker) == ROWS - 10, (first, _computed(worker))
    moved_to = vector_at(redis_client, "docs_idx")
    assert moved_to.startswith("embedding__")
    copied = hash_doc(redis_client, "doc:3")
    assert "embedding" not in copied and np.array_equal(vector_of(copied, moved_to), before)
    await assert_invariant(pg, redis_url, config.mirrors[0])


async def _drain(app: Any) -> Any:
    worker = app.worker()
    await worker.run_once()
    return worker


async def test_an_index_dropped_after_a_move_is_rebuilt_where_the_vectors_are(world: World) -> None:
    """FT.DROPINDEX by hand after new vectors took over: the index comes back reading them where
    they are, and no row is embedded again."""
    pg, redis_client, redis_url, write_config, settings_for, factory = world.parts()
    await _fill(pg)
    path, config = write_config([_mirror()])
    await _run(settings_for(path), config, factory)
    path, config = write_config([_mirror(template="{content} ({title})")])
    await _run(settings_for(path), config, factory)
    moved_to = vector_at(redis_client, "docs_idx")
    answering = str(redis_client.ft("docs_idx").info()["index_name"])
    redis_client.execute_command("FT.DROPINDEX", answering)
    worker = await _run(settings_for(path), config, factory)
    assert _computed(worker) == 0
    assert vector_at(redis_client, "docs_idx") == moved_to
    assert _knn_hits(redis_client, 384) == 10
    await assert_invariant(pg, redis_url, config.mirrors[0])


async def test_status_and_metrics_show_a_rebuild_then_a_rollback_drops_it(world: World) -> None:
    """Mid-fill, `status` and /metrics show the new generation filling beside the index users
    query, and `verify` reports (a HASH document holding two vectors once crashed it). The file
    rolled back before the switch: its worker, still running all along, takes the mirror back once
    the newer file's lease ran out, drops the abandoned generation and the vectors only it read, and
    embeds again only the rows the newer file rewrote (their hashes are its own)."""
    pg, redis_client, redis_url, write_config, settings_for, factory = world.parts()
    await _fill(pg)
    old_path, old_config = write_config([_mirror()])
    old_settings = settings_for(old_path, config_lease=0.2)
    await _run(old_settings, old_config, factory)
    async with open_app(old_settings, old_config, factory) as old_app:
        old_worker = old_app.worker()
        await old_worker.prepare()
        target, moved_to, status, metrics, drift = await _half_rolled_out(world)
        await asyncio.sleep(0.3)  # the newer file's lease runs out: its workers are gone
        await old_worker.run_once()
    assert _computed(old_worker) == 5
    rebuild = status.as_dict(0.0)["index"]["rebuild"]
    assert rebuild == {"name": target, "percent_indexed": 100.0}, rebuild
    assert status.queue.pending == ROWS - 5
    assert f"rebuilding online into {target} (100% indexed): it takes over once the 25 pending" in (
        format_status([status], 0.0)
    )
    assert metrics.rebuilding.labels("docs")._value.get() == 1
    # Mid-rollout the new file's hashes are not yet the served vectors': a report, not a crash.
    assert (drift.rows, drift.documents) == (ROWS, ROWS), drift.lines()
    assert {_text(n) for n in redis_client.execute_command("FT._LIST")} == {"docs_idx"}
    assert not any(redis_client.hexists(k, str(moved_to)) for k in redis_client.scan_iter("doc:*"))
    [status] = await status_command(settings_for(old_path), old_config)
    assert status.index.rebuild is None and status.index.answering == "docs_idx"
    await assert_invariant(pg, redis_url, old_config.mirrors[0])


async def _half_rolled_out(world: World) -> tuple[Any, ...]:
    """A template change, its first batch of 5 synced; what status, /metrics and verify say then."""
    _, redis_client, _, write_config, settings_for, factory = world.parts()
    path, config = write_config([_mirror(template="{content} ({title})")])
    settings = settings_for(path, batch_size=5, max_batch_size=5, config_lease=0.2)
    await migrate_command(settings, config)
    async with open_app(settings, config, factory) as app:
        [sync] = app.syncs
        target, moved_to = sync.rebuild_into, sync.mirror.vector_at
        worker = app.worker()
        await worker.prepare()
        async with app.pool.acquire() as conn:
            await sync.sync_batch(conn)
        await _until_indexed(redis_client, str(target))
        [status] = await status_command(settings, config)
        metrics = Metrics(CollectorRegistry())
        metrics.index_sampled("docs", status.index)
    [drift] = await verify_command(settings_for(write_config([_mirror()])[0]), config, None, repair=False)
    assert sum(1 for k in redis_client.scan_iter("doc:*") if redis_client.hexists(k, str(moved_to))) == 5
    return target, moved_to, status, metrics, drift


async def _until_indexed(client: redis.Redis, index: str) -> None:
    for _ in range(100):
        info = client.ft(index).info()
        if not int(info["indexing"]) and float(info["percent_indexed"]) == 1:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{index} still indexing")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def test_a_new_prefix_and_storage_move_the_documents_online(world: World) -> None:
    """HASH under `doc` to JSON under `article`: the new generation is filled under the new keys
    while the index users query answers from the old ones (a row deleted meanwhile leaves it at
    once); after the switch the old keys are gone and Redis equals the table."""
    pg, redis_client, redis_url, write_config, settings_for, factory = world.parts()
    await _fill(pg)
    path, config = write_config([_mirror()])
    await _run(settings_for(path), config, factory)
    moved = _mirror(storage="json")
    moved["index"] = {**moved["index"], "index": {**moved["index"]["index"], "prefix": "article"}}
    path, config = write_config([moved])
    settings = settings_for(path, batch_size=5, max_batch_size=5)
    plan = await plan_command(settings, config)
    assert f"    {rebuild_note('docs_idx', online=True, moves_keys=True)}" in format_plan(plan)
    await migrate_command(settings, config)
    await pg.execute("DELETE FROM docs WHERE id = 30")
    async with open_app(settings, config, factory) as app:
        [sync] = app.syncs
        assert sync.rebuild_into is not None and sync.sink.keys_left is not None
        worker = app.worker()
        await worker.prepare()
        async with app.pool.acquire() as conn:
            stats = await sync.sync_batch(conn)
        assert stats is not None and stats.upserted + stats.deleted == 5
        # Mid-fill: the old index answers from the old keys, without the deleted row.
        info = redis_client.ft("docs_idx").info()
        assert int(info["num_docs"]) == ROWS - 1 and _text(info["index_name"]) == "docs_idx"
        assert _knn_hits(redis_client, 384) == 10 and not redis_client.exists("doc:30")
        assert len(list(redis_client.scan_iter("article:*"))) in (4, 5)
        await worker.run_once()
    assert not list(redis_client.scan_iter("doc:*"))
    assert len(list(redis_client.scan_iter("article:*"))) == ROWS - 1
    info = redis_client.ft("docs_idx").info()
    assert _text(info["index_name"]).startswith("docs_idx__") and int(info["num_docs"]) == ROWS - 1
    assert _knn_hits(redis_client, 384) == 10
    assert len(json_doc(redis_client, "article:7")["embedding"]) == 384
    [status] = await status_command(settings, config)
    assert (status.index.rebuild, status.queue.pending, status.index.documents) == (None, 0, ROWS - 1)
    await assert_invariant(pg, redis_url, config.mirrors[0])


async def test_a_move_rolled_back_before_its_switch_leaves_no_new_key(world: World) -> None:
    """A new prefix half filled, then the old file back: its workers drop the abandoned generation
    and the documents it wrote under the new keys, and the old keys stay the mirror's."""
    pg, redis_client, redis_url, write_config, settings_for, factory = world.parts()
    await _fill(pg)
    old_path, old_config = write_config([_mirror()])
    await _run(settings_for(old_path, config_lease=0.2), old_config, factory)
    moved = _mirror()
    moved["index"] = {**moved["index"], "index": {**moved["index"]["index"], "prefix": "article"}}
    path, config = write_config([moved])
    settings = settings_for(path, batch_size=5, max_batch_size=5, config_lease=0.2)
    await migrate_command(settings, config)
    async with open_app(settings, config, factory) as app:
        worker = app.worker()
        await worker.prepare()
        async with app.pool.acquire() as conn:
            await app.syncs[0].sync_batch(conn)
    assert len(list(redis_client.scan_iter("article:*"))) == 5
    await asyncio.sleep(0.3)  # the newer file's lease runs out
    await _run(settings_for(old_path, config_lease=0.2), old_config, factory)
    assert not list(redis_client.scan_iter("article:*"))
    assert {_text(n) for n in redis_client.execute_command("FT._LIST")} == {"docs_idx"}
    assert len(list(redis_client.scan_iter("doc:*"))) == ROWS
    await assert_invariant(pg, redis_url, old_config.mirrors[0])


async def test_a_generation_lost_mid_fill_is_built_again(world: World) -> None:
    """FT.DROPINDEX of the generation being filled (by hand, or Redis emptied): the rollout starts
    it again instead of pausing the mirror until someone restarts the worker."""
    pg, redis_client, redis_url, write_config, settings_for, factory = world.parts()
    await _fill(pg)
    path, config = write_config([_mirror()])
    await _run(settings_for(path), config, factory)
    path, config = write_config([_mirror(template="{content} ({title})")])
    settings = settings_for(path, batch_size=5, max_batch_size=5)
    await migrate_command(settings, config)
    async with open_app(settings, config, factory) as app:
        [sync] = app.syncs
        target = sync.rebuild_into
        worker = app.worker()
        await worker.prepare()
        async with app.pool.acquire() as conn:
            await sync.sync_batch(conn)
        redis_client.execute_command("FT.DROPINDEX", target)
        await worker.run_once()
    assert _text(redis_client.ft("docs_idx").info()["index_name"]) == target
    assert vector_at(redis_client, "docs_idx").startswith("embedding__")
    [status] = await status_command(settings, config)
    assert (status.state, status.queue.pending) == ("ok", 0)
    await assert_invariant(pg, redis_url, config.mirrors[0])


async def test_a_renamed_vector_field_copies_the_vectors_and_another_column_moves_them(world: World) -> None:
    """Renaming the vector field (same model, text and dims) copies each vector to the new place
    instead of embedding it again. A mirror of a vector column that reads another column of the
    same dims moves its vectors too (it used to keep the old column's, with verify saying in sync)."""
    pg, redis_client, redis_url, write_config, settings_for, factory = world.parts()
    await _fill(pg)
    path, config = write_config([_mirror()])
    await _run(settings_for(path), config, factory)
    renamed = _mirror()
    renamed["index"]["fields"][-1] = {**renamed["index"]["fields"][-1], "name": "emb"}
    renamed["embed"] = {**renamed["embed"], "field": "emb"}
    path, config = write_config([renamed])
    worker = await _run(settings_for(path), config, factory)
    assert _computed(worker) == 0
    moved_to = vector_at(redis_client, "docs_idx")
    assert moved_to.startswith("emb__") and "embedding" not in hash_doc(redis_client, "doc:3")
    await assert_invariant(pg, redis_url, config.mirrors[0])

    await pg.execute(PRODUCTS_TABLE)
    await pg.execute("ALTER TABLE products ADD COLUMN vec2 real[]")
    await pg.execute(
        "INSERT INTO products SELECT 's' || g, 'n', 1, ARRAY[g, 1, 0, 0], ARRAY[0, 0, 1, g] "
        "FROM generate_series(1, 12) g"
    )
    path, config = write_config([renamed, PRODUCTS_MIRROR])
    await _run(settings_for(path), config, factory)
    other_column = {**PRODUCTS_MIRROR, "vector_column": "vec2"}
    path, config = write_config([renamed, other_column])
    await _run(settings_for(path), config, factory)
    at = vector_at(redis_client, "products_idx")
    assert at.startswith("vec__")
    stored = vector_of(hash_doc(redis_client, "product:s3"), at)
    assert stored.tolist() == [0.0, 0.0, 1.0, 3.0]
    await assert_invariant(pg, redis_url, config.mirrors[1])


async def test_a_mirror_removed_mid_move_leaves_no_key_and_a_move_spares_other_documents(
    world: World,
) -> None:
    """`migrate --drop-data` of a mirror caught mid-move deletes its documents under both layouts
    (it once left the old keys for good). A row deleted mid-move deletes its old key only when that
    key is the mirror's own document (another mirror may use the old prefix by then)."""
    pg, redis_client, _, write_config, settings_for, factory = world.parts()
    await _fill(pg)
    path, config = write_config([_mirror()])
    await _run(settings_for(path), config, factory)
    moved = _mirror()
    moved["index"] = {**moved["index"], "index": {**moved["index"]["index"], "prefix": "article"}}
    path, config = write_config([moved])
    settings = settings_for(path, batch_size=5, max_batch_size=5)
    await migrate_command(settings, config)
    redis_client.delete("doc:29")
    redis_client.hset("doc:29", mapping={"title": "another mirror's", "_vm_key": '["29"]', "_vm_gen": "x"})
    await pg.execute("DELETE FROM docs WHERE id = 29")
    async with open_app(settings, config, factory) as app:
        await app.worker().prepare()
        async with app.pool.acquire() as conn:
            while (stats := await app.syncs[0].sync_batch(conn)) is not None and not stats.deleted:
                pass
    assert redis_client.hget("doc:29", "title") == b"another mirror's"
    assert list(redis_client.scan_iter("article:*")) and list(redis_client.scan_iter("doc:*"))
    redis_client.delete("doc:29")
    await pg.execute(PRODUCTS_TABLE)
    path, others = write_config([PRODUCTS_MIRROR])  # the file without docs
    await migrate_and_remove(settings_for(path), others, drop_data=True)
    assert not list(redis_client.scan_iter("article:*")) and not list(redis_client.scan_iter("doc:*"))
    assert not [n for n in redis_client.execute_command("FT._LIST") if n.startswith(b"docs_idx")]
