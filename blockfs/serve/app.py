"""The aiohttp application: precomputed and zarr routes over served volumes, behind a capability token.

Routes, for each volume or pyramid served under ``<name>``, all under ``/<token>`` (nothing when the
server runs without a token):

    /<token>/<name>/info                                   precomputed info (JSON)
    /<token>/<name>/<key>/<x0>-<x1>_<y0>-<y1>_<z0>-<z1>    precomputed raw chunk (decompressed, C order z, y, x)
    /<token>/<name>/zarr/...                               zarr v2 group, OME-Zarr 0.4 multiscales, one array per level
    /<token>/<name>/zarr3/...                              the same as zarr v3 (OME-Zarr 0.5)

A request without the token is refused (403) whatever it asks; one that changes state (a POST) must
also come from the server's own pages. A name, key or chunk that does not exist is a 404 (never a
500); nothing else on disk is reachable. A failure of the server is a 500 with a short reason; the
details, file names included, go to the log. Disk reads run in a thread pool so a slow file system
never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from ..errors import BlockfsError, describe
from .cache import ByteCache
from .catalog import Catalog
from .client import ViewerSession, add_client
from .volumes import ZARR_FORMATS, ServedVolume

log = logging.getLogger("blockfs.serve")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
    "Access-Control-Expose-Headers": "ETag, Content-Length, Content-Type",
    "Access-Control-Max-Age": "86400",
    "Referrer-Policy": "no-referrer",  # the token is in the URL: pages must not pass it on
}
DEFAULT_ALLOWED_HEADERS = "Range, If-None-Match, X-Requested-With"
#: Methods that only read; any other changes state and must come from the server's own origin.
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


class State:
    """What the handlers share: the token, the served volumes, the read pool, the edge-block cache, counters."""

    def __init__(self, volumes: dict[str, ServedVolume], threads: int, cache_bytes: int, token: str | None):
        #: the first path segment of every URL served; None when the server runs without one
        self.token = token
        self.prefix = "" if token is None else f"/{token}"
        self.catalog = Catalog(volumes)
        self.pool = ThreadPoolExecutor(threads, "blockfs-serve")
        self.edges = ByteCache(cache_bytes)
        #: the Neuroglancer client's state, when the client is served
        self.viewer: ViewerSession | None = None
        #: requests answered, by (name, route, level): route is "info", "precomputed", "zarr" or "zarr3"
        self.requests: collections.Counter[tuple[str, str, int | None]] = collections.Counter()

    @property
    def volumes(self) -> dict[str, ServedVolume]:
        """The volumes served now, by name."""
        return self.catalog.current()

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, function, *args)


STATE = web.AppKey("state", State)


async def add_cors(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: CORS headers on every response, errors included."""
    response.headers.update(CORS_HEADERS)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """HTTP errors (bad input is a 4xx) pass as they are; anything else is a 500 with a short reason, logged in full."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as exc:  # a damaged block or a vanished shard must not drop the connection
        if isinstance(exc, (BlockfsError, OSError)):
            log.error("%s %s: %s", request.method, request.path, describe(exc))
        else:
            log.exception("%s %s failed", request.method, request.path)
        return web.Response(status=500, text=f"{type(exc).__name__}: the server could not answer; "
                                             "its log has the details\n")


def has_token(path: str, token: str) -> bool:
    """Whether the first segment of ``path`` is ``token`` (compared in constant time)."""
    first = path[1:].partition("/")[0]
    return hmac.compare_digest(first.encode("utf-8", "surrogateescape"), token.encode("utf-8"))


def from_own_origin(request: web.Request) -> bool:
    """Whether a state-changing request comes from a page of this server, or from a program sending JSON.

    Browsers name the page's origin in every cross-origin POST (Origin, Sec-Fetch-Site), simple
    ``text/plain`` ones included, which is what Neuroglancer's client posts; a request naming
    neither comes from no browser page and must send ``application/json``, which no page can send
    to another origin without a preflight, and preflights allow no POST.
    """
    site, origin = request.headers.get("Sec-Fetch-Site"), request.headers.get("Origin")
    if site is None and origin is None:
        return request.content_type == "application/json"
    return site in (None, "same-origin") and origin in (None, f"{request.scheme}://{request.host}")


@web.middleware
async def authorise(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one check every request passes: the token first in its path, and state changes only from our pages."""
    token = request.app[STATE].token
    if token is not None and not has_token(request.path, token):
        raise web.HTTPForbidden(text="403: this server needs its token: use the URL it printed when it started\n")
    if request.method not in SAFE_METHODS and not from_own_origin(request):
        raise web.HTTPForbidden(text="403: only the server's own pages may change its state\n")
    return await handler(request)


