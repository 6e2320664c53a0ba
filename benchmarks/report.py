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
import imagecodecs
import psutil

from . import goals, interop_bench, pyramid_bench, remote_bench, serve_bench
from .blockfs_bench import MODES, QUEUE_DEPTH, ReadResult, ScaleResult, WriteResult
from .codec import ZSTD_5, Codec
from .compare import COMPRESS, COMPRESS_APPEND, FULL_READ, LIMIT_LABELS, MAIN_WRITE, PLACE, PREAD_PLACE, Comparison
from .data import BLOCK_BYTES, PHOTON_BACKGROUND, PHOTON_SCALE, size_label
from .limits import Limits
from .measure import MAX_SPREAD, MIB, Figure, median, percentile, shown
from .mpi_bench import MpiResult

#: Everything below this line in the output file is kept when the file is rewritten.
KEEP_MARKER = "<!-- Written by hand below this line; `python -m benchmarks` keeps it. -->"
PACKAGES = ("numpy", "blosc", "imagecodecs", "crc32c", "blockfs", "zarr", "zarrs", "numcodecs", "tensorstore", "h5py",
            "hdf5plugin", "psutil", "dask", "aiohttp", "neuroglancer", "obstore", "fsspec")


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
    comparisons: list[Comparison] = field(default_factory=list)
    pyramids: list[pyramid_bench.PyramidResult] = field(default_factory=list)
    interop: list[dict] = field(default_factory=list)
    serve: list[dict] = field(default_factory=list)
    remote: list[remote_bench.RemoteResult] = field(default_factory=list)
    mpi: list[tuple[MpiResult, Limits]] = field(default_factory=list)
    scale: list[ScaleResult] = field(default_factory=list)
    backed: tuple[int, float] = (0, 0.0)
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


def machine(run: Run) -> list[tuple[str, str]]:
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
    found.append(("c-blosc (python-blosc; imagecodecs, which blockfs calls)",
                  f"{blosc.blosclib_version.split(' ')[0]}; {imagecodecs.blosc_version().split(' ')[-1]}"))
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


def _ms(figure: Figure | None) -> str:
    """``min / median ms`` and the spread; flagged when the repeats spread more than MAX_SPREAD."""
    return shown(figure)


def _versus(figure: Figure | None, other: Figure, label: str, limit: bool = True) -> str:
    """Speed relative to a limit (or another store), on the minimum times; a flagged figure is not quoted."""
    if figure is None or not figure.samples:
        return "-"
    if not figure.steady or not other.steady:
        return "not quoted"
    ratio = other.min / figure.min
    return _r(ratio) + (f" **beats the {label} limit: the limit is wrong**" if limit and ratio > 1.0 else "")


def _codec_name(codec: Codec) -> str:
    return f"blosc {codec.cname} level {codec.clevel}, byte shuffle, typesize 2"


def _all_limits(run: Run) -> list[Limits]:
    """Every limits measured: each data set's zstd 5 ones and each comparison's, by size, data and codec."""
    found = {id(lim): lim for lim in [*run.limits.values(), *(c.limits for c in run.comparisons)]}
    return sorted(found.values(), key=lambda lim: (lim.nbytes, lim.kind, lim.codec.label))


