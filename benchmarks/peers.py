"""The stores a user would pick instead, on the same voxels, codec and shard geometry.

Every peer stores 64^3 uint16 chunks compressed with the comparison's blosc codec (``codec.Codec``:
a compressor and level), byte shuffle, typesize 2, in shards of 4x4x4 chunks (256^3 voxels,
clipped to the volume) where the format has shards, and writes the whole in-memory volume in one
call:

- tensorstore: the ``zarr3`` driver with ``sharding_indexed``, one ``write`` inside a transaction;
  without and with ``file_io_sync`` (fsync as each file is committed);
- zarr-python 3, default codec pipeline: ``arr[:] = volume``;
- zarr-python 3 with zarrs (the Rust codec pipeline, ``codec_pipeline.path``);
- h5py + hdf5plugin: a chunked dataset with the Blosc filter (one file, no shards), ``ds[...] =
  volume``, with ``BLOSC_NTHREADS`` = cores set only around its own calls.

They run in the benchmark's own process, like blockfs, interleaved with it round by round.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
from collections.abc import Iterator
from typing import Any

import numpy as np

from .codec import Codec
from .data import BLOCK

PEERS = ("tensorstore", "zarrs", "zarr", "h5py")
SHARD = 4 * BLOCK
_MODULE = {"tensorstore": "tensorstore", "zarrs": "zarrs", "zarr": "zarr", "h5py": "hdf5plugin"}


def available(name: str) -> bool:
    try:
        importlib.metadata.version(_MODULE[name])
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _shard_shape(shape: tuple[int, ...]) -> list[int]:
    return [min(SHARD, n) for n in shape]


def remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.unlink(path)


def footprint(path: str) -> tuple[int, int]:
    """(bytes, files) of a store: one file or a folder tree."""
    if os.path.isfile(path):
        return os.path.getsize(path), 1
    total = files = 0
    for folder, _, names in os.walk(path):
        for name in names:
            total += os.path.getsize(os.path.join(folder, name))
            files += 1
    return total, files


class Peer:
    """One peer: ``write(path, volume)`` and ``read(path) -> array`` of the whole volume."""

    name = ""
    how = ""
    library = ""
    sync = False  # whether write() makes the data durable before it returns

    def write(self, path: str, volume: np.ndarray) -> None:
        raise NotImplementedError

    def read(self, path: str) -> np.ndarray:
        raise NotImplementedError


class TensorStore(Peer):
    def __init__(self, codec: Codec, sync: bool):
        import tensorstore

        self.ts = tensorstore
        self.codec = codec
        self.sync = sync
        self.name = f"tensorstore{', file_io_sync' if sync else ''}"
        self.how = f"zarr3, sharded {SHARD}^3, write(volume) in one transaction, file_io_sync {'on' if sync else 'off'}"
        self.library = f"tensorstore {importlib.metadata.version('tensorstore')}"

    def _spec(self, path: str) -> dict[str, Any]:
        return {"driver": "zarr3", "kvstore": {"driver": "file", "path": os.path.abspath(path)},
                "context": {"file_io_sync": self.sync}}

    def write(self, path: str, volume: np.ndarray) -> None:
        inner = [{"name": "bytes", "configuration": {"endian": "little"}},
                 {"name": "blosc", "configuration": {"cname": self.codec.cname, "clevel": self.codec.clevel,
                                                     "shuffle": "shuffle", "typesize": 2, "blocksize": 0}}]
        index = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]
        metadata = {"shape": list(volume.shape), "data_type": "uint16", "fill_value": 0,
                    "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": _shard_shape(volume.shape)}},
                    "codecs": [{"name": "sharding_indexed",
                                "configuration": {"chunk_shape": [BLOCK] * 3, "codecs": inner,
                                                  "index_codecs": index}}]}
        arr = self.ts.open({**self._spec(path), "metadata": metadata, "create": True, "delete_existing": True}).result()
        with self.ts.Transaction() as txn:
            arr.with_transaction(txn).write(volume).result()

    def read(self, path: str) -> np.ndarray:
        return self.ts.open({**self._spec(path), "open": True}, read=True).result().read().result()


class Zarr(Peer):
    pipeline = ""

    def __init__(self, codec: Codec) -> None:
        import zarr
        from zarr.codecs import BloscCodec

        self.zarr = zarr
        self.codec = BloscCodec(cname=codec.cname, clevel=codec.clevel, shuffle="shuffle", typesize=2)
        self.name = "zarr-python"
        self.how = f"zarr v3, sharded {SHARD}^3, arr[:] = volume, default codec pipeline"
        self.library = f"zarr {zarr.__version__}"

    @contextlib.contextmanager
    def _config(self) -> Iterator[None]:
        if not self.pipeline:
            yield
            return
        with self.zarr.config.set({"codec_pipeline.path": self.pipeline}):
            yield

    def write(self, path: str, volume: np.ndarray) -> None:
        with self._config():
            arr = self.zarr.create_array(store=path, shape=volume.shape, chunks=(BLOCK,) * 3,
                                         shards=_shard_shape(volume.shape), dtype=volume.dtype,
                                         compressors=self.codec, fill_value=0, zarr_format=3, overwrite=True)
            arr[:] = volume

    def read(self, path: str) -> np.ndarray:
        with self._config():
            return self.zarr.open_array(path, mode="r")[:]


class Zarrs(Zarr):
    pipeline = "zarrs.ZarrsCodecPipeline"

    def __init__(self, codec: Codec) -> None:
        super().__init__(codec)
        self.name = "zarr-python + zarrs"
        self.how = f"zarr v3, sharded {SHARD}^3, arr[:] = volume, zarrs (Rust) codec pipeline"
        self.library += f", zarrs {importlib.metadata.version('zarrs')}"


class H5py(Peer):
    def __init__(self, codec: Codec) -> None:
        import h5py
        import hdf5plugin

        self.h5py, self.plugin = h5py, hdf5plugin
        self.codec = codec
        self.name = "h5py"
        self.how = "chunked dataset, Blosc filter, ds[...] = volume, BLOSC_NTHREADS = cores"
        self.library = f"h5py {h5py.__version__}, HDF5 {h5py.version.hdf5_version}, hdf5plugin {hdf5plugin.version}"

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        """BLOSC_NTHREADS (read by the filter's c-blosc at each call) only around h5py's own calls."""
        old = os.environ.get("BLOSC_NTHREADS")
        os.environ["BLOSC_NTHREADS"] = str(os.cpu_count() or 1)
        try:
            yield
        finally:
            if old is None:
                del os.environ["BLOSC_NTHREADS"]
            else:
                os.environ["BLOSC_NTHREADS"] = old

    def write(self, path: str, volume: np.ndarray) -> None:
        with self._threads(), self.h5py.File(path, "w") as f:
            ds = f.create_dataset("data", shape=volume.shape, dtype=volume.dtype, chunks=(BLOCK,) * 3,
                                  **self.plugin.Blosc(cname=self.codec.cname, clevel=self.codec.clevel,
                                                     shuffle=self.plugin.Blosc.SHUFFLE))
            ds[...] = volume

    def read(self, path: str) -> np.ndarray:
        with self._threads(), self.h5py.File(path, "r") as f:
            return f["data"][...]


def make(names: list[str], codec: Codec) -> list[Peer]:
    """The peers to run with ``codec``, in the order of ``PEERS``; tensorstore twice (without and with sync)."""
    made: list[Peer] = []
    for name in PEERS:
        if name not in names:
            continue
        if name == "tensorstore":
            made += [TensorStore(codec, False), TensorStore(codec, True)]
        else:
            made.append({"zarrs": Zarrs, "zarr": Zarr, "h5py": H5py}[name](codec))
    return made
