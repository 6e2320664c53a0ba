"""Every console tool, run as a real process on bad input, fails the same way: exit status 1 and one
line ``prog: file: reason`` on stderr naming the file, with no traceback, within a time limit and
an address-space limit, leaving the input as it was.

The inputs are files that are not volumes (absent, empty, a FIFO, a folder, a device, garbage, a
truncated or unparsable header), headers whose values no volume can have (entries wider than 64 bits, a
size field too narrow for a block, overlapping strides, a 2**120-voxel volume, an index past what a
file can address, 10**12 block positions that NOffsetBits cannot address, 2**40-voxel blocks),
and a volume whose shard is a FIFO. Every tool runs on every input it takes (the demo only writes,
so it runs on the inputs that are not a folder or absent; the shard only matters to the tools that
read blocks). The last tests show that legal but huge, sparse volumes are described and checked in
work bounded by the entries their index file holds.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import unavailable

from blockfs import Directory
from blockfs.cli import SUBCOMMANDS

pytestmark = pytest.mark.timeout(300)

BIN = Path(sys.executable).parent
PEAK_MEMORY = Path(__file__).resolve().parent / "peak_memory.py"
#: Seconds a tool may take to refuse an input; a tool that blocks on a FIFO or works on a header's claims runs past it.
TIMEOUT = 20.0
#: Address space each tool runs in (prlimit --as): a tool that tries to allocate what a header claims fails in it.
ADDRESS_SPACE = 3 << 30
#: Largest resident memory a tool may reach while refusing an input.
MAX_RSS_BYTES = 400 << 20
#: Tools run at once.
PARALLEL = 3


# -- inputs ----------------------------------------------------------------------------------------


def header(path: Path, **values: Any) -> bytes:
    """A directory file's preamble and JSON (FORMAT-NOTES): a 1000^3 uint16 volume in 64^3 blocks, with ``values``."""
    doc: dict[str, Any] = {
        "XBlockSize": 64, "YBlockSize": 64, "ZBlockSize": 64, "XExtent": 1000, "YExtent": 1000, "ZExtent": 1000,
        "DType": "uint16", "NOffsetBits": 32, "NSizeBits": 20, "XStride": 1, "YStride": 16, "ZStride": 256,
        "BlockFilenames": [f"{path}.0"], "Compression": "zstd", "CompressionLvl": 5, "Version": "1.0.0"}
    doc.update(values)
    text = json.dumps(doc).encode()
    return b"BlockFS\x00" + struct.pack("<II", len(text), 16 + len(text)) + text


def _make_device(path: Path) -> None:
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # the null device's numbers
    except OSError as exc:
        pytest.skip(f"cannot make a device node here ({exc})")


def _volume_with_fifo_shard(path: Path) -> tuple[Path, ...]:
    """A small volume with one block written, whose shard holding it is then replaced by a FIFO; a message
    about it names the shard or the volume."""
    with Directory(100, 80, 70, "uint16", str(path), n_filenames=1, records=False).create() as d:
        d.write_block(np.ones((64, 64, 64), np.uint16), 0, 0, 0)
        shard = Path(d.block_filenames[0])
    shard.unlink()
    os.mkfifo(shard)
    return shard, path


#: name -> the bytes of an input file at a path (FORMAT-NOTES' layout, by hand).
CONTENTS: dict[str, Callable[[Path], bytes]] = {
    "empty": lambda p: b"",
    "truncated-header": lambda p: header(p)[:10],
    "garbage": lambda p: np.random.default_rng(1).integers(0, 256, 4096, np.uint8).tobytes(),
    "invalid-json": lambda p: header(p).replace(b'"XExtent": 1000,', b'"XExtent": 1000,,'),
    "entries-over-64-bits": lambda p: header(p, NOffsetBits=40, NSizeBits=40),
    "size-field-too-narrow": lambda p: header(p, NSizeBits=10),
    "overlapping-strides": lambda p: header(p, YStride=1),
    "huge-extents": lambda p: header(p, XExtent=2**40, YExtent=2**40, ZExtent=2**40, YStride=2**34, ZStride=2**40,
                                     NOffsetBits=44),
    "unaddressable-index": lambda p: header(p, XExtent=2**20, XBlockSize=1, YExtent=64, ZExtent=64, XStride=2**40,
                                            NOffsetBits=40, NSizeBits=18),
    "huge-entry-count": lambda p: header(p, XExtent=10**4, YExtent=10**4, ZExtent=10**4, XBlockSize=1, YBlockSize=1,
                                         ZBlockSize=1, DType="uint8", YStride=10**4, ZStride=10**8, NSizeBits=5),
    "huge-blocks": lambda p: header(p, XBlockSize=2**14, YBlockSize=2**13, ZBlockSize=2**13, XExtent=2**14,
                                    YExtent=2**13, ZExtent=2**13, DType="uint8", NSizeBits=41, NOffsetBits=23),
}
#: name -> how to make an input that is not a plain file at a path; returns the files a message may name, if not it.
SPECIAL: dict[str, Callable[[Path], tuple[Path, ...] | None]] = {
    "absent": lambda p: None,
    "fifo": os.mkfifo,
    "folder": Path.mkdir,
    "device": _make_device,
    "fifo-shard": _volume_with_fifo_shard,
}
INPUTS = sorted(CONTENTS) + sorted(SPECIAL)
#: Inputs that are a file of some kind (not absent, not a folder): the demo refuses them as its output folder.
NOT_FOLDERS = frozenset(INPUTS) - {"absent", "folder", "fifo-shard"}


