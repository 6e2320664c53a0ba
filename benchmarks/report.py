"""The report: machine, versions, command, and the tables, as Markdown (printed and written)."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field

import blosc
import psutil

from . import goals, interop_bench, pyramid_bench, serve_bench
from .blockfs_bench import QUEUE_DEPTH, ReadResult, WriteResult
from .data import BLOCK_BYTES, size_label
from .limits import Limits
from .mpi_bench import MpiResult
from .measure import MB, MIB, median, percentile

#: Everything below this line in the output file is kept when the file is rewritten.
KEEP_MARKER = "<!-- Written by hand below this line; `python -m benchmarks` keeps it. -->"
PACKAGES = ("numpy", "blosc", "crc32c", "blockfs", "zarr", "numcodecs", "tensorstore", "h5py", "hdf5plugin", "psutil",
            "dask", "aiohttp", "neuroglancer")


@dataclass
class Run:
    command: str
    sizes: list[int]
    repeats: int
    kinds: list[str]
    scratch: str
    started: datetime.datetime = field(default_factory=lambda: datetime.datetime.now().astimezone())
    seconds: float = 0.0
    memcpy: float = 0.0
    limits: dict[tuple[str, int], Limits] = field(default_factory=dict)
    writes: list[WriteResult] = field(default_factory=list)
    reads: dict[tuple[str, int], ReadResult] = field(default_factory=dict)
    peers: list[dict] = field(default_factory=list)
    pyramids: list[pyramid_bench.PyramidResult] = field(default_factory=list)
    interop: list[dict] = field(default_factory=list)
    serve: list[dict] = field(default_factory=list)
    mpi: list[tuple[MpiResult, Limits]] = field(default_factory=list)
    load_start: tuple[float, float, float] = field(default_factory=os.getloadavg)
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _disk(folder: str) -> str:
    path = os.path.realpath(folder)
    best = None
    for part in psutil.disk_partitions(all=True):
        if path == part.mountpoint or path.startswith(part.mountpoint.rstrip("/") + "/"):
            if best is None or len(part.mountpoint) > len(best.mountpoint):
                best = part
    usage = shutil.disk_usage(folder)
    text = f"{usage.total / 2**30:,.0f} GiB, {usage.free / 2**30:,.0f} GiB free"
    if best is not None:
        text = f"{best.device} ({best.fstype}) mounted at {best.mountpoint}, {text}"
        name = os.path.basename(best.device)
        rotational = f"/sys/block/{name}/queue/rotational"
        if os.path.exists(rotational):
            with open(rotational) as f:
                text += ", rotational" if f.read().strip() == "1" else ", non-rotational"
    return text


def machine(run: "Run") -> list[tuple[str, str]]:
    folder = run.scratch
    return [
        ("CPU", f"{_cpu_model()}, {os.cpu_count()} cores"),
        ("RAM", f"{psutil.virtual_memory().total / 2**30:.1f} GiB"),
        ("Disk (scratch folder)", f"{folder}: {_disk(folder)}"),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE",
         f"{os.environ.get('OPENBLAS_CORETYPE', 'unset')} / {os.environ.get('OPENBLAS_L2_SIZE', 'unset')} "
         "(BLAS settings; nothing here uses BLAS)"),
        ("Load average (1, 5, 15 min) at start / end",
         " / ".join(", ".join(f"{v:.1f}" for v in load) for load in (run.load_start, run.load_end))
         + f" (other processes share the {os.cpu_count()} cores)"),
    ]


def _blockfs_commit() -> str:
    """`` (git 1a2b3c4)`` for the library measured, `` (git 1a2b3c4 + local changes)`` if it differs."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "blockfs"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return f" (git {head}{' + local changes' if dirty else ''})"


def versions() -> list[tuple[str, str]]:
    found = [("python", platform.python_version())]
    for name in PACKAGES:
        try:
            found.append((name, importlib.metadata.version(name) + (_blockfs_commit() if name == "blockfs" else "")))
        except importlib.metadata.PackageNotFoundError:
            found.append((name, "not installed"))
    found.append(("c-blosc (python-blosc)", blosc.blosclib_version.split(" ")[0]))
    return found


