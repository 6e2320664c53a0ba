"""Servers for the remote-read tests, all on 127.0.0.1: Debian's nginx serving a folder, moto's S3 in this
process, and ``Faulty``, an aiohttp file server that misbehaves on request and counts what it is asked.

Each comes as a context manager (``nginx``, ``moto_s3``, ``faulty``) and as fixtures serving the folder of the
``served`` fixture (``nginx_url``, ``s3``, ``faulty_server``). A missing nginx or moto skips the test, or
fails it under CI (see ``helpers.unavailable``). A test module imports the fixtures it uses and those they
depend on::

    from remote_servers import faulty_server, moto_endpoint, nginx_url, s3, served  # noqa: F401 (fixtures)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import pytest
from aiohttp import web

from benchmarks import http_server
from helpers import require, unavailable

#: How long a server may take to accept connections before the fixture gives up.
START_TIMEOUT = 10.0
#: The keys moto accepts (any will do; they only have to be the same on both sides).
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


# --- nginx ---------------------------------------------------------------------------------------------------

def nginx_binary() -> str:
    """The nginx program (on PATH, or in /usr/sbin where Debian puts it), or skip (under CI, fail) without it."""
    found = http_server.binary()
    if found is None:
        unavailable("nginx is not installed (no nginx binary on PATH or in /usr/sbin); make install sets it up")
    return found


def date_back(path: Path) -> None:
    """Date ``path`` an hour back. nginx's ETag is a file's size and mtime in whole seconds, so a file written again
    within the second keeps its ETag; once dated back, the next write changes it."""
    an_hour_ago = time.time() - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))


@contextlib.contextmanager
def nginx(root: Path, work: Path) -> Iterator[str]:
    """Serve the folder ``root`` read-only (GET and HEAD, ranges, ETags, If-Match) with nginx in the foreground,
    as the benchmark does (:func:`benchmarks.http_server.serve`), its configuration, logs and temporary files in
    the folder ``work``; yields the base URL (``http://127.0.0.1:PORT``, no trailing slash)."""
    nginx_binary()
    with http_server.serve(str(root), str(work)) as server:
        yield server.url


# --- moto S3 -------------------------------------------------------------------------------------------------

@dataclass
class S3:
    """A bucket on a moto server: ``url`` is ``s3://BUCKET``; ``env`` is what obstore's
    ``S3Store.from_url(url)`` needs in the environment to reach it."""

    endpoint: str
    bucket: str
    client: Any = field(repr=False)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}"

    @property
    def env(self) -> dict[str, str]:
        return {**S3_KEYS, "AWS_ENDPOINT_URL": self.endpoint, "AWS_ALLOW_HTTP": "true"}

    def upload(self, local: Path, prefix: str = "") -> list[str]:
        """Upload the file ``local``, or every file under the folder ``local`` (its relative paths kept),
        under the key prefix ``prefix`` (e.g. ``"vol/"``); returns the keys written."""
        files = sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else [local]
        keys = []
        for path in files:
            key = prefix + (path.relative_to(local).as_posix() if local.is_dir() else path.name)
            self.client.upload_file(str(path), self.bucket, key)
            keys.append(key)
        return keys


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 (and the rest of AWS) in a thread of this process; yields the endpoint URL."""
    server_module = require("moto.server")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        server._server.server_close()  # stop() leaves the listening socket open


@contextlib.contextmanager
def moto_s3(endpoint: str, bucket: str | None = None) -> Iterator[S3]:
    """A new bucket (``bucket``, or a fresh name) on the moto server at ``endpoint``; moto forgets
    everything (every bucket) on exit."""
    boto3 = require("boto3")
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"], region_name=S3_KEYS["AWS_REGION"])
    name = bucket or f"blockfs-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    try:
        yield S3(endpoint, name, client)
    finally:
        client.close()
        with urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"),
                                    timeout=30):
            pass


# --- Faulty: an aiohttp file server that misbehaves on request -----------------------------------------------

class Seen(NamedTuple):
    """One request as the server received it."""

    method: str
    range: str | None
    if_match: str | None


@dataclass
class Fault:
    """What the next ``times`` requests of a path get instead of a proper answer."""

    kind: Literal["drop", "status", "slow", "truncate"]
    times: int
    status: int = 500
    delay: float = 0.0
    size: int = 0


_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class Faulty:
    """Serves the files of ``root`` on 127.0.0.1 (GET and HEAD; one byte range per request, answered 206 with
    Content-Range, or 416 past the end; ETags; If-Match), from an event loop in a thread of its own.

    Paths are relative to ``root``, without a leading slash (``"vol.blockfs"``). For each path it records
    every request (:attr:`seen`), and can be told to misbehave for its next requests: :meth:`drop`,
    :meth:`status`, :meth:`slow`, :meth:`truncate`. Use it through :func:`faulty`.
    """

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.url = ""
        self.seen: dict[str, list[Seen]] = {}
        self._faults: dict[str, Fault] = {}
        self._lock = threading.Lock()

    def drop(self, path: str, times: int = 1) -> None:
        """Close the connection of the next ``times`` requests of ``path`` without answering."""
        self._set(path, Fault("drop", times))

    def status(self, path: str, status: int, times: int = 1) -> None:
        """Answer the next ``times`` requests of ``path`` with the error ``status`` (500, 503...)."""
        self._set(path, Fault("status", times, status=status))

    def slow(self, path: str, delay: float, times: int = 1) -> None:
        """Wait ``delay`` seconds before answering the next ``times`` requests of ``path``."""
        self._set(path, Fault("slow", times, delay=delay))

    def truncate(self, path: str, size: int, times: int = 1) -> None:
        """Serve ``path`` as if it were cut at byte ``size`` (ETag unchanged) for its next ``times`` requests."""
        self._set(path, Fault("truncate", times, size=size))

    def count(self, path: str) -> int:
        """How many requests of ``path`` the server received."""
        with self._lock:
            return len(self.seen.get(path, []))

    def ranges(self, path: str) -> list[str | None]:
        """The Range headers of the requests of ``path``, in order (None for a request without one)."""
        with self._lock:
            return [seen.range for seen in self.seen.get(path, [])]

    def forget(self) -> None:
        """Forget the requests seen so far and any faults still pending."""
        with self._lock:
            self.seen.clear()
            self._faults.clear()

    def _set(self, path: str, fault: Fault) -> None:
        with self._lock:
            self._faults[path] = fault

    def _record(self, path: str, seen: Seen) -> Fault | None:
        """Record a request and take one use of its path's fault, if any."""
        with self._lock:
            self.seen.setdefault(path, []).append(seen)
            fault = self._faults.get(path)
            if fault is None:
                return None
            fault.times -= 1
            if fault.times <= 0:
                del self._faults[path]
            return fault

    async def handle(self, request: web.Request) -> web.Response:
        """The aiohttp handler of every path."""
        path = request.match_info["path"]
        fault = self._record(path, Seen(request.method, request.headers.get("Range"),
                                        request.headers.get("If-Match")))
        if fault is not None and fault.kind == "drop":
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError  # aiohttp then closes the connection without a response
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(fault.delay)
        if fault is not None and fault.kind == "status":
            return web.Response(status=fault.status, text=f"injected {fault.status}\n")
        file = (self.root / path).resolve()
        if not file.is_relative_to(self.root) or not file.is_file():
            return web.Response(status=404, text="not found\n")
        data = file.read_bytes()
        if fault is not None and fault.kind == "truncate":
            data = data[:fault.size]
        stat = file.stat()
        etag = f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"'
        headers = {"ETag": etag, "Accept-Ranges": "bytes"}
        if_match = request.headers.get("If-Match")
        if if_match is not None and if_match.strip() != "*" and etag not in [t.strip() for t in if_match.split(",")]:
            return web.Response(status=412, headers=headers)
        span = _byte_range(request.headers.get("Range"), len(data))
        if span is None:
            return web.Response(body=data, headers=headers)
        start, end = span
        if start >= len(data):
            return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{len(data)}"})
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        return web.Response(status=206, body=data[start:end], headers=headers)


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end exclusive) of a single ``bytes=`` range of an object of ``size`` bytes; None for no
    Range header or one this server does not parse (then the whole object is sent, as HTTP allows)."""
    match = _RANGE.fullmatch(header.strip()) if header else None
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if first == "":
        return max(0, size - int(last)), size
    return int(first), size if last == "" else min(int(last) + 1, size)


@contextlib.contextmanager
def faulty(root: Path) -> Iterator[Faulty]:
    """A running :class:`Faulty` serving ``root``; stopped (loop closed, thread joined) on exit."""
    server = Faulty(root)
    app = web.Application()
    app.router.add_get("/{path:.+}", server.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    loop = asyncio.new_event_loop()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server.url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def setup() -> None:
        await runner.setup()
        await web.SockSite(runner, sock).start()

    thread = threading.Thread(target=loop.run_forever, name="faulty-server", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(setup(), loop).result(START_TIMEOUT)
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
        sock.close()


# --- fixtures ------------------------------------------------------------------------------------------------

@pytest.fixture
def served(tmp_path: Path) -> Path:
    """An empty folder for the test to fill with what the servers serve."""
    folder = tmp_path / "served"
    folder.mkdir()
    return folder


@pytest.fixture
def nginx_url(served: Path, tmp_path: Path) -> Iterator[str]:
    """Base URL of nginx serving ``served``."""
    with nginx(served, tmp_path / "nginx") as url:
        yield url


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """The endpoint URL of the session's moto server (started on first use)."""
    with moto_server() as endpoint:
        yield endpoint


@contextlib.contextmanager
def s3_environment(bucket: S3) -> Iterator[None]:
    """The environment set for obstore to reach ``bucket`` (other AWS settings unset), restored on exit."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION"):
            patch.delenv(name, raising=False)
        for name, value in bucket.env.items():
            patch.setenv(name, value)
        yield


@pytest.fixture
def s3(moto_endpoint: str) -> Iterator[S3]:
    """A fresh bucket on the moto server, with the environment set for obstore to reach it."""
    with moto_s3(moto_endpoint) as bucket, s3_environment(bucket):
        yield bucket


@pytest.fixture
def faulty_server(served: Path) -> Iterator[Faulty]:
    """A :class:`Faulty` serving ``served``."""
    with faulty(served) as server:
        yield server
