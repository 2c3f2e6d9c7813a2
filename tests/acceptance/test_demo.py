"""`vecmirror demo` as a person runs it: its own stack, a first answer, a live edit, Ctrl-C, exit 0."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import asyncpg

from vecmirror.stack import stack_down, stack_up

FIRST_ANSWER_TIMEOUT_S = 180.0  # cold stack start plus model load, on a slow machine
LIVE_TIMEOUT_S = 30.0


class Transcript:
    """The demo's stdout, read line by line as it is printed; everything read so far is kept."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self._stream = stream
        self.lines: list[str] = []

    async def until(self, pattern: str, timeout: float) -> str:
        """The first line from here on matching `pattern`; fails, showing the output, on EOF or timeout."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                raw = await asyncio.wait_for(self._stream.readline(), max(remaining, 0.01))
            except TimeoutError:
                raise AssertionError(f"no line matching {pattern!r} in {timeout:.0f}s:\n{self}") from None
            if not raw:
                raise AssertionError(f"the demo's output ended before {pattern!r}:\n{self}")
            line = raw.decode().rstrip("\n")
            self.lines.append(line)
            if re.search(pattern, line):
                return line

    async def next_line(self) -> str:
        return await self.until(r"", LIVE_TIMEOUT_S)

    def __str__(self) -> str:
        return "\n".join(self.lines)


async def _insert_article(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO public.vecmirror_demo_articles (id, title, body, topic) VALUES ($1, $2, $3, $4)",
            5000,
            "Keeping bees through a cold winter",
            "A honeybee colony clusters around its queen and shivers to keep the hive warm.",
            "beekeeping",
        )
    finally:
        await conn.close()


async def test_demo_answers_follows_an_insert_and_stops_cleanly_on_ctrl_c(
    tmp_path: Path, stack_dir: Path
) -> None:
    directory = stack_dir
    command = [sys.executable, "-m", "vecmirror.cli", "demo", "--dir", str(directory), "--rows", "30"]
    stderr_path = tmp_path / "demo.stderr"
    with stderr_path.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=stderr, env={**os.environ, "HF_HUB_OFFLINE": "1"}
        )
    assert process.stdout is not None
    out = Transcript(process.stdout)
    try:
        first_answer = r"^Sample query: top 3 articles for 'how do rockets reach orbit'"
        await out.until(first_answer, FIRST_ANSWER_TIMEOUT_S)
        assert (await out.next_line()).split()[:4] == ["#", "distance", "id", "topic"]
        rank, _, _, topic, *title = (await out.next_line()).split()
        assert (rank, topic) == ("1", "space"), out
        assert "rockets" in " ".join(title), out
        await out.until(r"Press Ctrl-C to stop the demo", LIVE_TIMEOUT_S)

        await _insert_article(stack_up(directory).database_url)  # idempotent: the demo's own servers

        await out.until(r": synced 1 change\(s\): upserted 1, deleted 0, embedded 1,", LIVE_TIMEOUT_S)
        await out.until(r"^After your change: top 3 articles", LIVE_TIMEOUT_S)
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), LIVE_TIMEOUT_S) == 0, stderr_path.read_text()
        rest = (await process.stdout.read()).decode()
        assert "demo stopped; the servers keep running" in rest
        assert "Traceback" not in stderr_path.read_text()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        stack_down(directory)
