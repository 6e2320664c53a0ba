"""One read contract, run over every read surface of a volume (ARCHITECTURE-REVIEW section 4 item 7).

The surfaces include a :class:`blockfs.Volume` opened by URL: the same files served by nginx and by
moto's S3 (issue 25).

In the manner of zarr-python's ``StoreTests``, every case runs through each reader of
``READERS`` and must give exactly what numpy gives for the same key on the array that was written
(never-written blocks zeroed): the same values, dtype and shape (``strict=True``). What a reader
cannot do is in ``LIMITS``, with the reason, as a strict xfail; nothing is skipped silently.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import require
from remote_servers import moto_endpoint, moto_s3, nginx, s3_environment  # noqa: F401 (fixtures)
from serve_support import BLOCK, MISSING, SHAPE, write_volume

import blockfs
from blockfs.serve import Server, start

#: A read surface, indexed with numpy basic indexing in (z, y, x).
Read = Callable[[Any], Any]

DTYPES = ("uint8", "uint16", "uint32", "float32", "int16")
READERS = ("directory", "directory-read_into", "volume", "volume-read_into", "zarr-v3", "zarr-v2",
           "http-zarr-v3", "http-zarr-v2", "http-volume", "http-volume-read_into", "s3-volume")
ZARR_READERS = tuple(r for r in READERS if "zarr" in r)
#: What a key naming a single voxel reads as: blockfs gives numpy's scalar, zarr-python (local or
#: over HTTP) a 0-d array, and read_into the 0-d ``out`` it was given.
SCALAR_TYPE = {r: np.ndarray if "zarr" in r or "read_into" in r else np.generic for r in READERS}
#: (reader, test) pairs a reader cannot serve: the reason, and the error it raises instead.
LIMITS: dict[tuple[str, str], tuple[str, type[BaseException]]] = {
    (r, "test_negative_steps_read_backwards"): (
        "zarr-python's basic indexing refuses slices with step < 0 (zarr.errors.NegativeStepError, an IndexError)",
        IndexError) for r in ZARR_READERS}


def keys(**named: Any) -> list[Any]:
    """pytest params of the keys ``named``, each under its name as the test id."""
    return [pytest.param(key, id=name) for name, key in named.items()]


def data_of(dtype: str, seed: int) -> np.ndarray:
    """Random ``SHAPE`` data over the whole range of an integer ``dtype``, or normal floats."""
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(SHAPE).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, SHAPE, dtype=dtype, endpoint=True)


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, np.ndarray]]:
    """One ``SHAPE`` volume in ``BLOCK``s per dtype (edge blocks on every axis, ``MISSING`` never
    written), by dtype: (index path, what it reads as)."""
    folder = tmp_path_factory.mktemp("contract")
    return {dtype: (folder / f"{dtype}.blockfs", write_volume(folder / f"{dtype}.blockfs", data_of(dtype, seed), BLOCK))
            for seed, dtype in enumerate(DTYPES)}


@pytest.fixture(scope="module")
def server(volumes: dict[str, tuple[Path, np.ndarray]]) -> Iterator[Server]:
    """The real server on loopback, serving every volume under its dtype's name."""
    with start([path for path, _ in volumes.values()], names=list(volumes)) as running:
        yield running


