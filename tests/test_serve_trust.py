"""What the server may be trusted with, on real servers over loopback: volumes replaced or deleted
under it, sockets that send nothing under a low descriptor limit, URLs and bodies it cannot read,
failures that must not show its files, requests without its token or from other origins, Ctrl-C.

Every path is built from ``server.url`` (which carries the token), so the same test reads any
version of the server and fails on the behaviour, not on a missing name.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import blosc
import numpy as np
import pytest

from serve_support import BLOCK, SHAPE, server, volume, volume_data, write_pyramid, write_volume  # noqa: F401 (fixtures)

from blockfs import Directory
from blockfs.serve import Server, start, view

ROOT = Path(__file__).resolve().parent.parent
#: Seconds within which a replaced or deleted volume must be noticed (the server looks every 0.5 s).
NOTICE = 5.0


def base(server: Server) -> str:
    """The path every served URL starts with: the token's segment (or nothing)."""
    return urlsplit(server.url).path.rstrip("/")


def request(port: int, path: str, method: str = "GET", headers: dict | None = None, body: bytes | None = None
            ) -> tuple[http.client.HTTPResponse, bytes]:
    """One request on a fresh connection, ``path`` sent exactly as given."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response, response.read()
    finally:
        connection.close()


def get(server: Server, path: str, headers: dict | None = None) -> tuple[http.client.HTTPResponse, bytes]:
    """GET ``path`` under the server's URL."""
    return request(server.port, base(server) + path, headers=headers)


def decode(body: bytes) -> np.ndarray:
    return np.frombuffer(blosc.decompress(body), np.uint16).reshape(BLOCK)


