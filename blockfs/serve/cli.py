"""``blockfs serve`` and ``blockfs view``: serve volumes over HTTP until Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import webbrowser
from typing import Any, Callable, Iterator

from ..cli._support import positive_int, run_tool, volume_argument
from . import IDLE_TIMEOUT

#: The exit status after Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 128 + signal.SIGINT

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

VIEW_EPILOG = """\
example:
  blockfs view /data/brain-pyramid

Serves the volumes and Neuroglancer's own web client (from the neuroglancer package, no internet
needed), prints the URL that shows them (with the server's token) and opens it in a browser when
there is one. Needs: pip install 'blockfs[serve]'.
"""


def _parser(prog: str, description: str, epilog: str, port: int) -> argparse.ArgumentParser:
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
    parser.add_argument("--idle-timeout", type=positive_float, default=IDLE_TIMEOUT, metavar="SECONDS",
                        help="close a connection that sends no complete request head for this long, from its "
                             "opening or its last answer (default: %(default)s)")
    parser.add_argument("--max-connections", type=positive_int, metavar="N",
                        help="connections open at once; at the cap a new one closes the one idle longest "
                             "(default: half the open-file limit left after the listen backlog, at most 4096)")
    return parser


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds; got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0; got {text!r}")
    return value


def display_range(text: str) -> tuple[float, float]:
    """argparse type: LO,HI with LO < HI."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two numbers); got {text!r}") from None
    if not lo < hi:
        raise argparse.ArgumentTypeError(f"expected LO < HI; got {text!r}")
    return lo, hi


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """What the arguments say about serving, as keyword arguments of start() and view()."""
    return {"paths": [volume_argument(path, pyramids=True) for path in args.paths], "port": args.port,
            "host": args.bind, "names": args.name, "token": args.token,
            "idle_timeout": args.idle_timeout, "max_connections": args.max_connections}


@contextlib.contextmanager
def _until_stopped() -> Iterator[Callable[[], int]]:
    """A ``wait()`` returning the exit status at SIGTERM (0) or Ctrl-C (130), caught from the start of the block on."""
    stopped = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stopped.set())

    def wait() -> int:
        try:
            while not stopped.wait(3600):
                pass
        except KeyboardInterrupt:
            return INTERRUPTED
        return 0

    try:
        yield wait
    finally:
        signal.signal(signal.SIGTERM, previous)


def _can_open_browser() -> bool:
    """Whether a graphical browser may be started (a display on Linux; always elsewhere)."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        webbrowser.get()
    except webbrowser.Error:
        return False
    return True


def serve_main(argv: list[str] | None = None) -> int:
    """blockfs serve: serve volumes and pyramids over HTTP until Ctrl-C."""
    parser = _parser("blockfs serve", "Serve blockfs volumes and pyramids to Neuroglancer, zarr and tensorstore.",
                     SERVE_EPILOG, 8000)

    def body(args: argparse.Namespace) -> int:
        from .server import start  # a missing aiohttp: run_tool says how to install it
        with _until_stopped() as wait, start(**_options(args)) as server:
            for name in server.state.volumes:
                print(f"{name}: precomputed://{server.url}/{name}  zarr://{server.url}/{name}/zarr/")
            print(f"serving at {server.url}/ (Ctrl-C to stop)", flush=True)
            return wait()

    return run_tool(parser, body, argv)


def view_main(argv: list[str] | None = None) -> int:
    """blockfs view: serve volumes with Neuroglancer's web client and print the URL that shows them."""
    parser = _parser("blockfs view", "Look at blockfs volumes and pyramids in Neuroglancer, served locally.",
                     VIEW_EPILOG, 0)
    parser.add_argument("--no-browser", action="store_true", help="only print the URL")
    parser.add_argument("--contrast", type=display_range, metavar="LO,HI",
                        help="the display range of every layer, e.g. 100,2000 (default: the 0.5 and 99.9 "
                             "percentiles of up to 27 blocks of the finest level spread over the volume; "
                             "Neuroglancer's layer panel changes it too)")

    def body(args: argparse.Namespace) -> int:
        from .viewer import view
        with _until_stopped() as wait:
            server, url = view(**_options(args), display_range=args.contrast)
            with server:
                print(f"Neuroglancer: {url}", flush=True)
                if not args.no_browser and _can_open_browser():
                    webbrowser.open(url)
                print("(Ctrl-C to stop)", flush=True)
                return wait()

    return run_tool(parser, body, argv)


if __name__ == "__main__":
    sys.exit(serve_main())