def _side_by_side(c: Comparison) -> list[str]:
    lim = c.limits
    write_limits = [(LIMIT_LABELS[name], c.row(name).write) for name in (COMPRESS, COMPRESS_APPEND)]
    read_limits = [(LIMIT_LABELS[name], c.row(name).read) for name in (PLACE, PREAD_PLACE)]
    ts = c.row("tensorstore")
    ts_sync = c.row("tensorstore, file_io_sync")
    rows = []
    for row in c.rows:
        same = ts_sync if row.sync == "sync at end" else ts
        store = row.role != "limit"
        rows.append(
            [row.name, row.sync, _ms(row.write)]
            + [_versus(row.write, limit, label) if store else "-" for label, limit in write_limits]
            + [_versus(row.write, same.write, "", False) if row.role == "blockfs" and same else "-", _ms(row.read)]
            + [_versus(row.read, limit, label) if store else "-" for label, limit in read_limits]
            + [_versus(row.read, ts.read, "", False) if row.role == "blockfs" and ts else "-",
               _mib(row.on_disk) if row.on_disk else "-", str(row.files) if row.files else "-",
               {None: "-", True: "yes", False: "**NO**"}[row.correct]])
    out = [f"### {c.codec.label}: {size_label(c.nbytes)} {c.kind} ({' x '.join(map(str, c.shape))} uint16, "
           f"{_codec_name(c.codec)}, compression ratio {lim.ratio:.2f}; load average {c.load[0][0]:.1f} at start, "
           f"{c.load[1][0]:.1f} at end)", ""]
    out += _table(["what", "durability", "write ms min / median (spread)"]
                  + [f"x {label} limit" for label, _ in write_limits]
                  + ["x tensorstore", "full read ms min / median (spread)"]
                  + [f"x {label} limit" for label, _ in read_limits]
                  + ["x tensorstore", "on disk MiB", "files", "read back equal"], rows)
    read = c.row(FULL_READ)
    if read is not None and read.read is not None and c.fresh_read.samples:
        out += [f"blockfs full read in this process (after the other stores ran in it): {_ms(read.read)} ms, "
                f"{median(read.faults):,.0f} minor page faults per read; in a fresh interpreter that imports only "
                f"blockfs: {_ms(c.fresh_read)} ms, {median(c.fresh_faults):,.0f} faults per read.", ""]
    if c.fork_pool.samples:
        pool = c.fork_pool_row()
        net = c.without_pool_fork(pool) if pool is not None else None
        out += [f"Forking the fork Pool rows' Pool of {lim.workers} from this process (which holds every store's data) "
                f"and ending it, one trivial task per worker and no blocks: {_ms(c.fork_pool)} ms"
                + (f"; the fork Pool write less that, on minima: {net * 1000:,.0f} ms" if net is not None else "")
                + ".", ""]
    out += [f"Limits on these blocks: one block's decompress on one core {lim.block_decompress_us:.0f} us; disk "
            f"{_mb(lim.disk)} MB/s of voxels without fsync, {_mb(lim.disk_fsync)} MB/s with fsync.", ""]
    return out


def scale_figures(run: Run) -> dict[tuple[str, int], tuple[Figure, Figure, bool | None]]:
    """(main-process write, full read, read back equal) of blockfs by (kind, size), from the zstd 5
    side-by-side comparisons and the runs across sizes."""
    found = {(s.kind, s.nbytes): (s.write, s.read, s.correct) for s in run.scale}
    for c in (c for c in run.comparisons if c.codec == ZSTD_5):  # the codec of run.limits
        write, read = c.row(MAIN_WRITE), c.row(FULL_READ)
        if write is not None and read is not None:
            found[(c.kind, c.nbytes)] = (write.write, read.read, read.correct)
    return found


def _across_sizes(run: Run) -> list[str]:
    figures = scale_figures(run)
    if not run.scale or not figures:
        return []
    rows = []
    for (kind, nbytes), (write, read, correct) in sorted(figures.items()):
        lim = run.limits[(kind, nbytes)]
        rows.append([kind, size_label(nbytes), f"{_mb(lim.rate(write.min))} ({_ms(write)})",
                     _versus(write, lim.compress, "compress"), f"{_mb(lim.rate(read.min))} ({_ms(read)})",
                     _versus(read, lim.place, "decompress + place"),
                     {None: "-", True: "yes", False: "**NO**"}[correct]])
    return ["## Throughput across sizes", "",
            "blockfs's main-process write (one shard per core) and `d[:, :, :]`, each size interleaved with its "
            "own limits; the size of the side-by-side comparison comes from that table.", ""] + \
        _table(["data", "size", "write MB/s (ms min / median)", "x compress limit", "full read MB/s (ms)",
                "x decompress + place limit", "read back equal"], rows)


