"""``blockfs view``: serve volumes with Neuroglancer's web client and print the URL that shows them."""

from __future__ import annotations

import argparse
import os
import sys
import webbrowser

from ._support import number, numbers, run_tool
from .serve import serving_options, serving_parser, until_stopped

EPILOG = """\
example:
  blockfs view /data/brain-pyramid

Serves the volumes and Neuroglancer's own web client (from the neuroglancer package, no internet
needed), prints the URL that shows them (with the server's token) and opens it in a browser when
there is one. Needs: pip install 'blockfs[serve]'.
"""

_two_numbers = numbers(number(float, ""), 2, "expected LO,HI (two numbers)")


def display_range(text: str) -> tuple[float, float]:
    """argparse type: LO,HI with LO < HI."""
    lo, hi = _two_numbers(text)
    if not lo < hi:
        raise argparse.ArgumentTypeError(f"expected LO < HI; got {text!r}")
    return lo, hi


def _can_open_browser() -> bool:
    """Whether a graphical browser may be started (a display on Linux; always elsewhere)."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        webbrowser.get()
    except webbrowser.Error:
        return False
    return True


def build_parser() -> argparse.ArgumentParser:
    """The arguments of blockfs serve, and how to show the volumes."""
    parser = serving_parser("blockfs view", "Look at blockfs volumes and pyramids in Neuroglancer, served locally.",
                            EPILOG, 0)
    parser.add_argument("--no-browser", action="store_true", help="only print the URL")
    parser.add_argument("--contrast", type=display_range, metavar="LO,HI",
                        help="the display range of every layer, e.g. 100,2000 (default: the 0.5 and 99.9 "
                             "percentiles of up to 27 blocks of the finest level spread over the volume; "
                             "Neuroglancer's layer panel changes it too)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """blockfs view: serve volumes with Neuroglancer's web client and print the URL that shows them."""
    parser = build_parser()

    def body(args: argparse.Namespace) -> int:
        from ..serve.viewer import view
        with until_stopped() as wait:
            server, url = view(**serving_options(args), display_range=args.contrast)
            with server:
                print(f"Neuroglancer: {url}", flush=True)
                if not args.no_browser and _can_open_browser():
                    webbrowser.open(url)
                print("(Ctrl-C to stop)", flush=True)
                return wait()

    return run_tool(parser, body, argv)
