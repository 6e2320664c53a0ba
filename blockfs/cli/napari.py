"""``blockfs napari``: open volumes and pyramid folders in napari, each as one lazy layer of the blockfs plugin."""

from __future__ import annotations

import argparse

from ._support import run_tool, volume_argument

EPILOG = """\
example:
  blockfs napari /data/brain-pyramid /data/cells.blockfs

Each volume or pyramid folder opens as one layer (a pyramid as a multiscale layer), read block by
block as napari shows it; File > Save Selected Layers... with a .blockfs name writes a layer back as a
volume. Needs a display and: pip install 'blockfs[napari]'.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blockfs napari", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Look at blockfs volumes and pyramids in napari.", epilog=EPILOG)
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="a volume's index (.blockfs) file, a folder holding one, or a pyramid folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    """blockfs napari: open the volumes in a napari viewer and run it until its window is closed."""
    parser = build_parser()

    def body(args: argparse.Namespace) -> int:
        from ..interop.zarr_format import open_source
        paths = [volume_argument(path, pyramids=True) for path in args.paths]
        for path in paths:
            open_source(path)  # a missing or damaged volume fails here, before a window opens
        import napari
        viewer = napari.Viewer()
        for path in paths:
            viewer.open(path, plugin="blockfs")
        napari.run()
        return 0

    return run_tool(parser, body, argv)
