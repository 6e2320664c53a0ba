"""HTTP as browsers and clients expect it, on a real server over loopback: CORS, OPTIONS, HEAD,
keep-alive, ETags, 404s for anything that is not a chunk, no path traversal, live volumes, the CLI.

Paths are sent under the server's token unless a test says otherwise (tests/test_serve_trust.py
has what happens without it)."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import blosc
import numpy as np
import pytest

from serve_support import BLOCK, SHAPE, server, volume, volume_data, write_volume  # noqa: F401 (fixtures)

from blockfs import Directory
from blockfs.serve import Server, start, view
from blockfs.serve.server import is_loopback


def request(server: Server, path: str, method: str = "GET", headers: dict | None = None, token: bool = True
            ) -> tuple[http.client.HTTPResponse, bytes]:
    """One request on a fresh connection; ``path`` is sent exactly as given, after the token's prefix."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request(method, (server.state.prefix if token else "") + path, headers=headers or {})
        response = connection.getresponse()
        return response, response.read()
    finally:
        connection.close()


def test_cors_headers_on_every_response(server: Server, volume: Path) -> None:
    paths = {"/": 200, "/vol/info": 200, "/vol/zarr/.zattrs": 200, "/vol/zarr/0/0.0.0": 200,
             "/vol/1_1_1/0-32_0-24_0-16": 200, "/vol/zarr/0/1.1.1": 404, "/nothing/info": 404, "/vol/zarr/0/x": 404}
    for path, status in paths.items():
        response, _ = request(server, path)
        assert response.status == status, path
        assert response.headers["Access-Control-Allow-Origin"] == "*", path
    response, _ = request(server, "/vol/zarr/0/0.0.0", "POST", {"Content-Type": "application/json"})
    assert response.status == 405 and response.headers["Access-Control-Allow-Origin"] == "*"
    etag = request(server, "/vol/zarr/0/0.0.0")[0].headers["ETag"]
    response, _ = request(server, "/vol/zarr/0/0.0.0", headers={"If-None-Match": etag})
    assert response.status == 304 and response.headers["Access-Control-Allow-Origin"] == "*"


