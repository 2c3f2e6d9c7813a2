"""Security end to end: TLS to both servers, a least-privilege Redis ACL user, and table and column
names that need quoting, each through a real sync.

Neither bundled server speaks TLS itself (see tls_proxy), so TLS ends at a proxy in front of each:
the certificates, their verification and the client certificate are real, the servers' own TLS
code is not exercised.
"""

from __future__ import annotations

import itertools
import os
import re
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import asyncpg
import pytest
import redis
import trustme
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from redis.exceptions import AuthenticationError, NoPermissionError
from redis.exceptions import ConnectionError as RedisConnectionError

from helpers import (
    NOTES_MIRROR,
    NOTES_TABLE,
    PRODUCTS_MIRROR,
    PRODUCTS_TABLE,
    hash_doc,
    json_doc,
    keys,
    search_ids,
)
from tls_proxy import TlsProxy, Upstream, tcp_upstream, unix_upstream
from vecmirror.commands import failed_command, migrate_command, run_command, status_command, verify_command
from vecmirror.config import OWN_KEY_PREFIX, Config
from vecmirror.connections import redis_from_settings
from vecmirror.errors import VecmirrorError
from vecmirror.query.search import MirrorSearch
from vecmirror.settings import Settings
from vecmirror.stack import StackUrls

ACL_USER = "vecmirror_sync"
ACL_PASSWORD = "acl-test-Pa55word"


def least_privilege_rules(password: str, prefixes: list[str], indexes: list[str]) -> list[str]:
    """The README's ACL for a vecmirror worker: its key prefixes, its own keys and its index names
    (the Query Engine takes an index name as a key; `<name>*` covers an online rebuild's
    `<name>__<digest>`), the plain read/write commands minus the
    dangerous ones (no MULTI/EXEC), the scripts of versioned writes and reads, and the FT.* and
    JSON.* commands it calls."""
    key_patterns = [f"~{p}:*" for p in prefixes] + [f"~{OWN_KEY_PREFIX}*"] + [f"~{i}*" for i in indexes]
    return [
        "reset",
        "on",
        f">{password}",
        *key_patterns,
        "+@read",
        "+@write",
        "-@dangerous",
        "+ping",
        "+client|setinfo",
        "+evalsha",
        "+script|load",
        "+script|exists",
        "+ft.create",
        "+ft.info",
        "+ft.search",
        "+ft.aggregate",
        "+ft._list",
        "+ft.aliasadd",
        "+ft.aliasupdate",
        "+ft.dropindex",
        "+json.get",
        "+json.set",
        "+json.merge",
    ]


