"""Neuroglancer in headless Chromium draws served volumes: the expected slice, no errors, coarser levels;
and a page of another origin can neither read them nor change the viewer's state.

The volume is bright (3000) left of x = 384, dark (500) right of it, with one never-written block just
up and left of the centre of the view (reads as 0). Every URL is the server's, with its token. Every
wait is bounded; a screenshot that does not come (Neuroglancer waits for every chunk) fails the test
instead of hanging it.
"""

from __future__ import annotations

import functools
import http.server
import io
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest

from helpers import require
from serve_support import write_pyramid

from blockfs.serve import start, view

SHAPE = (32, 256, 768)  # z, y, x
BLOCK = (16, 32, 32)
MISSING = {(1, 3, 11)}  # z 16-32, y 96-128, x 352-384: up and left of the centre (y 128, x 384)
BRIGHT, DARK = 3000, 500
CHROMIUM = "/usr/bin/chromium"
TIMEOUT = 60


def require_browser() -> Any:
    """neuroglancer's webdriver module, with selenium and Chromium present (else skip, or fail under CI)."""
    require("selenium")
    webdriver = require("neuroglancer.webdriver")
    if not (os.path.exists(CHROMIUM) and shutil.which("chromedriver")):
        message = "Chromium and chromedriver are not installed (Debian: chromium chromium-driver); make install does"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    os.environ["SE_OFFLINE"] = "true"  # selenium must not try to download a browser
    return webdriver


