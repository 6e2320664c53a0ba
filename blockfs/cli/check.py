"""``blockfs check``: verify every block of a volume and print each problem with its block."""

from __future__ import annotations

import argparse
import json

from ..ops.check import Report, check_volume
from ._support import add_silent, run_tool, volume_argument


def _how(report: Report, deep: bool) -> str:
    """How the blocks were checked."""
    if not report.records:
        return "no block records (checked by decompressing)"
    return "block records with CRC32C" + (", every block decompressed too" if deep else
                                          " (checksums and sizes checked; --deep decompresses too)")


def print_report(report: Report, deep: bool = False) -> None:
    for problem in report.problems:
        print(f"{report.volume}: {problem}")
    for line in report.notes + report.damaged:
        print(f"{report.volume}: note: {line}")
    for x, y, z in report.unrecorded:
        print(f"{report.volume}: note: block (x={x}, y={y}, z={z}) has no record (written by a writer without "
              "records, such as an earlier blockfs release); it decodes to its shape")
    lost = sum(s.unreferenced for s in report.shards)
    total = sum(s.size for s in report.shards)
    print(f"{report.volume}: {report.blocks_written} of {report.blocks_total} blocks written; "
          f"{_how(report, deep)}; "
          f"{lost:,} of {total:,} shard bytes unreferenced (old copies of rewritten blocks or interrupted writes)")
    print(f"{report.volume}: {'healthy' if report.healthy else f'{len(report.problems)} problem(s)'}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blockfs check", description="Verify every block of a volume; exit status 0 only if it is healthy.",
        epilog="example:\n  blockfs check /data/brain.blockfs\n"
               "  blockfs check --json /data/brain.blockfs | jq .problems",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("volume", help="the volume's directory (index) file, or a folder holding one")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--deep", action="store_true",
                        help="also decompress every block a record vouches for (by default its CRC32C and its "
                             "compressed header's sizes are checked, at the speed of reading the shards)")
    add_silent(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """blockfs check: verify a volume; exit status 0 only if it is healthy."""
    parser = build_parser()

    def body(args: argparse.Namespace) -> int:
        report = check_volume(volume_argument(args.volume), silent=args.silent or args.json, deep=args.deep)
        if args.json:
            print(json.dumps(report.to_json(), indent=1))
        else:
            print_report(report, args.deep)
        return 0 if report.healthy else 1

    return run_tool(parser, body, argv)