@pytest.fixture(scope="module")
def nginx_volumes(volumes: dict[str, tuple[Path, np.ndarray]], tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[str]:
    """nginx serving the volumes' folder: the URL of that folder."""
    folder = next(iter(volumes.values()))[0].parent
    with nginx(folder, tmp_path_factory.mktemp("nginx")) as url:
        yield url


@pytest.fixture(scope="module")
def s3_volumes(volumes: dict[str, tuple[Path, np.ndarray]], moto_endpoint: str) -> Iterator[str]:
    """The volumes' folder uploaded to a bucket of moto's S3: the bucket's URL (the environment set to reach it)."""
    with moto_s3(moto_endpoint) as bucket, s3_environment(bucket):
        bucket.upload(next(iter(volumes.values()))[0].parent)
        yield bucket.url


@pytest.fixture
def dtype() -> str:
    """The dtype of the volume a test reads; tests parametrize it to read the others."""
    return "uint16"


@pytest.fixture
def expected(volumes: dict[str, tuple[Path, np.ndarray]], dtype: str) -> np.ndarray:
    """What the volume of ``dtype`` reads as."""
    return volumes[dtype][1]


def into(surface: Any) -> Read:
    """``surface.read_into`` as a reader: ``out`` is shaped as numpy shapes the key (a key numpy
    refuses gets a 0-d ``out``, so that the error must come from read_into itself)."""
    def read(key: Any) -> np.ndarray:
        try:
            shape = np.broadcast_to(np.empty((), bool), SHAPE)[key].shape
        except IndexError:
            shape = ()
        out = np.empty(shape, surface.dtype)
        assert surface.read_into(out, key) is out
        return out
    return read


@pytest.fixture(params=READERS)
def read(request: pytest.FixtureRequest, volumes: dict[str, tuple[Path, np.ndarray]], dtype: str) -> Iterator[Read]:
    """Each reader over the volume of ``dtype``, with its entry of ``LIMITS`` applied as a strict xfail."""
    name: str = request.param
    limit = LIMITS.get((name, request.function.__name__))
    if limit is not None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=limit[0], raises=limit[1]))
    path = volumes[dtype][0]
    with contextlib.ExitStack() as stack:
        if name.startswith("directory"):
            d = stack.enter_context(blockfs.Directory.open(str(path), "r"))
            yield into(d) if name.endswith("read_into") else d.__getitem__
        elif "volume" in name:
            folder = {"http": "nginx_volumes", "s3": "s3_volumes"}.get(name.split("-")[0])
            v = blockfs.open_volume(path if folder is None else f"{request.getfixturevalue(folder)}/{path.name}")
            stack.callback(v.close)
            yield into(v) if name.endswith("read_into") else v.__getitem__
        elif name.startswith("zarr"):
            require("zarr")
            yield blockfs.open_zarr(str(path), zarr_format=int(name[-1])).__getitem__
        else:
            zarr = require("zarr")
            require("fsspec")
            require("aiohttp")
            url = request.getfixturevalue("server").url
            route = {"http-zarr-v3": "zarr3", "http-zarr-v2": "zarr"}[name]
            yield zarr.open_array(f"{url}/{dtype}/{route}/0", mode="r", zarr_format=int(name[-1])).__getitem__


def check(read: Read, expected: np.ndarray, key: Any) -> Any:
    """Read ``key`` and compare it strictly with numpy's ``expected[key]``; return what was read."""
    actual = read(key)
    np.testing.assert_array_equal(actual, expected[key], strict=True, err_msg=f"key {key!r}")
    return actual


def test_the_whole_volume_reads_as_written(read: Read, expected: np.ndarray) -> None:
    assert check(read, expected, ...).shape == SHAPE


@pytest.mark.parametrize("key", keys(interior=np.s_[10:35, 20:50, 30:70], one_axis=np.s_[15:17, :, 31:33],
                                     partial=np.s_[20:30], two_axes=np.s_[:, 23:25]))
def test_regions_across_block_boundaries_read_as_written(read: Read, expected: np.ndarray, key: Any) -> None:
    check(read, expected, key)


@pytest.mark.parametrize("key", keys(far_corner=np.s_[30:, 50:, 70:], last_voxels=np.s_[-3:, -3:, -3:],
                                     edge_blocks_only=np.s_[32:, 48:, 64:], past_the_end=np.s_[30:100, 55:999, -999:5]))
def test_regions_at_the_far_edges_read_the_truncated_edge_blocks(read: Read, expected: np.ndarray, key: Any) -> None:
    check(read, expected, key)


