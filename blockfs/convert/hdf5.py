"""Export a volume to one HDF5 dataset, in parallel under mpiexec.

Every rank opens the volume read-only and the HDF5 file through h5py's MPI driver. The dataset
(shape (z, y, x), chunks equal to the block size) is created collectively, then written one
*row* at a time: a z-slab of block depth, one block high and the whole x extent wide, so that
every write covers whole chunks and a rank holds one row in memory. Rows are dealt to the ranks
round-robin, and every rank makes the same number of collective writes (a rank without a row in
the last round writes an empty selection), which parallel HDF5 requires once a filter is on.

A failure that one rank meets while reading (a missing shard, a damaged block) is shared with the
others at the end of the round, so that all of them stop together: the partly written dataset is
deleted, a file this run created is removed, and the message is printed once. Anything else that
goes wrong on one rank alone is printed and the communicator is aborted, so that no rank waits
forever.

The export runs serially, on rank 0 only when started by mpiexec, and says so once, when mpi4py
is missing, when h5py is built without parallel HDF5, or when a filter that HDF5 may skip for a
chunk is asked for (lzf, szip, plugins; see :func:`skippable_filters`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import math
import os
import shutil
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from ..errors import USER_ERRORS, BlockfsError, DatasetExistsError, ExportError, InvalidArgumentError, describe
from ..parallel.mpi import Ranks, rounds, serially
from ..progress import byte_progress
from ..storage import full_disk_note
from ..volume import Volume, open_volume

T = TypeVar("T")

PROG = "blockfs2hdf5"

#: attribute holding the volume's block size (z, y, x); the application metadata keys sit beside it
BLOCK_SIZE_ATTR = "blockfs_block_size_zyx"

#: How h5py refuses a dataset name, filter or filter option it cannot use
H5PY_ARGUMENT_ERRORS = (ValueError, TypeError, KeyError, OSError)

#: --compression: a filter name or number; --compression-opts: its options
Filter = str | int | None
FilterOptions = int | tuple[Any, ...] | None


def parallel_hdf5_missing() -> str | None:
    """Why h5py cannot write in parallel here, or None."""
    import h5py

    return None if h5py.get_config().mpi else f"h5py {h5py.version.version} is built without parallel HDF5"


def parse_filter(text: str) -> str | int:
    """--compression: a filter name (gzip, lzf, szip) or a registered HDF5 filter number."""
    return int(text) if text.isdigit() else text


def parse_filter_options(text: str) -> int | tuple[Any, ...]:
    """--compression-opts: an integer (the gzip level) or a comma-separated tuple (e.g. ``nn,8`` for szip)."""
    def item(part: str) -> int | str:
        part = part.strip()
        try:
            return int(part)
        except ValueError:
            return part
    parts = [item(p) for p in text.split(",")]
    if len(parts) == 1 and isinstance(parts[0], int):
        return parts[0]
    return tuple(parts)


#: a row of the work: (z0, z1, y0, y1), the whole x extent
Row = tuple[int, int, int, int]


def rows(shape: tuple[int, int, int], block: tuple[int, int, int]) -> list[Row]:
    """(z0, z1, y0, y1) of every row: one block deep and high, the whole x extent wide."""
    (nz, ny, _), (bz, by, _) = shape, block
    return [(z, min(z + bz, nz), y, min(y + by, ny)) for z in range(0, nz, bz) for y in range(0, ny, by)]


def chunk_shape(shape: tuple[int, int, int], block: tuple[int, int, int]) -> tuple[int, int, int]:
    """The block size clipped to the volume's shape (an HDF5 chunk may not exceed a fixed dimension)."""
    # mypy types a tuple built from a generator as tuple[int, ...]; it has three items here
    return tuple(min(b, s) for b, s in zip(block, shape))  # type: ignore[return-value]


def dataset_options(volume: Volume, compression: Filter = None,
                    compression_opts: FilterOptions = None) -> dict[str, Any]:
    """Keyword arguments of ``create_dataset`` for the volume."""
    options: dict[str, Any] = {"shape": volume.shape, "dtype": volume.dtype,
                               "chunks": chunk_shape(volume.shape, volume.block_shape)}
    if compression is not None:
        options["compression"] = compression
        if compression_opts is not None:
            options["compression_opts"] = compression_opts
    return options


def _describe_filter(options: dict[str, Any]) -> str:
    if options.get("compression") is None:
        return "no compression"
    opts = "" if options.get("compression_opts") is None else f" (options {options['compression_opts']!r})"
    return f"compression {options['compression']!r}{opts}"


