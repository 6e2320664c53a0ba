"""``view``: serve volumes with Neuroglancer's own web client from the same origin, and a state that shows them.

The client is the one bundled in the ``neuroglancer`` Python package, so viewing needs no internet.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ..volume import Volume
from . import IDLE_TIMEOUT
from .client import CLIENT_PATH
from .server import LOOPBACK, Server, start
from .volumes import ServedVolume

#: Blocks read per axis to choose the contrast: at most 3 x 3 x 3 level-1 blocks, spread over the volume.
SAMPLE_SPREAD = 3
#: Percentiles of the sampled non-zero voxels that make the display range.
PERCENTILES = (0.5, 99.9)


def neuroglancer_client() -> str:
    """The folder of the web client inside the installed ``neuroglancer`` package."""
    spec = importlib.util.find_spec("neuroglancer")
    locations = spec.submodule_search_locations if spec else None
    folder = os.path.join(locations[0], "static", "client") if locations else ""
    if not os.path.isfile(os.path.join(folder, "index.html")):
        raise InvalidArgumentError("blockfs view needs Neuroglancer's web client, which comes with the neuroglancer "
                                   "package: pip install 'blockfs[serve]' (or pip install neuroglancer).")
    return folder


def sample_origins(volume: Volume) -> list[tuple[int, int, int]]:
    """First voxels (x, y, z) of the blocks :func:`contrast` reads: the centres of a lattice of
    :data:`SAMPLE_SPREAD` cells per axis over the block grid (fewer along a short axis)."""
    z, y, x = ([b * (int((i + 0.5) * n / SAMPLE_SPREAD)) for i in range(min(SAMPLE_SPREAD, n))]
               for n, b in zip(volume.layout.grid, volume.layout.block_shape))
    return [(bx, by, bz) for bz in z for by in y for bx in x]


def contrast(volume: Volume) -> tuple[float, float]:
    """A display range from a bounded sample of blocks (:func:`sample_origins`) of ``volume``, the finest
    level: the :data:`PERCENTILES` of their non-zero voxels."""
    samples = [block[block != 0].ravel() for block in (volume.read_block(*o) for o in sample_origins(volume))]
    values = np.concatenate(samples)
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, PERCENTILES))
    return lo, hi if hi > lo else lo + 1


def viewer_state(url: str, volumes: Sequence[ServedVolume], display_range: tuple[float, float] | None = None
                 ) -> dict[str, Any]:
    """A Neuroglancer state with one image layer per volume (its zarr route), centred on the first; each
    layer's display range is ``display_range`` (low, high), else :func:`contrast` of its finest level."""
    first = volumes[0]
    dimensions = {axis: [size * 1e-6, "m"] for axis, size in zip("xyz", first.voxel_size_um)}
    z, y, x = first.levels[0].shape
    layers = [{"type": "image", "name": v.name, "source": f"zarr://{url}/{v.name}/zarr/",
               "shaderControls": {"normalized": {"range": list(display_range or contrast(v.levels[0]))}}}
              for v in volumes]
    return {"dimensions": dimensions, "position": [x / 2, y / 2, z / 2], "layers": layers,
            "selectedLayer": {"layer": first.name}, "layout": "4panel"}


def viewer_url(server: Server, display_range: tuple[float, float] | None = None) -> str:
    """Give the served client :func:`viewer_state` with ``display_range``; return the URL that opens it."""
    session = server.state.viewer
    if session is None:
        raise InvalidArgumentError(f"{server.url}: this server does not serve the Neuroglancer client; "
                                   "start it with blockfs.serve.view().")
    session.set(viewer_state(server.url, list(server.state.volumes.values()), display_range))
    return server.url + CLIENT_PATH


def view(paths: Iterable[str | os.PathLike] | str | os.PathLike, port: int = 0, host: str = LOOPBACK,
         names: Sequence[str | None] | None = None, token: bool = True, idle_timeout: float = IDLE_TIMEOUT,
         max_connections: int | None = None, display_range: tuple[float, float] | None = None
         ) -> tuple[Server, str]:
    """Serve volumes and the Neuroglancer client as :func:`start` does; the server and the URL that shows them
    (with the display range ``display_range``, low and high, else one chosen by :func:`contrast`)."""
    server = start(paths, port=port, host=host, names=names, client_folder=neuroglancer_client(), token=token,
                   idle_timeout=idle_timeout, max_connections=max_connections)
    try:
        return server, viewer_url(server, display_range)
    except BaseException:
        server.close()
        raise
