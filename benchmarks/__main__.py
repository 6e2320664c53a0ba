"""Run the benchmark suite: ``python -m benchmarks [--sizes 128M,1G] [--repeats 5] [--quick] ...``."""

from __future__ import annotations

import argparse
import gc
import os
import shlex
import shutil
import sys
import tempfile
import time

import blosc
import psutil

from . import (
    blockfs_bench,
    compare,
    interop_bench,
    limits,
    mpi_bench,
    peers,
    pyramid_bench,
    remote_bench,
    report,
    serve_bench,
)
from .codec import DEFAULT, Codec, parse_codecs
from .data import KINDS, Dataset, make_dataset, parse_size, size_label
from .measure import back_memory

CATEGORIES = ("compare", "write", "read", "interop", "serve", "mpi", "pyramid", "remote")
#: Data kinds whose throughput across sizes is measured (the goals' microscopy-like sets).
SCALE_KINDS = ("microscopy", "poisson")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _list(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    wrong = [t for t in items if t not in allowed]
    if wrong or not items:
        raise argparse.ArgumentTypeError(
            f"{what} must be a comma-separated list of {', '.join(allowed)}; got {text!r}.")
    return items


def _codecs(text: str) -> list[Codec]:
    try:
        return parse_codecs(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="blockfs speed and memory against the limits of this machine and the peers, in one run.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  python -m benchmarks --quick --output ''\n"
               "  python -m benchmarks --sizes 128M --only compare,read\n"
               "  python -m benchmarks --sizes 128M --only compare --codecs lz4:5,zstd:5\n"
               "  python -m benchmarks --sizes 256M,1G,4G --repeats 5\n"
               "  python -m benchmarks --only write,read --sizes 1G --data microscopy\n"
               "  python -m benchmarks --sizes 1G --only compare,write,read --scale-sizes 256M,4G\n"
               "  python -m benchmarks --only remote --remote-size 1G --output ''")
    parser.add_argument("--sizes", help="data sizes, e.g. 128M,1G,4G (default: 128M,1G; 64M with --quick)")
    parser.add_argument("--repeats", type=int, help="interleaved rounds, at least 5 for figures worth quoting; min "
                                                    "and median are reported (default: 5; 2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a quick look: 64 MiB, 2 rounds, fewer write configs")
    parser.add_argument("--only", type=lambda t: _list(t, CATEGORIES, "--only"), default=list(CATEGORIES),
                        help=f"what to run, from {','.join(CATEGORIES)} (the limits always run: every ratio "
                             "needs them; default: all)")
    parser.add_argument("--data", type=lambda t: _list(t, tuple(KINDS), "--data"), default=list(KINDS),
                        help="data kinds (default: microscopy,poisson,random)")
    parser.add_argument("--peers", type=lambda t: _list(t, peers.PEERS, "--peers"), default=list(peers.PEERS),
                        help="peers to run (default: those installed of tensorstore,zarrs,zarr,h5py)")
    parser.add_argument("--codecs", type=_codecs, default=list(DEFAULT),
                        help="blosc codecs of the side-by-side comparison, each cname:level (byte shuffle), one "
                             "comparison each; the other benchmarks write zstd:5, blockfs's default (default: "
                             f"{','.join(c.spec for c in DEFAULT)})")
    parser.add_argument("--scale-sizes", default="",
                        help="more sizes at which only blockfs's main-process write and full read run (of the "
                             "microscopy-like data kinds in --data), for throughput across sizes, e.g. 256M,4G")
    parser.add_argument("--remote-size", default="256M",
                        help="the one size of the remote reads (microscopy data, read over HTTP from nginx on "
                             "127.0.0.1), e.g. 1G (default: %(default)s); --only remote runs nothing else, "
                             "not even the limits")
    parser.add_argument("--back-memory", type=parse_size, default=None,
                        help="memory touched and freed once before measuring (default: 3 x the largest size, "
                             "at least 4G, at most half the free memory)")
    parser.add_argument("--output", default=os.path.join(ROOT, "docs", "performance.md"),
                        help="Markdown report to write; '' to only print (default: docs/performance.md)")
    parser.add_argument("--scratch", default=tempfile.gettempdir(),
                        help="folder for the volumes (default: %(default)s); a temporary folder inside it is "
                             "removed at the end")
    args = parser.parse_args(argv)
    try:
        args.sizes = [parse_size(s) for s in (args.sizes or ("64M" if args.quick else "128M,1G")).split(",")]
        args.scale_sizes = [parse_size(s) for s in args.scale_sizes.split(",") if s.strip()]
        args.remote_size = parse_size(args.remote_size)
    except ValueError as exc:
        parser.error(str(exc))
    args.repeats = args.repeats or (2 if args.quick else 5)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1; got {args.repeats}.")
    return args


def _compare(ds: Dataset, meter: limits.LimitMeter, codec: Codec, folder: str, repeats: int,
             peer_names: list[str]) -> compare.Comparison:
    """The side-by-side comparison with ``codec``: sampled into ``meter`` if it has that codec, else
    into a meter of its own (its disk limits measured too, its files removed after)."""
    _log(f"  side by side, blosc {codec.label}")
    if codec == meter.codec:
        return compare.run(ds, meter, folder, repeats, peer_names, _log)
    own = limits.LimitMeter(ds, folder, codec=codec)
    try:
        own.measure_disk()
        return compare.run(ds, own, folder, repeats, peer_names, _log)
    finally:
        own.remove_files()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m benchmarks" + ("" if argv is None and len(sys.argv) == 1 else
                                        " " + shlex.join(sys.argv[1:] if argv is None else argv))
    missing = [p for p in args.peers if not peers.available(p)]
    if "compare" in args.only and missing:
        _log(f"benchmarks: peers not installed, skipped: {', '.join(missing)} (pip install zarr zarrs tensorstore "
             "h5py hdf5plugin)")
    peer_names = [p for p in args.peers if p not in missing]
    if "interop" in args.only and interop_bench.missing():
        _log(f"benchmarks: interop skipped, not installed: {', '.join(interop_bench.missing())} (pip install "
             "'.[interop]')")
    if "serve" in args.only and serve_bench.missing():
        _log(f"benchmarks: serve skipped, not installed: {', '.join(serve_bench.missing())} (pip install '.[serve]')")
    if "remote" in args.only and remote_bench.missing():
        _log(f"benchmarks: remote reads skipped, not installed: {', '.join(remote_bench.missing())} (pip install "
             "'.[remote]'; apt-get install nginx)")
    no_mpi = mpi_bench.missing() if "mpi" in args.only else None
    if no_mpi:
        _log(f"benchmarks: the MPI write is skipped: {no_mpi}")
    folder = tempfile.mkdtemp(prefix="blockfs-bench-", dir=args.scratch)
    run = report.Run(command, args.sizes, args.repeats, args.data, args.scratch)
    start = time.perf_counter()
    n_random, n_regions = 1000, 30 if args.quick else 100
    try:
        sizes = (args.sizes if set(args.only) - {"remote"} else []) + ([args.remote_size] if "remote" in args.only
                                                                      else [])
        _log(f"benchmarks: sizes {', '.join(size_label(n) for n in sizes)}, {args.repeats} rounds, "
             f"scratch {folder}")
        largest = max(sizes + args.scale_sizes)
        backing = args.back_memory or min(max(4 * 2**30, 3 * largest), psutil.virtual_memory().available // 2)
        blosc.set_nthreads(os.cpu_count() or 1)  # process-wide, as a user or another library may set it
        run.backed = (backing, back_memory(backing))
        _log(f"benchmarks: touched and freed {size_label(backing)} in {run.backed[1]:.1f} s")
        run.memcpy = limits.memcpy_mbps(args.repeats)
        if "remote" in args.only and not remote_bench.missing():
            _log(f"{size_label(args.remote_size)} microscopy: making blocks (remote reads)")
            ds = make_dataset("microscopy", args.remote_size)
            run.remote.append(remote_bench.run(ds, folder, args.repeats, _log))
            del ds
            gc.collect()
        for nbytes in args.sizes if set(args.only) - {"remote"} else []:
            for kind in args.data:
                _log(f"{size_label(nbytes)} {kind}: making blocks")
                ds = make_dataset(kind, nbytes)
                meter = limits.LimitMeter(ds, folder)
                meter.measure_disk()
                lim = run.limits[(kind, ds.nbytes)] = meter.limits
                if "compare" in args.only:
                    run.comparisons += [_compare(ds, meter, codec, folder, args.repeats, peer_names)
                                        for codec in args.codecs]
                if "write" in args.only:
                    run.writes += blockfs_bench.write_matrix(ds, folder, blockfs_bench.matrix(args.quick, kind),
                                                             args.repeats, meter.sample_compress, _log)
                if "read" in args.only:
                    meter.sample_place()
                    run.reads[(kind, ds.nbytes)] = blockfs_bench.read_benchmark(
                        ds, folder, args.repeats, n_random, n_regions, _log)
                    meter.sample_place()
                    meter.sample_block_decompress()
                if "interop" in args.only and not interop_bench.missing():
                    run.interop.append(interop_bench.run(ds, folder, args.repeats, _log))
                if "serve" in args.only and kind == "microscopy" and not serve_bench.missing():
                    run.serve.append(serve_bench.run(ds, folder, 500 if args.quick else 3000, _log))
                if "mpi" in args.only and not no_mpi:
                    run.mpi.append((mpi_bench.run(ds, folder, args.repeats, _log), lim))
                    meter.sample_compress()
                if "pyramid" in args.only and kind == pyramid_bench.KIND:
                    run.pyramids.append(pyramid_bench.run(ds, folder, args.repeats, _log))
                if not lim.compress.samples:
                    meter.sample_compress()
                if not lim.place.samples:
                    meter.sample_place()
                _log(f"  limits: compress {lim.rate(lim.compress.min):,.0f} MB/s, decompress + place "
                     f"{lim.rate(lim.place.min):,.0f} MB/s (best of {lim.compress.samples} / {lim.place.samples}), "
                     f"ratio {lim.ratio:.2f}")
                meter.remove_files()
                del ds, meter
                gc.collect()
        for nbytes in args.scale_sizes:
            for kind in (k for k in args.data if k in SCALE_KINDS):
                _log(f"{size_label(nbytes)} {kind}: making blocks (throughput across sizes)")
                ds = make_dataset(kind, nbytes)
                meter = limits.LimitMeter(ds, folder)
                meter.measure_disk()
                meter.sample_block_decompress()
                run.limits[(kind, ds.nbytes)] = meter.limits
                run.scale.append(blockfs_bench.scale_run(ds, folder, args.repeats, meter, _log))
                del ds, meter
                gc.collect()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    run.seconds = time.perf_counter() - start
    run.load_end = os.getloadavg()
    text = report.render(run)
    print(text)
    if args.output:
        report.write(args.output, text)
        _log(f"benchmarks: wrote {args.output} ({run.seconds / 60:.1f} minutes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
