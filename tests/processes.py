"""The `vecmirror` command as a subprocess, for the acceptance and fault-injection tests."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

VECMIRROR = [sys.executable, "-m", "vecmirror.cli"]


def vecmirror(
    env: dict[str, str], *args: str, timeout: float = 180, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*VECMIRROR, *args], env=env, capture_output=True, text=True, timeout=timeout, input=input_text
    )


class DrainedProcess(subprocess.Popen[str]):
    """A subprocess whose output is read as it comes. A worker logs a line per batch: left in a pipe
    nobody reads, 64 KiB of them block its next write, and it stops syncing (a CI run timed out on
    exactly that). `communicate` returns everything it wrote."""

    def __init__(self, args: Sequence[str], env: dict[str, str]) -> None:
        super().__init__(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._out: list[str] = []
        self._err: list[str] = []
        self._readers = [
            threading.Thread(target=_drain, args=(self.stdout, self._out), daemon=True),
            threading.Thread(target=_drain, args=(self.stderr, self._err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[str, str]:  # noqa: ARG002 (nothing is sent to a worker)
        self.wait(timeout)
        for reader in self._readers:
            reader.join()
        return "".join(self._out), "".join(self._err)

    def stderr_so_far(self) -> str:
        """What the process has written to stderr until now, while it runs."""
        return "".join(list(self._err))


def _drain(stream: Any, into: list[str]) -> None:
    with stream:
        for line in stream:
            into.append(line)


def start_worker(env: dict[str, str], config: Path, *extra: str) -> DrainedProcess:
    return DrainedProcess([*VECMIRROR, "run", "--config", str(config), *extra], env)


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def until(
    check: Callable[[], Awaitable[Any]], timeout: float, what: str, *, every: float = 0.1
) -> None:
    """Waits for an async condition, as wait_for does for a plain one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def free_port() -> int:
    """A port nothing listens on now, for a worker's HTTP server."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http_get(port: int, path: str) -> tuple[int, str]:
    """Status and body of a GET on the local port; 0 while nothing listens there yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:  # not listening yet
        return 0, ""


@contextlib.asynccontextmanager
async def running_worker(worker: Any, database_url: str, poll: float) -> AsyncIterator[None]:
    """The in-process worker's run loop, listening, for the block's duration; stopped after it."""
    from vecmirror.source.listener import ChangeListener

    stop = asyncio.Event()
    task = asyncio.create_task(worker.run_forever(ChangeListener(database_url), stop, poll, 3600.0))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
