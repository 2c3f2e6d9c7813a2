"""The `vecmirror` command as a subprocess, for the acceptance and fault-injection tests."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

VECMIRROR = [sys.executable, "-m", "vecmirror.cli"]


def vecmirror(
    env: dict[str, str], *args: str, timeout: float = 180, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*VECMIRROR, *args], env=env, capture_output=True, text=True, timeout=timeout, input=input_text
    )


def start_worker(env: dict[str, str], config: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*VECMIRROR, "run", "--config", str(config), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
