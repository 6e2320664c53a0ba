"""Serving figures: keep-alive clients fetching random full chunks of one volume from each server.

Every server runs in its own process; the clients (aiohttp, one connection each) run in this one:

- *zarr pass-through*: ``blockfs serve``'s zarr route, the stored bytes of each block as they are;
- *static files*: aiohttp's static file route over the same compressed chunks stored one file per
  chunk (the floor for a file-per-chunk store);
- *precomputed raw*: ``blockfs serve``'s precomputed route, which decompresses each chunk;
- *Neuroglancer LocalVolume*: Neuroglancer's own Python server (tornado) over the same array in
  memory, with its default ``npz`` encoding (zlib; its ``raw`` encoding fails on numpy >= 2.3).

Also the median and p99 latency of one chunk with 1 and with 8 clients, the zarr server's RSS over
many requests (after a warm-up, and at the end), and each server's CPU time per chunk (which, unlike
chunks per second, other load on the machine does not change much).
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import multiprocessing
import os
import shutil
import time
import zlib
from collections.abc import Callable

import numpy as np
import psutil

from blockfs import Directory

from .data import BLOCK, DTYPE, Dataset, size_label
from .measure import MIB, median, percentile

CLIENTS = 8
NEEDS = ("aiohttp", "neuroglancer")
STATIC_RATIO = 0.9
DECOMPRESS_RATIO = 3.0
NEUROGLANCER_RATIO = 3.0
RSS_FLAT = 0.10
NAME = "bench"
SERVERS = ("zarr", "static", "precomputed", "neuroglancer")
#: Neuroglancer's server zlib-compresses every chunk (about 10 a second here): a tenth of the requests.
SHARE = {"neuroglancer": 10}


def missing() -> list[str]:
    """The packages this benchmark needs that are missing."""
    return [name for name in NEEDS if importlib.util.find_spec(name) is None]


# -- the servers, each in a process of its own -------------------------------------------------

def _serve_blockfs(path: str, conn) -> None:
    from blockfs.serve import start
    with start(path, names=[NAME]) as server:
        conn.send(server.url)
        conn.recv()


def _serve_static(folder: str, conn) -> None:
    from aiohttp import web

    from blockfs.serve.server import LOOPBACK, Server
    app = web.Application()
    app.router.add_static("/", folder)
    server = Server(app, LOOPBACK, 0)
    conn.send(server.url)
    conn.recv()
    server.close()


def _serve_neuroglancer(path: str, conn) -> None:
    import neuroglancer
    neuroglancer.set_server_bind_address("127.0.0.1")
    with Directory.open(path) as d:
        data = d[...]
    viewer = neuroglancer.Viewer()
    volume = neuroglancer.LocalVolume(data, dimensions=neuroglancer.CoordinateSpace(
        names=["z", "y", "x"], units="nm", scales=[1, 1, 1]), downsampling=None)
    with viewer.txn() as s:
        s.layers["bench"] = neuroglancer.ImageLayer(source=volume)
    deadline = time.monotonic() + 30
    while volume.token not in viewer.volume_manager.volumes and time.monotonic() < deadline:
        time.sleep(0.05)
    token = viewer.volume_manager.get_volume_key(volume)
    base = viewer.get_viewer_url().split("/v/")[0]
    conn.send(f"{base}/neuroglancer/npz/{token}")
    conn.recv()


RUNNERS = {"zarr": _serve_blockfs, "precomputed": _serve_blockfs, "static": _serve_static,
           "neuroglancer": _serve_neuroglancer}


class Running:
    """A server process: its URL and pid; ``stop()`` ends it."""

    def __init__(self, kind: str, where: str):
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self.process = context.Process(target=RUNNERS[kind], args=(where, child), daemon=True)
        self.process.start()
        if not self._conn.poll(300):
            self.process.kill()
            raise RuntimeError(f"the {kind} server did not start within 300 s")
        self.url = self._conn.recv()

    def stop(self) -> None:
        self._conn.send("stop")
        self.process.join(60)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(10)


def chunk_url(kind: str, url: str, chunk: tuple[int, int, int]) -> str:
    cz, cy, cx = chunk
    z, y, x = (c * BLOCK for c in chunk)
    return {"zarr": f"{url}/{NAME}/zarr/0/{cz}.{cy}.{cx}", "static": f"{url}/{cz}.{cy}.{cx}",
            "precomputed": f"{url}/{NAME}/1_1_1/{x}-{x + BLOCK}_{y}-{y + BLOCK}_{z}-{z + BLOCK}",
            "neuroglancer": f"{url}/1,1,1/{z},{y},{x}/{z + BLOCK},{y + BLOCK},{x + BLOCK}"}[kind]


# -- the clients -------------------------------------------------------------------------------

async def _fetch_all(urls: list[str], clients: int) -> tuple[float, list[float], list[bytes]]:
    """(seconds, latency of each request, the first few bodies) with ``clients`` keep-alive connections."""
    import aiohttp
    latencies: list[float] = []
    bodies: list[bytes] = []
    queue = iter(urls)
    timeout = aiohttp.ClientTimeout(total=120)

    async def client(session: aiohttp.ClientSession) -> None:
        for url in queue:
            start = time.perf_counter()
            async with session.get(url) as response:
                body = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{url}: HTTP {response.status}")
            latencies.append(time.perf_counter() - start)
            if len(bodies) < 4:
                bodies.append(body)

    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        return time.perf_counter() - start, latencies, bodies


def fetch_all(urls: list[str], clients: int) -> tuple[float, list[float], list[bytes]]:
    return asyncio.run(_fetch_all(urls, clients))


# -- the benchmark ------------------------------------------------------------------------------

def _write(ds: Dataset, folder: str) -> str:
    """The data set as a blockfs volume, and its stored chunks one file each in ``folder``/chunks."""
    path = os.path.join(folder, "serve.blockfs")
    z, y, x = ds.shape
    d = Directory(x, y, z, DTYPE, path, durable=False).create(overwrite=True)
    d.start_writer_processes()
    for (oz, oy, ox), block in zip(ds.origins, ds.blocks):
        d.write_block(block, ox, oy, oz)
    d.close()
    chunks = os.path.join(folder, "chunks")
    os.makedirs(chunks)
    with Directory.open(path) as d:
        for oz, oy, ox in ds.origins:
            with open(os.path.join(chunks, f"{oz // BLOCK}.{oy // BLOCK}.{ox // BLOCK}"), "wb") as f:
                f.write(d.read_block_payload(ox, oy, oz))  # type: ignore[arg-type]
    return path


def run(ds: Dataset, folder: str, requests: int, log: Callable[[str], None]) -> dict:
    """Requests per second of each server, latencies and the zarr server's memory, on one data set."""
    out = os.path.join(folder, "serve")
    os.makedirs(out)
    path = _write(ds, out)
    grid = tuple(n // BLOCK for n in ds.shape)
    rng = np.random.default_rng(0)
    chunks = [tuple(int(c) for c in rng.integers(0, grid)) for _ in range(requests)]
    where = {"zarr": path, "precomputed": path, "static": os.path.join(out, "chunks"), "neuroglancer": path}
    result: dict = {"kind": ds.kind, "nbytes": ds.nbytes, "requests": requests, "rate": {}, "cpu_us": {}, "latency": {},
                    "correct": True}
    sample = chunks[:4]
    payloads = {}
    with Directory.open(path) as d:
        for cz, cy, cx in sample:
            payloads[(cz, cy, cx)] = (d.read_block_payload(cx * BLOCK, cy * BLOCK, cz * BLOCK),
                                      d.read_block(cx * BLOCK, cy * BLOCK, cz * BLOCK).tobytes())
    for kind in SERVERS:
        server = Running(kind, where[kind])
        try:
            urls = [chunk_url(kind, server.url, c) for c in chunks[:max(50, requests // SHARE.get(kind, 1))]]
            _, _, bodies = fetch_all([chunk_url(kind, server.url, c) for c in sample], 1)
            want = [payloads[c][0 if kind in ("zarr", "static") else 1] for c in sample]
            if kind == "neuroglancer":
                bodies = [np.ascontiguousarray(np.load(io.BytesIO(zlib.decompress(b)))).tobytes() for b in bodies]
            result["correct"] = result["correct"] and bodies == want
            fetch_all(urls[:len(urls) // 6], CLIENTS)  # warm-up: connections, page cache, imports
            process = psutil.Process(server.process.pid)
            before = process.cpu_times()
            seconds, latencies, _ = fetch_all(urls, CLIENTS)
            after = process.cpu_times()
            result["rate"][kind] = len(urls) / seconds
            result["cpu_us"][kind] = (after.user + after.system - before.user - before.system) / len(urls) * 1e6
            if kind == "zarr":
                result["latency"][CLIENTS] = (median(latencies), percentile(latencies, 99))
                _, one, _ = fetch_all(urls[:max(100, requests // 4)], 1)
                result["latency"][1] = (median(one), percentile(one, 99))
                rss = [process.memory_info().rss]
                for _ in range(4):
                    fetch_all(urls * max(1, 2500 // requests), CLIENTS)
                    rss.append(process.memory_info().rss)
                result["rss"] = rss
                result["rss_requests"] = 4 * len(urls) * max(1, 2500 // requests)
            log(f"  serve {kind}: {result['rate'][kind]:,.0f} chunks/s with {CLIENTS} clients")
        finally:
            server.stop()
    shutil.rmtree(out, ignore_errors=True)
    return result


def render(results: list[dict]) -> list[str]:
    """The Markdown section: chunks per second of each server, the issue's goals, latency and memory."""
    if not results:
        return []
    out = ["## Serving chunks (blockfs serve)", "",
           f"{CLIENTS} keep-alive clients (aiohttp, in the benchmark's process) fetch random full 64^3 chunks; "
           "each server runs in its own process. *static files*: aiohttp's static route over the same compressed "
           "chunks one file per chunk; *precomputed raw*: blockfs serve's precomputed route (decompresses); "
           "*Neuroglancer*: its Python server over `LocalVolume` of the same array in memory (its default npz "
           "encoding).", "",
           "| size | data | zarr pass-through chunks/s | static files | x static (goal >= "
           f"{STATIC_RATIO}) | precomputed raw | x precomputed (goal >= {DECOMPRESS_RATIO}) | Neuroglancer "
           f"LocalVolume | x Neuroglancer (goal >= {NEUROGLANCER_RATIO}) | latency median / p99 ms, 1 client | "
           f"{CLIENTS} clients | server RSS MiB after warm-up -> end (requests; goal: within {RSS_FLAT:.0%}) "
           "| server CPU us per chunk: zarr / static / precomputed / Neuroglancer | bodies correct |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rate = r["rate"]

        def goal(other: str, target: float, rate: dict = rate) -> str:
            ratio = rate["zarr"] / rate[other]
            return f"**{ratio:.2f}x** {'met' if ratio >= target else 'missed'}"

        rss = r["rss"]
        growth = (rss[-1] - rss[0]) / rss[0]
        lat = {n: f"{r['latency'][n][0] * 1e3:.2f} / {r['latency'][n][1] * 1e3:.2f}" for n in (1, CLIENTS)}
        out.append(f"| {size_label(r['nbytes'])} | {r['kind']} | {rate['zarr']:,.0f} | {rate['static']:,.0f} | "
                   f"{goal('static', STATIC_RATIO)} | {rate['precomputed']:,.0f} | "
                   f"{goal('precomputed', DECOMPRESS_RATIO)} | {rate['neuroglancer']:,.0f} | "
                   f"{goal('neuroglancer', NEUROGLANCER_RATIO)} | {lat[1]} | {lat[CLIENTS]} | "
                   f"{rss[0] / MIB:.0f} -> {rss[-1] / MIB:.0f} ({r['rss_requests']:,}; {growth:+.1%}, "
                   f"{'met' if abs(growth) <= RSS_FLAT else 'missed'}) | "
                   + " / ".join(f"{r['cpu_us'][k]:,.0f}" for k in SERVERS)
                   + f" | {'yes' if r['correct'] else '**NO**'} |")
    return out + [""]