def make_input(name: str, path: Path) -> tuple[Path, ...]:
    """Make the input ``name`` at ``path``; return the files of which a tool's message about it must name one."""
    if name in CONTENTS:
        path.write_bytes(CONTENTS[name](path))
        return (path,)
    return SPECIAL[name](path) or (path,)


# -- tools -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tool:
    """A console tool: its command line for an input and an output folder, its name in messages, its inputs."""

    argv: Callable[[Path, Path], list[Any]]
    prog: str
    inputs: frozenset[str] = frozenset(INPUTS) - {"fifo-shard"}


#: Inputs of the tools that read blocks: the FIFO shard is bad input to them too.
READERS = frozenset(INPUTS)
#: The classic commands run the subcommands' code: they get one input of each kind, not all.
CLASSIC = frozenset({"absent", "fifo", "huge-entry-count", "huge-blocks"})


def sub(*args: Any) -> list[Any]:
    return [BIN / "blockfs", *args]


def script(name: str, *args: Any) -> list[Any]:
    return [BIN / name, *args]


TOOLS: dict[str, Tool] = {
    "info": Tool(lambda v, o: sub("info", v), "blockfs info"),
    "check": Tool(lambda v, o: sub("check", v, "--silent"), "blockfs check"),
    "repair": Tool(lambda v, o: sub("repair", v, "--silent"), "blockfs repair"),
    "mv": Tool(lambda v, o: sub("mv", v, o / "moved", "--silent"), "blockfs mv"),
    "cp": Tool(lambda v, o: sub("cp", v, o / "copied", "--silent"), "blockfs cp"),
    "rebase": Tool(lambda v, o: sub("rebase", v, "--silent"), "blockfs rebase"),
    "tif": Tool(lambda v, o: sub("tif", "--input", v, "--output-pattern", o / "p_%04d.tif", "--silent"),
                "blockfs tif", READERS),
    "jp2k": Tool(lambda v, o: sub("jp2k", "--input", v, "--output-pattern", o / "p_%04d.jp2", "--silent"),
                 "blockfs jp2k", READERS),
    "hdf5": Tool(lambda v, o: sub("hdf5", v, o / "out.h5", "/volume", "--silent"), "blockfs hdf5", READERS),
    "from-tif": Tool(lambda v, o: sub("from-tif", "--input", v, "--output", o / "in.blockfs", "--silent"),
                     "blockfs from-tif"),
    "pyramid": Tool(lambda v, o: sub("pyramid", v, o / "pyramid", "--n-workers", 2, "--silent"), "blockfs pyramid",
                    READERS),
    "to-zarr": Tool(lambda v, o: sub("to-zarr", v, o / "out.zarr", "--silent"), "blockfs to-zarr", READERS),
    "from-zarr": Tool(lambda v, o: sub("from-zarr", v, o / "in.blockfs", "--silent"), "blockfs from-zarr"),
    "serve": Tool(lambda v, o: sub("serve", v, "--port", 0), "blockfs serve"),
    "view": Tool(lambda v, o: sub("view", v, "--port", 0, "--no-browser"), "blockfs view"),
    "napari": Tool(lambda v, o: sub("napari", v), "blockfs napari"),
    "demo": Tool(lambda v, o: sub("demo", "--output", v, "--size-gib", 0.0001, "--silent"), "blockfs demo",
                 NOT_FOLDERS),
    "blockfs-mv": Tool(lambda v, o: script("blockfs-mv", v, o / "moved", "--silent"), "blockfs-mv", CLASSIC),
    "blockfs-cp": Tool(lambda v, o: script("blockfs-cp", v, o / "copied", "--silent"), "blockfs-cp", CLASSIC),
    "blockfs-rebase": Tool(lambda v, o: script("blockfs-rebase", v, "--silent"), "blockfs-rebase", CLASSIC),
    "blockfs2tif": Tool(lambda v, o: script("blockfs2tif", "--input", v, "--output-pattern", o / "p_%04d.tif",
                                            "--silent"), "blockfs2tif", CLASSIC | {"fifo-shard"}),
    "blockfs2jp2k": Tool(lambda v, o: script("blockfs2jp2k", "--input", v, "--output-pattern", o / "p_%04d.jp2",
                                             "--silent"), "blockfs2jp2k", CLASSIC | {"fifo-shard"}),
    "blockfs2hdf": Tool(lambda v, o: script("blockfs2hdf", v, o / "out.h5", "/volume", "--silent"), "blockfs2hdf",
                        CLASSIC | {"fifo-shard"}),
    "tif2blockfs": Tool(lambda v, o: script("tif2blockfs", "--input", v, "--output", o / "in.blockfs", "--silent"),
                        "tif2blockfs", CLASSIC),
}