def eventually(seconds: float, check: Callable[[], bool]) -> bool:
    """Whether ``check()`` holds within ``seconds`` (tried every 0.1 s)."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


# -- 7: a volume replaced or deleted under the server ---------------------------------------------------


def replace(path: Path, shape: tuple[int, int, int], value: int) -> None:
    """Directory(...).create() over ``path`` (a new index by rename, new empty shards), then two blocks of ``value``."""
    d = Directory(shape[2], shape[1], shape[0], np.uint16, str(path), x_block_size=BLOCK[2], y_block_size=BLOCK[1],
                  z_block_size=BLOCK[0]).create()
    d.write_block(np.full(BLOCK, value, np.uint16), 0, 0, 0)
    d.write_block(np.full((8, 12, 32), value, np.uint16), 64, 48, 32)  # the edge block (2, 2, 2), x 96 wide
    d.close()


def test_a_replaced_volume_is_served_anew_and_a_deleted_one_is_404(server: Server, volume: Path) -> None:
    first, old_body = get(server, "/vol/zarr/0/0.0.0")
    edge, old_edge = get(server, "/vol/zarr/0/2.2.2")  # an edge block: re-encoded once, then cached
    assert first.status == 200 and edge.status == 200 and get(server, "/vol/zarr/0/0.0.1")[0].status == 200
    replace(volume, (40, 60, 96), 7)

    def size() -> list[int]:
        return json.loads(get(server, "/vol/info")[1])["scales"][0]["size"]

    assert eventually(NOTICE, lambda: size() == [96, 60, 40]), "the server still serves the volume that was replaced"
    again, body = get(server, "/vol/zarr/0/0.0.0", {"If-None-Match": first.headers["ETag"]})
    assert again.status == 200 and again.headers["ETag"] != first.headers["ETag"] and (decode(body) == 7).all()
    raw = get(server, "/vol/1_1_1/0-32_0-24_0-16")[1]
    assert (np.frombuffer(raw, np.uint16) == 7).all()
    edge_again, edge_body = get(server, "/vol/zarr/0/2.2.2", {"If-None-Match": edge.headers["ETag"]})
    assert edge_again.status == 200 and edge_body != old_edge
    assert (decode(edge_body)[:8, :12] == 7).all()
    assert get(server, "/vol/zarr/0/0.0.1")[0].status == 404, "a block of the old volume was served"

    for path in [volume, *volume.parent.glob("vol.blockfs.*")]:
        path.unlink()
    paths = ["/vol/info", "/vol/zarr/.zattrs", "/vol/zarr/0/0.0.0", "/vol/zarr3/0/c/0/0/0", "/vol/1_1_1/0-32_0-24_0-16"]
    assert eventually(NOTICE, lambda: all(get(server, p)[0].status == 404 for p in paths)), \
        [(p, get(server, p)[0].status) for p in paths]
    assert "vol" not in json.loads(get(server, "/")[1])


def test_a_block_read_just_after_a_replacement_is_never_the_old_volumes(server: Server, volume: Path) -> None:
    """Before the server looks again, a block in a shard it has not opened yet belongs to the new volume:
    the answer is a 503 to retry (or, if it looked meanwhile, the new block), never old bytes or a 500."""
    assert get(server, "/vol/zarr/0/0.0.0")[0].status == 200  # the index and shard 0 are open
    z, y, x = SHAPE
    with Directory(x, y, z, np.uint16, str(volume), x_block_size=BLOCK[2], y_block_size=BLOCK[1],
                   z_block_size=BLOCK[0]).create() as d:
        d[:, :, :] = np.full(SHAPE, 7, np.uint16)
    response, body = get(server, "/vol/zarr/0/0.1.0")  # entry 3: in shard 1, not opened before
    assert response.status == 503 or response.status == 200 and (decode(body) == 7).all(), response.status
    if response.status == 503:
        assert response.headers["Retry-After"] == "1"
    again, body = get(server, "/vol/zarr/0/0.1.0")
    assert again.status == 200 and (decode(body) == 7).all()


def test_a_deleted_pyramid_is_404_until_one_is_written_again(tmp_path: Path) -> None:
    root = tmp_path / "pyr"
    write_pyramid(root, volume_data(SHAPE), BLOCK, 2)
    with start(root) as server:
        assert get(server, "/pyr/zarr/1/0.0.0")[0].status == 200
        shutil.rmtree(root)
        assert eventually(NOTICE, lambda: get(server, "/pyr/zarr/1/0.0.0")[0].status == 404)
        assert get(server, "/pyr/info")[0].status == 404
        write_pyramid(root, volume_data(SHAPE, seed=3) + 5000, BLOCK, 2, missing=set())
        assert eventually(NOTICE, lambda: get(server, "/pyr/zarr/1/0.0.0")[0].status == 200)
        assert (decode(get(server, "/pyr/zarr/0/1.1.1")[1]) >= 5000).all()


# -- 10: idle sockets under a low descriptor limit ----------------------------------------------------

#: RLIMIT_NOFILE of the server process, and the idle sockets the test opens against it.
DESCRIPTORS, IDLE_SOCKETS = 256, 400


def run_cli(args: list[str], stderr: int | object = subprocess.PIPE, limit: int | None = None) -> subprocess.Popen:
    """``python -m blockfs.cli <args>`` from this checkout, with at most ``limit`` open files."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))

    def set_limit() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return subprocess.Popen([sys.executable, "-m", "blockfs.cli", *args], stdout=subprocess.PIPE, stderr=stderr,
                            text=True, env=env, preexec_fn=set_limit)


def served_at(process: subprocess.Popen) -> tuple[int, str]:
    """(port, path of the served URL) from the "serving at" line (bounded: 20 lines, 60 s)."""
    timer = threading.Timer(60, process.kill)
    timer.start()
    try:
        for _ in range(20):
            match = re.search(r"serving at http://127\.0\.0\.1:([0-9]+)(\S*)", process.stdout.readline())
            if match:
                return int(match.group(1)), match.group(2).rstrip("/")
    finally:
        timer.cancel()
    pytest.fail("the server printed no 'serving at' line", pytrace=False)


def stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait(60)
    process.stdout.close()
    if process.stderr is not None:
        process.stderr.close()


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the other end has closed ``sock`` (a look that does not wait)."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:  # open, nothing to read
        return False
    except ConnectionResetError:
        return True


