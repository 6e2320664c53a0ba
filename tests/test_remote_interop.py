"""The zarr and dask bridges over a volume read by URL: the same arrays as over the files on the disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from remote_servers import date_back, nginx_url, served  # noqa: F401 (fixtures)
from serve_support import BLOCK, SHAPE, volume_data, write_pyramid, write_volume

import blockfs
from blockfs.interop.dask_io import to_dask


def test_to_dask_of_a_url_reads_what_the_disk_holds_and_is_named_by_its_etag(served: Path, nginx_url: str) -> None:
    expected = write_volume(served / "vol.blockfs", volume_data(SHAPE), BLOCK, records=True)
    date_back(served / "vol.blockfs")  # before its ETag is first read, so that the rewrite below changes it
    array = to_dask(blockfs.open_volume(f"{nginx_url}/vol.blockfs"))
    assert array.chunks == tuple(tuple(min(b, n - s) for s in range(0, n, b)) for n, b in zip(SHAPE, BLOCK))
    np.testing.assert_array_equal(array[3:37, 5:50, 7].compute(scheduler="processes", num_workers=2),
                                  expected[3:37, 5:50, 7])
    again = to_dask(blockfs.open_volume(f"{nginx_url}/vol.blockfs"))
    assert again.name == array.name
    write_volume(served / "vol.blockfs", volume_data(SHAPE, seed=1), BLOCK, records=True)  # a new ETag
    assert to_dask(blockfs.open_volume(f"{nginx_url}/vol.blockfs")).name != array.name


def test_open_zarr_of_a_url_gives_the_volume_and_the_pyramid(served: Path, nginx_url: str) -> None:
    data = volume_data(SHAPE)
    expected = write_volume(served / "vol.blockfs", data, BLOCK, records=True)
    np.testing.assert_array_equal(blockfs.open_zarr(f"{nginx_url}/vol.blockfs")[2:30, :, 40:], expected[2:30, :, 40:])
    levels = write_pyramid(served / "pyr", data, BLOCK, 2)
    group = blockfs.open_zarr(f"{nginx_url}/pyr")
    assert sorted(group.keys()) == ["0", "1"]
    for key, level in zip(["0", "1"], levels):
        np.testing.assert_array_equal(group[key][...], level)
