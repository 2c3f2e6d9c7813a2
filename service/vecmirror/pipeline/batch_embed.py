"""A batch's texts through the model: sorted by length, in calls of a fixed size, each in a thread,
with a text the model fails on isolated so it fails alone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from vecmirror.pipeline.embedder import Embedder

# Called after each model call: the sync keeps its claim alive with it.
Keepalive = Callable[[], Awaitable[object]]


class BatchEmbedder:
    def __init__(self, embedder: Embedder, texts_per_call: int) -> None:
        self._embedder = embedder
        self._texts_per_call = texts_per_call

    async def embed(
        self, texts: list[str], keepalive: Keepalive, timings: list[float] | None = None
    ) -> list[object]:
        """A vector per text, or the exception the model raised on that text alone.

        One model call per `texts_per_call` texts, each in a thread: the event loop stays free,
        and a shutdown that cancels the batch waits for one model call at most. Texts go to the
        model sorted by length so each call pads little (unsorted chunks halved throughput here).
        `keepalive` runs between calls, so the claim timeout only ends a frozen worker's claim.
        Each call's duration is appended to `timings`."""
        timings = [] if timings is None else timings
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors: list[object] = [None] * len(texts)
        for start in range(0, len(order), self._texts_per_call):
            chunk = order[start : start + self._texts_per_call]
            embedded = await self._isolating_failures([texts[i] for i in chunk], timings)
            for position, vector in zip(chunk, embedded, strict=True):
                vectors[position] = vector
            await keepalive()
        return vectors

    async def _isolating_failures(self, texts: list[str], timings: list[float]) -> list[object]:
        """A failing call is split in halves until the text that fails it is found."""
        started = time.monotonic()
        try:
            vectors = list(await asyncio.to_thread(self._embedder.embed, texts))
        except Exception as exc:  # the model's own error, whatever its type: it is the row's failure
            timings.append(time.monotonic() - started)
            if len(texts) == 1:
                return [exc]
            half = len(texts) // 2
            return [
                *await self._isolating_failures(texts[:half], timings),
                *await self._isolating_failures(texts[half:], timings),
            ]
        timings.append(time.monotonic() - started)
        return vectors
