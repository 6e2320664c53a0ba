"""A volume read by URL (issue 25) on real servers: nginx and moto's S3 for what it reads and how its tools run,
the faulty aiohttp server for what its requests cost and how it answers a server that fails."""

from __future__ import annotations

import json
import multiprocessing
import operator
import pickle
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import tifffile

from helpers import require
from remote_servers import S3, Faulty, date_back, faulty_server, moto_endpoint, nginx_url, s3, served  # noqa: F401 (fixtures)
from serve_support import BLOCK, MISSING, SHAPE, volume_data, write_pyramid, write_volume

import blockfs
from blockfs import remote
from blockfs.cli import main
from blockfs.pyramid.folder import open_pyramid

INDEX, SHARD = "vol.blockfs", "vol.blockfs.0"


def write(served: Path, seed: int = 0, **kwargs: object) -> np.ndarray:
    """``volume_data(SHAPE)`` as ``served/vol.blockfs`` in ``BLOCK``s with records, in one shard; what it reads as."""
    return write_volume(served / INDEX, volume_data(SHAPE, seed), BLOCK, records=True, n_filenames=1, **kwargs)


@pytest.fixture(params=["nginx", "s3"])
def publish(request: pytest.FixtureRequest, served: Path) -> Callable[[], str]:
    """On each server in turn: a function that makes what ``served`` holds now readable, returning its base URL."""
    if request.param == "nginx":
        url: str = request.getfixturevalue("nginx_url")
        return lambda: url
    bucket: S3 = request.getfixturevalue("s3")

    def upload() -> str:
        bucket.upload(served, "data/")
        return f"{bucket.url}/data"
    return upload


def requests(server: Faulty, path: str, method: str = "GET") -> int:
    """How many ``method`` requests of ``path`` the faulty server received."""
    return sum(seen.method == method for seen in server.seen.get(path, []))


def block_offset(served: Path, xyz: tuple[int, int, int]) -> int:
    """Where in its shard the payload of the block at the voxel (x, y, z) lies, as the index on the disk says."""
    volume = blockfs.open_volume(served / INDEX)
    return volume.store.entry(volume.entry_of(*xyz))[0]


# --- reads ------------------------------------------------------------------------------------------------

def test_a_remote_volume_reads_as_on_the_disk(served: Path, publish: Callable[[], str]) -> None:
    """Region, block and payload reads by URL give what the files on the disk give."""
    expected = write(served)
    local = blockfs.open_volume(served / INDEX)
    v = blockfs.open_volume(f"{publish()}/{INDEX}")
    assert (v.shape, v.dtype, v.block_shape) == (local.shape, local.dtype, local.block_shape)
    np.testing.assert_array_equal(v[...], expected, strict=True)
    np.testing.assert_array_equal(v[3:37, 5:50, 7], expected[3:37, 5:50, 7], strict=True)
    np.testing.assert_array_equal(v.read_block(32, 24, 16), local.read_block(32, 24, 16), strict=True)
    assert v.read_block_payload(0, 0, 0) == local.read_block_payload(0, 0, 0)
    assert v.read_block_payload(32, 24, 16) is None and (1, 1, 1) in MISSING
    region = np.s_[10:30, 5]
    assert [p.entry for p in v.iter_projections(region)] == [p.entry for p in local.iter_projections(region)]


def test_a_pickled_remote_volume_reads_in_a_spawned_process(served: Path, publish: Callable[[], str]) -> None:
    """A remote Volume pickles small and reads in a process started by spawn (its own client and threads)."""
    expected = write(served)
    v = blockfs.open_volume(f"{publish()}/{INDEX}")
    v[0:2]  # a read before pickling: the caches and clients of this process do not travel
    assert len(pickle.dumps(v)) < 4096
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        region = pool.apply(operator.getitem, (v, np.s_[5:35, 10:50, 20:70]))
    np.testing.assert_array_equal(region, expected[5:35, 10:50, 20:70], strict=True)


# --- what reads cost --------------------------------------------------------------------------------------

