"""``blockfs serve``: serve volumes over HTTP until Ctrl-C; what ``blockfs view`` shares with it."""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ..serve import IDLE_TIMEOUT
from ._support import INTERRUPTED, number, positive_int, run_tool, volume_argument

SERVE_EPILOG = """\
examples:
  blockfs serve /data/brain.blockfs /data/brain-pyramid
  blockfs serve /data/brain.blockfs --name brain --port 9000

Each volume (index file) or pyramid folder is served under /<token>/<name>/, where <name> is
--name, else the index file's name without its extension (/data/brain.blockfs: brain) or the
pyramid folder's name (/data/brain-pyramid: brain-pyramid), as
  precomputed   precomputed://http://HOST:PORT/<token>/<name>   (Neuroglancer, tensorstore, cloud-volume)
  zarr v2       zarr://http://HOST:PORT/<token>/<name>/zarr/    (OME-Zarr 0.4; Neuroglancer, zarr-python, tensorstore)
  zarr v3       http://HOST:PORT/<token>/<name>/zarr3/          (OME-Zarr 0.5; zarr-python, tensorstore)
The token is new at each start and printed with the URLs; requests without it are refused, so web
pages cannot read the volumes. --no-token serves them at /<name>/ to anyone (public data).
Full blocks go out exactly as stored; only edge blocks are re-encoded. Needs: pip install 'blockfs[serve]'.
"""

#: Seconds between the main thread's looks for a stop signal. A signal the kernel hands to another thread
#: (the server's, or a codec's) does not wake a main thread blocked on a lock; Python runs its handler
#: at the next look.
SIGNAL_POLL_SECONDS = 0.25
#: argparse type: a number of seconds > 0.
positive_seconds = number(float, "expected a number of seconds > 0", low=0, above=True)


def serving_parser(prog: str, description: str, epilog: str, port: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="a volume's index file, a folder holding one, or a pyramid folder")
    parser.add_argument("--name", action="append", default=[],
                        help="the URL name of each PATH in turn (default: the index file's name without its "
                             "extension, e.g. brain for brain.blockfs, or the pyramid folder's name)")
    parser.add_argument("--bind", default="127.0.0.1",
                        help="address to listen on (default: %(default)s; anything else is reachable by others)")
    parser.add_argument("--port", type=int, default=port, help="port (default: %(default)s; 0 picks a free one)")
    parser.add_argument("--no-token", dest="token", action="store_false",
                        help="serve without a token in the URLs: anyone (any web page) may read what is served")
    parser.add_argument("--idle-timeout", type=positive_seconds, default=IDLE_TIMEOUT, metavar="SECONDS",
                        help="close a connection that sends no complete request head for this long, from its "
                             "opening or its last answer (default: %(default)s)")
    parser.add_argument("--max-connections", type=positive_int, metavar="N",
                        help="connections open at once; at the cap a new one closes the one idle longest "
                             "(default: half the open-file limit left after the listen backlog, at most 4096)")
    return parser


def serving_options(args: argparse.Namespace) -> dict[str, Any]:
    """What the arguments say about serving, as keyword arguments of start() and view()."""
    return {"paths": [volume_argument(path, pyramids=True) for path in args.paths], "port": args.port,
            "host": args.bind, "names": args.name, "token": args.token,
            "idle_timeout": args.idle_timeout, "max_connections": args.max_connections}


@contextlib.contextmanager
def until_stopped() -> Iterator[Callable[[], int]]:
    """A ``wait()`` returning the exit status at SIGTERM (0) or Ctrl-C (130), caught from the start of the block on."""
    stopped = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stopped.set())

    def wait() -> int:
        try:
            while not stopped.wait(SIGNAL_POLL_SECONDS):
                pass
        except KeyboardInterrupt:
            return INTERRUPTED
        return 0

    try:
        yield wait
    finally:
        signal.signal(signal.SIGTERM, previous)


def build_parser() -> argparse.ArgumentParser:
    """The arguments of blockfs serve: what to serve, and where."""
    return serving_parser("blockfs serve", "Serve blockfs volumes and pyramids to Neuroglancer, zarr and tensorstore.",
                          SERVE_EPILOG, 8000)


def main(argv: list[str] | None = None) -> int:
    """blockfs serve: serve volumes and pyramids over HTTP until Ctrl-C."""
    parser = build_parser()

    def body(args: argparse.Namespace) -> int:
        from ..serve.server import start  # a missing aiohttp: run_tool says how to install it
        with until_stopped() as wait, start(**serving_options(args)) as server:
            for name in server.state.volumes:
                print(f"{name}: precomputed://{server.url}/{name}  zarr://{server.url}/{name}/zarr/")
            print(f"serving at {server.url}/ (Ctrl-C to stop)", flush=True)
            return wait()

    return run_tool(parser, body, argv)
