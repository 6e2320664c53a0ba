"""Interop figures: ``to-zarr`` against a plain copy of the same bytes and against zarr-python, and
``to_dask().sum()`` against the library's full read.

- *copy limit*: the stored (compressed) bytes of every block read with ``os.pread`` from the blockfs
  shards and written into as many files as ``to-zarr`` writes (one per shard of 4x4x4 blocks), on
  as many threads as ``to-zarr`` uses; the offsets are looked up before the clock starts;
- *to-zarr*: ``blockfs.interop.repack.to_zarr`` (OME-Zarr 0.5, shards of 4x4x4 blocks);
- *zarr-python copy*: the same array read through ``blockfs.open_zarr`` and written by zarr-python
  into the same layout (zarr v3, shards of 4x4x4 64^3 chunks, blosc zstd 5), a shard-high slab at a
  time: it decompresses and recompresses every chunk;
- *to_dask().sum()* on the threaded scheduler against ``d[:, :, :]``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from blockfs import Directory
from blockfs.format import unpack_entries

from .data import BLOCK, DTYPE, Dataset, size_label
from .measure import MB, median, timed

SHARD_BLOCKS = 4
TO_ZARR_RATIO_LIMIT = 0.8
TO_ZARR_RATIO_ZARR = 5.0
DASK_RATIO = 0.8
NEEDS = ("zarr", "dask")


def missing() -> list[str]:
    """The packages this benchmark needs that are missing."""
    return [name for name in NEEDS if importlib.util.find_spec(name) is None]


def _write_volume(ds: Dataset, path: str) -> Directory:
    z, y, x = ds.shape
    d = Directory(x, y, z, DTYPE, path, n_filenames=2, durable=False).create(overwrite=True)
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(lambda i: d.write_block(ds.blocks[i], *reversed(ds.origins[i])), range(len(ds.blocks))))
    d.close()
    return Directory.open(path)


def _copy_plan(d: Directory) -> list[list[tuple[int, int, int]]]:
    """For each output file (a shard of blocks): (blockfs shard, offset, size) of its blocks."""
    lay = d.layout
    with open(d.directory_filename, "rb") as f:
        f.seek(d.directory_offset)
        offsets, sizes = unpack_entries(f.read(lay.n_entries * lay.entry_size), lay)
    entries, origins = lay.block_entries()
    files: dict[tuple[int, ...], list[tuple[int, int, int]]] = {}
    for entry, (x, y, z) in zip(entries, origins):
        key = tuple(c // (BLOCK * SHARD_BLOCKS) for c in (z, y, x))
        files.setdefault(key, []).append((int(entry) % len(d.shard_paths), int(offsets[entry]), int(sizes[entry])))
    return list(files.values())


def _copy_limit(d: Directory, plan: list[list[tuple[int, int, int]]], out: str) -> None:
    local = threading.local()
    os.makedirs(out)

    def copy(i: int) -> None:
        fds = getattr(local, "fds", None)
        if fds is None:
            fds = local.fds = [os.open(p, os.O_RDONLY) for p in d.shard_paths]
        pieces = [os.pread(fds[shard], size, offset) for shard, offset, size in plan[i]]
        with open(os.path.join(out, str(i)), "wb") as f:
            f.writelines(pieces)

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(copy, range(len(plan))))


def _zarr_copy(path: str, out: str) -> None:
    import zarr

    import blockfs
    source = blockfs.open_zarr(path)
    shard = BLOCK * SHARD_BLOCKS
    dest = zarr.create_array(out, shape=source.shape, dtype=source.dtype, chunks=(BLOCK,) * 3, shards=(shard,) * 3,
                             compressors=zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="shuffle"),
                             fill_value=0)
    for z in range(0, source.shape[0], shard):
        dest[z:z + shard] = source[z:z + shard]


def run(ds: Dataset, folder: str, repeats: int, log: Callable[[str], None]) -> dict:
    """Seconds per repeat of each measurement, on one data set, and whether every result was right."""
    from blockfs.interop.repack import to_zarr
    path = os.path.join(folder, "interop.blockfs")
    d = _write_volume(ds, path)
    plan = _copy_plan(d)
    out = os.path.join(folder, "interop-out")
    times: dict[str, list[float]] = {"copy": [], "to_zarr": [], "zarr": [], "full": [], "dask": []}
    correct = True

    def fresh() -> str:
        shutil.rmtree(out, ignore_errors=True)
        return out

    expected = int(sum(int(b.sum(dtype=np.uint64)) for b in ds.blocks))
    d.to_dask()[:BLOCK, :BLOCK, :BLOCK].sum().compute(scheduler="threads")  # imports and thread pools, untimed
    for _ in range(repeats):
        times["copy"].append(timed(lambda: _copy_limit(d, plan, fresh())))
        times["to_zarr"].append(timed(lambda: to_zarr(d, fresh(), shard_blocks=SHARD_BLOCKS)))
        times["zarr"].append(timed(lambda: _zarr_copy(path, fresh())))
        times["full"].append(timed(lambda: d[:, :, :]))
        total: list[int] = []
        times["dask"].append(timed(lambda total=total: total.append(int(d.to_dask().sum(dtype=np.uint64).compute(
            scheduler="threads")))))
        correct = correct and total == [expected]
    import zarr
    to_zarr(d, fresh(), shard_blocks=SHARD_BLOCKS)
    correct = correct and ds.matches(zarr.open_array(os.path.join(out, "0"), mode="r")[...])
    shutil.rmtree(out, ignore_errors=True)
    for name in [path] + d.shard_paths:
        os.unlink(name)
    result = {"kind": ds.kind, "nbytes": ds.nbytes, "files": len(plan), "correct": correct,
              **{k: median(v) for k, v in times.items()}}
    log(f"  interop: copy limit {ds.nbytes / result['copy'] / MB:,.0f} MB/s, to-zarr "
        f"{ds.nbytes / result['to_zarr'] / MB:,.0f} MB/s, zarr-python copy {ds.nbytes / result['zarr'] / MB:,.0f} "
        f"MB/s, full read {ds.nbytes / result['full'] / MB:,.0f} MB/s, to_dask().sum() "
        f"{ds.nbytes / result['dask'] / MB:,.0f} MB/s")
    return result


def render(results: list[dict]) -> list[str]:
    """The Markdown section: one row per data set, and the issue's goals on each."""
    if not results:
        return []
    out = ["## Interop (zarr, dask)", "",
           f"`to-zarr` writes OME-Zarr 0.5 with shards of {SHARD_BLOCKS}x{SHARD_BLOCKS}x{SHARD_BLOCKS} blocks; the "
           "copy limit moves the same stored bytes into the same number of files with `pread` + `write` on the "
           "same number of threads; zarr-python copies the same array (read through `blockfs.open_zarr`) into "
           "the same layout, recompressing. MB/s are of uncompressed voxels.", "",
           "| size | data | files | copy limit MB/s | to-zarr MB/s | x copy limit (goal >= "
           f"{TO_ZARR_RATIO_LIMIT}) | zarr-python copy MB/s | to-zarr x zarr-python (goal >= {TO_ZARR_RATIO_ZARR}) "
           f"| full read MB/s | to_dask().sum() MB/s | x full read (goal >= {DASK_RATIO}) | correct |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rate = {k: r["nbytes"] / r[k] / MB for k in ("copy", "to_zarr", "zarr", "full", "dask")}

        def goal(ratio: float, target: float) -> str:
            return f"**{ratio:.2f}x** {'met' if ratio >= target else 'missed'}"

        out.append(f"| {size_label(r['nbytes'])} | {r['kind']} | {r['files']} | {rate['copy']:,.0f} | "
                   f"{rate['to_zarr']:,.0f} | {goal(rate['to_zarr'] / rate['copy'], TO_ZARR_RATIO_LIMIT)} | "
                   f"{rate['zarr']:,.0f} | {goal(rate['to_zarr'] / rate['zarr'], TO_ZARR_RATIO_ZARR)} | "
                   f"{rate['full']:,.0f} | {rate['dask']:,.0f} | {goal(rate['dask'] / rate['full'], DASK_RATIO)} | "
                   f"{'yes' if r['correct'] else '**NO**'} |")
    return out + [""]