@web.middleware
async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A CORS preflight (OPTIONS) is answered for any authorised path: the read methods, the headers asked."""
    if request.method != "OPTIONS":
        return await handler(request)
    if request.headers.get("Access-Control-Request-Method", "GET") not in SAFE_METHODS:
        raise web.HTTPForbidden(text="403: other origins may only read from this server\n")
    allowed = request.headers.get("Access-Control-Request-Headers", DEFAULT_ALLOWED_HEADERS)
    return web.Response(status=204, headers={"Access-Control-Allow-Headers": allowed})


def not_found(request: web.Request) -> web.HTTPNotFound:
    return web.HTTPNotFound(text=f"{request.path}: no such volume, level or chunk\n")


@contextlib.asynccontextmanager
async def served(request: web.Request) -> AsyncIterator[ServedVolume]:
    """The volume the request names, as it is on disk now, kept open while the request reads it; else a 404."""
    state = request.app[STATE]
    async with state.catalog.lease(request.match_info["name"], state.run) as volume:
        if volume is None:
            raise not_found(request)
        yield volume


def respond(request: web.Request, body: bytes, content_type: str, etag: str | None = None) -> web.Response:
    """200 with ``body``, or 304 when the client's If-None-Match already names ``etag``."""
    headers = {"Cache-Control": "no-cache"}
    if etag is not None:
        headers["ETag"] = etag
        if etag in (t.strip() for t in request.headers.get("If-None-Match", "").split(",")):
            return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type=content_type, headers=headers)


async def chunk(request: web.Request, volume: ServedVolume, route: str, key: str) -> web.Response:
    """The chunk ``key`` names on ``route``, read in the pool; a 404 for a key that names none."""
    address = volume.locate(route, key)
    if address is None:
        raise not_found(request)
    state = request.app[STATE]
    found = await state.run(volume.read, route, address, state.edges)
    state.requests[(volume.name, route, address[0])] += 1
    if found.body is None:
        raise not_found(request)
    return respond(request, found.body, "application/octet-stream", found.etag)


async def info(request: web.Request) -> web.Response:
    async with served(request) as volume:
        request.app[STATE].requests[(volume.name, "info", None)] += 1
        return respond(request, volume.info_bytes, "application/json")


async def precomputed(request: web.Request) -> web.Response:
    async with served(request) as volume:
        return await chunk(request, volume, "precomputed", f"{request.match_info['key']}/{request.match_info['chunk']}")


async def zarr(request: web.Request) -> web.Response:
    route, key = request.match_info["zarr"], request.match_info["key"]
    async with served(request) as volume:
        document = volume.zarr[ZARR_FORMATS[route]].metadata.get(key)
        if document is not None:
            return respond(request, document, "application/json")
        return await chunk(request, volume, route, key)


async def index(request: web.Request) -> web.Response:
    """A JSON list of the served volumes and their routes."""
    prefix = request.app[STATE].prefix
    listing = {name: {"precomputed": f"{prefix}/{name}/", "zarr": f"{prefix}/{name}/zarr/",
                      "zarr3": f"{prefix}/{name}/zarr3/"} for name in request.app[STATE].volumes}
    return web.json_response(listing, headers={"Cache-Control": "no-cache"})


def make_app(volumes: dict[str, ServedVolume], threads: int = 8, cache_bytes: int = 256 << 20,
             client_folder: str | None = None, token: str | None = None) -> web.Application:
    """The application serving ``volumes`` by name under ``/<token>`` (and Neuroglancer's client, if given)."""
    app = web.Application(middlewares=[errors, authorise, preflight])
    state = app[STATE] = State(volumes, threads, cache_bytes, token)
    app.on_response_prepare.append(add_cors)
    prefix = state.prefix
    if client_folder is not None:
        state.viewer = add_client(app, client_folder, prefix)
    else:
        app.router.add_get(prefix + "/", index)
    app.router.add_get(prefix + "/{name}/info", info)
    app.router.add_get(prefix + r"/{name}/{zarr:zarr3?}/{key:.*}", zarr)
    app.router.add_get(prefix + "/{name}/{key}/{chunk}", precomputed)

    async def shutdown(app: web.Application) -> None:
        state.pool.shutdown(wait=True)
        state.catalog.close()

    app.on_cleanup.append(shutdown)
    return app
