"""What a result depends on: the machine, the versions of everything in the path, the settings."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import asyncpg
import redis.asyncio as redis

from vecmirror.config import DEFAULT_MODEL, ModelSpec
from vecmirror.pipeline.embedder import backend_for
from vecmirror.settings import Settings
from vecmirror.stack import StackUrls

PACKAGES = ("vecmirror", "torch", "sentence-transformers", "transformers", "redisvl", "redis", "asyncpg")
ONNX_PACKAGES = ("onnxruntime", "onnx", "hiredis")


async def describe(urls: StackUrls, settings: Settings) -> list[tuple[str, str]]:
    """(what, value) rows for the report's machine-and-versions table."""
    import torch

    return [
        ("CPU", _cpu()),
        ("memory", f"{_memory_gib():.0f} GiB"),
        ("GPU", "none (CUDA unavailable)" if not torch.cuda.is_available() else torch.cuda.get_device_name()),
        ("OS", f"{platform.system()} {platform.release()} ({_os_name()})"),
        ("Python", platform.python_version()),
        ("packages", ", ".join(f"{name} {_version(name)}" for name in PACKAGES)),
        ("source", _git_revision()),
        ("Postgres", await _postgres_version(urls.database_url)),
        ("Redis", await _redis_version(urls.redis_url)),
        ("model", _model(settings)),
        (
            "worker settings",
            f"batch_size {settings.batch_size} (up to {settings.max_batch_size}, "
            f"target {settings.batch_target_seconds} s), {settings.batches_in_flight} batches in flight, "
            f"embed_batch_size {settings.embed_batch_size}",
        ),
        ("packages (ONNX)", ", ".join(f"{name} {_version(name)}" for name in ONNX_PACKAGES)),
    ]


def _model(settings: Settings) -> str:
    """The default model on the backend the benchmark loads (as `vecmirror run` would)."""
    import torch

    backend = backend_for(ModelSpec(DEFAULT_MODEL), settings.device)
    device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return f"all-MiniLM-L6-v2, backend {backend} on {device}, torch {torch.get_num_threads()} threads"


def _cpu() -> str:
    name = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            name = line.partition(":")[2].strip()
            break
    return f"{name}, {os.cpu_count()} logical CPUs"


def _memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def _os_name() -> str:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME", "unknown")
    except OSError:
        return "unknown"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _git_revision() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
        return done.stdout.strip()

    revision = git("rev-parse", "--short", "HEAD") or "unknown"
    return f"git {revision}" + (" with uncommitted changes" if git("status", "--porcelain") else "")


async def _postgres_version(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


async def _redis_version(url: str) -> str:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        info = await client.info("server")
        modules = await client.module_list()
    finally:
        await client.aclose()
    loaded = ", ".join(f"{m['name']} {m['ver']}" for m in modules)
    return f"{info['redis_version']} (modules: {loaded})"