def test_a_row_of_blocks_costs_one_request_of_its_shard_and_a_block_read_again_one(
        served: Path, faulty_server: Faulty) -> None:
    """Open reads the header in one request; a row of 3 neighbouring blocks of one shard costs one index page, one
    HEAD and one GET of the shard; the next block read costs one request, the index page being cached."""
    expected = write(served)
    v = blockfs.open_volume(f"{faulty_server.url}/{INDEX}")
    assert faulty_server.ranges(INDEX) == ["bytes=0-65535"]
    np.testing.assert_array_equal(v[0:16, 0:24, :], expected[0:16, 0:24, :])
    assert requests(faulty_server, INDEX) == 2
    assert (requests(faulty_server, SHARD, "HEAD"), requests(faulty_server, SHARD)) == (1, 1)
    etag = faulty_server.seen[INDEX][0].if_match, faulty_server.seen[INDEX][1].if_match
    assert etag[0] is None and etag[1] is not None, "the index page is asked If-Match the ETag of the open"
    faulty_server.forget()
    np.testing.assert_array_equal(v.read_block(32, 24, 0), expected[0:16, 24:48, 32:64])
    assert faulty_server.seen == {SHARD: [faulty_server.seen[SHARD][0]]} and requests(faulty_server, SHARD) == 1
    faulty_server.forget()
    np.testing.assert_array_equal(v[...], expected)  # 25 blocks, about 190 kB, close together
    assert faulty_server.seen.keys() == {SHARD} and requests(faulty_server, SHARD) == 1


def test_a_flipped_byte_in_a_served_shard_raises_a_checksum_error_naming_its_url(served: Path,
                                                                                nginx_url: str) -> None:
    """Blocks read by URL are verified by their records; the error names the shard's URL."""
    write(served)
    at = block_offset(served, (32, 0, 0)) + 100
    with open(served / SHARD, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))
    v = blockfs.open_volume(f"{nginx_url}/{INDEX}")
    np.testing.assert_array_equal(v.read_block(0, 0, 0), blockfs.open_volume(served / INDEX).read_block(0, 0, 0))
    with pytest.raises(blockfs.ChecksumError, match=f"{nginx_url}/{SHARD}"):
        v.read_block(32, 0, 0)
    with pytest.raises(blockfs.ChecksumError, match=f"{nginx_url}/{SHARD}"):
        v[...]


# --- a server that fails ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["drop", "status"])
def test_a_dropped_connection_or_two_503s_are_retried(served: Path, faulty_server: Faulty, fault: str) -> None:
    """The GET of a region's blocks, failed once by a dropped connection or twice by 503, is retried and reads."""
    expected = write(served)
    v = blockfs.open_volume(f"{faulty_server.url}/{INDEX}")
    v.read_block(0, 0, 0)  # the index page and the shard's size known: the next read is one GET
    faulty_server.forget()
    if fault == "drop":
        faulty_server.drop(SHARD)
    else:
        faulty_server.status(SHARD, 503, times=2)
    np.testing.assert_array_equal(v[...], expected)
    assert faulty_server.seen.keys() == {SHARD} and requests(faulty_server, SHARD) == (2 if fault == "drop" else 3)


def test_500_forever_raises_a_remote_read_error_naming_url_and_status_in_bounded_time(
        served: Path, faulty_server: Faulty) -> None:
    write(served)
    v = blockfs.open_volume(f"{faulty_server.url}/{INDEX}")
    v.read_block(0, 0, 0)
    faulty_server.forget()
    faulty_server.status(SHARD, 500, times=100)
    begin = time.monotonic()
    with pytest.raises(blockfs.RemoteReadError,
                       match=rf"{faulty_server.url}/{SHARD}: the read failed .*after {remote.RETRIES} retries.* 500 "):
        v[...]
    elapsed = time.monotonic() - begin
    assert requests(faulty_server, SHARD) == 1 + remote.RETRIES
    assert elapsed < 30, f"{elapsed:.1f} s"


