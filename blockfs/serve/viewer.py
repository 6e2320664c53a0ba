"""``view``: serve volumes with Neuroglancer's own web client from the same origin, and a state that shows them.

The client is the one bundled in the ``neuroglancer`` Python package, so viewing needs no internet.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Iterable, Sequence

import numpy as np

from ..directory import Directory
from ..errors import InvalidArgumentError
from .client import CLIENT_PATH
from . import IDLE_TIMEOUT
from .server import LOOPBACK, Server, start
from .volumes import ServedVolume

#: Blocks read to choose the contrast (along the grid's diagonal of the coarsest level).
SAMPLE_BLOCKS = 8


def neuroglancer_client() -> str:
    """The folder of the web client inside the installed ``neuroglancer`` package."""
    spec = importlib.util.find_spec("neuroglancer")
    locations = spec.submodule_search_locations if spec else None
    folder = os.path.join(locations[0], "static", "client") if locations else ""
    if not os.path.isfile(os.path.join(folder, "index.html")):
        raise InvalidArgumentError("blockfs view needs Neuroglancer's web client, which comes with the neuroglancer "
                                   "package: pip install 'blockfs[serve]' (or pip install neuroglancer).")
    return folder


def contrast(volume: Directory) -> tuple[float, float]:
    """A display range from a few blocks on the grid's diagonal: 0.5 and 99.5 percentiles of the non-zero voxels."""
    grid = volume.layout.grid
    steps = min(SAMPLE_BLOCKS, max(grid))
    samples = []
    for i in range(steps):
        z, y, x = (int(round(i * (n - 1) / max(1, steps - 1))) * b for n, b in zip(grid, volume.layout.block_shape))
        block = volume.read_block(x, y, z)
        samples.append(block[block != 0].ravel())
    values = np.concatenate(samples)
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    return lo, hi if hi > lo else lo + 1


def viewer_state(url: str, volumes: Sequence[ServedVolume]) -> dict[str, Any]:
    """A Neuroglancer state with one image layer per volume (its zarr route), centred on the first."""
    first = volumes[0]
    dimensions = {axis: [size * 1e-6, "m"] for axis, size in zip("xyz", first.voxel_size_um)}
    z, y, x = first.levels[0].shape
    layers = [{"type": "image", "name": v.name, "source": f"zarr://{url}/{v.name}/zarr/",
               "shaderControls": {"normalized": {"range": list(contrast(v.levels[-1]))}}} for v in volumes]
    return {"dimensions": dimensions, "position": [x / 2, y / 2, z / 2], "layers": layers,
            "selectedLayer": {"layer": first.name}, "layout": "4panel"}


def viewer_url(server: Server) -> str:
    """Give the served client :func:`viewer_state`; return the URL that opens it."""
    session = server.state.viewer
    if session is None:
        raise InvalidArgumentError(f"{server.url}: this server does not serve the Neuroglancer client; "
                                   "start it with blockfs.serve.view().")
    session.set(viewer_state(server.url, list(server.state.volumes.values())))
    return server.url + CLIENT_PATH


def view(paths: Iterable[str | os.PathLike] | str | os.PathLike, port: int = 0, host: str = LOOPBACK,
         names: Sequence[str | None] | None = None, token: bool = True, idle_timeout: float = IDLE_TIMEOUT,
         max_connections: int | None = None) -> tuple[Server, str]:
    """Serve volumes and the Neuroglancer client as :func:`start` does; the server and the URL that shows them."""
    server = start(paths, port=port, host=host, names=names, client_folder=neuroglancer_client(), token=token,
                   idle_timeout=idle_timeout, max_connections=max_connections)
    try:
        return server, viewer_url(server)
    except BaseException:
        server.close()
        raise
