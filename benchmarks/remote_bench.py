"""Remote reads: a volume read by URL from nginx on 127.0.0.1, beside the same files read from the disk, and
beside tensorstore and zarr-python reading a zarr v3 sharded copy of it through the same server.

One data set is written as a blockfs volume (one shard per core) and copied by ``to_zarr`` (OME-Zarr
0.5: shards of 4x4x4 blocks, the stored bytes as they are); nginx serves both folders. In interleaved
rounds, each a full read with its open included:

- *local*: ``open_volume(path).read()``, and ``read_into`` a caller's array;
- *remote*: ``open_volume(url).read()``, and ``read_into`` (blockfs through obstore's HTTP client);
- *tensorstore*: the ``zarr3`` driver over its ``http`` kvstore;
- *zarr-python*: ``zarr.open_array(url)[...]``, zarr's own HTTP store (fsspec's HTTPFileSystem, aiohttp).

Every request is counted from nginx's access log. Then random ``read_block`` calls once the index is
cached (latency, and requests per read), and a few region shapes: requests, bytes and time of each,
opened cold and read again warm.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil

from blockfs import create_volume, open_volume

from . import http_server
from .data import BLOCK, DTYPE, Dataset, size_label
from .measure import MIB, Figure, median, percentile, settle, shown

LOCAL_RATIO = 0.8
OVER_TENSORSTORE = 1.2
NEEDS = ("obstore",)
PEER_NEEDS = {"tensorstore": ("tensorstore",), "zarr": ("zarr", "fsspec", "aiohttp")}
SHARD_BLOCKS = 4
N_RANDOM = 300
N_WARM = 50
REGION_REPEATS = 7
LABELS = {"local": "local `open_volume(path).read()`", "local_into": "local `read_into` a caller's array",
          "remote": "remote `open_volume(url).read()`", "remote_into": "remote `read_into` a caller's array",
          "tensorstore": "tensorstore, zarr3 over its `http` kvstore",
          "zarr": "zarr-python, `zarr.open_array(url)[...]` (fsspec HTTPFileSystem)"}


def missing() -> list[str]:
    """What this benchmark needs that is missing (peers that are missing are only left out)."""
    found = [name for name in NEEDS if importlib.util.find_spec(name) is None]
    return found + ([] if http_server.binary() else ["nginx"])


def _has(peer: str) -> bool:
    return all(importlib.util.find_spec(name) is not None for name in PEER_NEEDS[peer])


@dataclass
class Region:
    """One region shape: its blocks, and per reader (requests, bytes sent) cold and warm, and warm times."""

    name: str
    key: Any
    blocks: int
    cold: dict[str, tuple[int, int]] = field(default_factory=dict)
    warm: dict[str, tuple[int, int]] = field(default_factory=dict)
    times: dict[str, Figure] = field(default_factory=dict)


@dataclass
class RemoteResult:
    kind: str
    nbytes: int
    shape: tuple[int, int, int]
    stored: int
    times: dict[str, Figure] = field(default_factory=dict)
    requests: dict[str, list[float]] = field(default_factory=dict)
    sent: dict[str, list[float]] = field(default_factory=dict)
    client_cpu: dict[str, list[float]] = field(default_factory=dict)
    server_cpu: dict[str, list[float]] = field(default_factory=dict)
    correct: dict[str, bool] = field(default_factory=dict)
    random_us: dict[str, list[float]] = field(default_factory=dict)
    random_requests: float = 0.0
    regions: list[Region] = field(default_factory=list)
    load: list[tuple[float, float, float]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)


# -- the files -------------------------------------------------------------------------------------

def _write(ds: Dataset, served: str) -> tuple[str, str]:
    """The data set as a blockfs volume and its zarr v3 sharded copy in ``served``: (volume, zarr array) paths."""
    from blockfs.interop.repack import to_zarr
    path = os.path.join(served, "brain.blockfs")
    with create_volume(path, ds.shape, DTYPE, (BLOCK,) * 3, shards=os.cpu_count() or 1, durable=False) as volume, \
            ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(lambda i: volume.write_block(ds.blocks[i], *reversed(ds.origins[i])), range(len(ds.blocks))))
    to_zarr(path, os.path.join(served, "brain.zarr"), shard_blocks=SHARD_BLOCKS)
    return path, os.path.join(served, "brain.zarr", "0")


def _stored(served: str) -> int:
    return sum(os.path.getsize(os.path.join(served, n)) for n in os.listdir(served) if n.startswith("brain.blockfs"))


# -- the readers -----------------------------------------------------------------------------------

class Readers:
    """``open(name)``: a fresh handle of each reader; ``full(name)``: a full read, its open included."""

    def __init__(self, path: str, base: str, shape: tuple[int, ...]):
        self.path, self.url = path, f"{base}/brain.blockfs"
        self.zarr_url = f"{base}/brain.zarr/0"
        self.out = np.empty(shape, DTYPE)
        self.out.fill(0)  # its pages backed before any clock starts
        self.names = ["local", "local_into", "remote", "remote_into"] + [p for p in ("tensorstore", "zarr") if _has(p)]

    def open(self, name: str) -> Any:
        if name.startswith("local"):
            return open_volume(self.path)
        if name.startswith("remote"):
            return open_volume(self.url)
        if name == "tensorstore":
            import tensorstore
            base, _, path = self.zarr_url.rpartition("/brain.zarr/")
            return tensorstore.open({"driver": "zarr3", "kvstore": {"driver": "http", "base_url": base,
                                                                    "path": f"/brain.zarr/{path}/"}},
                                    read=True).result()
        import zarr
        return zarr.open_array(self.zarr_url, mode="r")

    def region(self, name: str, handle: Any, key: Any) -> np.ndarray:
        if name == "tensorstore":
            return np.asarray(handle[key].read().result())
        return np.asarray(handle[key])

    def full(self, name: str) -> np.ndarray:
        handle = self.open(name)
        if name.endswith("_into"):
            return handle.read_into(self.out)
        if name == "tensorstore":
            return handle.read().result()
        return handle[...] if name == "zarr" else handle.read()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    found = {}
    for name in ("obstore", "tensorstore", "zarr", "fsspec", "aiohttp"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


# -- the benchmark ---------------------------------------------------------------------------------

def _full_reads(ds: Dataset, readers: Readers, server: http_server.Nginx, repeats: int, result: RemoteResult,
                log: Callable[[str], None]) -> None:
    names = readers.names
    nginx, me = psutil.Process(server.pid), psutil.Process()
    for name in names:  # untimed: imports, connections, the page cache; and the check of every voxel
        data = readers.full(name)
        result.correct[name] = ds.matches(data)
        del data
        result.times[name] = Figure()
        result.requests[name], result.sent[name] = [], []
        result.client_cpu[name], result.server_cpu[name] = [], []
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            settle(ds.nbytes)
            mark = server.mark()
            served, mine = nginx.cpu_times(), me.cpu_times()
            start = time.perf_counter()
            data = readers.full(name)
            result.times[name].add(time.perf_counter() - start)
            served_after, mine_after = nginx.cpu_times(), me.cpu_times()
            del data
            asked = server.since(mark)
            result.requests[name].append(len(asked))
            result.sent[name].append(sum(q.sent for q in asked))
            result.client_cpu[name].append(mine_after.user + mine_after.system - mine.user - mine.system)
            result.server_cpu[name].append(served_after.user + served_after.system - served.user - served.system)
        log(f"  remote round {r + 1}/{repeats}: " + ", ".join(
            f"{n} {result.times[n].seconds[-1] * 1000:,.0f} ms" for n in names))


def _random_blocks(ds: Dataset, readers: Readers, server: http_server.Nginx, result: RemoteResult) -> None:
    """``read_block`` at random blocks, after warm-up reads that cached the index and each shard's size."""
    rng = np.random.default_rng(1)
    picks = [ds.origins[i][::-1] for i in rng.integers(0, len(ds.origins), N_WARM + N_RANDOM)]
    for name in ("local", "remote"):
        volume = readers.open(name)
        for x, y, z in picks[:N_WARM]:
            volume.read_block(x, y, z)
        mark = server.mark()
        took = []
        for x, y, z in picks[N_WARM:]:
            start = time.perf_counter()
            volume.read_block(x, y, z)
            took.append((time.perf_counter() - start) * 1e6)
        result.random_us[name] = took
        if name == "remote":
            result.random_requests = len(server.since(mark)) / N_RANDOM


