"""What the napari tests share: a headless X display (Xvfb, with Mesa's software OpenGL) and one napari viewer."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import require, unavailable

#: napari 0.9 and npe2 0.10 define their models with pydantic 1 idioms, for which pydantic 2 raises
#: PydanticDeprecatedSince20 (a DeprecationWarning) as they are imported, from these packages' modules.
NAPARI_IMPORT_WARNINGS = [pytest.mark.filterwarnings(r"ignore::DeprecationWarning:(pydantic|napari|npe2)\..*")]


@pytest.fixture(scope="session")
def display(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """An X display for Qt: a private Xvfb unless one is set; napari's settings in a temporary folder.
    Yields the environment variables that point at both."""
    settings = {"NAPARI_CONFIG": str(tmp_path_factory.mktemp("napari") / "settings.yaml"), "QT_QPA_PLATFORM": "xcb"}
    if os.environ.get("DISPLAY"):
        with pytest.MonkeyPatch.context() as patch:
            for key, value in settings.items():
                patch.setenv(key, value)
            yield {**settings, "DISPLAY": os.environ["DISPLAY"]}
        return
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        unavailable("Xvfb is not installed (Debian package xvfb); make install sets it up")
    read, write = os.pipe()
    server = subprocess.Popen([xvfb, "-displayfd", str(write), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                              pass_fds=(write,), stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as answer:
        number = answer.readline().strip()
    try:
        assert number, "Xvfb did not start"
        with pytest.MonkeyPatch.context() as patch:
            for key, value in {**settings, "DISPLAY": f":{number}"}.items():
                patch.setenv(key, value)
            yield {**settings, "DISPLAY": f":{number}"}
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture(scope="module")
def viewer(display: dict[str, str]) -> Iterator[Any]:
    """A shown napari viewer (a hidden one draws nothing to screenshot), emptied after each use."""
    napari = require("napari")
    shown = napari.Viewer(show=True, title="blockfs tests")
    try:
        yield shown
    finally:
        shown.close()


def screenshot(viewer: Any, path: Path | None = None) -> Any:
    """The canvas as an RGB array, after napari has drawn the layers; saved as a PNG at ``path`` if given."""
    viewer.reset_view()
    image = viewer.screenshot(path=None if path is None else str(path), canvas_only=True, flash=False)
    return image[..., :3]