@dataclass(frozen=True)
class Pki:
    ca: trustme.CA
    ca_file: Path
    other_ca_file: Path  # a CA that signed none of the certificates here
    client_cert: Path
    client_key: Path

    def server_context(self, *identities: str, client_cert_required: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(*identities).configure_cert(context)
        if client_cert_required:
            self.ca.configure_trust(context)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    client = ca.issue_cert("vecmirror-client")
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    trustme.CA().cert_pem.write_to_path(str(directory / "other-ca.pem"))
    client.cert_chain_pems[0].write_to_path(str(directory / "client.pem"))
    client.private_key_pem.write_to_path(str(directory / "client.key"))
    return Pki(
        ca,
        directory / "ca.pem",
        directory / "other-ca.pem",
        directory / "client.pem",
        directory / "client.key",
    )


def redis_upstream(servers: StackUrls) -> Upstream:
    parts = urlsplit(servers.redis_url)
    return tcp_upstream(parts.hostname or "127.0.0.1", parts.port or 6379)


def postgres_upstream(servers: StackUrls) -> Upstream:
    parts = urlsplit(servers.database_url)
    query = parse_qs(parts.query)
    port = int(query.get("port", [parts.port or 5432])[0])
    socket_dir = query.get("host", [""])[0]
    if socket_dir.startswith("/"):  # the embedded stack listens on a Unix socket
        return unix_upstream(f"{socket_dir}/.s.PGSQL.{port}")
    return tcp_upstream(parts.hostname or "127.0.0.1", port)


@pytest.fixture(scope="module")
def redis_tls(servers: StackUrls, pki: Pki) -> Iterator[TlsProxy]:
    """Mutual TLS: the proxy's certificate names 127.0.0.1 and it demands a client certificate."""
    context = pki.server_context("127.0.0.1", client_cert_required=True)
    with TlsProxy(context, redis_upstream(servers)) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def redis_tls_localhost(servers: StackUrls, pki: Pki) -> Iterator[TlsProxy]:
    """A certificate for `localhost` only, reached as 127.0.0.1: the host name check must object."""
    with TlsProxy(pki.server_context("localhost"), redis_upstream(servers)) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def postgres_tls(servers: StackUrls, pki: Pki) -> Iterator[TlsProxy]:
    with TlsProxy(pki.server_context("127.0.0.1"), postgres_upstream(servers), postgres=True) as proxy:
        yield proxy


@pytest.fixture
def acl_user(redis_client: redis.Redis) -> Iterator[str]:
    rules = least_privilege_rules(ACL_PASSWORD, ["product", "note"], ["products_idx", "notes_idx"])
    redis_client.execute_command("ACL", "SETUSER", ACL_USER, *rules)
    try:
        yield ACL_USER
    finally:
        redis_client.execute_command("ACL", "DELUSER", ACL_USER)


def tls_database_url(database_url: str, port: int, ca_file: Path) -> str:
    """asyncpg reads TLS from the URL: verify-full checks the CA and that the certificate names the host."""
    parts = urlsplit(database_url)
    return (
        f"postgresql://{parts.username or 'postgres'}@127.0.0.1:{port}{parts.path}"
        f"?sslmode=verify-full&sslrootcert={quote(str(ca_file))}"
    )


@pytest.fixture
def tls_settings(
    database_url: str, redis_url: str, postgres_tls: TlsProxy, redis_tls: TlsProxy, pki: Pki
) -> Callable[..., Settings]:
    del redis_url  # requested for its FLUSHALL: each test starts from an empty Redis

    def make(
        config: Path, password: str = ACL_PASSWORD, redis_port: int | None = None, **overrides: Any
    ) -> Settings:
        options: dict[str, Any] = {
            "redis_tls_ca_cert": pki.ca_file,
            "redis_tls_cert": pki.client_cert,
            "redis_tls_key": pki.client_key,
            **overrides,
        }
        return Settings(
            database_url=tls_database_url(database_url, postgres_tls.port, pki.ca_file),
            redis_url=f"rediss://{ACL_USER}:{quote(password)}@127.0.0.1:{redis_port or redis_tls.port}/0",
            config=config,
            **options,
        )

    return make


@pytest.mark.usefixtures("acl_user")
async def test_a_sync_over_tls_as_a_least_privilege_acl_user(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    write_config: Any,
    tls_settings: Callable[..., Settings],
) -> None:
    await pg.execute(PRODUCTS_TABLE)
    await pg.execute(NOTES_TABLE)
    path, config = write_config([PRODUCTS_MIRROR, NOTES_MIRROR])
    settings = tls_settings(path)
    await migrate_command(settings, config)
    await pg.execute(
        "INSERT INTO products VALUES ('lamp', 'Lamp', 19.5, '{1,0,0,0}'), ('pen', 'Pen', 2, '{0,1,0,0}')"
    )
    await pg.execute("INSERT INTO notes VALUES ('acme', 1, 'ship it', 'red|urgent', '{1,0,0}')")
    await run_command(settings, config, once=True)
    assert keys(redis_client, "product:*") == {"product:lamp", "product:pen"}
    assert json_doc(redis_client, "note:acme:1")["meta"]["labels"] == "red|urgent"

    await pg.execute("UPDATE products SET price = 21 WHERE sku = 'lamp'")
    await pg.execute("DELETE FROM notes")
    await run_command(settings, config, once=True)
    assert hash_doc(redis_client, "product:lamp")["price"] == b"21.0"
    assert keys(redis_client, "note:*") == set()

    assert all(drift.clean for drift in await verify_command(settings, config, None, repair=False))
    await _assert_searchable(settings, config)
    await _assert_nothing_else_allowed(settings)


async def _assert_searchable(settings: Settings, config: Config) -> None:
    async with MirrorSearch.open(settings, config) as search:
        hits = await search.knn("products", vector=[1, 0, 0, 0], k=2)
    assert [hit.id for hit in hits] == ["product:lamp", "product:pen"]


async def _assert_nothing_else_allowed(settings: Settings) -> None:
    """The sync above ran with these rights only: the user cannot flush, nor touch other keys."""
    client = redis_from_settings(settings)
    try:
        assert await client.ping()
        with pytest.raises(NoPermissionError):
            await client.flushall()
        with pytest.raises(NoPermissionError):
            await client.set("session:1", "x")
        with pytest.raises(NoPermissionError):
            await client.config_get("maxmemory")
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("proxy", "overrides", "refusal"),
    [
        ("redis_tls", {}, None),
        ("redis_tls", {"redis_tls_ca_cert": "other"}, "certificate verify failed"),
        ("redis_tls", {"redis_tls_ca_cert": "other", "redis_tls_verify": "none"}, None),
        # TLS 1.3: the client learns of the rejection after its handshake: an alert, a reset or EOF.
        (
            "redis_tls",
            {"redis_tls_cert": None, "redis_tls_key": None},
            "certificate required|reset by peer|closed by server",
        ),
        ("redis_tls_localhost", {}, "IP address mismatch"),
        ("redis_tls_localhost", {"redis_tls_check_hostname": False}, None),
    ],
    ids=["verified", "unknown-ca", "unknown-ca-unverified", "no-client-cert", "wrong-host", "host-unchecked"],
)
@pytest.mark.usefixtures("acl_user")  # a connection that gets through TLS must also be let in
async def test_redis_tls_verification(
    request: pytest.FixtureRequest,
    write_config: Any,
    tls_settings: Callable[..., Settings],
    pki: Pki,
    proxy: str,
    overrides: dict[str, Any],
    refusal: str | None,
) -> None:
    if overrides.get("redis_tls_ca_cert") == "other":
        overrides = {**overrides, "redis_tls_ca_cert": pki.other_ca_file}
    path, _ = write_config([PRODUCTS_MIRROR])
    settings = tls_settings(path, redis_port=request.getfixturevalue(proxy).port, **overrides)
    client = redis_from_settings(settings)
    try:
        if refusal is None:
            assert await client.ping()
            return
        with pytest.raises(RedisConnectionError) as refused:
            await client.ping()
        assert re.search(refusal, str(refused.value))
        assert ACL_PASSWORD not in str(refused.value)
    finally:
        await client.aclose()


