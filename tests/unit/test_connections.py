"""The Redis client's TLS options, the URL checks that keep a password out of error messages, and
the README's table of settings.

No server: what a client would do is read from the connection pool redis-py built.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.connection import Connection, SSLConnection

from vecmirror.connections import redis_from_settings
from vecmirror.errors import ConfigError
from vecmirror.settings import Settings

SECRET = "Zq8-secret-pw"


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    path = tmp_path / "any.pem"
    path.write_text("not parsed before the first connection\n")
    return path


def pool_of(settings: Settings) -> tuple[type[Any], dict[str, Any]]:
    client = redis_from_settings(settings)
    return client.connection_pool.connection_class, client.connection_pool.connection_kwargs


def test_a_plain_url_gets_no_tls() -> None:
    connection, options = pool_of(Settings(redis_url="redis://127.0.0.1:6379/0", redis_timeout=7))
    assert connection is Connection
    assert options["socket_timeout"] == 7
    assert not any(name.startswith("ssl_") for name in options)


def test_rediss_verifies_by_default_against_the_system_cas() -> None:
    connection, options = pool_of(Settings(redis_url=f"rediss://vm:{SECRET}@cache.internal:6380/0"))
    assert connection is SSLConnection
    assert options["ssl_cert_reqs"] == "required"
    assert options["ssl_check_hostname"] is True
    assert options["ssl_ca_certs"] is None
    assert (options["username"], options["password"]) == ("vm", SECRET)


def test_tls_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch, pem: Path) -> None:
    monkeypatch.setenv("VECMIRROR_REDIS_URL", "rediss://cache.internal:6380/0")
    monkeypatch.setenv("VECMIRROR_REDIS_TLS_CA_CERT", str(pem))
    monkeypatch.setenv("VECMIRROR_REDIS_TLS_CERT", str(pem))
    monkeypatch.setenv("VECMIRROR_REDIS_TLS_KEY", str(pem))
    monkeypatch.setenv("VECMIRROR_REDIS_TLS_VERIFY", "none")
    monkeypatch.setenv("VECMIRROR_REDIS_TLS_CHECK_HOSTNAME", "false")
    _, options = pool_of(Settings())
    assert options["ssl_ca_certs"] == options["ssl_certfile"] == options["ssl_keyfile"] == str(pem)
    assert options["ssl_cert_reqs"] == "none"
    assert options["ssl_check_hostname"] is False


@pytest.mark.parametrize(
    ("url", "overrides", "problem"),
    [
        ("redis://h:6379", {"redis_tls_ca_cert": "pem"}, "is not rediss://"),
        ("rediss://h:6380", {"redis_tls_key": "pem"}, "VECMIRROR_REDIS_TLS_KEY is set without"),
        ("rediss://h:6380", {"redis_tls_ca_cert": "missing"}, "VECMIRROR_REDIS_TLS_CA_CERT: "),
        ("rediss://h:6380", {"redis_tls_cert": "missing"}, "VECMIRROR_REDIS_TLS_CERT: "),
    ],
    ids=["certificates-for-clear-text", "key-without-cert", "missing-ca", "missing-cert"],
)
def test_tls_mistakes_are_config_errors(
    url: str, overrides: dict[str, str], problem: str, pem: Path, tmp_path: Path
) -> None:
    paths = {"pem": pem, "missing": tmp_path / "missing.pem"}
    settings = Settings(redis_url=url, **{name: paths[value] for name, value in overrides.items()})
    with pytest.raises(ConfigError, match=problem):
        redis_from_settings(settings)


# An unencoded /, # or ? in a password ends the host part early; the drivers would then quote the
# rest (part of the password) in their error: "invalid literal for int(): 'Zq8'", "bad query field".
MALFORMED = [
    f"{scheme}://vm:{password}@127.0.0.1:1/0"
    for scheme in ("postgresql", "redis")
    for password in (f"Zq8/{SECRET}", f"Zq8#{SECRET}", f"Zq8?{SECRET}")
]


@pytest.mark.parametrize("url", MALFORMED)
def test_a_url_the_drivers_cannot_parse_is_refused_without_quoting_it(url: str) -> None:
    settings = Settings(database_url=url, redis_url=url)
    require = settings.require_database_url if url.startswith("postgresql") else settings.require_redis_url
    with pytest.raises(ConfigError) as refused:
        require()
    assert "percent-encode" in str(refused.value)
    assert "Zq8" not in str(refused.value) and "127.0.0.1" not in str(refused.value)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://vm:{SECRET}@db1:5432,db2:5433/app?sslmode=verify-full&sslrootcert=/etc/ca.pem",
        "postgresql://postgres:@/postgres?host=/tmp/socket-dir",
        "postgresql://vm@[::1]:5432/app",
        f"postgresql://vm:p@ss{SECRET}@db:5432/app",
        f"rediss://vm:{SECRET}%2F%23%3F@cache:6380/0",
        "unix:///run/redis.sock?db=1",
    ],
)
def test_urls_the_drivers_accept_pass_unchanged(url: str) -> None:
    settings = Settings(database_url=url, redis_url=url)
    if url.startswith("postgresql://"):
        assert settings.require_database_url() == url
    assert settings.require_redis_url() == url


def test_a_url_redis_py_rejects_is_a_config_error() -> None:
    # redis-py's ValueError would end the CLI with a traceback; some of its messages quote the URL.
    settings = Settings(redis_url=f"redis://h:6379/0?socket_connect_timeout={SECRET}")
    with pytest.raises(ConfigError, match="VECMIRROR_REDIS_URL is not a valid") as refused:
        redis_from_settings(settings)
    assert SECRET not in str(refused.value)


def test_the_readme_lists_every_setting() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    documented = set(re.findall(r"^\| `(VECMIRROR_[A-Z_]+)` \|", readme, re.MULTILINE))
    assert documented == {f"VECMIRROR_{name.upper()}" for name in Settings.model_fields}
