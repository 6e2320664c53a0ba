"""The served names and the volume each stands for now: opened again when replaced, a 404 once gone.

A request looks at its volume's files (``os.stat`` of its index files and a pyramid's ``info``) at
most every :data:`CHECK_INTERVAL` seconds, in the read pool. When their identity (device, inode)
differs from what was opened, the volume at the path is opened afresh and served from then on; when
one of them is missing, the name answers 404 until a volume is there again. A replaced volume is
closed once the last request reading it has finished.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..errors import BlockfsError, StaleVolumeError, describe
from .volumes import Identity, ServedVolume, open_served, volume_identity

log = logging.getLogger("blockfs.serve")

#: Seconds between two looks at a volume's files.
CHECK_INTERVAL = 0.5

#: Runs a blocking function off the event loop: ``await run(function, *args)``.
Run = Callable[..., Awaitable[Any]]


@dataclass(eq=False)
class Opened:
    """A volume as opened, with the requests reading it; closed when it is retired and none is left."""

    volume: ServedVolume
    users: int = 0
    retired: bool = False

    def release(self) -> None:
        self.users -= 1
        self._close_if_done()

    def retire(self) -> None:
        self.retired = True
        self._close_if_done()

    def _close_if_done(self) -> None:
        if self.retired and not self.users:
            self.volume.close()


@dataclass(eq=False)
class Entry:
    """One served name: its path, what is open for it (None while there is nothing to serve), when to look next."""

    name: str
    path: str
    opened: Opened | None
    identity: Identity | None
    due: float
    problem: str | None = None


class Catalog:
    """Served volumes by name, each checked against its files on use (in the event loop's thread)."""

    def __init__(self, volumes: dict[str, ServedVolume]):
        due = time.monotonic() + CHECK_INTERVAL
        self._entries = {name: Entry(name, v.path, Opened(v), v.identity, due) for name, v in volumes.items()}

    def current(self) -> dict[str, ServedVolume]:
        """The volumes served now, by name (without those gone)."""
        return {name: e.opened.volume for name, e in self._entries.items() if e.opened is not None}

    @contextlib.asynccontextmanager
    async def lease(self, name: str, run: Run) -> AsyncIterator[ServedVolume | None]:
        """The volume served as ``name`` now (None if there is none), kept open until the block ends."""
        entry = self._entries.get(name)
        if entry is None:
            yield None
            return
        await self._look(entry, run)
        opened = entry.opened
        if opened is None:
            yield None
            return
        opened.users += 1
        try:
            yield opened.volume
        except StaleVolumeError as exc:  # replaced since it was last looked at: the next request opens the new one
            entry.due = 0.0
            raise web.HTTPServiceUnavailable(
                headers={"Retry-After": "1"},
                text=f"{name}: the volume was replaced while it was read; try again\n") from exc
        finally:
            opened.release()

    async def _look(self, entry: Entry, run: Run) -> None:
        """Open the volume again if its files were replaced; forget it if they are gone (rate-limited)."""
        now = time.monotonic()
        if now < entry.due:
            return
        entry.due = now + CHECK_INTERVAL
        try:
            seen = await run(volume_identity, entry.path)
            if seen == entry.identity:
                return
            entry.identity = seen
            volume = None if seen is None else await run(open_served, entry.path, entry.name)
        except (BlockfsError, OSError) as exc:
            self._replace(entry, None, f"cannot be served ({describe(exc)})")
            return
        self._replace(entry, volume, "is gone" if volume is None else None)

    def _replace(self, entry: Entry, volume: ServedVolume | None, problem: str | None) -> None:
        if entry.opened is not None:
            entry.opened.retire()
        entry.opened = None if volume is None else Opened(volume)
        if volume is not None:
            entry.identity = volume.identity
            log.info("%s: %s was replaced; serving the new volume", entry.name, entry.path)
        elif problem != entry.problem:
            log.warning("%s: %s %s; answering 404 until a volume is there", entry.name, entry.path, problem)
        entry.problem = problem

    def close(self) -> None:
        """Close every volume still open (requests have finished)."""
        for entry in self._entries.values():
            if entry.opened is not None:
                entry.opened.retire()
                entry.opened = None