def within(seconds: float, function: Callable[[], Any]) -> Any:
    """``function()`` in a daemon thread; fail if it has not returned after ``seconds``."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(function())
        except BaseException as exc:  # handed to the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"no answer from the browser within {seconds} s", pytrace=False)
    if errors:
        raise errors[0]
    return result[0]


def pixels(png: bytes, keep: Path) -> np.ndarray:
    """A screenshot as a (height, width) array of grey levels; the PNG is kept in ``keep`` to look at."""
    image = require("PIL.Image")
    keep.write_bytes(png)
    return np.asarray(image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = np.full(SHAPE, DARK, np.uint16)
    data[:, :, :SHAPE[2] // 2] = BRIGHT
    root = tmp_path_factory.mktemp("browser") / "brain"
    write_pyramid(root, data, BLOCK, 4, voxel_size_um=(1.0, 1.0, 1.0), missing=MISSING)
    return root


def chunk_requests(server: Any, name: str, route: str) -> dict[int, int]:
    """Chunks requested so far, by level."""
    return {level: n for (served, kind, level), n in server.state.requests.items()
            if served == name and kind == route}


def settled_requests(server: Any, name: str, route: str, quiet: float = 1.0) -> dict[int, int]:
    """:func:`chunk_requests` once no request has come for ``quiet`` seconds: Neuroglancer may still be
    fetching (and prefetching) when its screenshot returns."""
    deadline = time.monotonic() + TIMEOUT
    counts = chunk_requests(server, name, route)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = chunk_requests(server, name, route)
        if now == counts:
            return counts
        counts = now
    raise AssertionError(f"Neuroglancer was still requesting chunks after {TIMEOUT} s: {counts}")


@pytest.mark.parametrize("route", ["zarr", "precomputed"])
def test_neuroglancer_draws_the_slice_and_fetches_coarser_levels_when_zoomed_out(pyramid: Path, route: str,
                                                                                  tmp_path: Path) -> None:
    webdriver = require_browser()
    neuroglancer = require("neuroglancer")
    neuroglancer.set_server_bind_address("127.0.0.1")
    messages: list[Any] = []
    with start(pyramid) as server:
        viewer = neuroglancer.Viewer()
        # Neuroglancer's own server is another origin: it reads ours with the URLs `blockfs serve` prints.
        source = f"zarr://{server.url}/brain/zarr/" if route == "zarr" else f"precomputed://{server.url}/brain"
        assert server.token and server.token in source
        with viewer.txn() as s:
            s.dimensions = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="µm", scales=[1, 1, 1])
            s.layers["brain"] = neuroglancer.ImageLayer(
                source=source, shader="#uicontrol invlerp normalized(range=[0, 4000])\n"
                                      "void main() { emitGrayscale(normalized()); }")
            s.position = [SHAPE[2] / 2, SHAPE[1] / 2, 24]
            s.layout = "xy"
            s.cross_section_scale = 0.25  # 4 pixels per voxel
        driver = within(TIMEOUT, lambda: webdriver.Webdriver(viewer, headless=True, docker=True,
                                                             browser_binary_path=CHROMIUM, print_logs=False))
        try:
            driver.add_log_listener(messages.append)
            shot = pixels(within(TIMEOUT, lambda: viewer.screenshot(size=[400, 300]).screenshot.image),
                          tmp_path / f"{route}.png")
            zoomed_in = settled_requests(server, "brain", route)
            with viewer.txn() as s:
                s.cross_section_scale = 8.0  # the whole volume in 96 pixels
            within(TIMEOUT, lambda: viewer.screenshot(size=[400, 300]))
            zoomed_out = settled_requests(server, "brain", route)
        finally:
            driver.__exit__(None, None, None)

    assert shot.shape == (300, 400)
    # Centre (200, 150) is voxel (x 384, y 128); 4 pixels per voxel; contrast 0..4000 -> 0..255.
    missing = shot[70:140, 120:190]    # voxels x 350-377, y 108-125: the never-written block
    bright = shot[160:230, 120:190]    # voxels x 350-377, y 130-148
    dark = shot[40:260, 210:380]       # voxels x 387-429
    assert abs(bright.mean() - BRIGHT / 4000 * 255) < 8 and bright.std() < 4, (bright.mean(), bright.std())
    assert abs(dark.mean() - DARK / 4000 * 255) < 8 and dark.std() < 4, (dark.mean(), dark.std())
    assert missing.mean() < 4, missing.mean()
    errors = [m.text for m in messages if m.level == "error"]
    assert not errors, errors
    assert zoomed_in.get(0, 0) > 0, zoomed_in
    coarser = {level: n - zoomed_in.get(level, 0) for level, n in zoomed_out.items() if level > 0}
    assert any(n > 0 for n in coarser.values()), (zoomed_in, zoomed_out)
    assert zoomed_out.get(0, 0) == zoomed_in.get(0, 0), "zoomed out, Neuroglancer still fetched full-resolution chunks"


def test_blockfs_view_serves_neuroglancer_that_shows_the_volume(pyramid: Path, tmp_path: Path) -> None:
    webdriver = require_browser()
    messages: list[Any] = []
    server, url = view(pyramid)
    with server:
        assert server.token and url.startswith(f"{server.origin}/{server.token}/")
        assert server.state.viewer is not None
        state = server.state.viewer.state
        lo, hi = state["layers"][0]["shaderControls"]["normalized"]["range"]
        assert lo == pytest.approx(DARK, abs=1) and hi == pytest.approx(BRIGHT, abs=1)
        state["layout"], state["crossSectionScale"] = "xy", 0.25
        server.state.viewer.set(state)
        driver = within(TIMEOUT, lambda: webdriver.WebdriverBase(headless=True, docker=True, print_logs=False,
                                                                 browser_binary_path=CHROMIUM, window_size=(800, 600)))
        try:
            driver.add_log_listener(messages.append)
            within(TIMEOUT, lambda: driver.driver.get(url))
            deadline = time.monotonic() + TIMEOUT
            while True:  # until the slice is drawn: bright left of the centre, black right of it
                shot = pixels(within(TIMEOUT, driver.driver.get_screenshot_as_png), tmp_path / "view.png")
                height, width = shot.shape
                row = shot[height // 2 + 40: height // 2 + 100]
                left, right = row[:, width // 2 - 100: width // 2 - 20], row[:, width // 2 + 20: width // 2 + 100]
                if left.mean() > 250 and right.mean() < 5 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            generation = server.state.viewer.generation
            within(TIMEOUT, lambda: driver.driver.execute_script('window.viewer.layout.restoreState("xz")'))
            changed = wait_for(lambda: server.state.viewer.state.get("layout") == "xz")
        finally:
            driver.__exit__(None, None, None)
        zarr_chunks = chunk_requests(server, "brain", "zarr")
    assert left.mean() > 250 and right.mean() < 5, (left.mean(), right.mean())
    assert changed and server.state.viewer.generation > generation, "the client's own state change was refused"
    assert zarr_chunks.get(0, 0) > 0, zarr_chunks
    errors = [m.text for m in messages if m.level == "error"]
    assert not errors, errors


def wait_for(check: Callable[[], bool]) -> bool:
    """Whether ``check()`` holds within :data:`TIMEOUT` seconds (tried every 0.2 s)."""
    deadline = time.monotonic() + TIMEOUT
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def other_origin(tmp_path: Path) -> Iterator[str]:
    """A second web server on 127.0.0.1 (another port, so another origin) serving an empty page: its URL."""
    (tmp_path / "page.html").write_text("<!doctype html><title>another site</title>")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(tmp_path)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/page.html"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(TIMEOUT)


#: Run in the other origin's page: what its fetches of the server get (status and the start of the body).
CROSS_ORIGIN_SCRIPT = """
const [server, prefix, done] = arguments;
const state = JSON.stringify({s: {layout: "3d", layers: []}});
const firstBytes = async (response) => {  // of a body that may be an endless event stream
  const reader = response.body.getReader();
  const timeout = new Promise((resolve) => setTimeout(() => resolve({value: new Uint8Array()}), 2000));
  const {value} = await Promise.race([reader.read(), timeout]);
  reader.cancel();
  return new TextDecoder().decode(value || new Uint8Array()).slice(0, 60);
};
const outcome = async (request) => {
  try {
    const response = await request();
    return response.type === "opaque" ? "opaque" : `${response.status} ${await firstBytes(response)}`;
  } catch (error) {
    return `refused: ${error}`;
  }
};
(async () => {
  const results = {};
  for (const path of ["/", "/brain/info", "/brain/zarr/.zattrs", "/brain/zarr/0/0.0.0", "/brain/1_1_1/0-32_0-32_0-16",
                      "/v/blockfs/", "/events/blockfs"]) {
    results[`GET ${path}`] = await outcome(() => fetch(server + path));
  }
  results["GET with the token"] = await outcome(() => fetch(server + prefix + "/brain/info"));
  for (const path of ["/state/blockfs", prefix + "/state/blockfs"]) {
    results[`POST text ${path}`] = await outcome(() => fetch(server + path, {
      method: "POST", mode: "no-cors", body: state}));
    results[`POST json ${path}`] = await outcome(() => fetch(server + path, {
      method: "POST", headers: {"Content-Type": "application/json"}, body: state}));
  }
  done(results);
})();
"""


def test_a_page_of_another_origin_can_neither_read_a_chunk_nor_change_the_state(pyramid: Path,
                                                                                 other_origin: str) -> None:
    webdriver = require_browser()
    server, _ = view(pyramid)
    with server:
        session = server.state.viewer
        assert session is not None
        generation, state = session.generation, dict(session.state)
        driver = within(TIMEOUT, lambda: webdriver.WebdriverBase(headless=True, docker=True, print_logs=False,
                                                                 browser_binary_path=CHROMIUM, window_size=(400, 300)))
        try:
            driver.driver.set_script_timeout(TIMEOUT)
            within(TIMEOUT, lambda: driver.driver.get(other_origin))
            origin = f"http://127.0.0.1:{server.port}"
            results = within(TIMEOUT, lambda: driver.driver.execute_async_script(
                CROSS_ORIGIN_SCRIPT, origin, urlsplit(server.url).path))
        finally:
            driver.__exit__(None, None, None)
        assert results["GET with the token"].startswith("200 "), results  # the page can reach the server
        reads = {k: v for k, v in results.items() if k.startswith("GET /")}
        assert all(v.startswith("403 ") for v in reads.values()), reads
        assert session.generation == generation and session.state == state, session.state
        posts = {k: v for k, v in results.items() if k.startswith("POST json")}
        assert all(v.startswith(("refused", "403 ")) for v in posts.values()), posts