# -- running ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """How one tool run ended."""

    returncode: int | None  # None: still running at the time limit (then killed)
    stdout: str
    stderr: str
    seconds: float
    max_rss_bytes: int


def prlimit() -> str:
    found = shutil.which("prlimit")
    if found is None:
        unavailable("prlimit (util-linux) is needed to bound the tools' memory")
    return found


def run_bounded(argv: list[Any], folder: Path, timeout: float = TIMEOUT) -> Outcome:
    """Run ``argv`` in ``folder`` under :data:`ADDRESS_SPACE`, killed (with its process group) after ``timeout``.

    The tool is forked from the small interpreter of tests/peak_memory.py, so that its peak memory is its own."""
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    result = folder / ".peak-memory.json"
    result.unlink(missing_ok=True)
    with open(folder / ".stdout", "w+") as out, open(folder / ".stderr", "w+") as err:
        start = time.monotonic()
        process = subprocess.Popen([sys.executable, PEAK_MEMORY, result, prlimit(), f"--as={ADDRESS_SPACE}",
                                    *map(str, argv)], cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=err, start_new_session=True)
        try:
            process.wait(start + timeout - time.monotonic())
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
        seconds = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        ended = json.loads(result.read_text()) if result.exists() else None
        return Outcome(None if ended is None else os.waitstatus_to_exitcode(ended["status"]), out.read(), err.read(),
                       seconds, 0 if ended is None else ended["max_rss_bytes"])


def snapshot(path: Path) -> Any:
    """What a tool must leave as it was: the kind of file at ``path`` and, for a regular file, its bytes."""
    if not os.path.lexists(path):
        return None
    mode = os.lstat(path).st_mode
    return stat.S_IFMT(mode), path.read_bytes() if stat.S_ISREG(mode) else None


def failures(name: str, victim: Path, named: tuple[Path, ...], root: Path) -> Iterator[str]:
    """What is wrong with each tool's run on the input ``victim``, whose message must name one of ``named``."""
    cases = [(tool, TOOLS[tool]) for tool in sorted(TOOLS) if name in TOOLS[tool].inputs]
    before = snapshot(victim)
    with ThreadPoolExecutor(PARALLEL) as pool:
        outcomes = pool.map(lambda case: run_bounded(case[1].argv(victim, root / case[0]), root / case[0]), cases)
        for (tool, spec), outcome in zip(cases, outcomes):
            yield from (f"{tool}: {problem}" for problem in judge(outcome, spec.prog, named))
    if snapshot(victim) != before:
        yield f"the input {victim} was changed"


def judge(outcome: Outcome, prog: str, named: tuple[Path, ...]) -> Iterator[str]:
    """Each way in which ``outcome`` is not a clean refusal by ``prog`` naming one of ``named``."""
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    if outcome.returncode is None:
        yield f"still running after {TIMEOUT:.0f} s (stderr: {outcome.stderr[-500:]!r})"
        return
    if outcome.returncode != 1:
        yield f"exit status {outcome.returncode}, not 1 (stderr: {outcome.stderr[-2000:]!r})"
    if len(lines) != 1 or not lines[0].startswith(f"{prog}: ") or not any(str(n) in lines[0] for n in named):
        yield f"stderr is not one line '{prog}: {named[0]}: reason': {outcome.stderr[-2000:]!r}"
    if outcome.max_rss_bytes > MAX_RSS_BYTES:
        yield f"reached {outcome.max_rss_bytes >> 20} MiB resident"