def _r(value: float) -> str:
    return f"{value:.2f}x"


def _mb(value: float) -> str:
    return f"{value:,.0f}"


def _mib(nbytes: float) -> str:
    return f"{nbytes / MIB:,.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def _peer_rate(peer: dict, what: str) -> float:
    return peer["nbytes"] / median(peer[what]) / MB


def render(run: Run) -> str:
    out = ["# Performance", ""]
    out += [f"Measured by `{run.command}` on {run.started:%Y-%m-%d %H:%M %Z} "
            f"({run.seconds / 60:.1f} minutes). Regenerate with the same command: everything above the "
            "marker line near the end is rewritten, the notes below it are kept.", ""]
    out += ["## Machine and versions", ""]
    out += _table(["what", "value"], [[k, v] for k, v in machine(run) + versions()])
    out += ["## How it is measured", ""]
    out += [
        "- Data: the library's deterministic microscopy-like uint16 volume (`blockfs.sample.microscopy_block`) "
        "and uniform random uint16 (`random_block`, the incompressible worst case), as 64^3 blocks made "
        "before any clock starts. Codec everywhere: blosc zstd level 5, byte shuffle, typesize 2.",
        f"- Every figure is the median of {run.repeats} repeat{'s' if run.repeats > 1 else ''} (latencies: "
        "median and p99 of 1000 calls). MB/s are 10^6 bytes of uncompressed voxels per second, and each is "
        "also given as a ratio to the limit measured in the same run on the same blocks.",
        "- Limits: blosc compress / decompress of the same blocks on all cores, with threads (one blosc "
        "thread per call, GIL released, `compress_ptr` / `decompress_ptr` into preallocated arrays) and with a "
        "fork Pool over chunks of blocks; the better is the limit. Disk: the compressed bytes written with "
        "`os.pwrite` into 2 files by 2 threads, with and without fsync, shown as MB/s of the voxels they "
        "hold (MB/s of compressed bytes in brackets). memcpy: numpy copy of 1 GiB, one thread. Because other "
        "processes may share the machine, the limits are sampled again between the measurements they scale "
        "(after each write configuration, around the reads, after each peer) on an evenly strided subset of "
        "256 blocks, and each limit is the median of all its samples.",
        "- blockfs writes run from `start_writer_processes()` to the end of `close()`, into a volume created "
        f"empty beforehand, `queue_depth={QUEUE_DEPTH}`, `durable=False` (no fsync at close) except the row "
        "marked durable. *main process*: producer threads in the process that started the writers call "
        "`write_block`, which queues blocks to one writer process per shard. *fork Pool*: "
        "`multiprocessing.Pool(N).starmap(write_block, ...)` on a module-level Directory (the README "
        "pattern); each producer compresses and appends its blocks itself.",
        "- Memory: RSS of the owner, the writer processes and the Pool producers sampled every 20 ms; "
        "*growth* is the peak minus the first sample (forked processes start out sharing their parent's "
        "pages, which holds the benchmark's blocks). Reader: peak RSS (`VmHWM`) of a fresh process that "
        "opens the volume and reads it.",
        "- blockfs reads use a volume written with one shard per core; *full* is `d[:, :, :]`, *block by "
        "block* is `read_block` over every block in one thread, *random* is 1000 `read_block` calls at random "
        "blocks after 100 warm-up calls; `verify=True` (the default) checks each block's CRC32C record. "
        "Everything is read through a warm page cache.",
        "- Peers run in their own forked process on the same voxels (one contiguous array made before the "
        "clock starts), shards of 8x8x8 chunks (512^3 voxels, clipped to the volume); see *how it writes*. "
        "Random chunk reads read one whole 64^3 chunk at a random chunk position.",
        "",
    ]

    out += ["## Data", ""]
    rows = []
    for (kind, nbytes), lim in sorted(run.limits.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rows.append([size_label(nbytes), kind, f"{nbytes // BLOCK_BYTES:,}", _mib(lim.compressed_bytes),
                     f"{lim.ratio:.2f}"])
    out += _table(["size", "data", "64^3 blocks", "compressed MiB", "compression ratio"], rows)

    out += ["## Limits", "", f"memcpy (numpy copy of 1 GiB, one thread): **{_mb(run.memcpy)} MB/s**.", ""]
    rows = []
    for (kind, nbytes), lim in sorted(run.limits.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rows.append([
            size_label(nbytes), kind,
            f"**{_mb(lim.compress)}** ({_mb(median(lim.compress_threads))} / {_mb(median(lim.compress_processes))})",
            f"**{_mb(lim.decompress)}** ({_mb(median(lim.decompress_threads))} / "
            f"{_mb(median(lim.decompress_processes))})",
            f"{lim.block_decompress_us:.0f}",
            f"{_mb(lim.disk)} ({_mb(lim.disk_raw)})", f"{_mb(lim.disk_fsync)} ({_mb(lim.disk_fsync_raw)})",
            f"{len(lim.compress_threads)} / {len(lim.decompress_threads)}"])
    out += _table(["size", "data", "compress MB/s (threads / processes)", "decompress MB/s (threads / processes)",
                   "one block decompress, 1 core, us", "disk write, no fsync", "disk write + fsync",
                   "samples (compress / decompress)"], rows)

    out += ["## blockfs writes", ""]
    rows = []
    for w in run.writes:
        lim = run.limits[(w.kind, w.nbytes)]
        disk = lim.disk_fsync if w.config.durable else lim.disk
        how = "main process" if w.config.mode == "main" else "fork Pool"
        rows.append([size_label(w.nbytes), w.kind, how + (", durable" if w.config.durable else ""),
                     str(w.config.producers), str(w.config.shards), f"**{_mb(w.mbps)}**", _r(w.mbps / lim.compress),
                     _r(w.mbps / disk), _mib(w.owner_growth),
                     _mib(w.memory_bound) if w.memory_bound else "-", _mib(w.writer_growth),
                     _mib(w.producer_growth) if w.config.mode == "pool" else "-"])
    out += _table(["size", "data", "from", "producers", "shards", "MB/s", "x compress", "x disk",
                   "owner growth MiB", "owner bound MiB", "writer growth MiB", "producer growth MiB"], rows)
    out += [f"Owner bound: the bytes of blocks the owner can hold in flight, `queue_depth` = {QUEUE_DEPTH}: "
            "the writers' shared-memory block slots (`queue_depth + 2` per writer, each one block of "
            f"{BLOCK_BYTES // 1024} KiB), plus one block being copied by each producer thread, i.e. "
            "((queue_depth + 2) x shards + producers) x block bytes. "
            "x disk compares with the disk limit without fsync (with fsync for the durable row).", ""]

    out += ["## blockfs reads", ""]
    rows = []
    for (kind, nbytes), r in sorted(run.reads.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        lim = run.limits[(kind, nbytes)]
        one_core = lim.rate(lim.block_decompress_us * 1e-6 * (nbytes // BLOCK_BYTES))
        for name, times, limit, limit_name in (
                ("full `d[:, :, :]`", r.full, lim.decompress, "decompress"),
                ("full, verify=False", r.full_unverified, lim.decompress, "decompress"),
                ("block by block, 1 thread", r.blockwise, one_core, "1-core decompress")):
            rate = r.mbps(times)
            rows.append([size_label(nbytes), kind, name, f"**{_mb(rate)}**", f"{_r(rate / limit)} {limit_name}",
                         f"{median(times):.3f} s"])
        rows.append([size_label(nbytes), kind, "random unaligned 100^3 regions", f"**{_mb(r.region_mbps)}**",
                     f"{_r(r.region_mbps / lim.decompress)} decompress", f"{median(r.region_ms):.2f} ms median"])
    out += _table(["size", "data", "read", "MB/s", "x limit", "time"], rows)
    rows = []
    for (kind, nbytes), r in sorted(run.reads.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        lim = run.limits[(kind, nbytes)]
        full, blocks = r.reader_full, r.reader_blocks
        rows.append([size_label(nbytes), kind,
                     f"**{median(r.random_us):.0f}** / {percentile(r.random_us, 99):.0f}",
                     f"{median(r.random_unverified_us):.0f} / {percentile(r.random_unverified_us, 99):.0f}",
                     f"{lim.block_decompress_us:.0f}", f"{r.verify_cost:+.1f}%",
                     f"{_mib(full['peak'])} = {_mib(full['baseline'])} + output {_mib(full['output'])} + "
                     f"{_mib(full['peak'] - full['baseline'] - full['output'])}",
                     f"{_mib(blocks['peak'])} = {_mib(blocks['baseline'])} + "
                     f"{_mib(blocks['peak'] - blocks['baseline'])}",
                     "yes" if r.correct else "**NO**"])
    out += _table(["size", "data", "random read_block median / p99 us", "verify=False median / p99 us",
                   "one block decompress us", "CRC verification cost, full read",
                   "reader peak RSS MiB, full read (= at start + output + other)",
                   "reader peak RSS MiB, block by block (= at start + growth)", "read back equal"], rows)

    out += ["## Peers", ""]
    rows = []
    for p in run.peers:
        lim = run.limits[(p["kind"], p["nbytes"])]
        if "error" in p:
            rows.append([size_label(p["nbytes"]), p["kind"], p["peer"], "failed: " + p["error"]] + ["-"] * 8)
            continue
        w, r = _peer_rate(p, "write"), _peer_rate(p, "read")
        rows.append([size_label(p["nbytes"]), p["kind"], p["library"], p["fast_path"], f"**{_mb(w)}**",
                     _r(w / lim.compress), f"**{_mb(r)}**", _r(r / lim.decompress),
                     f"{median(p['chunk_us']):.0f} / {percentile(p['chunk_us'], 99):.0f}",
                     _mib(p["on_disk"]), str(p["files"]), "yes" if p["correct"] else "**NO**"])
    for (kind, nbytes), r in sorted(run.reads.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        lim = run.limits[(kind, nbytes)]
        same = [w for w in run.writes if w.kind == kind and w.nbytes == nbytes and not w.config.durable]
        best = max(same, key=lambda w: w.mbps, default=None)
        rate = r.mbps(r.full)
        rows.append([size_label(nbytes), kind, f"blockfs {versions_of('blockfs')} (for comparison)",
                     f"best write: {best.config.label}" if best else "-",
                     f"**{_mb(best.mbps)}**" if best else "-", _r(best.mbps / lim.compress) if best else "-",
                     f"**{_mb(rate)}**", _r(rate / lim.decompress),
                     f"{median(r.random_us):.0f} / {percentile(r.random_us, 99):.0f}",
                     _mib(best.on_disk) if best else "-", str(best.files) if best else "-",
                     "yes" if r.correct else "**NO**"])
    out += _table(["size", "data", "store", "how it writes", "write MB/s", "x compress", "full read MB/s",
                   "x decompress", "random chunk median / p99 us", "on disk MiB", "files", "read back equal"], rows)

    out += pyramid_bench.render(run.pyramids)
    out += interop_bench.render(run.interop)
    out += serve_bench.render(run.serve)
    if run.mpi:
        out += ["## Collective writes over MPI", "",
                "`mpiexec -n 2`, 2 shards, every block produced on the rank that does not own its shard "
                "(benchmarks/mpi_bench.py); from a barrier after `create(comm=...)` to the end of the collective "
                "`close()`.", ""]
        out += [f"- {size_label(r.nbytes)} {r.kind}: {r.summary(lim.compress)}" for r, lim in run.mpi] + [""]
    where, judged = goals.evaluate(run)
    if not judged:
        return "\n".join(out + ["## Goals", "", f"Not judged: {where}.", ""])
    out += ["## Goals", "", f"Judged on the {where}, 64^3 blocks, zstd 5.", ""]
    out += _table(["goal", "target", "measured", "status"],
                  [[g.name, g.target, g.measured, f"**{g.status}**"] for g in judged])
    return "\n".join(out)


def versions_of(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def write(path: str, text: str) -> None:
    """Write the report to ``path``, keeping what follows :data:`KEEP_MARKER` in the old file."""
    kept = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = f.read()
        if KEEP_MARKER in old:
            kept = old.split(KEEP_MARKER, 1)[1]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.rstrip() + "\n\n" + KEEP_MARKER + (kept if kept else "\n"))