@pytest.mark.usefixtures("acl_user")
async def test_a_wrong_acl_password_is_refused_without_echoing_it(
    write_config: Any, tls_settings: Callable[..., Settings]
) -> None:
    path, _ = write_config([PRODUCTS_MIRROR])
    client = redis_from_settings(tls_settings(path, password="not-the-Pa55word"))
    try:
        with pytest.raises(AuthenticationError) as refused:
            await client.ping()
    finally:
        await client.aclose()
    assert "not-the-Pa55word" not in str(refused.value)


async def test_postgres_tls_is_verified_against_sslrootcert(
    database_url: str, postgres_tls: TlsProxy, pki: Pki
) -> None:
    trusted = await asyncpg.connect(tls_database_url(database_url, postgres_tls.port, pki.ca_file))
    try:
        assert await trusted.fetchval("SELECT 1") == 1
    finally:
        await trusted.close()
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncpg.connect(tls_database_url(database_url, postgres_tls.port, pki.other_ca_file))


def worker_grants(role: str, tables: list[str]) -> list[str]:
    """The README's "Postgres privileges" for `run`, `status`, `verify`, `backfill` and `failed`,
    exactly: the schema, the migrations ledger (every command checks that the schema is current), the
    queue's tables, and the mirrored tables."""
    return [
        f"GRANT USAGE ON SCHEMA vecmirror TO {role}",
        f"GRANT SELECT ON vecmirror.migrations TO {role}",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON vecmirror.changes_v1, vecmirror.mirrors_v1, "
        f"vecmirror.failed_v1, vecmirror.versions_v1, vecmirror.related_changes_v1 TO {role}",
        f"GRANT SELECT ON vecmirror.related_captures_v1 TO {role}",
        f"GRANT SELECT ON {', '.join(tables)} TO {role}",
    ]


@pytest.fixture
async def worker_role(pg: asyncpg.Connection, database_url: str) -> AsyncIterator[tuple[str, str]]:
    """A login role with no privileges of its own, and the test database's URL logging in as it."""
    role = f"vecmirror_worker_{os.getpid()}"
    await pg.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{ACL_PASSWORD}'")
    parts = urlsplit(database_url)
    netloc = f"{role}:{quote(ACL_PASSWORD)}@{parts.netloc.rpartition('@')[2]}"
    try:
        yield role, parts._replace(netloc=netloc).geturl()
    finally:
        await pg.execute(f"DROP OWNED BY {role}")  # its grants, in this database (the only one)
        await pg.execute(f"DROP ROLE {role}")


