"""A blocking wrapper around MirrorSearch for scripts: one private event loop, reused per call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, TypeVar

from vecmirror.config import Config
from vecmirror.connections import connect_redis
from vecmirror.pipeline.embedder import EmbedderFactory, default_embedder_factory
from vecmirror.query.postgres import LazyPool
from vecmirror.query.results import Hit
from vecmirror.query.search import MirrorSearch
from vecmirror.settings import Settings

T = TypeVar("T")


class SyncMirrorSearch:
    """with SyncMirrorSearch(settings, config) as search: search.knn("docs", text="...")"""

    def __init__(
        self, settings: Settings, config: Config, embedder_factory: EmbedderFactory | None = None
    ) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._client = self._loop.run_until_complete(connect_redis(settings))
        except BaseException:
            self._loop.close()  # a bad setting or a server out of reach must not leak the loop
            raise
        self._postgres = LazyPool(settings)  # opened by the first wait_synced
        self._search = MirrorSearch(
            config, self._client, embedder_factory or default_embedder_factory(settings), self._postgres
        )

    def __enter__(self) -> SyncMirrorSearch:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if not self._loop.is_closed():
            self._loop.run_until_complete(self._postgres.close())
            self._loop.run_until_complete(self._client.aclose())
            self._loop.close()

    def knn(self, mirror: str, **options: Any) -> list[Hit]:
        return self._call(self._search.knn, mirror, **options)

    def range(self, mirror: str, **options: Any) -> list[Hit]:
        return self._call(self._search.range, mirror, **options)

    def hybrid(self, mirror: str, **options: Any) -> list[Hit]:
        return self._call(self._search.hybrid, mirror, **options)

    def wait_synced(self, mirror: str, keys: Sequence[object], timeout: float) -> bool:
        """Blocks until the rows' changes committed before the call are in Redis (True), or at most
        `timeout` seconds (False); see MirrorSearch.wait_synced."""
        return self._call(self._search.wait_synced, mirror, keys, timeout)

    def _call(self, method: Callable[..., Coroutine[Any, Any, T]], *args: Any, **options: Any) -> T:
        return self._loop.run_until_complete(method(*args, **options))
