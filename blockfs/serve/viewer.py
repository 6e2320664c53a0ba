"""``view``: serve volumes with Neuroglancer's own web client from the same origin, and a state that shows them.

The client is the one bundled in the ``neuroglancer`` Python package, so viewing needs no internet.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import InvalidArgumentError
from ..ops.contrast import contrast
from . import IDLE_TIMEOUT
from .client import CLIENT_PATH
from .server import LOOPBACK, Server, start
from .volumes import ServedVolume


def neuroglancer_client() -> str:
    """The folder of the web client inside the installed ``neuroglancer`` package."""
    spec = importlib.util.find_spec("neuroglancer")
    locations = spec.submodule_search_locations if spec else None
    folder = os.path.join(locations[0], "static", "client") if locations else ""
    if not os.path.isfile(os.path.join(folder, "index.html")):
        raise InvalidArgumentError("blockfs view needs Neuroglancer's web client, which comes with the neuroglancer "
                                   "package: pip install 'blockfs[serve]' (or pip install neuroglancer).")
    return folder


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