async def test_run_status_verify_and_failed_with_exactly_the_documented_grants(
    pg: asyncpg.Connection,
    database_url: str,
    redis_url: str,
    write_config: Any,
    worker_role: tuple[str, str],
) -> None:
    role, role_url = worker_role
    await pg.execute(PRODUCTS_TABLE)
    path, config = write_config([PRODUCTS_MIRROR])
    await migrate_command(Settings(database_url=database_url, redis_url=redis_url, config=path), config)
    for grant in worker_grants(role, ["public.products"]):
        await pg.execute(grant)
    await pg.execute(
        "INSERT INTO products VALUES ('lamp', 'Lamp', 19.5, '{1,0,0,0}'), ('bad', 'Bad', 1, '{1}')"
    )
    settings = Settings(database_url=role_url, redis_url=redis_url, config=path, row_max_attempts=1)

    await run_command(settings, config, once=True)
    [status] = await status_command(settings, config)
    assert (status.state, status.table_rows, status.index.documents, status.queue.dead_letters) == (
        "ok",
        2,
        1,
        1,
    )
    [drift] = await verify_command(settings, config, None, repair=True)
    assert (drift.rows, drift.missing, drift.extra, drift.stale) == (2, [], [], {})
    assert await failed_command(settings, "retry", None, None) == 1
    assert await failed_command(settings, "discard", None, [("bad",)]) == 1

    await pg.execute(f"REVOKE SELECT ON vecmirror.migrations FROM {role}")
    with pytest.raises(Exception, match="permission denied for table migrations"):
        await status_command(settings, config)


async def test_a_privilege_revoked_on_one_table_pauses_only_its_mirror(
    pg: asyncpg.Connection,
    database_url: str,
    redis_url: str,
    redis_client: redis.Redis,
    write_config: Any,
    worker_role: tuple[str, str],
) -> None:
    """`permission denied` on one mirror's table is that mirror's trouble: it pauses, named, and the
    worker syncs the others; granted again, it catches up."""
    role, role_url = worker_role
    await pg.execute(PRODUCTS_TABLE)
    await pg.execute(PRODUCTS_TABLE.replace("products", "parts"))
    parts = {
        **PRODUCTS_MIRROR,
        "name": "parts",
        "table": "public.parts",
        "index": {**PRODUCTS_MIRROR["index"], "index": {"name": "parts_idx", "prefix": "part"}},
    }
    path, config = write_config([PRODUCTS_MIRROR, parts])
    await migrate_command(Settings(database_url=database_url, redis_url=redis_url, config=path), config)
    for grant in worker_grants(role, ["public.products", "public.parts"]):
        await pg.execute(grant)
    settings = Settings(database_url=role_url, redis_url=redis_url, config=path, error_backoff=0.05)
    await run_command(settings, config, once=True)
    await pg.execute(f"REVOKE SELECT ON public.parts FROM {role}")
    for table in ("products", "parts"):
        await pg.execute(f"INSERT INTO {table} VALUES ('lamp', 'Lamp', 19.5, '{{1,0,0,0}}')")
    with pytest.raises(VecmirrorError, match=r"mirror 'parts': .*permission denied for table parts"):
        await run_command(settings, config, once=True)
    assert redis_client.exists("product:lamp") and not redis_client.exists("part:lamp")
    statuses = {s.mirror: s for s in await status_command(settings, config)}
    assert statuses["parts"].state == "paused" and statuses["products"].state == "ok"
    await pg.execute(f"GRANT SELECT ON public.parts TO {role}")
    await run_command(settings, config, once=True)
    assert redis_client.exists("part:lamp")
    assert {s.mirror: s.state for s in await status_command(settings, config)} == {
        "products": "ok",
        "parts": "ok",
    }