def test_a_damaged_block_is_a_500_with_cors_and_the_server_goes_on(server: Server, volume: Path) -> None:
    with Directory.open(str(volume)) as d:
        offset, size = server.state.volumes["vol"].version((0, (0, 0, 0)))
        shard = d.shard_paths[d.layout.entry_index(0, 0, 0) % len(d.shard_paths)]
    with open(shard, "r+b") as f:
        f.seek(offset + size // 2)
        byte = f.read(1)
        f.seek(offset + size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    response, body = request(server, "/vol/zarr/0/0.0.0")
    assert response.status == 500 and response.headers["Access-Control-Allow-Origin"] == "*"
    assert b"checksum" in body.lower() or b"crc" in body.lower(), body
    assert request(server, "/vol/zarr/0/0.0.1")[0].status == 200


def test_options_preflight(server: Server) -> None:
    for path in ("/vol/zarr/0/0.0.0", "/vol/info", "/anything/at/all"):
        response, body = request(server, path, "OPTIONS", {"Origin": "http://example.org",
                                                            "Access-Control-Request-Method": "GET",
                                                            "Access-Control-Request-Headers": "range, x-custom"})
        assert response.status == 204 and body == b""
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "GET" in response.headers["Access-Control-Allow-Methods"]
        assert response.headers["Access-Control-Allow-Headers"] == "range, x-custom"


def test_head_has_the_headers_of_get_and_no_body(server: Server) -> None:
    for path in ("/vol/zarr/0/0.0.0", "/vol/zarr/0/2.2.2", "/vol/info", "/vol/1_1_1/32-64_24-48_0-16"):
        got, body = request(server, path)
        head, nothing = request(server, path, "HEAD")
        assert head.status == 200 and nothing == b""
        assert int(head.headers["Content-Length"]) == len(body) > 0
        assert head.headers.get("ETag") == got.headers.get("ETag")
    assert request(server, "/vol/zarr/0/1.1.1", "HEAD")[0].status == 404


def test_keep_alive_serves_many_requests_on_one_connection(server: Server) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        ports = set()
        for i in range(20):
            connection.request("GET", f"{server.state.prefix}/vol/zarr/0/0.0.{i % 3}")
            response = connection.getresponse()
            assert response.status == 200 and response.version == 11
            assert response.headers.get("Connection", "").lower() != "close"
            response.read()
            ports.add(connection.sock.getsockname()[1])
        assert len(ports) == 1, "the connection was not kept alive"
    finally:
        connection.close()


MALFORMED = [
    "/vol/zarr/0/1.1", "/vol/zarr/0/a.b.c", "/vol/zarr/0/-1.0.0", "/vol/zarr/0/3.0.0", "/vol/zarr/0/0.0.3",
    "/vol/zarr/0/1.1.1.1", "/vol/zarr/1/0.0.0", "/vol/zarr/x/0.0.0", "/vol/zarr/0/0.0.0/", "/vol/zarr/0/+1.0.0",
    "/vol/zarr/0/1e0.0.0", "/vol/zarr/0/%D9%A3.0.0", "/vol/zarr/0/0.0.99999999999999999999999999999",
    "/vol/zarr/0/0%20.0.0", "/vol/zarr/0/0.0.0%00", "/vol/zarr/0/c/0/0/0", "/vol/zarr3/0/0.0.0",
    "/vol/zarr3/0/c/0/0", "/vol/zarr3/0/c/0/0/0/0", "/vol/zarr/.zarray", "/vol/zarr/0/.zgroup", "/vol/zarr/",
    "/vol/zarr", "/vol/1_1_1/0-33_0-24_0-16", "/vol/1_1_1/1-33_0-24_0-16", "/vol/1_1_1/64-96_0-24_0-16",
    "/vol/1_1_1/64-80_0-24_0-16_0-1", "/vol/1_1_1/0-32_0-24", "/vol/2_2_2/0-32_0-24_0-16",
    "/vol/1_1_1/96-128_0-24_0-16", "/vol/1_1_1/0-32_0-24_48-64", "/vol/1_1_1/x-32_0-24_0-16", "/vol/1_1_1/",
    "/vol/infox", "/nothing/info", "/vol", "/vol/", "/" + "a" * 5000, "/vol/zarr/0/" + "9" * 4000 + ".0.0",
]


def test_malformed_and_out_of_grid_keys_are_404(server: Server) -> None:
    for path in MALFORMED:
        response, _ = request(server, path)
        assert response.status == 404, (path, response.status)
        assert response.headers["Access-Control-Allow-Origin"] == "*", path


def test_nothing_outside_the_named_volumes_is_reachable(tmp_path: Path) -> None:
    write_volume(tmp_path / "vol.blockfs", volume_data(SHAPE), BLOCK)
    (tmp_path / "secret.txt").write_text("the-secret-content")
    with Directory.open(str(tmp_path / "vol.blockfs")) as d:
        shard = os.path.basename(d.shard_paths[0])
    attempts = [
        "/../secret.txt", "/vol/../secret.txt", "/vol/zarr/../../secret.txt", "/vol/zarr/0/../../../secret.txt",
        "/%2e%2e/secret.txt", "/vol/%2e%2e/secret.txt", "/vol/zarr/0/..%2f..%2f..%2fsecret.txt",
        "/vol/1_1_1/..%2F..%2Fsecret.txt", "/vol/zarr/0/%2e%2e%2f%2e%2e%2fvol.blockfs", "/vol.blockfs",
        f"/vol/{shard}", f"/vol/zarr/{shard}", f"/vol/zarr/0/{shard}", "/secret.txt", "/vol/zarr/0/..",
        "/v/blockfs/../../secret.txt", "/v/blockfs/..%2f..%2fsecret.txt", "/v/blockfs/%2e%2e%2findex.html",
        "/v/blockfs/static/../../secret.txt", "//etc/passwd", "/vol/zarr/0/%2Fetc%2Fpasswd",
    ]
    server, _ = view(tmp_path / "vol.blockfs")
    with server:
        for path in attempts:
            for token in (True, False):
                response, body = request(server, path, token=token)
                assert response.status in ((400, 404) if token else (403,)), (path, token, response.status)
                assert b"the-secret-content" not in body and not body.startswith(b"BLOCKFS") and b"root:" not in body
        response, body = request(server, "/v/blockfs/")
        assert response.status == 200 and b"<html" in body.lower()


def test_binding_beyond_loopback_warns(volume: Path) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1") and not is_loopback("example.org")
    # 192.0.2.1 (TEST-NET-1) is on no interface: the warning comes, then the bind fails; nothing listens.
    with pytest.warns(UserWarning, match="readable by anyone who can reach this port and has its URL"):
        with pytest.raises(OSError):
            start(volume, host="192.0.2.1")


def decode(body: bytes) -> np.ndarray:
    return np.frombuffer(blosc.decompress(body), np.uint16).reshape(BLOCK)


def test_rewritten_blocks_get_a_new_etag_and_new_bytes(server: Server, volume: Path) -> None:
    first, body = request(server, "/vol/zarr/0/0.0.0")
    raw_first, raw = request(server, "/vol/1_1_1/0-32_0-24_0-16")
    edge_first, edge = request(server, "/vol/zarr/0/2.2.2")
    new = np.full(BLOCK, 7, np.uint16)
    with Directory.open(str(volume), "r+") as d:
        d.write_block(new, 0, 0, 0)
        d.write_block(new[:8, :12, :16], 64, 48, 32)
    again, body_again = request(server, "/vol/zarr/0/0.0.0", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status == 200 and again.headers["ETag"] != first.headers["ETag"]
    assert (decode(body_again) == 7).all() and body_again != body
    raw_again, raw_body = request(server, "/vol/1_1_1/0-32_0-24_0-16",
                                  headers={"If-None-Match": raw_first.headers["ETag"]})
    assert raw_again.status == 200 and raw_again.headers["ETag"] != raw_first.headers["ETag"]
    assert (np.frombuffer(raw_body, np.uint16) == 7).all()
    edge_again, edge_body = request(server, "/vol/zarr/0/2.2.2", headers={"If-None-Match": edge_first.headers["ETag"]})
    assert edge_again.status == 200 and edge_again.headers["ETag"] != edge_first.headers["ETag"]
    padded = decode(edge_body)
    assert (padded[:8, :12, :16] == 7).all() and not padded[8:].any()
    same, nothing = request(server, "/vol/zarr/0/0.0.0", headers={"If-None-Match": again.headers["ETag"]})
    assert same.status == 304 and nothing == b""


def test_blocks_written_while_served_appear_and_are_never_partial(tmp_path: Path) -> None:
    path = tmp_path / "live.blockfs"
    # up to 2,000 copies of one block: wider offsets than the earlier release's rule gives
    d = Directory(SHAPE[2], SHAPE[1], SHAPE[0], np.uint16, str(path), x_block_size=BLOCK[2],
                  y_block_size=BLOCK[1], z_block_size=BLOCK[0], n_offset_bits=32).create()
    d.close()
    a = volume_data(BLOCK, seed=1)
    b = volume_data(BLOCK, seed=2) + 1000
    with start(path) as server:
        assert request(server, "/live/zarr/0/0.0.0")[0].status == 404
        assert not np.frombuffer(request(server, "/live/1_1_1/0-32_0-24_0-16")[1], np.uint16).any()
        with Directory.open(str(path), "r+") as writer:
            writer.write_block(a, 0, 0, 0)
            response, body = request(server, "/live/zarr/0/0.0.0")
            assert response.status == 200 and (decode(body) == a).all()
            stop = threading.Event()

            def rewrite() -> None:
                for i in range(2000):
                    if stop.is_set():
                        return
                    writer.write_block(b if i % 2 == 0 else a, 0, 0, 0)

            thread = threading.Thread(target=rewrite)
            thread.start()
            try:
                seen = set()
                for _ in range(200):
                    response, body = request(server, "/live/zarr/0/0.0.0")
                    assert response.status == 200
                    block = decode(body)
                    assert (block == a).all() or (block == b).all(), "a partial or mixed block was served"
                    seen.add(int(block[0, 0, 0]))
            finally:
                stop.set()
                thread.join(60)
        assert len(seen) == 2, "the rewrites were not seen"


def run_cli(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                       os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "blockfs.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def read_until(process: subprocess.Popen, pattern: str) -> re.Match:
    """The first line of the process's output matching ``pattern`` (bounded: 50 lines, 60 s)."""
    timer = threading.Timer(60, process.kill)
    timer.start()
    try:
        for _ in range(50):
            line = process.stdout.readline()
            match = re.search(pattern, line)
            if match or not line:
                break
    finally:
        timer.cancel()
    assert match, f"no line matching {pattern!r}; stderr: {process.stderr.read() if process.poll() is not None else ''}"
    return match


@pytest.mark.parametrize("command", ["serve", "view"])
def test_cli_serves_until_terminated(volume: Path, command: str) -> None:
    extra = ["--no-browser"] if command == "view" else []
    process = run_cli([command, str(volume), "--name", "brain", "--port", "0", *extra])
    try:
        match = read_until(process, r"http://127\.0\.0\.1:([0-9]+)(/[A-Za-z0-9_-]{43})/")
        port, prefix = int(match.group(1)), match.group(2)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", prefix + "/brain/info")
        response = connection.getresponse()
        assert response.status == 200 and json.loads(response.read())["scales"][0]["size"] == [80, 60, 40]
        if command == "view":
            connection.request("GET", prefix + "/v/blockfs/")
            response = connection.getresponse()
            assert response.status == 200 and b"<html" in response.read().lower()
        connection.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        process.kill()
        process.wait(60)
        process.stdout.close()
        process.stderr.close()


TERM_TO_ANOTHER_THREAD = """
import signal, sys, threading, time
from blockfs.cli.serve import until_stopped
idle = threading.Event()
other = threading.Thread(target=idle.wait)
other.start()
with until_stopped() as wait:
    threading.Timer(0.5, signal.pthread_kill, (other.ident, signal.SIGTERM)).start()
    status = wait()
idle.set()
sys.exit(status)
"""


def test_a_stop_signal_taken_by_another_thread_still_stops_the_server() -> None:
    """The kernel may hand a SIGTERM sent to the process to any thread; the serving main thread still stops."""
    finished = subprocess.run([sys.executable, "-c", TERM_TO_ANOTHER_THREAD], timeout=30, capture_output=True)
    assert finished.returncode == 0, finished.stderr


def test_cli_reports_bad_input(volume: Path, tmp_path: Path) -> None:
    cases = [
        ([str(tmp_path / "missing.blockfs")], "missing.blockfs"),
        ([str(volume), str(volume)], "already served"),
        ([str(volume), "--name", "../x"], "cannot serve it as"),
    ]
    for args, message in cases:
        process = run_cli(["serve", *args, "--port", "0"])
        out, err = process.communicate(timeout=60)
        assert process.returncode == 1, (args, out, err)
        assert err.startswith("blockfs serve: ") and message in err, err


def test_each_chunk_request_reads_the_index_once_and_its_etag_names_the_body(
        server: Server, volume: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from blockfs import open_writable
    from blockfs.storage import VolumeFiles
    index_reads = []
    original = VolumeFiles.read_index
    monkeypatch.setattr(VolumeFiles, "read_index",
                        lambda self, *args: index_reads.append(args) or original(self, *args))
    data = volume_data(SHAPE)
    paths = {"/vol/1_1_1/0-32_0-24_0-16": None, "/vol/zarr/0/0.0.0": None,
             "/vol/zarr/0/2.2.2": None, "/vol/zarr3/0/c/2/2/2": None}  # the last two: an edge block, cached
    for path in paths:
        index_reads.clear()
        response, body = request(server, path)
        assert response.status == 200 and len(index_reads) == 1, (path, index_reads)
        paths[path] = response.headers["ETag"]
    new = (data[:16, :24, :32] + 7).astype(np.uint16)
    with open_writable(volume) as writing:
        writing.write_block(new, 0, 0, 0)
        version = writing.store.entry(writing.entry_of(0, 0, 0))
    index_reads.clear()
    response, body = request(server, "/vol/1_1_1/0-32_0-24_0-16")
    assert len(index_reads) == 1 and response.headers["ETag"] != paths["/vol/1_1_1/0-32_0-24_0-16"]
    assert response.headers["ETag"].endswith(f"-{version[0]:x}-{version[1]:x}\"")
    np.testing.assert_array_equal(np.frombuffer(body, np.uint16).reshape(16, 24, 32), new, strict=True)
    response, body = request(server, "/vol/zarr/0/0.0.0")
    assert response.headers["ETag"].endswith(f"-{version[0]:x}-{version[1]:x}\"")
    np.testing.assert_array_equal(np.frombuffer(blosc.decompress(body), np.uint16).reshape(16, 24, 32), new,
                                  strict=True)
