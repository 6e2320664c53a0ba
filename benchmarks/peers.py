"""The stores a user would pick instead, on the same voxels with the same codec.

Every peer stores 64^3 uint16 chunks compressed with blosc zstd level 5, byte shuffle, typesize 2:

- zarr-python 3: zarr v3 array with the sharding codec (shards of 8x8x8 chunks, clipped to the
  volume), ``BloscCodec``; written with ``arr[:] = volume`` (whole shards, zarr's async pipeline);
- tensorstore: the ``zarr3`` driver with ``sharding_indexed`` (same shards), blosc codec; written
  with one ``write`` of the whole volume inside a transaction (whole shards, its own thread pools);
- h5py + hdf5plugin: a chunked dataset with the Blosc filter; written with ``ds[...] = volume``;
  ``BLOSC_NTHREADS`` = cores, so blosc splits each chunk over all cores (serial HDF5).

Each peer runs in its own forked process (inheriting the voxels), so its threads, environment and
imports never touch the blockfs measurements. The voxels are one contiguous array made before the
clock starts; reads go through the page cache, warm, as for blockfs.
"""

from __future__ import annotations

import importlib.metadata
import multiprocessing
import os
import shutil
import time
import traceback

import numpy as np

from .data import BLOCK, Dataset
from .measure import MB, median

PEERS = ("zarr", "tensorstore", "h5py")
SHARD = 8 * BLOCK

_state: dict[str, object] = {}


def available(name: str) -> bool:
    module = {"zarr": "zarr", "tensorstore": "tensorstore", "h5py": "hdf5plugin"}[name]
    try:
        importlib.metadata.version(module)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _shard_shape(shape: tuple[int, ...]) -> list[int]:
    return [min(SHARD, n) for n in shape]


# -- one adapter per peer: (how it writes, write(path, volume), open(path), read_all, read_chunk) --


class Zarr:
    fast_path = "arr[:] = volume (whole shards, async pipeline)"

    def __init__(self, threads: int):
        import zarr
        from zarr.codecs import BloscCodec

        self.zarr = zarr
        self.codec = BloscCodec(cname="zstd", clevel=5, shuffle="shuffle", typesize=2)
        self.library = f"zarr {zarr.__version__}"

    def write(self, path: str, volume: np.ndarray) -> None:
        arr = self.zarr.create_array(store=path, shape=volume.shape, chunks=(BLOCK,) * 3,
                                     shards=_shard_shape(volume.shape), dtype=volume.dtype,
                                     compressors=self.codec, fill_value=0, zarr_format=3, overwrite=True)
        arr[:] = volume

    def open(self, path: str):
        return self.zarr.open_array(path, mode="r")

    def read_all(self, arr) -> np.ndarray:
        return arr[:]

    def read_chunk(self, arr, z: int, y: int, x: int) -> np.ndarray:
        return arr[z:z + BLOCK, y:y + BLOCK, x:x + BLOCK]


class TensorStore:
    fast_path = "write(volume) in one transaction (whole shards)"

    def __init__(self, threads: int):
        import tensorstore

        self.ts = tensorstore
        self.library = f"tensorstore {importlib.metadata.version('tensorstore')}"

    def _spec(self, path: str) -> dict:
        return {"driver": "zarr3", "kvstore": {"driver": "file", "path": os.path.abspath(path)}}

    def write(self, path: str, volume: np.ndarray) -> None:
        inner = [{"name": "bytes", "configuration": {"endian": "little"}},
                 {"name": "blosc", "configuration": {"cname": "zstd", "clevel": 5, "shuffle": "shuffle",
                                                     "typesize": 2, "blocksize": 0}}]
        index = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]
        metadata = {"shape": list(volume.shape), "data_type": "uint16", "fill_value": 0,
                    "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": _shard_shape(volume.shape)}},
                    "codecs": [{"name": "sharding_indexed",
                                "configuration": {"chunk_shape": [BLOCK] * 3, "codecs": inner,
                                                  "index_codecs": index}}]}
        arr = self.ts.open({**self._spec(path), "metadata": metadata, "create": True, "delete_existing": True}).result()
        with self.ts.Transaction() as txn:
            arr.with_transaction(txn).write(volume).result()

    def open(self, path: str):
        return self.ts.open({**self._spec(path), "open": True}, read=True).result()

    def read_all(self, arr) -> np.ndarray:
        return arr.read().result()

    def read_chunk(self, arr, z: int, y: int, x: int) -> np.ndarray:
        return arr[z:z + BLOCK, y:y + BLOCK, x:x + BLOCK].read().result()