# Names Postgres accepts only quoted: quotes, spaces, semicolons, upper case, SQL. No "." (the
# config splits schema.table on it) and at most 63 bytes (Postgres truncates longer names).
NAME_CHARS = st.sampled_from(list("\"' ;-()$\\%@,*/=AbCxyzÉé中"))
names = st.text(NAME_CHARS, min_size=1, max_size=12).filter(lambda s: len(s.encode()) <= 63)
_fuzz_numbers = itertools.count()


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(names=st.lists(names, min_size=6, max_size=6, unique=True))
@example(names=['we"ird schema', 'we"ird table', "Key; DROP", "Col; DROP", 'Tag "x"', "vec tor"])
@example(names=["SELECT", "TABLE", "$1", "Robert'); DROP TABLE students;--", "%s", "\\x"])
async def test_quoted_names_migrate_and_sync(servers: StackUrls, redis_url: str, names: list[str]) -> None:
    schema, table, key, text_column, tag_column, vector_column = names
    assume(not any(name.startswith("$") for name in names[3:]))  # the config reads $... as a JSON path
    n = next(_fuzz_numbers)
    mirror = _fuzz_mirror(n, f"{schema}.{table}", text_column, tag_column, vector_column)
    async with _fresh_database(servers) as database:
        conn = await asyncpg.connect(database)
        try:
            await _create_weird_table(conn, names)
            settings = Settings(database_url=database, redis_url=redis_url, config=Path("unused.yaml"))
            config = Config.model_validate({"mirrors": [mirror]})
            await migrate_command(settings, config)
            target = f"{_q(schema)}.{_q(table)}"
            await conn.execute(
                f"INSERT INTO {target} VALUES ($1, $2, $3, $4), ($5, $6, $7, $8)",
                "k'1; --",
                "text one",
                "a",
                [1.0, 0.0],
                'k"2',
                "text two",
                "b",
                [0.0, 1.0],
            )
            await run_command(settings, config, once=True)
            await conn.execute(
                f"UPDATE {target} SET {_q(text_column)} = 'edited' WHERE {_q(key)} = $1", "k'1; --"
            )
            await conn.execute(f"DELETE FROM {target} WHERE {_q(key)} = $1", 'k"2')
            await run_command(settings, config, once=True)
        finally:
            await conn.close()
    client = redis.Redis.from_url(redis_url)
    try:
        assert keys(client, f"weird{n}:*") == {f"weird{n}:k'1; --"}
        assert hash_doc(client, f"weird{n}:k'1; --")[text_column] == b"edited"
    finally:
        client.close()


def _q(name: str) -> str:
    # Independent of vecmirror's own quote_ident, so a bug there cannot hide in the fixture too.
    return '"' + name.replace('"', '""') + '"'


async def _create_weird_table(conn: asyncpg.Connection, names: list[str]) -> None:
    schema, table, key, text_column, tag_column, vector_column = names
    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_q(schema)}")
    await conn.execute(
        f"CREATE TABLE {_q(schema)}.{_q(table)} ({_q(key)} text PRIMARY KEY, {_q(text_column)} text, "
        f"{_q(tag_column)} text, {_q(vector_column)} real[])"
    )


def _fuzz_mirror(n: int, table: str, text_column: str, tag_column: str, vector_column: str) -> dict[str, Any]:
    return {
        "name": f"weird_{n}",
        "table": table,
        "vector_column": vector_column,
        "index": {
            "index": {"name": f"weird_{n}_idx", "prefix": f"weird{n}", "storage_type": "hash"},
            "fields": [
                {"name": text_column, "type": "text"},
                {"name": tag_column, "type": "tag"},
                {"name": vector_column, "type": "vector", "attrs": {"algorithm": "flat", "dims": 2}},
            ],
        },
    }


@asynccontextmanager
async def _fresh_database(servers: StackUrls) -> AsyncIterator[str]:
    """A database per example: each starts without the previous examples' schemas and mirrors."""
    name = f"vecmirror_fuzz_{os.getpid()}_{next(_fuzz_numbers)}"
    admin = await asyncpg.connect(servers.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield urlsplit(servers.database_url)._replace(path=f"/{name}").geturl()
        finally:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.mark.usefixtures("acl_user")
async def test_an_online_index_rebuild_as_the_least_privilege_acl_user(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    write_config: Any,
    tls_settings: Callable[..., Settings],
) -> None:
    """A config change rebuilds the index beside the old one and switches the name (index/rollout.py):
    the README's ACL must allow the new generation's name and the alias commands."""
    await pg.execute(PRODUCTS_TABLE)
    await pg.execute("INSERT INTO products VALUES ('lamp', 'Lamp', 19.5, '{1,0,0,0}')")
    path, config = write_config([PRODUCTS_MIRROR])
    await migrate_command(tls_settings(path), config)
    await run_command(tls_settings(path), config, once=True)
    fields = [{"name": "sku", "type": "tag"}, *PRODUCTS_MIRROR["index"]["fields"]]
    path, config = write_config(
        [{**PRODUCTS_MIRROR, "index": {**PRODUCTS_MIRROR["index"], "fields": fields}}]
    )
    await run_command(tls_settings(path), config, once=True)
    answering = redis_client.ft("products_idx").info()["index_name"]
    assert str(answering).startswith("products_idx__")
    assert search_ids(redis_client, "products_idx", "@sku:{lamp}") == {"product:lamp"}
