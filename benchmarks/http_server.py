"""nginx serving a folder on 127.0.0.1 for the remote-read benchmark, its access log counted per read.

One worker process in the foreground (no master, so it never changes user and reads what the
benchmark's user can), ``sendfile`` on, keep-alive without a request limit. Each request is logged
as one line: method, path, Range header, status and body bytes sent.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

#: How long nginx may take to accept connections.
START_TIMEOUT = 10.0
#: A read's log lines are all written once the log has not grown for this long.
LOG_QUIET = 0.05

CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format counted '$request_method $uri "$http_range" $status $body_bytes_sent';
    access_log {work}/access.log counted;
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        etag on;
        location / {{ limit_except GET {{ deny all; }} }}
    }}
}}
"""


@dataclass(frozen=True)
class Request:
    """One logged request."""

    method: str
    path: str
    range: str
    status: int
    sent: int


class Nginx:
    """A running nginx: ``url`` (``http://127.0.0.1:PORT``), ``pid``, and its access log."""

    def __init__(self, url: str, process: subprocess.Popen[bytes], log: str):
        self.url = url
        self.process = process
        self.pid = process.pid
        self._log = log

    def _size(self) -> int:
        return os.path.getsize(self._log) if os.path.exists(self._log) else 0

    def mark(self) -> int:
        """Where the log stands now, once nothing more is being written to it."""
        size = self._size()
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            time.sleep(LOG_QUIET)
            now = self._size()
            if now == size:
                break
            size = now
        return size

    def since(self, mark: int) -> list[Request]:
        """The requests logged after ``mark`` (a :meth:`mark`), once the log is quiet."""
        end = self.mark()
        with open(self._log, "rb") as f:
            f.seek(mark)
            lines = f.read(end - mark).decode().splitlines()
        out = []
        for line in lines:
            method, path, rest = line.split(" ", 2)
            quoted, status, sent = rest.rsplit(" ", 2)
            out.append(Request(method, path, quoted.strip('"'), int(status), int(sent)))
        return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def binary() -> str | None:
    """The nginx program (on PATH, or in /usr/sbin where Debian puts it); None without one."""
    return shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))


@contextlib.contextmanager
def serve(root: str, work: str) -> Iterator[Nginx]:
    """nginx serving the folder ``root`` read-only, its configuration and logs in the folder ``work``;
    stopped on exit."""
    program = binary()
    if program is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx)")
    os.makedirs(work, exist_ok=True)
    port = _free_port()
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as f:
        f.write(CONF.format(work=work, root=os.path.abspath(root), port=port))
    error_log = os.path.join(work, "error.log")
    process = subprocess.Popen([program, "-p", work, "-c", conf, "-e", error_log],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"nginx exited with status {process.returncode}: "
                                   + (open(error_log).read() if os.path.exists(error_log) else ""))
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx does not listen on 127.0.0.1:{port} after {START_TIMEOUT} s")
            time.sleep(0.01)
        yield Nginx(f"http://127.0.0.1:{port}", process, os.path.join(work, "access.log"))
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