def test_every_subcommand_is_in_the_matrix() -> None:
    assert set(SUBCOMMANDS) <= set(TOOLS)


@pytest.mark.parametrize("name", INPUTS)
def test_bad_input(tmp_path: Path, name: str) -> None:
    victim = tmp_path / "input" / f"{name}.blockfs"
    victim.parent.mkdir()
    named = make_input(name, victim)
    problems = list(failures(name, victim, named, tmp_path / "runs"))
    assert not problems, "\n".join(problems)


# -- legal but huge volumes ------------------------------------------------------------------------


def _real_sized(path: Path) -> tuple[int, int]:
    """A 10^5-voxel cube of uint8 in 64^3 blocks (1563^3 block positions), with three blocks written."""
    with Directory(10**5, 10**5, 10**5, "uint8", str(path), n_filenames=32).create() as d:
        for x, y, z in [(0, 0, 0), (640, 64, 0), (0, 0, 64)]:
            d.write_block(np.full((64, 64, 64), 7, np.uint8), x, y, z)
    return 3, 1563**3


def _trillion_voxel_blocks(path: Path) -> tuple[int, int]:
    """10^12 one-voxel blocks, with bit widths that address them all, and no block written."""
    path.write_bytes(header(path, XExtent=10**4, YExtent=10**4, ZExtent=10**4, XBlockSize=1, YBlockSize=1,
                            ZBlockSize=1, DType="uint8", YStride=10**4, ZStride=10**8, NOffsetBits=44, NSizeBits=5))
    Path(f"{path}.0").write_bytes(b"")
    return 0, 10**12


HUGE_VOLUMES = {"real-sized": _real_sized, "trillion-voxel-blocks": _trillion_voxel_blocks}


@pytest.mark.parametrize("name", sorted(HUGE_VOLUMES))
def test_a_huge_sparse_volume_costs_what_its_index_holds(tmp_path: Path, name: str) -> None:
    """info, check, repair and cp read only the entries in the index file, not the positions its header claims."""
    volume = tmp_path / "huge.blockfs"
    written, total = HUGE_VOLUMES[name](volume)
    runs = {tool: run_bounded(sub(tool, *args), tmp_path / tool) for tool, args in [
        ("info", [volume, "--json"]), ("check", [volume, "--json"]), ("repair", [volume, "--silent"]),
        ("cp", [volume, tmp_path / "copy", "--silent"])]}
    for tool, outcome in runs.items():
        # repair needs block records: the hand-made header has none, and repair says so
        refused = tool == "repair" and "written without block records" in outcome.stderr and name != "real-sized"
        assert outcome.returncode == (1 if refused else 0), f"{tool}: {outcome}"
        assert outcome.max_rss_bytes <= MAX_RSS_BYTES, f"{tool}: {outcome.max_rss_bytes >> 20} MiB"
    info, report = json.loads(runs["info"].stdout), json.loads(runs["check"].stdout)
    assert (info["blocks_written"], info["blocks_total"]) == (written, total)
    assert (report["blocks_written"], report["blocks_total"], report["healthy"]) == (written, total, True)
    source, copy = volume.read_bytes(), (tmp_path / "copy" / "huge.blockfs").read_bytes()
    assert copy[struct.unpack_from("<I", copy, 12)[0]:] == source[struct.unpack_from("<I", source, 12)[0]:]


def test_a_tools_peak_memory_is_its_own_not_the_test_process(tmp_path: Path) -> None:
    """run_bounded's peak memory counts what the tool touched, not what the process that runs the tests holds."""
    held = np.ones(MAX_RSS_BYTES * 2, np.uint8)  # this process now holds twice the bound
    small = run_bounded([sys.executable, "-c", "pass"], tmp_path / "small")
    large = run_bounded([sys.executable, "-c", f"data = b'x' * {MAX_RSS_BYTES}"], tmp_path / "large")
    del held
    assert small.returncode == 0 and small.max_rss_bytes < MAX_RSS_BYTES // 4, small
    assert large.returncode == 0 and large.max_rss_bytes > MAX_RSS_BYTES, large
