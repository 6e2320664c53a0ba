"""Real clients over a real server on loopback: zarr-python and tensorstore read what blockfs reads.

The volumes have edge blocks on all three axes, non-cubic blocks and never-written blocks; the
pyramid has three levels. Full blocks must go out as the shard's bytes without a decompression.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import blosc
import numpy as np
import pytest

from helpers import require
from serve_support import volume_data, write_pyramid, write_volume

from blockfs import Directory
from blockfs.serve import start

BLOCK = (16, 24, 32)  # z, y, x
SHAPE = (45, 70, 83)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """A pyramid ("pyr") and a single volume with block records ("vol"), served together."""
    folder = tmp_path_factory.mktemp("serve")
    data = volume_data(SHAPE)
    levels = write_pyramid(folder / "pyr", data, BLOCK, 3)
    single = write_volume(folder / "vol.blockfs", volume_data(SHAPE, seed=1), BLOCK, records=True,
                          metadata={"voxel_size_um": [1.0, 1.0, 3.0]})
    with start([folder / "pyr", folder / "vol.blockfs"]) as server:
        yield server, {"pyr": levels, "vol": [single]}, folder


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def test_every_level_is_as_blockfs_reads_it(served) -> None:
    server, expected, folder = served
    for level, want in enumerate(expected["pyr"]):
        path = folder / "pyr" / f"{2 ** level}_{2 ** level}_{2 ** level}" / "precomputed.blockfs"
        with Directory.open(str(path)) as d:
            np.testing.assert_array_equal(d[...], want, strict=True)


def test_zarr_python_reads_every_level(served) -> None:
    zarr = require("zarr")
    require("fsspec")
    require("aiohttp")
    server, expected, _ = served
    for name, levels in expected.items():
        for zarr_format, route in ((2, "zarr"), (3, "zarr3")):
            group = zarr.open_group(f"{server.url}/{name}/{route}/", mode="r", zarr_format=zarr_format)
            assert len(group.attrs["multiscales" if zarr_format == 2 else "ome"]) > 0
            for level, want in enumerate(levels):
                array = group[str(level)]
                assert array.shape == want.shape
                np.testing.assert_array_equal(array[...], want, err_msg=f"{name} {route} level {level}", strict=True)


def test_tensorstore_zarr_drivers_read_every_level(served) -> None:
    ts = require("tensorstore")
    server, expected, _ = served
    for name, levels in expected.items():
        for driver, route in (("zarr", "zarr"), ("zarr3", "zarr3")):
            for level, want in enumerate(levels):
                store = ts.open({"driver": driver, "kvstore": f"{server.url}/{name}/{route}/{level}/"},
                                read=True).result(timeout=60)
                np.testing.assert_array_equal(store.read().result(timeout=60), want,
                                              err_msg=f"{name} {driver} level {level}", strict=True)


def test_tensorstore_precomputed_driver_reads_every_level(served) -> None:
    ts = require("tensorstore")
    server, expected, _ = served
    for name, levels in expected.items():
        for level, want in enumerate(levels):
            store = ts.open({"driver": "neuroglancer_precomputed", "kvstore": f"{server.url}/{name}/",
                             "scale_index": level}, read=True).result(timeout=60)
            got = store.read().result(timeout=60)  # x, y, z, channel
            np.testing.assert_array_equal(np.asarray(got)[..., 0].transpose(2, 1, 0), want,
                                          err_msg=f"{name} precomputed level {level}", strict=True)


@pytest.fixture
def count_decompressions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every blosc decompression in this process (the server runs in a thread of it)."""
    import imagecodecs  # what blockfs.codec decompresses with

    calls = [0]
    for module, name in ((blosc, "decompress"), (blosc, "decompress_ptr"), (imagecodecs, "blosc_decode")):
        original = getattr(module, name)

        def counted(*args, _original=original, **kwargs):
            calls[0] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)
    return calls


def test_full_blocks_are_the_shard_bytes_and_never_decompressed(served, count_decompressions) -> None:
    server, _, folder = served
    for name, path in (("pyr", folder / "pyr" / "1_1_1" / "precomputed.blockfs"), ("vol", folder / "vol.blockfs")):
        volume = server.state.volumes[name]
        with Directory.open(str(path)) as d:
            lay = d.layout
            full = [(cz, cy, cx) for cz in range(lay.grid[0]) for cy in range(lay.grid[1]) for cx in range(lay.grid[2])
                    if all((c + 1) * b <= n for c, b, n in zip((cz, cy, cx), lay.block_shape, lay.shape))]
            assert len(full) == 8
            for cz, cy, cx in full:
                origin = (cx * lay.x_block_size, cy * lay.y_block_size, cz * lay.z_block_size)
                offset, size = volume.version((0, (cz, cy, cx)))
                if not size:
                    continue  # a never-written block
                shard = d.shard_paths[lay.entry_index(*origin) % len(d.shard_paths)]
                with open(shard, "rb") as f:
                    f.seek(offset)
                    stored = f.read(size)
                before = count_decompressions[0]
                for route in (f"zarr/0/{cz}.{cy}.{cx}", f"zarr3/0/c/{cz}/{cy}/{cx}"):
                    assert fetch(f"{server.url}/{name}/{route}") == stored
                assert count_decompressions[0] == before, "a full block was decompressed"


def test_edge_blocks_are_decompressed_once_then_cached(served, count_decompressions) -> None:
    _, expected, folder = served
    with start(folder / "vol.blockfs") as server:  # a server of its own: an empty cache
        body = fetch(f"{server.url}/vol/zarr/0/2.2.2")  # an edge block on all three axes
        assert count_decompressions[0] == 1
        before = count_decompressions[0]
        assert fetch(f"{server.url}/vol/zarr/0/2.2.2") == body
        assert count_decompressions[0] == before, "an edge block was re-encoded again instead of coming from the cache"
    full = np.frombuffer(blosc.decompress(body), np.uint16).reshape(BLOCK)
    np.testing.assert_array_equal(full[:13, :22, :19], expected["vol"][0][32:, 48:, 64:], strict=True)
    assert not full[13:].any() and not full[:, 22:].any() and not full[:, :, 19:].any()


def test_edge_cache_is_bounded(tmp_path: Path) -> None:
    data = volume_data((40, 40, 40))
    write_volume(tmp_path / "v.blockfs", data, (16, 16, 16), missing=set())
    with start(tmp_path / "v.blockfs", cache_bytes=3 * 16 ** 3 * 2) as server:
        for cz in range(3):
            for cy in range(3):
                fetch(f"{server.url}/v/zarr/0/{cz}.{cy}.2")
        edges = server.state.edges
        assert 0 < len(edges) < 9 and edges.nbytes <= edges.max_bytes
