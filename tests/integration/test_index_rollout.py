"""An index change applied online (index/rollout.py): a new index generation is filled beside the
one users query, then the index name switches to it. A reader looping on the name meanwhile sees no
error, no smaller count and no short KNN; a new filter field costs no model call."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
import numpy as np
import pytest
import redis
from redis.commands.search.query import Query

from helpers import DOCS_MIRROR, PRODUCTS_MIRROR, PRODUCTS_TABLE, hash_doc, vector_at, vector_of
from invariant import assert_invariant
from vecmirror.app import open_app
from vecmirror.commands import QueryRequest, migrate_and_remove, migrate_command, plan_command, query_command
from vecmirror.errors import StartupError
from vecmirror.index.rollout import generation_name
from vecmirror.ops.plan import format_plan

ROWS = 60
DOCS_WITH_YEAR = (
    "CREATE TABLE docs (id integer PRIMARY KEY, title text NOT NULL, content text, genre text, year integer)"
)


def _with_fields(*extra: dict[str, Any], algorithm: str = "hnsw") -> dict[str, Any]:
    fields = [dict(f) for f in DOCS_MIRROR["index"]["fields"]]
    fields[-1] = {**fields[-1], "attrs": {**fields[-1]["attrs"], "algorithm": algorithm}}
    return {**DOCS_MIRROR, "index": {**DOCS_MIRROR["index"], "fields": [*fields[:-1], *extra, fields[-1]]}}


@contextmanager
def reader(client: redis.Redis, index: str) -> Iterator[dict[str, Any]]:
    """Queries the index name every few milliseconds: the count of documents and a KNN 10."""
    seen: dict[str, Any] = {"counts": [], "knn": [], "errors": []}
    stop = threading.Event()
    vector = np.ones(384, dtype=np.float32).tobytes()
    knn = Query("*=>[KNN 10 @embedding $v AS d]").return_fields("d").dialect(2).paging(0, 10)

    def loop() -> None:
        while not stop.is_set():
            try:
                seen["counts"].append(client.ft(index).search(Query("*").no_content().paging(0, 0)).total)
                seen["knn"].append(len(client.ft(index).search(knn, {"v": vector}).docs))
            except redis.RedisError as exc:
                seen["errors"].append(repr(exc))
            stop.wait(0.005)

    thread = threading.Thread(target=loop, name="reader")
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(10)


async def _run(settings_for: Any, write_config: Any, mirror: dict[str, Any], factory: Any = None) -> Any:
    path, config = write_config([mirror])
    settings = settings_for(path)
    await migrate_command(settings, config)
    async with open_app(settings, config, factory) as app:
        worker = app.worker()
        await worker.run_once()
    return config, worker


def _answering(client: redis.Redis, name: str) -> str:
    info = client.ft(name).info()
    return str(info["index_name"])


def _indexes(client: redis.Redis) -> set[str]:
    return {n.decode() if isinstance(n, bytes) else str(n) for n in client.execute_command("FT._LIST")}


async def test_a_new_filter_field_is_rolled_out_online_without_a_model_call(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    redis_url: str,
    write_config: Callable[..., Any],
    settings_for: Any,
) -> None:
    await pg.execute(DOCS_WITH_YEAR)
    await pg.execute(
        "INSERT INTO docs SELECT g, 'Title ' || g, 'Some text number ' || g, 'g' || (g % 3), 1990 + g % 40"
        " FROM generate_series(1, $1) g",
        ROWS,
    )
    await _run(settings_for, write_config, DOCS_MIRROR)
    with reader(redis_client, "docs_idx") as seen:
        config, worker = await _run(
            settings_for, write_config, _with_fields({"name": "year", "type": "numeric"})
        )
    assert seen["errors"] == [] and seen["counts"], seen["errors"][:3]
    assert min(seen["counts"]) == ROWS and min(seen["knn"]) == 10
    target = generation_name(config.mirrors[0])
    assert _answering(redis_client, "docs_idx") == target and _indexes(redis_client) == {target}
    in_2000s = redis_client.ft("docs_idx").search(Query("@year:[2000 2009]").paging(0, 100))
    assert in_2000s.total == await pg.fetchval("SELECT count(*) FROM docs WHERE year BETWEEN 2000 AND 2009")
    assert worker.metrics.embeddings.labels("docs", "computed")._value.get() == 0  # no model call
    assert worker.metrics.embeddings.labels("docs", "skipped")._value.get() == ROWS
    await assert_invariant(pg, redis_url, config.mirrors[0])
    # `vecmirror query` asks through the name too, though FT._LIST lists no alias.
    request = QueryRequest("docs", vector=[1.0] * 384, k=3, filter_expression="@year:[2000 2009]")
    hits = await query_command(settings_for(write_config([DOCS_MIRROR])[0]), config, request)
    assert len(hits) == 3

    # A second change goes from alias to alias; the generation it replaces is dropped.
    with reader(redis_client, "docs_idx") as seen:
        config, _ = await _run(settings_for, write_config, _with_fields(algorithm="flat"))
    assert seen["errors"] == [] and min(seen["counts"]) == ROWS and min(seen["knn"]) == 10
    assert _indexes(redis_client) == {generation_name(config.mirrors[0])}
    await assert_invariant(pg, redis_url, config.mirrors[0])


async def test_a_change_documents_cannot_follow_online_still_stops_start_up(
    pg: asyncpg.Connection, redis_client: redis.Redis, write_config: Callable[..., Any], settings_for: Any
) -> None:
    """Another storage under the same prefix (the same key names would hold two types), and a new
    prefix that overlaps the old one (each index would read the other's documents)."""
    await pg.execute(DOCS_WITH_YEAR)
    await pg.execute("INSERT INTO docs SELECT g, 'T', 'Text', 'g', 2001 FROM generate_series(1, 5) g")
    await _run(settings_for, write_config, DOCS_MIRROR)
    index = DOCS_MIRROR["index"]
    as_json = {**DOCS_MIRROR, "index": {**index, "index": {**index["index"], "storage_type": "json"}}}
    overlapping = {**DOCS_MIRROR, "index": {**index, "index": {**index["index"], "prefix": "doc:v2"}}}
    # `docs` extends `doc`: FT.CREATE's PREFIX doc reads docs:1 too. A new separator alone under the
    # same prefix once deleted every document, with `plan` saying nothing would change.
    extending = {**DOCS_MIRROR, "index": {**index, "index": {**index["index"], "prefix": "docs"}}}
    dashed = {**DOCS_MIRROR, "index": {**index, "index": {**index["index"], "key_separator": "-"}}}
    refusals = (
        (as_json, "change index.prefix too"),
        (overlapping, "overlap"),
        (extending, "overlap"),
        (dashed, "key_separator: another separator"),
    )
    for mirror, why in refusals:
        path, config = write_config([mirror])
        plan = await plan_command(settings_for(path), config)
        assert plan.mirrors[0].problem is not None and why in plan.mirrors[0].problem, format_plan(plan)
        with pytest.raises(StartupError, match=why):
            async with open_app(settings_for(path), config):
                pass
    assert _indexes(redis_client) == {"docs_idx"}
    assert int(redis_client.ft("docs_idx").info()["num_docs"]) == 5
    assert len(list(redis_client.scan_iter("doc:*"))) == 5


async def test_a_new_template_re_embeds_every_row_once(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    redis_url: str,
    write_config: Callable[..., Any],
    settings_for: Any,
    embedder: Any,
    embedder_factory: Any,
) -> None:
    """A changed template used to leave every vector as it was until its row changed. Now the new
    vectors are made beside the old ones, then the index switches to them and the old ones go."""
    await pg.execute(DOCS_WITH_YEAR)
    await pg.execute(
        "INSERT INTO docs SELECT g, 'Title ' || g, 'Text ' || g, 'g', 2000 FROM generate_series(1, 20) g"
    )
    await _run(settings_for, write_config, DOCS_MIRROR, embedder_factory)
    content_only = {**DOCS_MIRROR, "embed": {**DOCS_MIRROR["embed"], "template": "{content}"}}
    config, worker = await _run(settings_for, write_config, content_only, embedder_factory)
    assert worker.metrics.embeddings.labels("docs", "computed")._value.get() == 20
    expected = embedder.embed(["Text 7"])[0]
    moved_to = vector_at(redis_client, "docs_idx")
    assert moved_to.startswith("embedding__")
    document = hash_doc(redis_client, "doc:7")
    assert float(np.dot(vector_of(document, moved_to), expected)) > 0.9999
    assert "embedding" not in document  # the old vectors went after the switch
    await assert_invariant(pg, redis_url, config.mirrors[0])
    _, again = await _run(settings_for, write_config, content_only, embedder_factory)  # a restart
    assert again.metrics.embeddings.labels("docs", "computed")._value.get() == 0


async def test_drop_data_leaves_an_index_queried_through_its_alias(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    write_config: Callable[..., Any],
    settings_for: Any,
    embedder_factory: Any,
) -> None:
    """A mirror rebuilt online is queried through an alias; its index, under another name, is no
    removed mirror's to drop."""
    await pg.execute(DOCS_WITH_YEAR)
    await pg.execute(PRODUCTS_TABLE)
    await pg.execute("INSERT INTO docs VALUES (1, 'T', 'Text', 'g', 2001)")
    await pg.execute("INSERT INTO products VALUES ('lamp', 'Lamp', 1, '{1,0,0,0}')")
    with_year = _with_fields({"name": "year", "type": "numeric"})
    await _run(settings_for, write_config, DOCS_MIRROR, embedder_factory)
    await _run_many(settings_for, write_config, [with_year, PRODUCTS_MIRROR], embedder_factory)
    rebuilt = _answering(redis_client, "docs_idx")
    assert rebuilt != "docs_idx"
    path, config = write_config([with_year])  # products removed, its data dropped
    _, removals = await migrate_and_remove(settings_for(path), config, drop_data=True)
    assert [r.mirror for r in removals] == ["products"]
    assert _indexes(redis_client) == {rebuilt} and redis_client.exists("doc:1")
    assert not redis_client.exists("product:lamp")


async def _run_many(
    settings_for: Any, write_config: Any, mirrors: list[dict[str, Any]], factory: Any
) -> None:
    path, config = write_config(mirrors)
    settings = settings_for(path)
    await migrate_command(settings, config)
    async with open_app(settings, config, factory) as app:
        await app.worker().run_once()
