"""``blockfs serve`` and ``view`` of a volume at a URL: the local server passes the remote stored bytes through,
chunk for chunk as it serves the same files from the disk, and follows a volume rewritten on the server."""

from __future__ import annotations

import http.client
import itertools
import shutil
import time
from pathlib import Path

import numpy as np

from remote_servers import date_back, nginx_url, served  # noqa: F401 (fixtures)
from serve_support import BLOCK, SHAPE, volume_data, write_pyramid, write_volume

from blockfs.serve import Server, start, view


def get(server: Server, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("GET", f"{server.state.prefix}/{path}")
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def chunk_names(shape: tuple[int, int, int]) -> list[str]:
    """Every precomputed chunk name of a level of (z, y, x) ``shape`` in ``BLOCK``s."""
    ranges = [[(c, min(c + b, n)) for c in range(0, n, b)] for n, b in zip(shape[::-1], BLOCK[::-1])]
    return ["_".join(f"{a}-{b}" for a, b in xyz) for xyz in itertools.product(*ranges)]


def test_a_remote_pyramid_is_served_as_its_files_are(served: Path, nginx_url: str) -> None:
    """Every precomputed chunk, the info and the zarr metadata of a pyramid served from a URL are byte for byte
    those of the same pyramid served from the disk, missing blocks (zeros) included."""
    levels = write_pyramid(served / "pyr", volume_data(SHAPE), BLOCK, 2)
    with start(served / "pyr", names=["local"]) as local, start(f"{nginx_url}/pyr", names=["remote"]) as remote:
        for path in ["info", "zarr3/zarr.json", "zarr3/0/zarr.json", "zarr/.zattrs"]:
            answer = get(remote, f"remote/{path}")
            assert answer[0] == 200 and answer == get(local, f"local/{path}"), path
        statuses = []
        for k, level in enumerate(levels):
            key = f"{2 ** k}_{2 ** k}_{2 ** k}"
            for name in chunk_names(level.shape):
                status, body = get(remote, f"remote/{key}/{name}")
                assert (status, body) == get(local, f"local/{key}/{name}"), (key, name)
                statuses.append(status)
    assert len(statuses) > 20 and set(statuses) == {200}


def test_a_volume_rewritten_on_the_server_is_served_anew(served: Path, nginx_url: str) -> None:
    """The server looks at the remote index's ETag: once the volume is replaced there, its chunks are the new ones."""
    data = volume_data(SHAPE)
    write_volume(served / "vol.blockfs", data, BLOCK, missing=set(), records=True)
    date_back(served / "vol.blockfs")
    with start(f"{nginx_url}/vol.blockfs") as server:
        status, before = get(server, "vol/1_1_1/0-32_0-24_0-16")
        assert status == 200 and np.array_equal(np.frombuffer(before, np.uint16).reshape(BLOCK), data[:16, :24, :32])
        other = served / "other"
        other.mkdir()
        write_volume(other / "vol.blockfs", data + 7, BLOCK, missing=set(), records=True)
        for name in ["vol.blockfs.0", "vol.blockfs"]:  # the shard first, then the index, as a publisher would
            shutil.copyfile(other / name, served / f".{name}.new")
            (served / f".{name}.new").rename(served / name)
        deadline = time.monotonic() + 10
        while True:
            status, after = get(server, "vol/1_1_1/0-32_0-24_0-16")
            if (status == 200 and after != before) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert status == 200
        assert np.array_equal(np.frombuffer(after, np.uint16).reshape(BLOCK), data[:16, :24, :32] + 7)


def test_view_shows_a_remote_pyramid_with_the_contrast_of_its_finest_level(served: Path,
                                                                          nginx_url: str) -> None:
    """``view`` of a URL opens as of a local folder: the same layer state, contrast included."""
    write_pyramid(served / "pyr", volume_data(SHAPE), BLOCK, 2)
    states = []
    for path in [served / "pyr", f"{nginx_url}/pyr"]:
        server, url = view([path], names=["pyr"])
        with server:
            assert url.startswith(server.url)
            assert server.state.viewer is not None
            states.append(server.state.viewer.state)
    layers = [state["layers"][0] for state in states]
    assert layers[0]["shaderControls"] == layers[1]["shaderControls"]
    assert layers[0]["shaderControls"]["normalized"]["range"][1] > 1000
    assert states[0]["dimensions"] == states[1]["dimensions"]
