"""``blockfs info``: print a description of a volume or a pyramid folder."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from ..ops.info import describe_volume, format_text
from ._support import run_tool, volume_argument

EPILOG = """\
examples:
  blockfs info /data/brain.blockfs
  blockfs info /data/brain.blockfs --json | python -c 'import json, sys; print(json.load(sys.stdin)["blocks_written"])'

Sizes are in bytes. "compression ratio" is the uncompressed size of the written blocks divided
by the sum of their compressed sizes; "unreferenced" counts shard bytes that no entry points at
(older copies of rewritten blocks, or data from an interrupted write). A "state" line says that
the tool writing the volume has not finished it, a "lost" line names the blocks repair could not
save, and a shard marked ANOTHER VOLUME'S SHARD belongs to the volume this one was copied from
(cp -r; blockfs rebase points the copy at its own shards).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blockfs info", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Describe a blockfs volume: shape, dtype, blocks, compression, shards (and which are "
                    "missing), blocks written, bytes on disk, compression ratio, application metadata.",
        epilog=EPILOG)
    parser.add_argument("index_file",
                        help="the volume's directory (.blockfs) file, a folder holding one, or a pyramid folder")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    return parser


def main(argv: list[str] | None = None) -> int:
    """blockfs info: print a description of a volume."""
    parser = build_parser()

    def body(args: argparse.Namespace) -> int:
        describe: Callable[[str], dict[str, Any]] = describe_volume
        text: Callable[[dict[str, Any]], str] = format_text
        args.index_file = volume_argument(args.index_file, pyramids=True)
        from ..pyramid.folder import is_pyramid
        if is_pyramid(args.index_file):
            from ..pyramid.describe import describe_pyramid, format_pyramid
            describe, text = describe_pyramid, format_pyramid
        info = describe(args.index_file)
        print(json.dumps(info, indent=1) if args.json else text(info))
        return 0

    return run_tool(parser, body, argv)