@pytest.mark.parametrize("key", keys(interior_block=np.s_[18:30, 26:46, 40:60], edge_block=np.s_[2:14, 50:, 3:30]))
def test_a_region_inside_a_never_written_block_reads_zeros(read: Read, expected: np.ndarray, key: Any) -> None:
    assert (1, 1, 1) in MISSING and (0, 2, 0) in MISSING and not expected[key].any()
    check(read, expected, key)


@pytest.mark.parametrize("key", keys(interior=np.s_[10:20, 20:30, 28:40], edge=np.s_[10:20, 40:, 20:40]))
def test_a_region_straddling_written_and_missing_blocks_reads_zeros_only_where_missing(
        read: Read, expected: np.ndarray, key: Any) -> None:
    assert (expected[key] == 0).any() and expected[key].any(), "the case must straddle written and missing blocks"
    check(read, expected, key)


@pytest.mark.parametrize("key", keys(plane=np.s_[5], z_column=np.s_[:, 7, 9], y_row=np.s_[3, :, 77],
                                     xz_plane=np.s_[:, 50], after_ellipsis=np.s_[..., 9], missing=np.s_[20, 30]))
def test_integer_indices_drop_their_axes(read: Read, expected: np.ndarray, key: Any) -> None:
    assert check(read, expected, key).ndim < 3


@pytest.mark.parametrize("key", keys(written=np.s_[3, 4, 5], missing=np.s_[20, 30, 40], last=np.s_[-1, -1, -1]))
def test_a_single_voxel_reads_as_a_0d_value_of_the_volumes_dtype(
        read: Read, expected: np.ndarray, key: Any, request: pytest.FixtureRequest) -> None:
    actual = check(read, expected, key)
    assert isinstance(actual, SCALAR_TYPE[request.node.callspec.params["read"]]), type(actual)


@pytest.mark.parametrize("key", keys(index=np.s_[-1, -60], stops=np.s_[:-3, :-25, :-33],
                                     both=np.s_[-30:-2, -59:-1, -70:-9], start_past_stop=np.s_[-5:-10]))
def test_negative_indices_and_stops_count_from_the_end(read: Read, expected: np.ndarray, key: Any) -> None:
    check(read, expected, key)


@pytest.mark.parametrize("key", keys(every_nth=np.s_[::2, 1::3, ::5], bounded=np.s_[3:37:7, 5:55:11, 1:79:13],
                                     step_past_a_block=np.s_[::17, ::25, ::33]))
def test_strided_slices_read_every_nth_voxel(read: Read, expected: np.ndarray, key: Any) -> None:
    check(read, expected, key)


@pytest.mark.parametrize("key", keys(reversed=np.s_[::-1], mixed=np.s_[::-1, 5:55:3, 70:10:-7]))
def test_negative_steps_read_backwards(read: Read, expected: np.ndarray, key: Any) -> None:
    check(read, expected, key)


@pytest.mark.parametrize("key", keys(z=np.s_[5:5], y=np.s_[:, 10:10], backwards=np.s_[7:3, :, 1:2],
                                     all_axes=np.s_[0:0, 0:0, 0:0], with_an_index=np.s_[3, 40:40]))
def test_empty_slices_read_empty_arrays_of_the_right_shape(read: Read, expected: np.ndarray, key: Any) -> None:
    assert check(read, expected, key).size == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_reads_back_exactly(read: Read, expected: np.ndarray, dtype: str) -> None:
    assert check(read, expected, ...).dtype == np.dtype(dtype)
    check(read, expected, np.s_[10:35, 20:50, 30:70])


@pytest.mark.parametrize("key", keys(z=np.s_[40], negative_z=np.s_[-41], y=np.s_[0, 60], x=np.s_[0, 0, 80],
                                     too_many_indices=np.s_[:, :, :, :]))
def test_out_of_range_keys_raise_an_index_error(read: Read, key: Any) -> None:
    with pytest.raises(IndexError):
        read(key)