def regions(shape: tuple[int, int, int]) -> list[tuple[str, Any]]:
    """The region shapes whose requests are counted: (name, numpy index in (z, y, x))."""
    z, y, x = shape
    cube = SHARD_BLOCKS * BLOCK
    b = BLOCK if min(shape) >= 2 * BLOCK else 0  # the second block along each axis, where there is one
    return [("one block", np.s_[b:b + BLOCK, b:b + BLOCK, b:b + BLOCK]),
            ("a row of blocks along x", np.s_[b:b + BLOCK, b:b + BLOCK, :]),
            (f"a {SHARD_BLOCKS}x{SHARD_BLOCKS}x{SHARD_BLOCKS} block cube (one zarr shard)",
             np.s_[:min(cube, z), :min(cube, y), :min(cube, x)]),
            ("a z-plane v[z] (one voxel thick)", np.s_[z // 2 + 1]),
            ("an unaligned 100^3 box", tuple(slice(min(30, n - 1), min(130, n)) for n in shape))]


def _regions(ds: Dataset, readers: Readers, server: http_server.Nginx, result: RemoteResult) -> None:
    names = [n for n in readers.names if not n.endswith("_into")]
    volume = readers.open("local")
    for label, key in regions(ds.shape):
        region = Region(label, key, sum(1 for _ in volume.iter_projections(key)))
        for name in names:
            mark = server.mark()
            handle = readers.open(name)
            readers.region(name, handle, key)
            asked = server.since(mark)
            region.cold[name] = (len(asked), sum(q.sent for q in asked))
            mark = server.mark()
            readers.region(name, handle, key)
            asked = server.since(mark)
            region.warm[name] = (len(asked), sum(q.sent for q in asked))
            figure = region.times[name] = Figure()
            for _ in range(REGION_REPEATS):
                start = time.perf_counter()
                readers.region(name, handle, key)
                figure.add(time.perf_counter() - start)
        result.regions.append(region)


def run(ds: Dataset, folder: str, repeats: int, log: Callable[[str], None]) -> RemoteResult:
    """The remote-read figures of one data set, its files and nginx in ``folder``/remote (removed after)."""
    work = os.path.join(folder, "remote")
    served = os.path.join(work, "served")
    os.makedirs(served)
    try:
        path, _ = _write(ds, served)
        result = RemoteResult(ds.kind, ds.nbytes, ds.shape, _stored(served), versions=_versions())
        result.load.append(os.getloadavg())
        with http_server.serve(served, os.path.join(work, "nginx")) as server:
            readers = Readers(path, server.url, ds.shape)
            _full_reads(ds, readers, server, repeats, result, log)
            _random_blocks(ds, readers, server, result)
            _regions(ds, readers, server, result)
        result.load.append(os.getloadavg())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


# -- the report ------------------------------------------------------------------------------------

def _ratio(fast: Figure, slow: Figure) -> tuple[float, bool]:
    """(slow.min / fast.min, whether both are steady enough to be quoted)."""
    return slow.min / fast.min, fast.steady and slow.steady


def goals(r: RemoteResult) -> list[tuple[str, str, str, str]]:
    """(goal, target, measured, status) of issue 25's speed goals on one result."""
    out = []

    def judged(name: str, target: str, fast: str, slow: str, floor: float) -> None:
        if fast not in r.times or slow not in r.times:
            out.append((name, target, "not run", "not judged"))
            return
        ratio, steady = _ratio(r.times[fast], r.times[slow])
        measured = f"{r.times[fast].min * 1000:,.0f} ms vs {r.times[slow].min * 1000:,.0f} ms = {ratio:.2f}x"
        status = ("met" if ratio >= floor else "missed") if steady else "not judged (spread over 20%)"
        out.append((name, target, measured, status))

    judged("remote full read", f">= {LOCAL_RATIO}x the local full read", "remote", "local", LOCAL_RATIO)
    judged("remote read_into", f">= {LOCAL_RATIO}x the local read_into", "remote_into", "local_into", LOCAL_RATIO)
    judged("remote full read", f">= {OVER_TENSORSTORE}x tensorstore over the same server", "remote", "tensorstore",
           OVER_TENSORSTORE)
    out.append(("random read_block, index page cached", "one request per block",
                f"{r.random_requests:.2f} requests per read ({N_RANDOM} reads)",
                "met" if r.random_requests <= 1.0 else "missed"))
    return out


def render(results: list[RemoteResult]) -> list[str]:
    """The Markdown section: full reads side by side, random blocks, requests per region, the goals."""
    out: list[str] = []
    for r in results:
        load = " / ".join(", ".join(f"{v:.2f}" for v in one) for one in r.load)
        out += [f"## Remote reads ({size_label(r.nbytes)} {r.kind}, {' x '.join(map(str, r.shape))} uint16, "
                f"{r.stored / MIB:,.1f} MiB stored)", "",
                "nginx (one worker, sendfile) on 127.0.0.1 serves the blockfs volume (one shard per core) and its "
                f"zarr v3 copy by `to_zarr` (shards of {SHARD_BLOCKS}^3 blocks, the same stored bytes); every "
                "reader runs in this process, interleaved round by round, open included; requests are counted "
                "from nginx's access log. Load average (1, 5, 15 min) at start / end of this part: "
                f"{load}. Versions: " + ", ".join(f"{k} {v}" for k, v in r.versions.items()) + ".", ""]
        local = r.times["local"]
        out += ["| read | ms min / median (spread) | MB/s at min | x local full read | x tensorstore | requests "
                "| MiB sent | client CPU s | nginx CPU s | read back equal |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for name, figure in r.times.items():
            vs_local = _ratio(figure, local)
            vs_ts = _ratio(figure, r.times["tensorstore"]) if "tensorstore" in r.times else (0.0, False)
            out.append(f"| {LABELS[name]} | {shown(figure)} | {r.nbytes / figure.min / 1e6:,.0f} | "
                       + ("-" if name == "local" else f"{vs_local[0]:.2f}x{'' if vs_local[1] else ' (flagged)'}")
                       + " | "
                       + (f"{vs_ts[0]:.2f}x{'' if vs_ts[1] else ' (flagged)'}" if "tensorstore" in r.times else "-")
                       + f" | {median(r.requests[name]):.0f} | {median(r.sent[name]) / MIB:,.1f} | "
                       f"{median(r.client_cpu[name]):.2f} | {max(0.0, median(r.server_cpu[name])):.2f} | "
                       f"{'yes' if r.correct[name] else '**NO**'} |")
        out += ["", "*Client CPU s*: CPU time of this whole process (every thread) during one read, median; "
                "*nginx CPU s*: the server's.", ""]
        rows = [f"| {name} | {median(us):,.0f} | {percentile(us, 99):,.0f} |" for name, us in r.random_us.items()]
        out += [f"Random `read_block` ({N_RANDOM} calls at random blocks after {N_WARM} warm-up calls, which cached "
                f"the index pages and each shard's size): **{r.random_requests:.2f} requests per read** over HTTP.",
                "", "| read_block | median us | p99 us |", "|---|---|---|", *rows, ""]
        names = list(r.regions[0].cold) if r.regions else []
        out += ["Requests per region read: *cold* opens the array and reads the region (the opening requests "
                "included); *warm* reads it again with the same handle (blockfs: index pages and shard sizes "
                f"cached). Time: the warm read, min / median of {REGION_REPEATS}, ms.", "",
                "| region | blocks | " + " | ".join(f"{n} requests cold / warm (warm MiB)" for n in names if
                                                    n != "local") + " | " + " | ".join(f"{n} ms" for n in names) + " |",
                "|---|---|" + "---|" * (2 * len(names) - 1)]
        for g in r.regions:
            counts = [f"{g.cold[n][0]} / {g.warm[n][0]} ({g.warm[n][1] / MIB:.2f})" for n in names if n != "local"]
            out.append(f"| {g.name} | {g.blocks} | " + " | ".join(counts) + " | "
                       + " | ".join(shown(g.times[n], digits=1) for n in names) + " |")
        out += ["", "| goal | target | measured | status |", "|---|---|---|---|"]
        out += [f"| {a} | {b} | {c} | **{d}** |" for a, b, c, d in goals(r)]
        out.append("")
    return out
