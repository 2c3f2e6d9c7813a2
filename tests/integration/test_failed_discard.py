"""`vecmirror failed discard` sticks: the discarded rows' delayed retries go with them, so they do not
fail again and come back to `failed list`; a user's write queued after the failure still syncs."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import redis

from helpers import PRODUCTS_MIRROR, PRODUCTS_TABLE, keys
from processes import vecmirror
from vecmirror.app import open_app
from vecmirror.commands import migrate_command
from vecmirror.source.failures import discard_failed, list_failed

CLAIM_LOCK = (
    "SELECT pg_advisory_xact_lock(hashtext('products'), hashtext(array_to_string('{bad}'::text[], chr(31))))"
)
QUEUED = "SELECT row_key, not_before IS NOT NULL AS retry FROM vecmirror.changes_v1 ORDER BY id"


async def _products(pg: asyncpg.Connection, write_config: Any, settings_for: Any) -> Any:
    await pg.execute(PRODUCTS_TABLE)
    path, config = write_config([PRODUCTS_MIRROR])
    settings = settings_for(path, row_retry_backoff=0.5, row_max_attempts=5)
    await migrate_command(settings, config)
    return path, settings, config


async def test_discarded_rows_stay_discarded_and_a_later_user_write_still_syncs(
    pg: asyncpg.Connection, redis_client: redis.Redis, write_config: Any, settings_for: Any
) -> None:
    _, settings, config = await _products(pg, write_config, settings_for)
    await pg.execute(
        "INSERT INTO products VALUES ('ok', 'Ok', 1, '{1,0,0,0}'), ('bad', 'Bad', 1, '{1,2}'), "
        "('later', 'Later', 1, '{1}')"
    )
    async with open_app(settings, config) as app:
        worker = app.worker()
        await worker.prepare()
        assert (await worker.drain()).failed == 2
        assert [tuple(r) for r in await pg.fetch(QUEUED)] == [(["bad"], True), (["later"], True)]
        # The user fixes 'later' after it failed: that change must survive the discard.
        await pg.execute("UPDATE products SET vec = '{0,1,0,0}' WHERE sku = 'later'")
        assert await discard_failed(pg, "products", [("bad",), ("later",)]) == 2
        assert [tuple(r) for r in await pg.fetch(QUEUED)] == [(["later"], False)]
        await asyncio.sleep(0.6)  # past the retries' not_before: they would be claimable now
        await worker.run_once()
    assert await list_failed(pg, None) == []
    assert keys(redis_client, "product:*") == {"product:ok", "product:later"}


async def test_discard_from_the_cli_sticks_while_a_retry_is_queued(
    pg: asyncpg.Connection, cli_env: dict[str, str], write_config: Any, settings_for: Any
) -> None:
    path, settings, config = await _products(pg, write_config, settings_for)
    args = ["--config", str(path)]
    await pg.execute("INSERT INTO products VALUES ('bad', 'Bad', 1, '{1,2}')")
    async with open_app(settings, config) as app:
        worker = app.worker()
        await worker.prepare()
        assert (await worker.drain()).failed == 1  # its retry is queued for 0.5 s from now
    discarded = vecmirror(cli_env, "failed", "discard", "bad", *args)
    assert discarded.stdout.strip() == "discarded 1 row(s)", discarded.stderr
    await asyncio.sleep(0.6)
    assert vecmirror(cli_env, "run", "--once", *args).returncode == 0
    assert vecmirror(cli_env, "failed", "list", *args).stdout.strip() == "no failed rows"


async def test_discard_waits_for_an_attempt_in_flight_and_discards_its_outcome(
    pg: asyncpg.Connection, database_url: str, write_config: Any, settings_for: Any
) -> None:
    await _products(pg, write_config, settings_for)
    await pg.execute(
        "INSERT INTO vecmirror.failed_v1 (mirror, row_key, field, error, attempts, retry_at) "
        "VALUES ('products', '{bad}', 'vec', 'too short', 1, now())"
    )
    batch = await asyncpg.connect(database_url)
    try:
        # A worker's batch holds the key's claim lock (as claim_changes takes it) ...
        transaction = batch.transaction()
        await transaction.start()
        await batch.execute(CLAIM_LOCK)
        discard = asyncio.create_task(discard_failed(pg, "products", [("bad",)]))
        await asyncio.sleep(0.5)
        assert not discard.done()  # ... so the discard waits for it
        # ... and the attempt fails again: a new attempt count, a new delayed retry.
        await batch.execute(
            "UPDATE vecmirror.failed_v1 SET attempts = 2; "
            "INSERT INTO vecmirror.changes_v1 (mirror, row_key, not_before) "
            "VALUES ('products', '{bad}', now() + interval '1 hour')"
        )
        await transaction.commit()
        assert await asyncio.wait_for(discard, 10) == 1
    finally:
        await batch.close()
    assert await pg.fetchval("SELECT count(*) FROM vecmirror.failed_v1") == 0
    assert await pg.fetchval("SELECT count(*) FROM vecmirror.changes_v1") == 0