class IdleSockets:
    """Opens sockets to a port that send nothing, in a thread, until ``count`` are open or 20 s have passed."""

    def __init__(self, port: int, count: int):
        self.port, self.count = port, count
        self.sockets: list[socket.socket] = []
        self.thread = threading.Thread(target=self._open, daemon=True)
        self.thread.start()

    def _open(self) -> None:
        deadline = time.monotonic() + 20
        while len(self.sockets) < self.count and time.monotonic() < deadline:
            try:
                self.sockets.append(socket.create_connection(("127.0.0.1", self.port), timeout=1))
            except OSError:
                pass

    def close(self) -> None:
        self.thread.join(30)
        for sock in self.sockets:
            sock.close()


@pytest.mark.parametrize("extra", [[], ["--max-connections", "1000"]], ids=["default-cap", "cap-above-descriptors"])
def test_idle_sockets_are_dropped_and_clients_answered_under_a_low_descriptor_limit(
        volume: Path, tmp_path: Path, extra: list[str]) -> None:
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] > IDLE_SOCKETS + 64, "the test process needs descriptors"
    log = tmp_path / "server.log"
    with open(log, "w") as stderr:
        process = run_cli(["serve", str(volume), "--port", "0", *extra], stderr=stderr, limit=DESCRIPTORS)
    try:
        port, prefix = served_at(process)
        idle = IdleSockets(port, IDLE_SOCKETS)
        try:
            assert eventually(20, lambda: len(idle.sockets) >= IDLE_SOCKETS // 2), len(idle.sockets)
            times = []
            for i in range(20):  # while the idle sockets keep coming
                began = time.monotonic()
                response, body = request(port, f"{prefix}/vol/zarr/0/0.0.{i % 3}")
                times.append(time.monotonic() - began)
                assert response.status == 200 and body, (i, response.status)
            assert max(times) < 3, times
            idle.thread.join(30)
            opened = len(idle.sockets)
            assert opened == IDLE_SOCKETS, f"only {opened} connections could be opened"
            assert eventually(10, lambda: all(closed_by_peer(s) for s in idle.sockets)), \
                f"{sum(not closed_by_peer(s) for s in idle.sockets)} of {opened} idle sockets still open after 10 s"
            response, _ = request(port, f"{prefix}/vol/info")
            assert response.status == 200
        finally:
            idle.close()
    finally:
        stop(process)
    text = log.read_text()
    assert len(text) < 2000 and len(text.splitlines()) <= 4 and "Traceback" not in text, text[:2000]


def test_a_trickled_head_and_an_idle_keep_alive_connection_are_closed_after_the_idle_timeout(volume: Path) -> None:
    with start(volume, idle_timeout=1) as server:
        kept = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        kept.request("GET", base(server) + "/vol/info")
        assert kept.getresponse().read()
        trickle = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        began = time.monotonic()
        for byte in f"GET {base(server)}/vol/info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".encode():
            if closed_by_peer(trickle) or time.monotonic() - began > 5:
                break
            trickle.setblocking(True)
            try:
                trickle.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.05)
        assert eventually(3, lambda: closed_by_peer(trickle)), "a client trickling its head was never dropped"
        assert time.monotonic() - began < 3
        assert closed_by_peer(kept.sock), "an idle keep-alive connection was not closed after the timeout"
        trickle.close()
        kept.close()