class H5py:
    fast_path = "ds[...] = volume, BLOSC_NTHREADS = cores"

    def __init__(self, threads: int):
        os.environ["BLOSC_NTHREADS"] = str(threads)  # read by the filter's c-blosc at each call
        import h5py
        import hdf5plugin

        self.h5py, self.plugin = h5py, hdf5plugin
        self.library = f"h5py {h5py.__version__}, HDF5 {h5py.version.hdf5_version}, hdf5plugin {hdf5plugin.version}"
        self._files: list = []

    def write(self, path: str, volume: np.ndarray) -> None:
        with self.h5py.File(path, "w") as f:
            ds = f.create_dataset("data", shape=volume.shape, dtype=volume.dtype, chunks=(BLOCK,) * 3,
                                  **self.plugin.Blosc(cname="zstd", clevel=5, shuffle=self.plugin.Blosc.SHUFFLE))
            ds[...] = volume

    def open(self, path: str):
        f = self.h5py.File(path, "r")
        self._files.append(f)
        return f["data"]

    def read_all(self, ds) -> np.ndarray:
        return ds[...]

    def read_chunk(self, ds, z: int, y: int, x: int) -> np.ndarray:
        return ds[z:z + BLOCK, y:y + BLOCK, x:x + BLOCK]


ADAPTERS = {"zarr": Zarr, "tensorstore": TensorStore, "h5py": H5py}


def _footprint(path: str) -> tuple[int, int]:
    """(bytes, files) of a store: one file or a folder tree."""
    if os.path.isfile(path):
        return os.path.getsize(path), 1
    total = files = 0
    for folder, _, names in os.walk(path):
        for name in names:
            total += os.path.getsize(os.path.join(folder, name))
            files += 1
    return total, files


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.unlink(path)


def _measure(name: str, folder: str, repeats: int, n_random: int, threads: int) -> dict:
    ds: Dataset = _state["dataset"]
    volume = ds.volume()
    peer = ADAPTERS[name](threads)
    path = os.path.join(folder, f"peer-{name}")
    writes = []
    for _ in range(repeats):
        _remove(path)
        start = time.perf_counter()
        peer.write(path, volume)
        writes.append(time.perf_counter() - start)
    on_disk, files = _footprint(path)
    reader = peer.open(path)
    correct = bool(np.array_equal(peer.read_all(reader), volume))
    reads = []
    for _ in range(repeats):
        start = time.perf_counter()
        data = peer.read_all(reader)
        reads.append(time.perf_counter() - start)
        del data
    rng = np.random.default_rng(1)
    picks = [ds.origins[i] for i in rng.integers(0, len(ds.origins), n_random)]
    for z, y, x in picks[:100]:
        peer.read_chunk(reader, z, y, x)
    chunk_us = []
    for z, y, x in picks:
        start = time.perf_counter_ns()
        peer.read_chunk(reader, z, y, x)
        chunk_us.append((time.perf_counter_ns() - start) / 1000)
    _remove(path)
    return {"peer": name, "library": peer.library, "fast_path": peer.fast_path, "write": writes, "read": reads,
            "chunk_us": chunk_us, "on_disk": on_disk, "files": files, "correct": correct}


def _child(conn, name: str, folder: str, repeats: int, n_random: int, threads: int) -> None:
    try:
        conn.send(_measure(name, folder, repeats, n_random, threads))
    except BaseException as exc:  # reported in the table, the other peers still run
        conn.send({"peer": name, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
    finally:
        conn.close()


def run_peer(name: str, ds: Dataset, folder: str, repeats: int, n_random: int, log) -> dict:
    """Measure one peer in a forked process; a dict of figures, or one with ``error``."""
    threads = os.cpu_count() or 1
    ds.volume()  # built before the fork, so the child only reads it
    _state["dataset"] = ds
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(send, name, folder, repeats, n_random, threads), name=f"peer-{name}")
    process.start()
    send.close()
    try:
        result = receive.recv()
    except EOFError:
        result = {"peer": name, "error": f"the benchmark process died (exit code {process.exitcode})"}
    process.join()
    _state.clear()
    result.update(kind=ds.kind, nbytes=ds.nbytes)
    if "error" in result:
        log(f"  {name}: FAILED {result['error']}")
    else:
        log(f"  {name}: write {ds.nbytes / median(result['write']) / MB:,.0f} MB/s, read "
            f"{ds.nbytes / median(result['read']) / MB:,.0f} MB/s, chunk median {median(result['chunk_us']):.0f} us"
            f"{'' if result['correct'] else ', DATA MISMATCH'}")
    return result