def skippable_filters(dest: str, name: str, options: dict[str, Any]) -> list[str]:
    """Make the dataset in a file in memory (reporting bad names and options before ``dest`` is touched),
    and return the names of its filters that HDF5 may skip for a chunk.

    HDF5 stores a chunk unfiltered when an optional filter fails on it (lzf and szip fail when the
    chunk does not shrink) and records that in the chunk's filter mask. Parallel HDF5 1.10 writes a
    zero mask instead, so the chunk is later "decompressed" and cannot be read (measured with HDF5
    1.10.8: lzf and szip on incompressible data). Deflate is flagged optional too, but its output
    buffer always fits, so it never fails this way.
    """
    import h5py
    from h5py import h5z

    if not name.strip("/"):
        raise InvalidArgumentError(f"{dest}: {name!r} does not name a dataset; give a path such as /raw/channel0")
    try:
        with h5py.File(f"{PROG}-probe-{os.getpid()}", "w", driver="core", backing_store=False) as probe:
            dcpl = probe.create_dataset(name, **options).id.get_create_plist()
            pipeline = [dcpl.get_filter(i) for i in range(dcpl.get_nfilters())]
    except H5PY_ARGUMENT_ERRORS as exc:
        raise InvalidArgumentError(f"{dest}: cannot make dataset {name} with {_describe_filter(options)}: {exc}"
                                   ) from None
    return [label.decode(errors="replace") or str(code) for code, flags, _, label in pipeline
            if flags & h5z.FLAG_OPTIONAL and code != h5z.FILTER_DEFLATE]


def check_destination(dest: str, name: str) -> bool:
    """Before anything is written: ``dest`` can hold dataset ``name`` and does not yet. Returns whether it exists."""
    import h5py

    if not os.path.exists(dest):
        folder = os.path.dirname(os.path.abspath(dest))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{dest}: the folder {folder} does not exist; create it first")
        return False
    if os.path.isdir(dest):
        raise IsADirectoryError(f"{dest}: is a folder; give the path of an HDF5 file")
    if not h5py.is_hdf5(dest):
        raise InvalidArgumentError(f"{dest}: exists and is not an HDF5 file; choose another file name")
    with h5py.File(dest, "r") as f:
        if name in f:
            raise DatasetExistsError(f"{dest}: dataset {name} exists; choose another name, or delete it first "
                                     "(it is never overwritten)")
    return True


def check_room(dest: str, options: dict[str, Any]) -> None:
    """Refuse an uncompressed dataset that cannot fit on the disk, before HDF5 runs into it (it reports a
    full disk as "file write failed", and may then crash as it closes the file)."""
    if options.get("compression") is not None:
        return
    need = math.prod(options["shape"]) * np.dtype(options["dtype"]).itemsize
    free = shutil.disk_usage(os.path.dirname(os.path.abspath(dest))).free
    if need > free:
        raise ExportError(f"{dest}: {os.strerror(errno.ENOSPC)}: the dataset needs {need:,} bytes and the disk has "
                          f"{free:,} free; free some space, choose another disk, or pass --compression.")


def open_file(dest: str, ranks: Ranks) -> Any:
    """Open ``dest`` for appending on every rank; a rank that fails while others succeed aborts all."""
    import h5py

    f, error = None, None
    try:
        f = h5py.File(dest, "a", driver="mpio", comm=ranks.comm) if ranks.parallel else h5py.File(dest, "a")
    except USER_ERRORS as exc:
        error = describe(exc)
    errors = ranks.comm.allgather(error) if ranks.parallel else [error]
    if any(errors) and not all(errors):
        raise ExportError(f"{dest}: opened on some ranks only: {next(e for e in errors if e)}")
    ranks.agree(error)
    return f


def write_attributes(dset: Any, volume: Volume) -> None:
    """The volume's application metadata (each value as JSON text) and its block size."""
    for key, value in volume.metadata.items():
        dset.attrs[key] = json.dumps(value)
    dset.attrs[BLOCK_SIZE_ATTR] = np.array(volume.block_shape, np.int64)


def h5_writing(dest: str, call: Callable[[], T]) -> T:
    """``call()``, which writes to the HDF5 file ``dest``; h5py's failure becomes an :class:`ExportError`
    naming the file (and a full disk, which HDF5's "file write failed" does not name)."""
    try:
        return call()
    except (ValueError, OSError, RuntimeError) as exc:
        if isinstance(exc, BlockfsError):
            raise
        raise ExportError(f"{dest}: {exc}{full_disk_note(dest)}") from None


