"""``blockfs serve`` and ``blockfs view``: serve volumes over HTTP until Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import webbrowser
from typing import Callable, Iterator

from ..cli._support import run_tool

SERVE_EPILOG = """\
examples:
  blockfs serve /data/brain.blockfs /data/brain-pyramid
  blockfs serve /data/brain.blockfs --name brain --port 9000

Each volume (index file) or pyramid folder is served under /<name>/ as
  precomputed   precomputed://http://HOST:PORT/<name>        (Neuroglancer, tensorstore, cloud-volume)
  zarr v2       zarr://http://HOST:PORT/<name>/zarr/         (OME-Zarr 0.4; Neuroglancer, zarr-python, tensorstore)
  zarr v3       http://HOST:PORT/<name>/zarr3/               (OME-Zarr 0.5; zarr-python, tensorstore)
Full blocks go out exactly as stored; only edge blocks are re-encoded. Needs: pip install 'blockfs[serve]'.
"""

VIEW_EPILOG = """\
example:
  blockfs view /data/brain-pyramid

Serves the volumes and Neuroglancer's own web client (from the neuroglancer package, no internet
needed), prints the URL that shows them and opens it in a browser when there is one.
Needs: pip install 'blockfs[serve]'.
"""


def _parser(prog: str, description: str, epilog: str, port: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="PATH", help="a volume's index file or a pyramid folder")
    parser.add_argument("--name", action="append", default=[],
                        help="the URL name of each PATH in turn (default: the file's or folder's name)")
    parser.add_argument("--bind", default="127.0.0.1",
                        help="address to listen on (default: %(default)s; anything else is reachable by others)")
    parser.add_argument("--port", type=int, default=port, help="port (default: %(default)s; 0 picks a free one)")
    return parser


def _missing_stack(prog: str, exc: ImportError) -> int:
    print(f"{prog}: {exc.name or exc} is not installed; pip install 'blockfs[serve]'", file=sys.stderr)
    return 1


@contextlib.contextmanager
def _until_stopped() -> Iterator[Callable[[], None]]:
    """A ``wait()`` that returns at Ctrl-C or SIGTERM, caught from the start of the block on."""
    stopped = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stopped.set())

    def wait() -> None:
        try:
            while not stopped.wait(3600):
                pass
        except KeyboardInterrupt:
            pass

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
        try:
            from .server import start
        except ImportError as exc:
            return _missing_stack(parser.prog, exc)
        with _until_stopped() as wait, start(args.paths, port=args.port, host=args.bind, names=args.name) as server:
            for name in server.state.volumes:
                print(f"{name}: precomputed://{server.url}/{name}  zarr://{server.url}/{name}/zarr/")
            print(f"serving at {server.url} (Ctrl-C to stop)", flush=True)
            wait()
        return 0

    return run_tool(parser, body, argv)


def view_main(argv: list[str] | None = None) -> int:
    """blockfs view: serve volumes with Neuroglancer's web client and print the URL that shows them."""
    parser = _parser("blockfs view", "Look at blockfs volumes and pyramids in Neuroglancer, served locally.",
                     VIEW_EPILOG, 0)
    parser.add_argument("--no-browser", action="store_true", help="only print the URL")

    def body(args: argparse.Namespace) -> int:
        try:
            from .viewer import view
        except ImportError as exc:
            return _missing_stack(parser.prog, exc)
        with _until_stopped() as wait:
            server, url = view(args.paths, port=args.port, host=args.bind, names=args.name)
            with server:
                print(f"Neuroglancer: {url}", flush=True)
                if not args.no_browser and _can_open_browser():
                    webbrowser.open(url)
                print("(Ctrl-C to stop)", flush=True)
                wait()
        return 0

    return run_tool(parser, body, argv)


if __name__ == "__main__":
    sys.exit(serve_main())
