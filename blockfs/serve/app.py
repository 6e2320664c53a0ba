"""The aiohttp application: precomputed and zarr routes over served volumes, CORS on every answer.

Routes, for each volume or pyramid served under ``<name>``:

    /<name>/info                                   precomputed info (JSON)
    /<name>/<key>/<x0>-<x1>_<y0>-<y1>_<z0>-<z1>    precomputed raw chunk (decompressed, C order z, y, x)
    /<name>/zarr/...                               zarr v2 group, OME-Zarr 0.4 multiscales, one array per level
    /<name>/zarr3/...                              the same as zarr v3 (OME-Zarr 0.5)

A name, key or chunk that does not exist is a 404 (never a 500); nothing else on disk is reachable.
Disk reads run in a thread pool so a slow file system never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable

from aiohttp import web

from .cache import ByteCache
from .client import ViewerSession, add_client
from .volumes import Chunk, ServedVolume

log = logging.getLogger("blockfs.serve")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
    "Access-Control-Expose-Headers": "ETag, Content-Length, Content-Type",
    "Access-Control-Max-Age": "86400",
}
DEFAULT_ALLOWED_HEADERS = "Range, If-None-Match, X-Requested-With"
ZARR_FORMATS = {"zarr": 2, "zarr3": 3}


class State:
    """What the handlers share: the served volumes, the read pool, the edge-block cache, counters."""

    def __init__(self, volumes: dict[str, ServedVolume], threads: int, cache_bytes: int):
        self.volumes = volumes
        self.pool = ThreadPoolExecutor(threads, "blockfs-serve")
        self.edges = ByteCache(cache_bytes)
        #: the Neuroglancer client's state, when the client is served
        self.viewer: ViewerSession | None = None
        #: requests answered, by (name, route, level): route is "info", "precomputed", "zarr" or "zarr3"
        self.requests: collections.Counter[tuple[str, str, int | None]] = collections.Counter()

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, function, *args)


STATE = web.AppKey("state", State)


async def add_cors(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: CORS headers on every response, errors included."""
    response.headers.update(CORS_HEADERS)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Preflights are answered for any path; HTTP errors pass as they are; anything else is a 500 with its reason."""
    if request.method == "OPTIONS":
        return preflight(request)
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as exc:  # a damaged block or a vanished shard must not drop the connection
        log.error("%s %s: %s", request.method, request.path, exc)
        return web.Response(status=500, text=f"{request.path}: {exc}\n")


def not_found(request: web.Request) -> web.HTTPNotFound:
    return web.HTTPNotFound(text=f"{request.path}: no such volume, level or chunk\n")


def served(request: web.Request) -> ServedVolume:
    volume = request.app[STATE].volumes.get(request.match_info["name"])
    if volume is None:
        raise not_found(request)
    return volume


def respond(request: web.Request, body: bytes, content_type: str, etag: str | None = None) -> web.Response:
    """200 with ``body``, or 304 when the client's If-None-Match already names ``etag``."""
    headers = {"Cache-Control": "no-cache"}
    if etag is not None:
        headers["ETag"] = etag
        if etag in (t.strip() for t in request.headers.get("If-None-Match", "").split(",")):
            return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type=content_type, headers=headers)


def chunk_response(request: web.Request, chunk: Chunk | None) -> web.Response:
    if chunk is None or chunk.body is None:
        raise not_found(request)
    return respond(request, chunk.body, "application/octet-stream", chunk.etag)


async def info(request: web.Request) -> web.Response:
    volume = served(request)
    request.app[STATE].requests[(volume.name, "info", None)] += 1
    return respond(request, volume.info_bytes, "application/json")


async def precomputed(request: web.Request) -> web.Response:
    volume = served(request)
    found = volume.precomputed_origin(request.match_info["key"], request.match_info["chunk"])
    if found is None:
        raise not_found(request)
    level, origin = found
    state = request.app[STATE]
    state.requests[(volume.name, "precomputed", level)] += 1
    return chunk_response(request, await state.run(volume.precomputed_chunk, level, origin))


async def zarr(request: web.Request) -> web.Response:
    volume = served(request)
    zarr_format = ZARR_FORMATS[request.match_info["zarr"]]
    key = request.match_info["key"]
    document = volume.zarr[zarr_format].metadata.get(key)
    if document is not None:
        return respond(request, document, "application/json")
    state = request.app[STATE]
    chunk = await state.run(volume.zarr_chunk, zarr_format, key, state.edges)
    if chunk is not None:
        state.requests[(volume.name, request.match_info["zarr"], int(key.partition("/")[0]))] += 1
    return chunk_response(request, chunk)


def preflight(request: web.Request) -> web.Response:
    """A CORS preflight: allowed from anywhere, for the methods and headers asked."""
    allowed = request.headers.get("Access-Control-Request-Headers", DEFAULT_ALLOWED_HEADERS)
    return web.Response(status=204, headers={"Access-Control-Allow-Headers": allowed})


async def index(request: web.Request) -> web.Response:
    """A JSON list of the served volumes and their routes."""
    listing = {name: {"precomputed": f"/{name}/", "zarr": f"/{name}/zarr/", "zarr3": f"/{name}/zarr3/"}
               for name in request.app[STATE].volumes}
    return web.json_response(listing, headers={"Cache-Control": "no-cache"})


def make_app(volumes: dict[str, ServedVolume], threads: int = 8, cache_bytes: int = 256 << 20,
             client_folder: str | None = None) -> web.Application:
    """The application serving ``volumes`` by name (and Neuroglancer's client in ``client_folder``, if given)."""
    app = web.Application(middlewares=[errors])
    state = app[STATE] = State(volumes, threads, cache_bytes)
    app.on_response_prepare.append(add_cors)
    if client_folder is not None:
        state.viewer = add_client(app, client_folder)
    else:
        app.router.add_get("/", index)
    app.router.add_get("/{name}/info", info)
    app.router.add_get(r"/{name}/{zarr:zarr3?}/{key:.*}", zarr)
    app.router.add_get("/{name}/{key}/{chunk}", precomputed)

    async def shutdown(app: web.Application) -> None:
        state.pool.shutdown(wait=True)
        for volume in volumes.values():
            volume.close()

    app.on_cleanup.append(shutdown)
    return app
