"""The `vecmirror` command as users run it: a subprocess against real servers and the real model."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import redis

from helpers import DOCS_MIRROR, DOCS_TABLE, NOTES_MIRROR, NOTES_TABLE, PRODUCTS_MIRROR, PRODUCTS_TABLE, keys
from processes import VECMIRROR, start_worker, vecmirror, wait_for


def test_config_errors_exit_non_zero_naming_mirror_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "mirrors:\n"
        "  - name: docs\n"
        "    table: public.docs\n"
        "    embed: {field: missing, template: '{content}'}\n"
        "    index:\n"
        "      index: {name: i, prefix: doc}\n"
        "      fields:\n"
        "        - {name: embedding, type: vector, attrs: {algorithm: hnsw, dims: 384}}\n"
        "  - name: other\n"
        "    table: t\n"
        "    colour: blue\n"
        "    index: {index: {name: j, prefix: o}, fields: []}\n"
    )
    result = vecmirror({}, "check", "--config", str(bad))
    assert result.returncode == 2
    assert "mirror 'docs': embed.field: 'missing' is not a vector field" in result.stderr
    assert "mirror 'other': colour: Extra inputs are not permitted" in result.stderr
    assert "Traceback" not in result.stderr


async def test_three_mirrors_queried_from_the_cli(
    pg: asyncpg.Connection, cli_env: dict[str, str], write_config: Any
) -> None:
    for ddl in (DOCS_TABLE, PRODUCTS_TABLE, NOTES_TABLE):
        await pg.execute(ddl)
    await pg.execute(
        "INSERT INTO docs VALUES (1, 'Kittens', 'Young cats play with yarn', 'pets'), "
        "(2, 'Puppies', 'Young dogs chew shoes', 'pets'), "
        "(3, 'Compilers', 'Parsing and code generation', 'tech')"
    )
    await pg.execute(
        "INSERT INTO products VALUES ('lamp', 'Lamp', 19.5, '{1,0,0,0}'), "
        "('desk', 'Desk', 120, '{0.9,0.1,0,0}'), ('pen', 'Pen', 2, '{0,0,1,0}')"
    )
    await pg.execute(
        "INSERT INTO notes VALUES ('acme', 1, 'ship it', 'red|urgent', '{1,0,0}'), "
        "('acme', 2, 'later', 'blue', '{1,0.1,0}'), ('zen', 1, 'calm', 'urgent', '{0,0,1}')"
    )
    path, _ = write_config([DOCS_MIRROR, PRODUCTS_MIRROR, NOTES_MIRROR])
    assert vecmirror(cli_env, "migrate", "--config", str(path)).returncode == 0
    synced = vecmirror(cli_env, "run", "--once", "--config", str(path))
    assert synced.returncode == 0, synced.stderr

    docs = _query(cli_env, path, "docs", "a small cat", "--filter", "@genre:{pets}", "--return", "title")
    assert [h["id"] for h in docs] == ["doc:1", "doc:2"]
    assert docs[0]["title"] == "Kittens" and docs[0]["distance"] < docs[1]["distance"]

    products = _query(cli_env, path, "products", "--vector", "[1,0,0,0]", "--filter", "@price:[10 200]")
    assert [h["id"] for h in products] == ["product:lamp", "product:desk"]
    assert abs(products[0]["distance"]) < 1e-6 and products[0]["score"] == 1.0
    assert products[1]["price"] == 120  # typed: NUMERIC comes back as a number

    notes = _query(cli_env, path, "notes", "--vector", "[1,0,0]", "--filter", "@labels:{urgent}", "--k", "5")
    assert [h["id"] for h in notes] == ["note:acme:1", "note:zen:1"]
    assert notes[0]["labels"] == ["red", "urgent"]  # TAG values come back as a list


def _query(env: dict[str, str], config: Path, *args: str) -> list[dict[str, Any]]:
    result = vecmirror(env, "query", "--config", str(config), "--json", *args)
    assert result.returncode == 0, result.stderr
    hits: list[dict[str, Any]] = json.loads(result.stdout)  # stdout holds the JSON array and nothing else
    return hits


async def test_dimension_mismatch_stops_run_with_a_message(
    pg: asyncpg.Connection, cli_env: dict[str, str], write_config: Any
) -> None:
    await pg.execute(DOCS_TABLE)
    wrong = {
        **DOCS_MIRROR,
        "index": {
            **DOCS_MIRROR["index"],
            "fields": [
                {"name": "content", "type": "text"},
                {"name": "embedding", "type": "vector", "attrs": {"algorithm": "flat", "dims": 128}},
            ],
        },
    }
    path, _ = write_config([wrong])
    assert vecmirror(cli_env, "migrate", "--config", str(path)).returncode == 0
    result = vecmirror(cli_env, "run", "--once", "--config", str(path))
    assert result.returncode == 2
    assert "outputs 384-dimensional vectors but index.fields.embedding.attrs.dims is 128" in result.stderr


async def test_worker_wakes_on_notify_and_exits_cleanly_on_sigterm(
    pg: asyncpg.Connection, redis_client: redis.Redis, cli_env: dict[str, str], write_config: Any
) -> None:
    await pg.execute(PRODUCTS_TABLE)
    path, _ = write_config([PRODUCTS_MIRROR])
    assert vecmirror(cli_env, "migrate", "--config", str(path)).returncode == 0
    # A poll interval far longer than the test: only a notification can wake the worker in time.
    worker = start_worker({**cli_env, "VECMIRROR_POLL_INTERVAL": "600"}, path)
    try:
        wait_for(lambda: redis_client.exists("products_idx") or _index_exists(redis_client), 60, "the index")
        await pg.execute("INSERT INTO products VALUES ('late', 'Late', 1, '{1,0,0,0}')")
        wait_for(lambda: keys(redis_client, "product:*") == {"product:late"}, 20, "the notified change")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        worker.kill()
        worker.communicate()


def _index_exists(client: redis.Redis) -> bool:
    return b"products_idx" in client.execute_command("FT._LIST")


async def test_changes_survive_a_stopped_and_a_sigkilled_worker(
    pg: asyncpg.Connection, redis_client: redis.Redis, cli_env: dict[str, str], write_config: Any
) -> None:
    await pg.execute(DOCS_TABLE)
    path, _ = write_config([DOCS_MIRROR])
    assert vecmirror(cli_env, "migrate", "--config", str(path)).returncode == 0
    # Written while no worker runs: queued durably, synced when one starts.
    await pg.execute(
        "INSERT INTO docs SELECT g, 'Title ' || g, 'Body number ' || g, 'bulk' FROM generate_series(1, 400) g"
    )
    worker = start_worker({**cli_env, "VECMIRROR_BATCH_SIZE": "32"}, path)
    try:
        wait_for(lambda: len(keys(redis_client, "doc:*")) >= 32, 90, "the first batch")
        worker.send_signal(signal.SIGKILL)  # mid-run, most likely mid-batch
        worker.wait(timeout=10)
    finally:
        worker.kill()
        worker.communicate()
    assert len(keys(redis_client, "doc:*")) < 400
    await pg.execute("UPDATE docs SET content = 'Edited' WHERE id = 400")
    finished = vecmirror(cli_env, "run", "--once", "--config", str(path))
    assert finished.returncode == 0, finished.stderr
    assert len(keys(redis_client, "doc:*")) == 400
    assert redis_client.hget("doc:400", "content") == b"Edited"
    assert await pg.fetchval("SELECT count(*) FROM vecmirror.changes_v1") == 0


def test_stack_up_prints_two_lines_that_eval_accepts_and_down_stops_it(stack_dir: Path) -> None:
    directory = stack_dir
    command = " ".join(VECMIRROR)
    try:
        up = vecmirror({}, "stack", "up", "--dir", str(directory), timeout=120)
        assert up.returncode == 0, up.stderr
        lines = up.stdout.splitlines()
        assert [line.split("=", 1)[0] for line in lines] == ["VECMIRROR_DATABASE_URL", "VECMIRROR_REDIS_URL"]
        again = f"{command} stack up --dir {directory} >/dev/null"
        ping = "import os, redis; print(redis.Redis.from_url(os.environ['VECMIRROR_REDIS_URL']).ping())"
        # `set -a` exports what eval assigns, so the commands started afterwards see the URLs.
        up_again = f'set -a && eval "$({command} stack up --dir {directory})" && {again}'
        script = f'{up_again} && {sys.executable} -c "{ping}"'
        shell = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
        assert shell.stdout.strip() == "True", shell.stderr
    finally:
        down = vecmirror({}, "stack", "down", "--dir", str(directory), timeout=60)
    assert down.returncode == 0, down.stderr
    url = lines[1].split("=", 1)[1]
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        client.ping()
        raise AssertionError("Redis still answers after `stack down`")
    except redis.ConnectionError:
        pass
    finally:
        client.close()


async def test_query_options_from_the_cli(
    pg: asyncpg.Connection, cli_env: dict[str, str], write_config: Any
) -> None:
    await pg.execute(DOCS_TABLE)
    await pg.execute(PRODUCTS_TABLE)
    await pg.execute(
        "INSERT INTO docs VALUES (1, 'Kittens', 'Young cats play with yarn', 'pets'), "
        "(2, 'Barn', 'Cats hunt mice in the barn', 'farm'), (3, 'Puppies', 'Young dogs chew shoes', 'pets'), "
        "(4, 'Rockets', 'Rockets reach orbit', 'space')"
    )
    await pg.execute(
        "INSERT INTO products VALUES ('lamp', 'Lamp', 19.5, '{1,0,0,0}'), "
        "('desk', 'Desk', 120, '{0.9,0.1,0,0}'), ('pen', 'Pen', 2, '{0,0,1,0}')"
    )
    path, _ = write_config([DOCS_MIRROR, PRODUCTS_MIRROR])
    assert vecmirror(cli_env, "migrate", "--config", str(path)).returncode == 0
    assert vecmirror(cli_env, "run", "--once", "--config", str(path)).returncode == 0

    three = _query(cli_env, path, "docs", "small cats", "--k", "3", "--ef-runtime", "50")
    page = _query(cli_env, path, "docs", "small cats", "--k", "2", "--offset", "1")
    assert [h["id"] for h in page] == [h["id"] for h in three[1:]]
    fused = _query(cli_env, path, "docs", "mice", "--text-weight", "1", "--text-field", "content", "--k", "4")
    assert fused[0]["id"] == "doc:2" and fused[0]["score"] > fused[1]["score"]

    in_range = vecmirror(
        cli_env,
        "query",
        "products",
        "--vector-file",
        "-",
        "--range",
        "0.5",
        "--json",
        "--config",
        str(path),
        input_text="[1, 0, 0, 0]",
    )
    assert [h["id"] for h in json.loads(in_range.stdout)] == ["product:lamp", "product:desk"]

    refused = vecmirror(
        cli_env, "query", "products", "--vector", "[1,0,0,0]", "--ef-runtime", "5", "--config", str(path)
    )
    assert refused.returncode == 2 and "ef_runtime only applies to HNSW fields" in refused.stderr
    for rejected in ("@@@bad", "@price:[abc 5]"):  # past vecmirror's own checks, refused by Redis
        bad = vecmirror(
            cli_env, "query", "products", "--vector", "[1,0,0,0]", "--filter", rejected, "--config", str(path)
        )
        assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
        assert bad.stderr.startswith("vecmirror: mirror 'products': Redis rejected the query: ")
        assert bad.stderr.count("\n") == 1
    table = vecmirror(
        cli_env, "query", "products", "--vector", "[0,0,1,0]", "--k", "1", "--config", str(path)
    )
    assert table.stdout.splitlines()[0].split() == ["#", "distance", "score", "id", "fields"]
    assert "product:pen" in table.stdout.splitlines()[1]


async def test_failed_rows_listed_retried_and_discarded(
    pg: asyncpg.Connection, redis_client: redis.Redis, cli_env: dict[str, str], write_config: Any
) -> None:
    await pg.execute(PRODUCTS_TABLE)
    path, _ = write_config([PRODUCTS_MIRROR])
    config = ["--config", str(path)]
    assert vecmirror(cli_env, "migrate", *config).returncode == 0
    await pg.execute(
        "INSERT INTO products VALUES ('ok', 'Ok', 1, '{1,0,0,0}'), ('short', 'Short', 1, '{1,2}'), "
        "('nan', 'NaN', 1, '{1,NaN,0,0}')"
    )
    assert vecmirror(cli_env, "run", "--once", *config).returncode == 0
    listed = json.loads(vecmirror(cli_env, "failed", "list", "--json", *config).stdout)
    assert sorted(r["key"] for r in listed) == [["nan"], ["short"]]
    assert {r["field"] for r in listed} == {"vec"}
    assert {(r["attempts"], r["retry_at"]) for r in listed} == {(5, None)}  # out of attempts: dead

    await pg.execute("ALTER TABLE products DISABLE TRIGGER USER")  # fix 'short' without queueing it
    await pg.execute("UPDATE products SET vec = '{0,1,0,0}' WHERE sku = 'short'")
    await pg.execute("ALTER TABLE products ENABLE TRIGGER USER")
    retried = vecmirror(cli_env, "failed", "retry", *config)
    assert retried.stdout.strip() == "queued 2 row(s) again"
    assert vecmirror(cli_env, "run", "--once", *config).returncode == 0
    assert keys(redis_client, "product:*") == {"product:ok", "product:short"}
    still = json.loads(vecmirror(cli_env, "failed", "list", "--json", "--mirror", "products", *config).stdout)
    assert [r["key"] for r in still] == [["nan"]]

    refused = vecmirror(cli_env, "failed", "discard", *config)
    assert refused.returncode == 2 and "--all" in refused.stderr
    assert vecmirror(cli_env, "failed", "discard", "nan", *config).stdout.strip() == "discarded 1 row(s)"
    assert vecmirror(cli_env, "failed", "list", *config).stdout.strip() == "no failed rows"


async def _batch_in_flight(pg: asyncpg.Connection) -> bool:
    # A claim holds per-key advisory locks until its batch is written and acknowledged.
    return bool(await pg.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"))


async def _wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def test_sigterm_with_a_batch_in_flight_exits_0_within_the_grace_and_loses_nothing(
    pg: asyncpg.Connection, redis_client: redis.Redis, cli_env: dict[str, str], write_config: Any
) -> None:
    await pg.execute(DOCS_TABLE)
    path, _ = write_config([DOCS_MIRROR])
    assert vecmirror(cli_env, "migrate", "--config", str(path)).returncode == 0
    await pg.execute(
        "INSERT INTO docs SELECT g, 'Title ' || g, repeat('many words here ', 40) || g, 'x' "
        "FROM generate_series(1, 600) g"
    )
    env = {**cli_env, "VECMIRROR_BATCH_SIZE": "600", "VECMIRROR_SHUTDOWN_GRACE": "1"}
    for signals in ([signal.SIGTERM], [signal.SIGTERM, signal.SIGTERM]):
        worker = start_worker({**env, "VECMIRROR_SHUTDOWN_GRACE": "1" if len(signals) == 1 else "60"}, path)
        try:
            await _wait_until(lambda: _batch_in_flight(pg), 90, "a batch in flight")
            started = time.monotonic()
            for signum in signals:
                worker.send_signal(signum)
                await asyncio.sleep(0.2)
            assert worker.wait(timeout=30) == 0
            assert time.monotonic() - started < 15
        finally:
            worker.kill()
            worker.communicate()
        assert not await _batch_in_flight(pg)
        assert await pg.fetchval("SELECT count(*) FROM vecmirror.changes_v1") > 0  # released, not lost
    assert vecmirror(cli_env, "run", "--once", "--config", str(path)).returncode == 0
    assert len(keys(redis_client, "doc:*")) == 600
    assert await pg.fetchval("SELECT count(*) FROM vecmirror.changes_v1") == 0
