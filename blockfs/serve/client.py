"""Neuroglancer's bundled web client, served from the same origin as the volumes.

The client in the ``neuroglancer`` package is the build its Python server uses: it loads from
``<prefix>/v/<viewer>/``, receives its viewer state as server-sent events from
``<prefix>/events/<viewer>`` and posts the user's changes to ``<prefix>/state/<viewer>``, whatever
the prefix before ``/v/``. These routes play that part for one shared state, so a reload keeps the
user's view; nothing else of the Python server is needed. The prefix is the server's capability
token, which the server checks on every request.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import os
from typing import Any

from aiohttp import web

#: The client's name for its viewer (not a secret: the server's token comes before it in every URL).
VIEWER = "blockfs"
CLIENT_PATH = f"/v/{VIEWER}/"
mimetypes.add_type("application/wasm", ".wasm")


class ViewerSession:
    """The viewer state the client shows, with a generation that changes with each update."""

    def __init__(self, folder: str):
        self.files = {name: os.path.join(folder, name) for name in os.listdir(folder)
                      if os.path.isfile(os.path.join(folder, name))}
        self.state: dict[str, Any] = {}
        self.generation = 0
        self.closing: asyncio.Event | None = None

    def set(self, state: dict[str, Any]) -> str:
        self.state, self.generation = state, self.generation + 1
        return str(self.generation)

    def event(self) -> bytes:
        message = {"k": "s", "g": str(self.generation), "s": self.state}
        return f"data: {json.dumps(message)}\n\n".encode()


SESSION = web.AppKey("viewer", ViewerSession)


async def client_file(request: web.Request) -> web.StreamResponse:
    """A file of the client by name, from the fixed list of its folder; index.html for the folder itself."""
    path = request.app[SESSION].files.get(request.match_info["file"] or "index.html")
    if path is None:
        raise web.HTTPNotFound(text=f"{request.path}: not a file of the Neuroglancer client\n")
    return web.FileResponse(path)


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the current state when the client's generation is older, then an open stream."""
    session = request.app[SESSION]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    if request.query.get("gs") != str(session.generation):
        await response.write(session.event())
    assert session.closing is not None
    await session.closing.wait()
    return response


async def read_state(request: web.Request) -> dict[str, Any]:
    """The viewer state a POST carries, ``{"s": {...}}``; a 400 naming what is wrong with anything else."""
    try:
        message = json.loads(await request.read())
    except (ValueError, RecursionError) as exc:  # not JSON, or nested too deep to read
        raise web.HTTPBadRequest(text=f"{request.path}: the body is not JSON that can be read ({exc})\n") from None
    if not isinstance(message, dict) or not isinstance(message.get("s"), dict):
        raise web.HTTPBadRequest(text=f"{request.path}: expected JSON with the viewer state under 's'\n")
    return message["s"]


async def post_state(request: web.Request) -> web.Response:
    """The client's changed state becomes the state a reload shows."""
    return web.json_response({"g": request.app[SESSION].set(await read_state(request))})


def add_client(app: web.Application, folder: str, prefix: str = "") -> ViewerSession:
    """Serve the client in ``folder`` at ``<prefix>/v/<viewer>/`` (``<prefix>/`` redirects there); its session."""
    session = app[SESSION] = ViewerSession(folder)

    async def index(request: web.Request) -> web.Response:
        raise web.HTTPFound(prefix + CLIENT_PATH)

    async def open_events(app: web.Application) -> None:
        session.closing = asyncio.Event()

    async def close_events(app: web.Application) -> None:
        assert session.closing is not None
        session.closing.set()

    app.on_startup.append(open_events)
    app.on_shutdown.append(close_events)
    app.router.add_get(prefix + "/", index)
    app.router.add_get(prefix + CLIENT_PATH + "{file:[^/]*}", client_file)
    app.router.add_get(f"{prefix}/events/{VIEWER}", events)
    app.router.add_post(f"{prefix}/state/{VIEWER}", post_state)
    return session
