"""What every bench script shares: a `--rows` argument and a throw-away embedded stack."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from vecmirror.stack import StackUrls, stack_down, stack_up


def run_bench(
    description: str, default_rows: int, measure: Callable[[StackUrls, int], Awaitable[None]]
) -> None:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rows", type=int, default=default_rows)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="vecmirror-bench-"))
    try:
        asyncio.run(measure(stack_up(directory), args.rows))
    finally:
        stack_down(directory)
