"""Bounds on the server's connections: a cap, the longest-idle connection closed to make room, and quiet
descriptor exhaustion.

aiohttp closes a connection that has not sent a complete request head within its keep-alive timeout
of opening or of its last answer. This adds what it lacks. At most ``limit`` connections are open; a
new one closes the connection idle longest (never one whose request is being answered), so sockets
that send nothing lose their place to clients that ask. Should accept() still run out of file
descriptors, the cap comes down below the count it happened at, idle connections are closed, and
the log gets one line per :data:`LOG_INTERVAL` instead of a traceback per attempt.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("blockfs.serve")

#: Seconds between two log lines about running out of file descriptors.
LOG_INTERVAL = 10.0
#: Seconds after which asyncio tries accept() again once it ran out of descriptors: every failure
#: before that is the same shortage, and lowers the cap once.
RETRY_DELAY = 1.0
#: Seconds a refused connection may stay open for the client to read its 503.
LINGER = 0.5
#: The largest default cap, and the largest listen backlog.
MAX_CONNECTIONS, MAX_BACKLOG = 4096, 128
#: What accept() fails with when the process or the system has no descriptor left.
OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)
REFUSAL = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"

Handler = Callable[[web.Request], Any]


def descriptor_limit() -> int | None:
    """The process's soft limit on open files (RLIMIT_NOFILE); None where there is none to read."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def default_backlog() -> int:
    """The listen backlog: asyncio accepts up to this many sockets at once before any can be closed."""
    soft = descriptor_limit()
    return MAX_BACKLOG if soft is None else max(8, min(MAX_BACKLOG, soft // 8))


def default_limit() -> int:
    """Half the descriptors that a burst of accepts leaves, at most 4096: the rest is for the volumes' files."""
    soft = descriptor_limit()
    return MAX_CONNECTIONS if soft is None else max(8, min(MAX_CONNECTIONS, (soft - default_backlog()) // 2))


class Refused(asyncio.Protocol):
    """A connection beyond the cap while every open one is answering a request: a 503, then closed.

    The request is read and dropped, so that closing sends the client the answer, not a reset; the
    connection closes when the client does, or :data:`LINGER` seconds after the answer.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's BaseTransport: the transport here is a WriteTransport
        transport.write(REFUSAL)  # type: ignore[attr-defined]
        transport.write_eof()  # type: ignore[attr-defined]
        asyncio.get_running_loop().call_later(LINGER, transport.close)


class Tracked(asyncio.Protocol):
    """aiohttp's handler of one connection, which :class:`Connections` may close, even before it is up."""

    def __init__(self, handler: RequestHandler, connections: Connections):
        self.handler = handler
        self.connections = connections
        self.connected = False
        self.closed = False

    def close(self) -> None:
        """Close the connection now, or as soon as it is made."""
        self.closed = True
        if self.connected:
            self.handler.force_close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.closed:
            transport.close()
            return
        self.connected = True
        self.handler.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.forget(self.handler)
        if self.connected:
            self.handler.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.connected:
            self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        if self.connected:
            self.handler.eof_received()  # aiohttp's handler returns None: the transport closes itself
        return None

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()


class Connections:
    """The open connections, longest idle first; the protocol factory and the loop's exception handler.

    ``limit`` connections at most; ``backlog`` is the listening socket's, as many sockets as asyncio
    may accept at once, which must fit in the descriptors left.
    """

    def __init__(self, limit: int, backlog: int):
        self.limit = limit
        self.backlog = backlog
        self._make: Callable[[], RequestHandler] | None = None
        self._open: dict[RequestHandler, Tracked] = {}
        self._busy: set[RequestHandler] = set()
        self._lowered_at = -RETRY_DELAY
        self._quiet_until = 0.0
        self._unreported = 0

    def __len__(self) -> int:
        return len(self._open)

    def serve(self, make: Callable[[], RequestHandler]) -> Callable[[], asyncio.Protocol]:
        """The protocol factory for the listening socket, making aiohttp's handlers with ``make``."""
        self._make = make
        return self._connection

    def _connection(self) -> asyncio.Protocol:
        assert self._make is not None
        if len(self._open) >= self.limit and not self._close_idle():
            return Refused()
        handler = self._make()
        tracked = self._open[handler] = Tracked(handler, self)
        return tracked

    def forget(self, handler: RequestHandler) -> None:
        self._open.pop(handler, None)
        self._busy.discard(handler)

    @web.middleware
    async def track(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Middleware: a connection answering a request is never closed to make room; then it is the most recent."""
        connection = request.protocol
        self._busy.add(connection)
        try:
            return await handler(request)
        finally:
            self._busy.discard(connection)
            tracked = self._open.pop(connection, None)
            if tracked is not None:  # to the end: the most recently active
                self._open[connection] = tracked

    def _close_idle(self) -> bool:
        """Close the connection idle longest; False when every open connection is answering a request."""
        for _ in range(len(self._open)):
            handler = next(iter(self._open))
            tracked = self._open.pop(handler)
            if handler in self._busy:
                self._open[handler] = tracked
                continue
            tracked.close()
            return True
        return False

    def loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The event loop's exception handler: out of descriptors, lower the cap and make room, quietly."""
        exc = context.get("exception")
        if not (isinstance(exc, OSError) and exc.errno in OUT_OF_DESCRIPTORS):
            loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if now >= self._lowered_at + RETRY_DELAY:
            self._lowered_at = now
            self.limit = max(1, min(self.limit, len(self._open) - self.backlog))
            for _ in range(len(self._open) - self.limit):
                if not self._close_idle():
                    break
        if now < self._quiet_until:
            self._unreported += 1
            return
        log.warning("out of file descriptors (%s; limit %s) with %d connections open: serving at most %d "
                    "connections from now on, closing the longest idle%s", exc.strerror, descriptor_limit(),
                    len(self._open), self.limit,
                    f" ({self._unreported} more such failures since the last report)" if self._unreported else "")
        self._quiet_until, self._unreported = now + LOG_INTERVAL, 0