def render(run: Run) -> str:
    out = ["# Performance", ""]
    out += [f"Measured by `{run.command}` on {run.started:%Y-%m-%d %H:%M %Z} "
            f"({run.seconds / 60:.1f} minutes). Regenerate with the same command: everything above the "
            "marker line near the end is rewritten, the notes below it are kept.", ""]
    out += ["## Machine and versions", ""]
    out += _table(["what", "value"], [[k, v] for k, v in machine(run) + versions()])
    out += ["## How it is measured", ""]
    out += [
        f"- Memory backed first: {size_label(run.backed[0])} touched and freed once ({run.backed[1]:.1f} s). This "
        "guest also hands 2 MiB blocks that stay free for a second or two back to the host (free page "
        "reporting), after which touching them costs about as much again; so before every timed step the "
        "volume's size plus 256 MiB is touched and freed once more, and every contender's new arrays land on "
        "memory the host has just backed.",
        f"- Data: the library's microscopy-like uint16 sample (`blockfs.sample.microscopy_block`: background of "
        f"60-180 counts, bright cells, shot noise), photon counts at low background (*poisson*: Poisson noise over "
        f"the same blurred cells dimmed {PHOTON_SCALE}x, on {PHOTON_BACKGROUND:.0f} photons of background) and "
        "uniform random uint16 (the incompressible worst case), as 64^3 blocks made before any clock starts. "
        "Codec: the side-by-side comparison runs once per codec of `--codecs` (blosc, byte shuffle, typesize 2, "
        "the same for every store and limit of one comparison); everything else uses blosc zstd level 5, byte "
        "shuffle, typesize 2 (blockfs's default).",
        f"- {run.repeats} interleaved rounds: each round runs every contender once, in an order that rotates "
        "from round to round, with `os.sync()`, a garbage collection and that touch before every timed step. "
        "Every figure gives the minimum and the median of its rounds, and the spread (max - min) / min; a figure whose "
        f"spread exceeds {MAX_SPREAD:.0%} is FLAGGED and its ratios are not quoted. Ratios compare minimum "
        "times.",
        "- Limits, measured the way the fastest peer works: one thread per core pulls the next block (one "
        "block per task) and calls c-blosc's context API (one blosc thread, GIL released) on every block: "
        "*compress*; *compress + append* (each thread appends its compressed blocks with `os.pwrite` to its own "
        "file in the scratch folder: page cache, no fsync; the write limit without sync); *decompress + place "
        "into a new array* (each block decompressed into the thread's scratch block and copied into a new "
        "(z, y, x) array); *pread + decompress + place* (the same, each block first read by `os.preadv` at its "
        "known offset in those files, from the page cache: the full-read limit); *decompress only*, into "
        "preallocated blocks, for reference. A store that beats a limit is marked: the limit is then wrong.",
        "- Side by side: every store in this same process, writing the same in-memory volume and reading it "
        "back whole (open included), without sync and with sync at the end (blockfs `durable=True`: fsync of "
        "the shards and the index at `close()`; tensorstore `file_io_sync`: fsync as each file is committed; "
        "zarr and h5py have no such switch). Peers store 64^3 chunks in shards of 4x4x4 chunks (256^3); "
        "blockfs writes one shard file per core. blockfs write times run from `start_writer_processes()` to "
        f"the end of `close()` into a volume created empty beforehand, `queue_depth={QUEUE_DEPTH}`. Every round "
        "also times forking the fork Pool rows' Pool alone (one trivial task per worker, no blocks): the part of "
        "those rows that the forking process's memory decides.",
        "- blockfs writes (the matrix): *main process*: producer threads in the process that started the "
        "writers call `write_block`, which hands blocks to the writer processes (one per shard; whichever is "
        "free takes the next block); *fork Pool*: `multiprocessing.Pool(N).starmap(write_block, ...)` on a "
        "module-level Directory (the README pattern); "
        "*forkserver Pool*: the same from a forkserver Pool whose initializer receives the Directory (it pickles "
        "by reopening the volume) and memory-maps the blocks from a `.npy` file (forkserver children inherit "
        "no memory); *independent processes*: N unrelated interpreters, each `Directory.open(path, \"r+\")`, "
        "write every Nth block from that file, timed from a start signal sent once all have opened the volume "
        "to the end of the owner's `close()`. "
        "Memory: RSS of the owner, the writers and the producers sampled every 20 ms; *growth* is the peak "
        "minus the first sample.",
        "- Process-wide state: python-blosc's global thread count is set to the number of cores before "
        "anything runs (as a user or another library may); blockfs calls c-blosc's context API and never "
        "reads it. blockfs's full read is also timed in a fresh interpreter that imports only blockfs.",
        "- blockfs reads (detail): a volume written with one shard per core; *random* is 1000 `read_block` "
        "calls at random blocks after 100 warm-up calls; reader peak RSS (`VmHWM`) of a fresh process.",
        "",
    ]

    out += ["## Data", ""]
    rows = [[size_label(lim.nbytes), lim.kind, lim.codec.label, f"{lim.nbytes // BLOCK_BYTES:,}",
             _mib(lim.compressed_bytes), f"{lim.ratio:.2f}"] for lim in _all_limits(run)]
    out += _table(["size", "data", "codec", "64^3 blocks", "compressed MiB", "compression ratio"], rows)

    for codec in dict.fromkeys(c.codec for c in run.comparisons):
        out += [f"## Side by side, {codec.label}", "",
                f"Every store, limit and blockfs volume in these tables: {_codec_name(codec)}.", ""]
        for c in run.comparisons:
            if c.codec == codec:
                out += _side_by_side(c)

    out += ["## Limits", "", f"memcpy (numpy copy of 1 GiB, one thread, best of {run.repeats}): "
            f"**{_mb(run.memcpy)} MB/s**.", ""]
    rows = []
    for lim in _all_limits(run):
        figures = (lim.compress, lim.compress_append, lim.place, lim.pread_place, lim.decompress)
        rows.append([size_label(lim.nbytes), lim.kind, lim.codec.label]
                    + [f"{_mb(lim.rate(f.min))} ({_ms(f)})" if f.samples else "-" for f in figures]
                    + [f"{lim.block_decompress_us:.0f}" if lim.block_decompress else "-", _mb(lim.disk),
                       _mb(lim.disk_fsync)])
    out += _table(["size", "data", "codec", "compress MB/s (ms min / median)", "compress + append MB/s (ms)",
                   "decompress + place MB/s (ms)", "pread + decompress + place MB/s (ms)",
                   "decompress only MB/s (ms)", "one block decompress, 1 core, us", "disk write MB/s, no fsync",
                   "disk write + fsync"], rows)

    if run.writes:
        out += ["## blockfs writes", ""]
        rows = []
        for w in run.writes:
            lim = run.limits[(w.kind, w.nbytes)]
            rows.append([size_label(w.nbytes), w.kind, MODES[w.config.mode] + (", durable" if w.config.durable else ""),
                         str(w.config.producers), str(w.config.shards), _ms(w.figure),
                         _versus(w.figure, lim.compress, "compress"), _mib(w.owner_growth),
                         _mib(w.memory_bound) if w.memory_bound else "-", _mib(w.writer_growth),
                         _mib(w.producer_growth) if w.config.mode != "main" else "-"])
        out += _table(["size", "data", "from", "producers", "shards", "ms min / median (spread)", "x compress limit",
                       "owner growth MiB", "owner bound MiB", "writer growth MiB", "producer growth MiB"], rows)
        out += [f"Owner bound: ((queue_depth + threads + 1) x shards + producers) x block bytes, `queue_depth` = "
                f"{QUEUE_DEPTH}, threads = ceil(cores / shards) per writer "
                f"(the writers' shared-memory slots of one {BLOCK_BYTES // 1024} KiB block each, plus one block being "
                "copied by each producer thread).", ""]

    if run.reads:
        out += ["## blockfs reads", ""]
        rows = []
        for (kind, nbytes), r in sorted(run.reads.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            lim = run.limits[(kind, nbytes)]
            for name, times in (("full `d[:, :, :]`", r.full), ("full, verify=False", r.full_unverified),
                                ("block by block, 1 thread", r.blockwise)):
                figure = Figure(times)
                rows.append([size_label(nbytes), kind, name, _ms(figure),
                             _versus(figure, lim.place, "decompress + place") if name.startswith("full") else "-"])
            rows.append([size_label(nbytes), kind, "random unaligned 100^3 regions",
                         f"{median(r.region_ms):.2f} median per region", "-"])
        out += _table(["size", "data", "read", "ms min / median (spread)", "x decompress + place limit"], rows)
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
                       "one block decompress us", "CRC verification cost, full read (medians)",
                       "reader peak RSS MiB, full read (= at start + output + other)",
                       "reader peak RSS MiB, block by block (= at start + growth)", "read back equal"], rows)

    out += _across_sizes(run)
    out += pyramid_bench.render(run.pyramids)
    out += interop_bench.render(run.interop)
    out += serve_bench.render(run.serve)
    out += remote_bench.render(run.remote)
    if run.mpi:
        out += ["## Collective writes over MPI", "",
                "`mpiexec -n 2`, 2 shards, every block produced on the rank that does not own its shard "
                "(benchmarks/mpi_bench.py); from a barrier after `create(comm=...)` to the end of the collective "
                "`close()`.", ""]
        rows = [[size_label(r.nbytes), r.kind, _ms(r.seconds), _mb(r.mbps), _ms(r.compress_seconds),
                 _versus(r.seconds, r.compress_seconds, "", False), _versus(r.seconds, lim.compress, "compress"),
                 r.traffic, "yes" if r.correct else "**NO**"] for r, lim in run.mpi]
        out += _table(["size", "data", "write ms min / median (spread)", "MB/s at min",
                       "same ranks only compressing, ms", "x same ranks compressing", "x compress limit",
                       "bytes over MPI", "read back equal"], rows)
    where, judged = goals.evaluate(run)
    if not judged:
        return "\n".join(out + ["## Goals", "", f"Not judged: {where}.", ""])
    out += ["## Goals", "", f"Judged on the {where}, 64^3 blocks, minimum times; side-by-side goals on "
            f"{' and '.join(c.label for c in goals.TARGETS)} (other codecs are only reported), the rest on zstd 5.",
            ""]
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