def test_a_server_slower_than_the_timeout_raises_a_remote_read_error(
        served: Path, faulty_server: Faulty, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request that outlasts the timeout is retried, then fails naming the URL (a shorter TIMEOUT for the test:
    stores are made per process on first use, with the TIMEOUT of then)."""
    expected = write(served)
    monkeypatch.setattr(remote, "TIMEOUT", timedelta(seconds=0.3))
    monkeypatch.setattr(remote, "_stores", {})
    v = blockfs.open_volume(f"{faulty_server.url}/{INDEX}")
    faulty_server.slow(SHARD, 1.0)
    np.testing.assert_array_equal(v[...], expected)
    faulty_server.forget()
    faulty_server.slow(SHARD, 1.0, times=100)
    begin = time.monotonic()
    with pytest.raises(blockfs.RemoteReadError, match=rf"{faulty_server.url}/{SHARD}: the read failed .*kind: Timeout"):
        v.read_block(0, 24, 0)
    assert time.monotonic() - begin < 10
    assert faulty_server.count(SHARD) == 1 + remote.RETRIES


def test_a_truncated_shard_raises_a_corrupt_block_error_naming_its_url(served: Path, faulty_server: Faulty) -> None:
    write(served)
    faulty_server.truncate(SHARD, block_offset(served, (32, 0, 0)) + 10, times=100)
    v = blockfs.open_volume(f"{faulty_server.url}/{INDEX}")
    v.read_block(0, 0, 0)
    with pytest.raises(blockfs.CorruptBlockError, match=f"{faulty_server.url}/{SHARD}.*past the end of the shard"):
        v[...]


def test_a_missing_shard_or_index_is_not_found_naming_its_url(served: Path, faulty_server: Faulty) -> None:
    write(served)
    v = blockfs.open_volume(f"{faulty_server.url}/{INDEX}")
    (served / SHARD).unlink()
    with pytest.raises(blockfs.MissingShardError, match=f"{faulty_server.url}/{SHARD}"):
        v[...]
    with pytest.raises(FileNotFoundError, match=f"{faulty_server.url}/other.blockfs"):
        blockfs.open_volume(f"{faulty_server.url}/other.blockfs")


# --- a volume that changes on the server ------------------------------------------------------------------

def published(served: Path) -> np.ndarray:
    """``write(served)``, its index dated back so that its ETag changes when the volume is written again."""
    expected = write(served)
    date_back(served / INDEX)
    return expected


def test_a_volume_rewritten_before_its_first_read_raises_stale(served: Path, nginx_url: str) -> None:
    """The index, asked If-Match the ETag it had at the open, says the volume was rewritten on the server."""
    published(served)
    v = blockfs.open_volume(f"{nginx_url}/{INDEX}")
    write(served, seed=1, missing=set())
    with pytest.raises(blockfs.StaleVolumeError, match=f"{nginx_url}/{INDEX}: the volume was rewritten"):
        v[...]
    np.testing.assert_array_equal(blockfs.open_volume(f"{nginx_url}/{INDEX}")[...], volume_data(SHAPE, 1))


def test_a_volume_rewritten_after_a_read_raises_stale(served: Path, nginx_url: str) -> None:
    """With index pages cached, a rewritten volume's blocks no longer match them; the index asked again says why."""
    published(served)
    v = blockfs.open_volume(f"{nginx_url}/{INDEX}")
    v[0:2]  # the index page cached
    write(served, seed=1, missing=set())
    assert block_offset(served, (32, 0, 0)) != v.store.entry(v.entry_of(32, 0, 0))[0]
    with pytest.raises(blockfs.StaleVolumeError, match=f"{nginx_url}/{INDEX}: the volume was rewritten"):
        v.read_block(32, 0, 0)


def test_a_block_written_while_read_by_url_reads_as_cached_then_stale(served: Path, nginx_url: str) -> None:
    """A block written into a volume open by URL: the reader keeps the index as it cached it (the block reads as
    never written, the others as before); once the cache is dropped (close) the index's new ETag makes reads
    stale; opened again, the block reads as written."""
    expected = published(served)
    v = blockfs.open_volume(f"{nginx_url}/{INDEX}")
    np.testing.assert_array_equal(v[...], expected)
    block = np.full(BLOCK, 7, np.uint16)
    with blockfs.open_writable(served / INDEX) as w:
        w.write_block(block, 32, 24, 16)
    assert not v.read_block(32, 24, 16).any()
    np.testing.assert_array_equal(v[...], expected)
    v.close()  # drops the cached index pages
    with pytest.raises(blockfs.StaleVolumeError, match=f"{nginx_url}/{INDEX}: the volume was rewritten"):
        v.read_block(32, 24, 16)
    np.testing.assert_array_equal(blockfs.open_volume(f"{nginx_url}/{INDEX}").read_block(32, 24, 16), block)


# --- the tools ------------------------------------------------------------------------------------------

def test_info_and_check_of_a_url_say_what_they_say_of_the_files(served: Path, publish: Callable[[], str],
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    write(served)
    assert main(["info", "--json", str(served / INDEX)]) == 0
    local = json.loads(capsys.readouterr().out)
    url = f"{publish()}/{INDEX}"
    assert main(["info", "--json", url]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["blocks_written"] == local["blocks_written"] == 25
    assert [s["size"] for s in found["shards"]] == [s["size"] for s in local["shards"]]
    assert [s["path"] for s in found["shards"]] == [url + ".0"]
    assert main(["info", url]) == 0
    assert "written       25 of 27 blocks" in capsys.readouterr().out
    assert main(["check", url]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == f"{url}: healthy" and "shards were not scanned" in out


def test_check_of_a_url_with_a_damaged_block_fails(served: Path, nginx_url: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    write(served)
    at = block_offset(served, (0, 24, 0)) + 50
    data = bytearray((served / SHARD).read_bytes())
    data[at] ^= 0xFF
    (served / SHARD).write_bytes(bytes(data))
    assert main(["check", f"{nginx_url}/{INDEX}"]) != 0
    assert f"checksum: block (x=0, y=24, z=0), entry 3, {nginx_url}/{SHARD}" in capsys.readouterr().out


def test_tif_of_a_url_writes_the_planes(served: Path, nginx_url: str, tmp_path: Path) -> None:
    expected = write(served)
    assert main(["tif", "--silent", "--input", f"{nginx_url}/{INDEX}",
                 "--output-pattern", str(tmp_path / "tif" / "img_%04d.tiff")]) == 0
    planes = sorted((tmp_path / "tif").iterdir())
    assert len(planes) == SHAPE[0]
    np.testing.assert_array_equal(np.stack([tifffile.imread(p) for p in planes]), expected, strict=True)


def test_to_zarr_of_a_url_writes_what_zarr_reads(served: Path, publish: Callable[[], str], tmp_path: Path) -> None:
    zarr = require("zarr")
    expected = write(served)
    assert main(["to-zarr", "--silent", f"{publish()}/{INDEX}", str(tmp_path / "out.zarr")]) == 0
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "out.zarr" / "0", mode="r")[...], expected, strict=True)


def test_pyramid_of_a_url_builds_on_the_disk_as_of_the_files(served: Path, nginx_url: str, tmp_path: Path) -> None:
    """A pyramid built from a URL: level 1 the source's data, level 2 as built from the files on the disk."""
    expected = write(served)
    assert main(["pyramid", "--silent", "--levels", "2", "--n-workers", "1", f"{nginx_url}/{INDEX}",
                 str(tmp_path / "remote")]) == 0
    assert main(["pyramid", "--silent", "--levels", "2", "--n-workers", "1", str(served / INDEX),
                 str(tmp_path / "local")]) == 0
    built, reference = open_pyramid(tmp_path / "remote"), open_pyramid(tmp_path / "local")
    np.testing.assert_array_equal(built.levels[0][...], expected, strict=True)
    np.testing.assert_array_equal(built.levels[1][...], reference.levels[1][...], strict=True)
    assert built.info == reference.info
    level1 = tmp_path / "remote" / "1_1_1"
    assert blockfs.open_volume(level1 / "precomputed.blockfs").store.spec.shard_paths == (str(level1 / SHARD),)
    assert (level1 / SHARD).stat().st_ino != (served / SHARD).stat().st_ino, "downloaded, not linked to the files"
    assert not (tmp_path / "remote" / ".pyramid-build").exists()


def test_a_pyramid_at_a_url_opens_and_describes_as_on_the_disk(served: Path, nginx_url: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    levels = write_pyramid(served / "pyr", volume_data(SHAPE), BLOCK, 2)
    pyramid = open_pyramid(f"{nginx_url}/pyr")
    assert len(pyramid.levels) == 2
    for level, expected in zip(pyramid.levels, levels):
        np.testing.assert_array_equal(level[...], expected, strict=True)
    assert main(["info", f"{nginx_url}/pyr"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"pyramid       {nginx_url}/pyr\nlevels        2, uint16")
    assert "2_2_2        20 x 30 x 40 (z, y, x)" in out