class RowWriter:
    """Writes one row into the dataset, or (in parallel) takes part in a round with nothing to write."""

    def __init__(self, dset: Any, parallel: bool):
        from h5py import h5fd, h5p, h5s

        self._dset, self._h5s = dset, h5s
        self._dxpl = None
        if parallel:  # collective: required with filters, and every rank then calls once per round
            self._dxpl = h5p.create(h5p.DATASET_XFER)
            self._dxpl.set_dxpl_mpio(h5fd.MPIO_COLLECTIVE)
        self._nothing = np.zeros(1, dset.dtype)

    def write(self, origin: tuple[int, int, int] | None, data: np.ndarray | None) -> None:
        fspace = self._dset.id.get_space()
        if data is None:
            fspace.select_none()
            mspace = self._h5s.create_simple((1,))
            mspace.select_none()
            data = self._nothing
        else:
            fspace.select_hyperslab(origin, data.shape)
            mspace = self._h5s.create_simple(data.shape)
        self._dset.id.write(mspace, fspace, data, dxpl=self._dxpl)


def write_rows(volume: Volume, dset: Any, ranks: Ranks, silent: bool = True) -> None:
    """Every row, round by round; rank 0's bar (unless ``silent``) counts the voxel bytes that all ranks wrote."""
    work = rows(volume.shape, volume.block_shape)
    writer = RowWriter(dset, ranks.parallel)
    row_bytes = volume.shape[2] * volume.dtype.itemsize
    total = int(np.prod(volume.shape)) * volume.dtype.itemsize
    with byte_progress(total, silent or ranks.rank != 0, f"{PROG}: {dset.name}") as bar:
        for batch, row in rounds(work, ranks):
            data, error = None, None
            if row is not None:
                z0, z1, y0, y1 = row
                try:
                    data = volume.read(np.s_[z0:z1, y0:y1, :])
                except USER_ERRORS as exc:
                    error = describe(exc)
            ranks.agree(error)
            place = None if row is None else (row[0], row[2], 0)
            h5_writing(dset.file.filename, functools.partial(writer.write, place, data))
            bar.update(sum((z1 - z0) * (y1 - y0) * row_bytes for z0, z1, y0, y1 in batch))


def export(src: str, dest: str, name: str, ranks: Ranks, compression: Filter = None,
           compression_opts: FilterOptions = None, silent: bool = True) -> None:
    """Write the volume ``src`` as dataset ``name`` of the HDF5 file ``dest`` (created if missing), with
    an HDF5 ``compression`` filter and its options; raises :class:`ExportError` on every rank if any rank failed."""
    volume = ranks.attempt(lambda: open_volume(src))
    try:
        options = dataset_options(volume, compression, compression_opts)
        skippable = ranks.attempt(lambda: skippable_filters(dest, name, options))
        if ranks.parallel and skippable:
            solo = serially(ranks, f"parallel HDF5 mislabels chunks that the {', '.join(skippable)} filter "
                                   "leaves uncompressed, which makes them unreadable", PROG)
            if solo is None:
                return
            ranks = solo
        existed = ranks.attempt(lambda: check_destination(dest, name) if ranks.rank == 0 else None)
        ranks.attempt(lambda: check_room(dest, options) if ranks.rank == 0 else None)
        if ranks.parallel:
            existed = ranks.comm.bcast(existed, root=0)
        f = open_file(dest, ranks)
        try:
            dset = ranks.attempt(lambda: h5_writing(dest, lambda: f.create_dataset(name, **options)), dest,
                                 f"cannot create dataset {name}")
            try:
                ranks.attempt(lambda: write_attributes(dset, volume),
                              dest, f"cannot write the attributes of dataset {name}")
                write_rows(volume, dset, ranks, silent)
            except ExportError:
                with contextlib.suppress(ExportError):  # on a full disk, HDF5 may fail to unlink it too
                    h5_writing(dest, lambda: f.__delitem__(name))  # every rank is here: deleting is collective
                raise
        except ExportError:
            with contextlib.suppress(ExportError):  # what failed may fail again on the way out
                h5_writing(dest, f.close)
            if not existed and ranks.rank == 0:
                os.unlink(dest)
            raise
        except BaseException:
            if not ranks.parallel:  # in parallel, closing is collective and the other ranks are elsewhere
                f.close()
            raise
        ranks.attempt(lambda: h5_writing(dest, f.close), dest, "cannot finish the file")
    finally:
        volume.close()
