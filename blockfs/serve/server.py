"""Run the application on its own event loop in a background thread: ``start(paths) -> Server``."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import threading
import warnings
from typing import Iterable, Sequence

from aiohttp import web

from ..errors import InvalidArgumentError
from .app import STATE, State, make_app
from .volumes import ServedVolume, open_served

LOOPBACK = "127.0.0.1"
#: Seconds to wait for the server to start or stop.
TIMEOUT = 30


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
    """A running server: ``.url`` (no trailing slash), ``.close()``; a context manager."""

    def __init__(self, app: web.Application, host: str, port: int):
        self.app = app
        self.host = host
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="blockfs-serve", daemon=True)
        self._thread.start()
        self._runner = web.AppRunner(app, access_log=None)
        try:
            self.port = asyncio.run_coroutine_threadsafe(self._start(port), self._loop).result(TIMEOUT)
        except BaseException:
            self._stop_loop()
            raise

    async def _start(self, port: int) -> int:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, port)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            raise
        return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def state(self) -> State:
        """The served volumes, the edge cache and the request counters."""
        return self.app[STATE]

    def close(self) -> None:
        """Stop serving, wait for the requests in flight, close the volumes."""
        if not self._loop.is_running():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(TIMEOUT)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(TIMEOUT)
        self._loop.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def start(paths: Iterable[str | os.PathLike] | str | os.PathLike, port: int = 0, host: str = LOOPBACK,
          names: Sequence[str | None] | None = None, client_folder: str | None = None,
          threads: int = 8, cache_bytes: int = 256 << 20) -> Server:
    """Serve volumes (index files) and pyramid folders in a background thread; port 0 picks a free one.

    Each is served under ``/<name>/`` (``names``, default the file's or folder's name). Binding
    anywhere but loopback warns: everything served is readable by anyone who can reach the port.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise InvalidArgumentError("nothing to serve: give at least one volume index file or pyramid folder.")
    if not is_loopback(host):
        warnings.warn(f"serving on {host}: every volume served is readable by anyone who can reach this port; "
                      f"bind {LOOPBACK} unless that is what you want.", UserWarning, stacklevel=2)
    volumes = open_all(paths, names)
    try:
        return Server(make_app(volumes, threads, cache_bytes, client_folder), host, port)
    except BaseException:
        for volume in volumes.values():
            volume.close()
        raise
