"""Run the application on its own event loop in a background thread: ``start(paths) -> Server``."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import secrets
import threading
import warnings
from collections.abc import Iterable, Sequence

from aiohttp import web

from ..errors import InvalidArgumentError, OpenServerWarning
from . import IDLE_TIMEOUT
from .app import STATE, State, make_app
from .connections import Connections, default_backlog, default_limit
from .volumes import ServedVolume, open_served

LOOPBACK = "127.0.0.1"
#: Seconds to wait for the server to start or stop.
TIMEOUT = 30
#: Seconds a request in flight may take to finish when the server stops.
SHUTDOWN_TIMEOUT = 10
#: Random bytes in a token (43 URL-safe characters).
TOKEN_BYTES = 32


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_all(paths: Sequence[str | os.PathLike], names: Sequence[str | None] | None = None
             ) -> dict[str, ServedVolume]:
    """Open each path under its name (default from the path); two paths may not share a name."""
    names = list(names or [])
    if len(names) > len(paths):
        raise InvalidArgumentError(f"{len(names)} names given for {len(paths)} volumes; give at most one per volume.")
    volumes: dict[str, ServedVolume] = {}
    try:
        for path, name in zip(paths, names + [None] * (len(paths) - len(names))):
            volume = open_served(os.fspath(path), name)
            if volume.name in volumes:
                volume.close()
                raise InvalidArgumentError(f"{os.fspath(path)}: the name {volume.name!r} is already served; give "
                                           "each volume its own with --name.")
            volumes[volume.name] = volume
    except BaseException:
        for volume in volumes.values():
            volume.close()
        raise
    return volumes


class Server:
    """A running server: ``.url`` (with the token, no trailing slash), ``.token``, ``.close()``; a context manager.

    Connections: one that sends no complete request head within ``idle_timeout`` seconds of opening
    or of its last answer is closed; at most ``max_connections`` are open (a new one closes the one
    idle longest; see :mod:`blockfs.serve.connections`).
    """

    def __init__(self, app: web.Application, host: str, port: int, idle_timeout: float = IDLE_TIMEOUT,
                 max_connections: int | None = None):
        self.app = app
        self.host = host
        self.connections = Connections(default_limit() if max_connections is None else max_connections,
                                       default_backlog())
        app.middlewares.append(self.connections.track)
        self._listener: asyncio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(self.connections.loop_error)
        self._thread = threading.Thread(target=self._loop.run_forever, name="blockfs-serve", daemon=True)
        self._thread.start()
        self._runner = web.AppRunner(app, access_log=None, keepalive_timeout=idle_timeout,
                                     shutdown_timeout=SHUTDOWN_TIMEOUT)
        try:
            self.port = asyncio.run_coroutine_threadsafe(self._start(port), self._loop).result(TIMEOUT)
        except BaseException:
            self._stop_loop()
            raise

    async def _start(self, port: int) -> int:
        await self._runner.setup()
        assert self._runner.server is not None
        try:
            self._listener = await asyncio.get_running_loop().create_server(
                self.connections.serve(self._runner.server), self.host, port, backlog=self.connections.backlog)
        except BaseException:
            await self._runner.cleanup()
            raise
        return self._listener.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
        await self._runner.cleanup()

    @property
    def token(self) -> str | None:
        """The first path segment of every URL served (None when serving without one, or another application)."""
        state = self.app.get(STATE)
        return None if state is None else state.token

    @property
    def origin(self) -> str:
        """``http://host:port``, without the token."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """Where the served volumes are: ``<origin>/<token>``; each under ``<url>/<name>/``."""
        return self.origin if self.token is None else f"{self.origin}/{self.token}"

    @property
    def state(self) -> State:
        """The token, the served volumes, the edge cache and the request counters."""
        return self.app[STATE]

    def close(self) -> None:
        """Stop serving, wait for the requests in flight, close the volumes."""
        if not self._loop.is_running():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(TIMEOUT)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(TIMEOUT)
        self._loop.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def start(paths: Iterable[str | os.PathLike] | str | os.PathLike, port: int = 0, host: str = LOOPBACK,
          names: Sequence[str | None] | None = None, client_folder: str | None = None,
          threads: int = 8, cache_bytes: int = 256 << 20, token: bool = True,
          idle_timeout: float = IDLE_TIMEOUT, max_connections: int | None = None) -> Server:
    """Serve volumes (index files) and pyramid folders in a background thread; port 0 picks a free one.

    Each is served under ``<server.url>/<name>/`` (``names``, default the file's or folder's name).
    ``server.url`` holds an unguessable token (``token=False``: none, for public data), without
    which every request is refused. Binding anywhere but loopback warns: everything served is
    readable by anyone who can reach the port and has the URL. ``max_connections`` defaults to half
    the process's descriptor limit (at most 4096).
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise InvalidArgumentError("nothing to serve: give at least one volume index file or pyramid folder.")
    if idle_timeout <= 0 or (max_connections is not None and max_connections < 1):
        raise InvalidArgumentError(f"idle_timeout must be > 0 and max_connections >= 1; got {idle_timeout!r} "
                                   f"and {max_connections!r}.")
    if not is_loopback(host):
        warnings.warn(f"serving on {host}: every volume served is readable by anyone who can reach this port "
                      f"and has its URL; bind {LOOPBACK} unless that is what you want.",
                      OpenServerWarning, stacklevel=2)
    volumes = open_all(paths, names)
    try:
        app = make_app(volumes, threads, cache_bytes, client_folder,
                       secrets.token_urlsafe(TOKEN_BYTES) if token else None)
        return Server(app, host, port, idle_timeout, max_connections)
    except BaseException:
        for volume in volumes.values():
            volume.close()
        raise
