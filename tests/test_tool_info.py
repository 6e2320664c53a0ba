"""blockfs info: every figure checked against the fixtures' manifest and an independent reading of the index.

The reference figures are computed here entry by entry from docs/FORMAT.md, sharing no code with
the tool (which scans the index with numpy).
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fixtures import case_ids, case_params, copy_volume, drop_last_entry, require_fixtures
from helpers import console, in_process
from volumes import make_volume

from blockfs import Directory
from blockfs.cli import main as blockfs_main
from blockfs.ops.info import scan_index
from blockfs.ops.offline import open_offline

pytestmark = pytest.mark.timeout(120)
params = pytest.mark.parametrize("case", case_params(), ids=case_ids())
RECORD_BYTES = 32  # a block record's header (docs/FORMAT.md, "Extension: block records")


#: ``blockfs info ...`` through the installed ``blockfs`` command, and in this process (warnings are errors here)
run = functools.partial(console, "blockfs", "info")
call = functools.partial(in_process, blockfs_main, "info")


def reference(path: Path) -> dict[str, Any]:
    """Figures computed block by block from the directory file: written blocks and their bytes."""
    data = path.read_bytes()
    m, d = int.from_bytes(data[8:12], "little"), int.from_bytes(data[12:16], "little")
    meta = json.loads(data[16:16 + m])
    extent = (meta["ZExtent"], meta["YExtent"], meta["XExtent"])
    block = (meta["ZBlockSize"], meta["YBlockSize"], meta["XBlockSize"])
    stride = (meta["ZStride"], meta["YStride"], meta["XStride"])
    entry_size = math.ceil((meta["NOffsetBits"] + meta["NSizeBits"]) / 8)
    n_shards = len(meta["BlockFilenames"])
    written, uncompressed, compressed = [], 0, 0
    per_shard = [0] * n_shards
    total = 0
    for z in range(0, extent[0], block[0]):
        for y in range(0, extent[1], block[1]):
            for x in range(0, extent[2], block[2]):
                total += 1
                e = sum(c // b * s for c, b, s in zip((z, y, x), block, stride))
                raw = data[d + e * entry_size:d + (e + 1) * entry_size]
                if len(raw) < entry_size:
                    continue
                size = (int.from_bytes(raw, "little") >> meta["NOffsetBits"]) & ((1 << meta["NSizeBits"]) - 1)
                if not size:
                    continue
                shape = [min(b, n - c) for b, n, c in zip(block, extent, (z, y, x))]
                written.append((x, y, z))
                uncompressed += math.prod(shape) * np.dtype(meta["DType"]).itemsize
                compressed += size
                per_shard[e % n_shards] += 1
    return {"written": written, "total": total, "uncompressed": uncompressed, "compressed": compressed,
            "per_shard": per_shard, "meta": meta}


@params
def test_fixture(case: dict[str, Any] | None) -> None:
    folder = require_fixtures()
    assert case is not None
    path = folder / case["directory_file"]
    result = run(path, "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    ref = reference(path)
    grid = [-(-n // b) for n, b in zip(case["shape_zyx"], case["block_size_zyx"])]
    assert info["shape_zyx"] == case["shape_zyx"]
    assert info["dtype"] == case["dtype"]
    assert info["block_size_zyx"] == case["block_size_zyx"]
    assert info["grid_zyx"] == grid
    assert (info["compression"], info["compression_level"]) == (case["compression"], case["compression_level"])
    assert (info["n_offset_bits"], info["n_size_bits"]) == (ref["meta"]["NOffsetBits"], ref["meta"]["NSizeBits"])
    assert info["blocks_total"] == math.prod(grid) == ref["total"]
    assert info["blocks_written"] == ref["total"] - len(case["missing_blocks_xyz"]) == len(ref["written"])
    assert sorted(map(list, ref["written"])) == sorted(
        [x, y, z] for z in range(0, case["shape_zyx"][0], case["block_size_zyx"][0])
        for y in range(0, case["shape_zyx"][1], case["block_size_zyx"][1])
        for x in range(0, case["shape_zyx"][2], case["block_size_zyx"][2])
        if [x, y, z] not in case["missing_blocks_xyz"])
    assert info["uncompressed_bytes"] == ref["uncompressed"]
    assert info["compressed_bytes"] == ref["compressed"]
    assert info["compression_ratio"] == pytest.approx(ref["uncompressed"] / ref["compressed"])
    files = [folder / n for n in [case["directory_file"], *case["block_files"]]]
    assert info["bytes_on_disk"] == sum(f.stat().st_size for f in files)
    assert info["index_bytes"] == path.stat().st_size
    assert info["missing_shards"] == [] and info["blocks_in_missing_shards"] == 0
    assert [s["name"] for s in info["shards"]] == case["block_files"]
    assert [s["path"] for s in info["shards"]] == [str(folder / n) for n in case["block_files"]]
    assert [s["size"] for s in info["shards"]] == [f.stat().st_size for f in files[1:]]
    assert [s["blocks"] for s in info["shards"]] == ref["per_shard"]
    # Blocks written twice leave their first copy in the shard, unreferenced.
    assert (info["unreferenced_bytes"] > 0) == bool(case["written_twice_xyz"])
    assert info["unreferenced_bytes"] == sum(f.stat().st_size for f in files[1:]) - ref["compressed"]
    assert info["metadata"] == case["metadata"]
    assert info["block_records"] is False


def test_text_report() -> None:
    folder = require_fixtures()
    case = next(c for c in case_params() if c and c["missing_blocks_xyz"])
    path = folder / case["directory_file"]
    result = call(path)
    assert result.returncode == 0, result.stderr
    z, y, x = case["shape_zyx"]
    written = reference(path)["total"] - len(case["missing_blocks_xyz"])
    text = result.stdout
    assert f"shape         {z} x {y} x {x} (z, y, x) voxels, {case['dtype']}" in text
    assert f"compression   {case['compression']}, level {case['compression_level']}" in text
    assert f"written       {written} of {reference(path)['total']} blocks" in text
    assert "compression ratio" in text and "MISSING" not in text
    for name in case["block_files"]:
        assert f"{name}: {folder / name}, {(folder / name).stat().st_size} bytes" in text


def test_missing_shard(tmp_path: Path) -> None:
    require_fixtures()
    case = max((c for c in case_params() if c), key=lambda c: c["n_block_files"])
    path = copy_volume(case, tmp_path)
    lost = case["block_files"][-1]
    (tmp_path / lost).unlink()
    ref = reference(path)
    result = run(path)
    assert result.returncode == 0, result.stderr
    assert f"1 MISSING (holding {ref['per_shard'][-1]} written blocks)" in result.stdout
    assert f"{lost}: MISSING (looked at {tmp_path / lost}" in result.stdout
    info = json.loads(call(path, "--json").stdout)
    assert info["missing_shards"] == [lost]
    assert info["blocks_in_missing_shards"] == ref["per_shard"][-1] > 0
    assert info["shards"][-1]["exists"] is False and info["shards"][-1]["path"] is None
    assert info["bytes_on_disk"] == sum(p.stat().st_size for p in tmp_path.iterdir())
    assert info["blocks_written"] == len(ref["written"])


def test_volume_moved_by_hand(tmp_path: Path) -> None:
    """Stale absolute names: the shards are found beside the index, reported as stale, no warning."""
    (tmp_path / "a").mkdir()
    path, _ = make_volume(tmp_path / "a", shape=(20, 30, 40), block=(8, 16, 16), n_files=3,
                          missing=((16, 16, 0),), metadata={"voxel_size_um": [2.0, 1.8, 1.8]})
    drop_last_entry(path)  # a short index: the last block was never written
    os.rename(tmp_path / "a", tmp_path / "b")
    moved = tmp_path / "b" / path.name
    info = json.loads(call(moved, "--json").stdout)
    ref = reference(moved)
    assert info["blocks_written"] == len(ref["written"]) == ref["total"] - 2
    assert info["entries_in_file"] == info["entry_positions"] - 1
    assert info["missing_shards"] == []
    assert all(s["stale_name"] for s in info["shards"])
    assert [s["path"] for s in info["shards"]] == [str(tmp_path / "b" / f"{path.name}.{i}") for i in range(3)]
    assert info["metadata"] == {"voxel_size_um": [2.0, 1.8, 1.8]}
    assert info["block_records"] is True
    # Every shard byte is a written block's payload or its record, or the dropped block's.
    dropped = int(info["bytes_on_disk"] - info["index_bytes"] - info["compressed_bytes"]
                  - RECORD_BYTES * info["blocks_written"])
    assert info["unreferenced_bytes"] == dropped > 0
    assert "found by base name: stale, run blockfs-rebase" in call(moved).stdout


def test_pages_and_strides_agree(tmp_path: Path) -> None:
    """A volume with z-fastest strides, scanned a few entries at a time and all at once, matches the reference."""
    shape, block = (30, 20, 50), (8, 8, 16)
    grid = [-(-n // b) for n, b in zip(shape, block)]
    d = Directory(shape[2], shape[1], shape[0], "uint8", str(tmp_path / "s.blockfs"), n_filenames=2,
                  z_block_size=block[0], y_block_size=block[1], x_block_size=block[2],
                  x_stride=grid[0] * grid[1], y_stride=grid[0], z_stride=1)
    d.create()
    rng = np.random.default_rng(3)
    for z in range(0, shape[0], block[0]):
        for y in range(0, shape[1], block[1]):
            for x in range(0, shape[2], block[2]):
                if (x + y + z) % 3:
                    d.write_block(rng.integers(0, 255, d.get_block_size(x, y, z), dtype=np.uint8), x, y, z)
    d.close()
    ref = reference(tmp_path / "s.blockfs")
    with open_offline(str(tmp_path / "s.blockfs")) as volume:
        for page in (1, 7, 1 << 20):
            scan = scan_index(volume.store, volume.header.entries_in_file, page=page)
            assert scan.blocks_written == len(ref["written"])
            assert scan.uncompressed_bytes == ref["uncompressed"]
            assert scan.compressed_bytes == ref["compressed"]
            assert list(scan.shard_blocks) == ref["per_shard"]


def test_bad_input(tmp_path: Path) -> None:
    result = run(tmp_path / "absent.blockfs")
    assert result.returncode == 1
    assert result.stderr.startswith(f"blockfs info: {tmp_path / 'absent.blockfs'}: No such file")
    (tmp_path / "notes.txt").write_text("these are notes, not a volume")
    result = call(tmp_path / "notes.txt", "--json")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(f"blockfs info: {tmp_path / 'notes.txt'}: starts with")


def test_help_has_an_example() -> None:
    result = call("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: blockfs info ")
    assert "blockfs info /data/brain.blockfs --json" in result.stdout
