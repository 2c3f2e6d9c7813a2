"""Process settings from the environment (`VECMIRROR_*`), read once and passed down."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from vecmirror.errors import ConfigError

# What asyncpg takes; anything else it refuses with an error that names no setting.
POSTGRES_SCHEMES = frozenset({"postgresql", "postgres"})


class Settings(BaseSettings):
    """Everything a vecmirror process is told by its environment.

    The URLs are secrets: they carry passwords, so they never appear in a log line or an error.
    """

    model_config = SettingsConfigDict(env_prefix="VECMIRROR_", extra="ignore")

    database_url: SecretStr | None = None
    redis_url: SecretStr | None = None
    config: Path = Path("vecmirror.yaml")

    batch_size: int = Field(
        default=256, ge=1, le=100_000, description="changes claimed per batch, while the backlog is shallow"
    )
    max_batch_size: int = Field(
        default=1024, ge=1, le=100_000, description="changes claimed per batch at most, with a deep backlog"
    )
    batch_target_seconds: float = Field(
        default=2.0, gt=0, description="batches grow only while they take under half of this"
    )
    batches_in_flight: int = Field(
        default=2, ge=1, le=16, description="batches a worker syncs at once (each on its own connection)"
    )
    embed_batch_size: int = Field(default=64, ge=1, le=4096, description="texts per model call")
    poll_interval: float = Field(
        default=5.0, gt=0, description="seconds between polls when no notification arrives"
    )
    backfill_batch_size: int = Field(default=2000, ge=1, le=1_000_000)
    error_backoff: float = Field(
        default=2.0, gt=0, description="seconds to wait after a batch failed before retrying"
    )
    shutdown_grace: float = Field(
        default=20.0,
        gt=0,
        description="seconds a SIGTERM waits for the batch in hand (keep below Kubernetes' 30 s)",
    )
    redis_timeout: float = Field(
        default=30.0, gt=0, description="seconds a Redis command may take before it counts as failed"
    )
    redis_tls_ca_cert: Path | None = Field(
        default=None, description="CA file that signed the Redis server's certificate (rediss:// only)"
    )
    redis_tls_cert: Path | None = Field(default=None, description="client certificate for mutual TLS")
    redis_tls_key: Path | None = Field(default=None, description="the client certificate's private key")
    redis_tls_verify: Literal["required", "none"] = Field(
        default="required", description="verify the Redis server's certificate (none: encrypt only)"
    )
    redis_tls_check_hostname: bool = Field(
        default=True, description="the server's certificate must name the host in VECMIRROR_REDIS_URL"
    )
    claim_timeout: float = Field(
        default=60.0,
        gt=0,
        description="seconds a claimed batch may go without a sign of life before Postgres ends its session "
        "and other workers take its changes (a frozen worker)",
    )
    row_max_attempts: int = Field(
        default=5, ge=1, le=100, description="attempts of a failing row before it is dead-lettered"
    )
    row_retry_backoff: float = Field(
        default=5.0, ge=0, description="seconds before a failed row's second attempt; doubles each time"
    )
    config_lease: float = Field(
        default=120.0,
        gt=0,
        description="seconds a mirror stays with the newest config's workers after their last write or "
        "wake-up: an older config's workers wait that long before taking it back (a rollback)",
    )
    tombstone_ttl: float = Field(
        default=86400.0, gt=0, description="seconds a deleted document's version is kept in Redis"
    )
    max_text_length: int = Field(
        default=100_000, ge=1, description="characters of rendered text a row may have to be embedded"
    )
    check_interval: float = Field(
        default=300.0, gt=0, description="seconds between the worker's checks of Redis against Postgres"
    )
    http_host: str = Field(
        default="0.0.0.0", description="address `run` serves /metrics, /healthz and /readyz on"
    )
    http_port: int = Field(
        default=9400, ge=0, le=65535, description="port of /metrics, /healthz and /readyz (0: no HTTP server)"
    )
    metrics_interval: float = Field(
        default=15.0, gt=0, description="seconds between samples of queue depth, dead letters and index state"
    )
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    device: str | None = Field(default=None, description="torch device for the model, e.g. cpu")
    model_cache: Path = Field(
        default_factory=lambda: _user_cache() / "vecmirror",
        description="directory for the ONNX exports of models (made on first use; must be writable)",
    )

    def require_database_url(self) -> str:
        if self.database_url is None:
            raise ConfigError(["VECMIRROR_DATABASE_URL is not set"])
        url = self.database_url.get_secret_value()
        if urlsplit(url).scheme not in POSTGRES_SCHEMES:
            raise ConfigError(["VECMIRROR_DATABASE_URL is not a postgresql:// (or postgres://) URL"])
        return _parsable(url, "VECMIRROR_DATABASE_URL")

    def require_redis_url(self) -> str:
        if self.redis_url is None:
            raise ConfigError(["VECMIRROR_REDIS_URL is not set"])
        return _parsable(self.redis_url.get_secret_value(), "VECMIRROR_REDIS_URL")


def _user_cache() -> Path:
    """XDG's cache directory, where Hugging Face and torch keep theirs too."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def _parsable(url: str, variable: str) -> str:
    """Refuses a URL the drivers would reject quoting a piece of it: a password holding an unencoded
    `/`, `#` or `?` ends the host part early, and asyncpg and redis-py then quote what follows (part
    of the password) in their error ("invalid literal for int(): 'pa'", "bad query field: ...")."""
    if _ports_are_numbers(url) and _query_is_pairs(url):
        return url
    raise ConfigError(
        [
            f"{variable} cannot be parsed: percent-encode its user name and password "
            "(/ as %2F, # as %23, ? as %3F, @ as %40)"
        ]
    )


def _ports_are_numbers(url: str) -> bool:
    hosts = urlsplit(url).netloc.rpartition("@")[2]
    # asyncpg takes several hosts ("h1:5432,h2"); an IPv6 host is bracketed ("[::1]:5432").
    ports = (host.rpartition("]")[2].partition(":")[2] for host in hosts.split(","))
    return all(port.isdigit() for port in ports if port)


def _query_is_pairs(url: str) -> bool:
    query = urlsplit(url).query
    try:
        parse_qs(query, strict_parsing=bool(query))  # asyncpg parses strictly
    except ValueError:
        return False
    return True