def open_stream(port: int, path: str) -> http.client.HTTPConnection:
    """A GET of the viewer's event stream, left open: a connection busy with its request."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", path)
    assert connection.getresponse().status == 200
    return connection


def test_at_the_cap_the_idle_connection_makes_room_and_busy_ones_are_kept(volume: Path) -> None:
    server, url = view(volume, max_connections=2)
    with server:
        events = urlsplit(url).path.replace("/v/blockfs/", "/events/blockfs")
        first = open_stream(server.port, events)
        idle = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        assert not eventually(0.5, lambda: closed_by_peer(idle))
        response, _ = get(server, "/vol/info")  # the third: the idle one is closed to make room
        assert response.status == 200 and eventually(5, lambda: closed_by_peer(idle))
        second = open_stream(server.port, events)
        response, _ = get(server, "/vol/info")  # both open ones are answering: nothing to close
        assert response.status == 503 and response.headers["Retry-After"] == "1"
        assert not closed_by_peer(first.sock) and not closed_by_peer(second.sock)
        for connection in (first, second):
            connection.close()
        idle.close()
        assert eventually(5, lambda: get(server, "/vol/info")[0].status == 200)


def test_ctrl_c_stops_serve_at_once_with_status_130(volume: Path) -> None:
    process = run_cli(["serve", str(volume), "--port", "0"])
    try:
        port, prefix = served_at(process)
        idle = socket.create_connection(("127.0.0.1", port), timeout=5)  # open connections must not hold it up
        keep_alive = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        keep_alive.request("GET", f"{prefix}/vol/info")
        keep_alive.getresponse().read()
        began = time.monotonic()
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 130
        assert time.monotonic() - began < 5
        idle.close()
        keep_alive.close()
    finally:
        stop(process)


# -- 13: URLs and bodies the server cannot read are 4xx ------------------------------------------------

HUGE = "9" * 5000  # more digits than int() reads (4,300)


def test_numbers_too_long_for_int_are_404_on_every_route(server: Server) -> None:
    paths = [f"/vol/1_1_1/{HUGE}-32_0-24_0-16", f"/vol/1_1_1/0-{HUGE}_0-24_0-16", f"/vol/zarr/0/{HUGE}.0.0",
             f"/vol/zarr/{HUGE}/0.0.0", f"/vol/zarr3/0/c/{HUGE}/0/0", f"/vol/zarr3/{HUGE}/c/0/0/0"]
    for path in paths:
        response, _ = get(server, path)
        assert response.status == 404, (path[:40], response.status)
    assert get(server, "/vol/zarr/0/0.0.0")[0].status == 200


def test_bad_json_posted_to_the_viewer_state_is_400(volume: Path) -> None:
    server, url = view(volume)
    with server:
        state_path = urlsplit(url).path.replace("/v/blockfs/", "/state/blockfs")
        headers = {"Origin": f"http://127.0.0.1:{server.port}", "Content-Type": "application/json"}
        before = dict(server.state.viewer.state)
        for body in (b"{not json", b"[" * 200_000 + b"]" * 200_000, b'{"s": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
                     b"\xff\xfe\x00", b'{"s": [1]}', b"[]", b""):
            response, text = request(server.port, state_path, "POST", headers, body)
            assert response.status == 400, (body[:20], response.status, text[:200])
        assert server.state.viewer.state == before
        response, _ = request(server.port, state_path, "POST", headers, json.dumps({"s": {"layout": "xy"}}).encode())
        assert response.status == 200 and server.state.viewer.state == {"layout": "xy"}


# -- 14: a 500 shows the client no file of the server -------------------------------------------------


def test_a_500_gives_a_short_reason_and_logs_the_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    volume = tmp_path / "vol.blockfs"
    write_volume(volume, volume_data(SHAPE), BLOCK, records=True, n_filenames=2)
    with Directory.open(str(volume)) as d:
        shards = {d.shard_paths[d.layout.entry_index(*origin) % len(d.shard_paths)]: origin
                  for origin in ((0, 0, 0), (32, 0, 0))}
        entries = {origin: d.store.entry(d.layout.entry_index(*origin)) for origin in shards.values()}
    assert len(shards) == 2, "the two blocks should be in different shards"
    (damaged, origin), (removed, _) = shards.items()
    offset, size = entries[origin]
    with open(damaged, "r+b") as f:
        f.seek(offset + size // 2)
        byte = f.read(1)
        f.seek(offset + size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.remove(removed)
    with start(volume) as server, caplog.at_level(logging.ERROR, logger="blockfs.serve"):
        for path, where in (("/vol/zarr/0/0.0.0", damaged), ("/vol/zarr/0/0.0.1", removed)):
            response, body = get(server, path)
            assert response.status == 500, (path, response.status)
            assert str(volume.parent) not in body.decode() and len(body) < 200, body
            assert re.search(rb"[A-Za-z]+Error", body), body
            assert any(where in record.getMessage() or str(volume) in record.getMessage() for record in caplog.records)
        assert get(server, "/vol/info")[0].status == 200  # the server goes on


# -- 15: the token, and state changes only from the viewer's own origin --------------------------------


def test_requests_without_the_token_are_refused(server: Server, volume: Path) -> None:
    token = urlsplit(server.url).path.strip("/")
    assert len(token) >= 40, "no unguessable token in the server's URL"
    wrong = token[:-1] + ("A" if token[-1] != "A" else "B")
    paths = ["/", "/vol/info", "/vol/zarr/.zattrs", "/vol/zarr/0/0.0.0", "/vol/zarr3/0/c/0/0/0",
             "/vol/1_1_1/0-32_0-24_0-16"]
    for path in paths:
        for prefix in ("", f"/{wrong}", f"/{token[:10]}"):
            response, body = request(server.port, prefix + path, headers={"Origin": "http://127.0.0.1:1"})
            assert response.status == 403, (prefix + path, response.status)
            assert b"BLOCKFS" not in body and b"scales" not in body and len(body) < 200
        assert get(server, path)[0].status == 200, path
    with start(volume) as other:
        assert other.url != server.url and request(other.port, base(server) + "/vol/info")[0].status == 403


def test_no_token_serves_openly(volume: Path) -> None:
    with start(volume, token=False) as server:
        assert server.url == server.origin and server.token is None
        response, body = request(server.port, "/vol/info")
        assert response.status == 200 and json.loads(body)["scales"]
        assert request(server.port, "/vol/zarr/0/0.0.0")[0].headers["Access-Control-Allow-Origin"] == "*"


def test_state_changes_only_from_the_viewers_own_origin(volume: Path) -> None:
    server, url = view(volume)
    with server:
        session = server.state.viewer
        own = f"http://127.0.0.1:{server.port}"
        with_token = urlsplit(url).path.replace("/v/blockfs/", "/state/blockfs")
        body = json.dumps({"s": {"layout": "3d"}}).encode()
        refused = [
            ("/state/blockfs", {"Origin": "http://127.0.0.1:9", "Content-Type": "text/plain;charset=UTF-8"}),
            (with_token, {"Origin": "http://127.0.0.1:9", "Content-Type": "text/plain;charset=UTF-8"}),
            (with_token, {"Origin": "http://127.0.0.1:9", "Content-Type": "application/json"}),
            (with_token, {"Origin": "null", "Content-Type": "text/plain"}),
            (with_token, {"Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"}),
            (with_token, {"Sec-Fetch-Site": "same-site", "Origin": own, "Content-Type": "text/plain"}),
            (with_token, {"Content-Type": "text/plain"}),
            (with_token, {"Content-Type": "application/x-www-form-urlencoded"}),
        ]
        generation = session.generation
        for path, headers in refused:
            response, _ = request(server.port, path, "POST", headers, body)
            assert response.status in (403, 404), (path, headers, response.status)
            assert session.generation == generation and session.state.get("layout") != "3d", (path, headers)
        accepted = [
            {"Origin": own, "Sec-Fetch-Site": "same-origin", "Content-Type": "text/plain;charset=UTF-8"},  # the client
            {"Content-Type": "application/json"},  # a program
        ]
        for headers in accepted:
            response, _ = request(server.port, with_token, "POST", headers, body)
            assert response.status == 200 and session.generation == generation + 1, (headers, response.status)
            assert session.state == {"layout": "3d"}
            generation = session.generation
        response, _ = request(server.port, with_token, "OPTIONS", {"Origin": "http://127.0.0.1:9",
                                                                   "Access-Control-Request-Method": "POST"})
        assert "POST" not in response.headers.get("Access-Control-Allow-Methods", "")
