"""Damage, full disks, verified reads, check and repair, with real files and the ``blockfs`` command.

One byte is flipped inside a payload, inside a record header or inside an index entry:
``blockfs check`` exits 1 and names the block, reads of it raise instead of returning wrong data,
and ``blockfs repair`` recovers what the records allow. Volumes without records (written with
``records=False``, and the 1.0.0 fixtures) are checked by decompressing. A shard on a full disk
fails the producer and leaves a volume that checks clean.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import blosc
import numpy as np
import pytest

import fixtures
from crash_writer import DTYPE, block_content
from helpers import block_origins
from repair_volumes import flip, names_block, run_blockfs

import blockfs
from blockfs import BlockfsError, CorruptBlockError, Directory, WriterError, records
from blockfs.errors import ChecksumError

pytestmark = pytest.mark.timeout(120)

SHAPE = (40, 64, 96)  # (z, y, x): 3 x 2 x 2 blocks of 32; the z=32 layer is 8 voxels deep
BLOCK = 32
#: Blocks written twice (version 1, then 2): damage to the newest copy leaves the older one.
REWRITTEN = ((32, 0, 0), (64, 32, 32))
ONCE = (0, 0, 0)


# -- helpers -----------------------------------------------------------------------------------

def check_json(path: Path) -> tuple[int, dict]:
    result = run_blockfs("check", "--json", str(path))
    return result.returncode, json.loads(result.stdout)


def problem_blocks(report: dict) -> set[tuple[int, int, int]]:
    return {tuple(p["block"]) for p in report["problems"] if p["block"] is not None}


@dataclass
class Volume:
    """A small volume and what each block holds: {origin (x, y, z): version}, 0 for none."""

    path: Path
    versions: dict[tuple[int, int, int], int]

    def open(self, **kwargs: object) -> Directory:
        return Directory.open(str(self.path), **kwargs)

    def entry(self, origin: tuple[int, int, int]) -> int:
        with self.open() as volume:
            return volume.layout.entry_index(*origin)

    def expected(self, origin: tuple[int, int, int], version: int | None = None) -> np.ndarray:
        with self.open() as volume:
            shape = volume.get_block_size(*origin)
            entry = volume.layout.entry_index(*origin)
        version = self.versions[origin] if version is None else version
        return block_content(entry, version, shape) if version else np.zeros(shape, DTYPE)

    def locate(self, origin: tuple[int, int, int]) -> tuple[Path, int, int, int]:
        """(shard path, payload offset, payload size, index file offset of the entry), from the
        directory file's bytes as docs/FORMAT.md describes them."""
        with self.open() as volume:
            where = volume.offsetof(*origin)
            size_bytes = volume.layout.entry_size
            entry = volume.layout.entry_index(*origin)
            shard = Path(volume.shard_paths[entry % len(volume.shard_paths)])
            offset_bits, size_bits = volume.n_offset_bits, volume.n_size_bits
        with open(self.path, "rb") as f:
            f.seek(where)
            value = int.from_bytes(f.read(size_bytes), "little")
        return shard, value & ((1 << offset_bits) - 1), value >> offset_bits & ((1 << size_bits) - 1), where

    def assert_reads(self, skip: tuple[tuple[int, int, int], ...] = ()) -> None:
        """Every block but ``skip`` reads exactly as expected, alone and within a region."""
        with self.open() as volume:
            for origin in self.versions:
                if origin in skip:
                    continue
                x, y, z = origin
                expected = self.expected(origin)
                assert np.array_equal(volume.read_block(*origin), expected), origin
                dz, dy, dx = expected.shape
                region = volume[z:z + dz, y:y + dy, x + 1:x + dx]
                assert np.array_equal(region, expected[:, :, 1:]), origin


def build(folder: Path, records_on: bool = True, **kwargs: object) -> Volume:
    """A 12-block volume; blocks in REWRITTEN are written twice."""
    path = folder / "volume.blockfs"
    z, y, x = SHAPE
    d = Directory(x, y, z, DTYPE, str(path), n_filenames=2, x_block_size=BLOCK, y_block_size=BLOCK,
                  z_block_size=BLOCK, records=records_on, **kwargs).create()
    versions = {}
    for origin in block_origins(SHAPE, BLOCK):
        entry = d.layout.entry_index(*origin)
        d.write_block(block_content(entry, 1, d.get_block_size(*origin)), *origin)
        versions[origin] = 1
    for origin in REWRITTEN:
        d.write_block(block_content(d.layout.entry_index(*origin), 2, d.get_block_size(*origin)), *origin)
        versions[origin] = 2
    d.close()
    return Volume(path, versions)


def assert_reads_raise(vol: Volume, origin: tuple[int, int, int], error: type = CorruptBlockError) -> Exception:
    """read_block, a region within the block, a region across it and the whole volume all raise."""
    x, y, z = origin
    with vol.open() as volume:
        with pytest.raises(error) as info:
            volume.read_block(*origin)
        with pytest.raises(error):
            volume[z:z + 2, y + 1:y + 3, x + 5:x + 9]
        with pytest.raises(error):
            volume[max(z - 1, 0):z + 2, max(y - 1, 0):y + 2, max(x - 1, 0):x + 2]
        with pytest.raises(error):
            volume[:, :, :]
    return info.value


def assert_check_names(vol: Volume, origin: tuple[int, int, int], kind: str | None = None,
                       only: bool = True) -> dict:
    """``blockfs check`` exits 1 naming the block; ``--json`` lists it (alone if ``only``), with a
    problem of ``kind`` among its problems."""
    text = run_blockfs("check", "--silent", str(vol.path))
    assert text.returncode == 1, text.stdout + text.stderr
    assert names_block(text.stdout, origin), text.stdout
    code, report = check_json(vol.path)
    assert code == 1 and report["healthy"] is False
    named = problem_blocks(report)
    assert origin in named, report["problems"]
    if only:
        assert named == {origin}, report["problems"]
    if kind is not None:
        assert kind in {p["kind"] for p in report["problems"] if tuple(p["block"]) == origin}, report["problems"]
    return report


def repair(vol: Volume, lost: tuple[tuple[int, int, int], ...] = ()) -> subprocess.CompletedProcess:
    """``blockfs repair`` keeps the old index as .bak and leaves a volume whose only problems are the
    blocks ``lost``: it exits 0 if there are none, else 3, and check then names each of them."""
    before = vol.path.read_bytes()
    result = run_blockfs("repair", "--silent", str(vol.path))
    assert result.returncode == (3 if lost else 0), result.stdout + result.stderr
    assert all(names_block(result.stdout, origin) for origin in lost), result.stdout
    backup = Path(f"{vol.path}.bak")
    assert backup.read_bytes() == before, "the old index must be kept as <volume>.bak"
    code, report = check_json(vol.path)
    assert code == (1 if lost else 0), report["problems"]
    assert {(p["kind"], tuple(p["block"])) for p in report["problems"]} == {("lost-block", o) for o in lost}
    return result


# -- a flipped byte inside a payload --------------------------------------------------------

def test_flipped_payload_byte_with_an_older_copy(tmp_path: Path) -> None:
    vol = build(tmp_path)
    origin = REWRITTEN[0]
    shard, offset, size, _ = vol.locate(origin)
    flip(shard, offset + size // 2)

    assert_check_names(vol, origin, "checksum")
    error = assert_reads_raise(vol, origin, ChecksumError)
    assert str(shard) in str(error) and str(offset) in str(error), str(error)
    assert f"entry {vol.entry(origin)}" in str(error) or names_block(str(error), origin), str(error)
    vol.assert_reads(skip=(origin,))

    repair(vol)
    vol.versions[origin] = 1  # the newest complete copy left is version 1
    vol.assert_reads()


def test_flipped_payload_byte_of_the_only_copy(tmp_path: Path) -> None:
    vol = build(tmp_path)
    origin = ONCE
    shard, offset, _, _ = vol.locate(origin)
    flip(shard, offset + 5)

    assert_check_names(vol, origin, "checksum")
    assert_reads_raise(vol, origin, ChecksumError)
    vol.assert_reads(skip=(origin,))

    repair(vol, lost=(origin,))
    vol.versions[origin] = 0  # nothing sound is left: the block is now missing, never garbage
    with pytest.warns(blockfs.LostBlocksWarning):
        vol.assert_reads()
    code, report = check_json(vol.path)
    assert code == 1 and report["blocks_written"] == len(vol.versions) - 1
    assert any(str(shard) in line for line in report["unrecognised_bytes"]), report


def test_repair_names_a_block_it_cannot_recover(tmp_path: Path) -> None:
    vol = build(tmp_path)
    shard, offset, _, _ = vol.locate(ONCE)
    flip(shard, offset + 5)
    result = run_blockfs("repair", str(vol.path))
    assert result.returncode == 3, result.stdout + result.stderr
    assert names_block(result.stdout + result.stderr, ONCE), result.stdout + result.stderr
    assert "now reads as zeros" in result.stdout and "--accept-loss" in result.stdout, result.stdout


# -- a flipped byte inside a record header --------------------------------------------------

HEADER_FIELDS = {"magic": 1, "version": 4, "header-size": 6, "entry": 8, "length": 17, "payload-crc": 25,
                 "header-crc": 30}


@pytest.mark.parametrize("field", sorted(set(HEADER_FIELDS) - {"magic"}))
def test_flipped_record_header_byte(tmp_path: Path, field: str) -> None:
    vol = build(tmp_path)
    origin = REWRITTEN[1]
    shard, offset, _, _ = vol.locate(origin)
    flip(shard, offset - records.HEADER_SIZE + HEADER_FIELDS[field])

    assert_check_names(vol, origin, "checksum")
    assert_reads_raise(vol, origin, ChecksumError)
    with vol.open(verify=False) as volume:  # the payload itself is intact
        assert np.array_equal(volume.read_block(*origin), vol.expected(origin))
    vol.assert_reads(skip=(origin,))

    repair(vol)
    vol.versions[origin] = 1
    vol.assert_reads()


def test_flipped_record_magic_reads_as_a_block_without_record(tmp_path: Path) -> None:
    """Without the record magic, the bytes are taken for a block written without a record (as an
    earlier release writes): read when its blosc header fits the block, and kept by repair."""
    vol = build(tmp_path)
    origin = REWRITTEN[1]
    shard, offset, _, _ = vol.locate(origin)
    flip(shard, offset - records.HEADER_SIZE + HEADER_FIELDS["magic"])
    vol.assert_reads()
    code, report = check_json(vol.path)
    assert code == 0 and report["unrecorded_blocks"] == [list(origin)], report
    result = run_blockfs("repair", "--silent", str(vol.path))
    assert result.returncode == 0 and "nothing changed" in result.stdout, result.stdout + result.stderr
    vol.assert_reads()


def test_flipped_record_header_byte_of_the_only_copy(tmp_path: Path) -> None:
    vol = build(tmp_path)
    shard, offset, _, _ = vol.locate(ONCE)
    flip(shard, offset - records.HEADER_SIZE + HEADER_FIELDS["entry"])
    assert_check_names(vol, ONCE, "checksum")
    assert_reads_raise(vol, ONCE, ChecksumError)
    repair(vol, lost=(ONCE,))
    vol.versions[ONCE] = 0
    with pytest.warns(blockfs.LostBlocksWarning):
        vol.assert_reads()


def test_damage_to_an_old_copy_is_noted_but_harmless(tmp_path: Path) -> None:
    """A flipped byte in a superseded copy breaks no block: check passes and notes the bytes,
    and repair keeps the newest copy (nothing changes)."""
    vol = build(tmp_path)
    origin = REWRITTEN[0]
    shard, newest, _, _ = vol.locate(origin)
    old = next(offset for offset, record, _ in records.scan(shard.read_bytes(), str(shard))
               if record is not None and record.entry == vol.entry(origin)) + records.HEADER_SIZE
    assert old < newest
    flip(shard, old + 10)
    code, report = check_json(vol.path)
    assert code == 0 and report["healthy"], report
    assert report["unrecognised_bytes"], report
    index = vol.path.read_bytes()
    result = run_blockfs("repair", "--silent", str(vol.path))
    assert result.returncode == 0 and "nothing changed" in result.stdout, result.stdout
    assert vol.path.read_bytes() == index and not list(tmp_path.glob("*.bak*"))
    vol.assert_reads()


# -- a flipped byte inside the index --------------------------------------------------------

def _entry_bytes() -> list[int]:
    """Positions of the bytes of one entry of the volume ``build`` writes."""
    z, y, x = SHAPE
    layout = Directory(x, y, z, DTYPE, "never-created.blockfs", n_filenames=2, x_block_size=BLOCK,
                       y_block_size=BLOCK, z_block_size=BLOCK).layout
    return list(range(layout.entry_size))


@pytest.mark.parametrize("byte", _entry_bytes())
@pytest.mark.parametrize("origin", [ONCE, REWRITTEN[1]], ids=["written-once", "rewritten"])
def test_flipped_index_entry_byte(tmp_path: Path, byte: int, origin: tuple[int, int, int]) -> None:
    vol = build(tmp_path)
    good_index = vol.path.read_bytes()
    _, offset, size, where = vol.locate(origin)
    flip(vol.path, where + byte)
    _, bad_offset, bad_size, _ = vol.locate(origin)
    assert (bad_offset, bad_size) != (offset, size) and bad_size

    assert_check_names(vol, origin, only=False)
    assert_reads_raise(vol, origin, CorruptBlockError)
    vol.assert_reads(skip=(origin,))

    result = repair(vol)
    assert "1 entries changed" in result.stdout or "1 entry changed" in result.stdout, result.stdout
    assert vol.path.read_bytes() == good_index, "repair must restore the entry exactly"
    vol.assert_reads()


def test_close_after_a_failed_region_read(tmp_path: Path) -> None:
    vol = build(tmp_path)
    shard, offset, _, _ = vol.locate(ONCE)
    flip(shard, offset + 50)
    prefix = f"{vol.path}."
    failures = 0
    for _ in range(300):
        volume = vol.open()
        with pytest.raises(ChecksumError):
            volume[:, :, :]
        try:
            volume.close()
        except RuntimeError:
            failures += 1
    leaked = [fd for fd in os.listdir("/proc/self/fd")
              if os.path.realpath(f"/proc/self/fd/{fd}").startswith(prefix)]
    assert (failures, len(leaked)) == (0, 0), f"{failures} close() calls failed; {len(leaked)} shard descriptors leaked"


# -- volumes without records: checked by decompressing --------------------------------------

def breaking_flip(payload: bytes, where: str) -> int:
    """A payload position whose flipped byte makes blosc itself refuse the buffer."""
    if where == "blosc-header":
        return 12  # the buffer's compressed size
    for position in range(16, len(payload)):
        damaged = bytearray(payload)
        damaged[position] ^= 0xFF
        try:
            blosc.decompress(bytes(damaged))
        except Exception:  # noqa: BLE001 - blosc raises untyped errors for bad buffers
            return position
    pytest.fail("no single flipped byte breaks this blosc buffer")


def check_recordless_damage(vol: Volume, origin: tuple[int, int, int], where: str) -> None:
    code, report = check_json(vol.path)
    assert code == 0 and report["healthy"] and report["records"] is False, report
    shard, offset, size, _ = vol.locate(origin)
    with open(shard, "rb") as f:
        f.seek(offset)
        payload = f.read(size)
    flip(shard, offset + breaking_flip(payload, where))

    report = assert_check_names(vol, origin, "undecodable")
    assert report["records"] is False
    assert_reads_raise(vol, origin, CorruptBlockError)
    vol.assert_reads(skip=(origin,))

    index = vol.path.read_bytes()
    result = run_blockfs("repair", str(vol.path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert str(vol.path) in result.stderr and "record" in result.stderr, result.stderr
    assert vol.path.read_bytes() == index and not list(vol.path.parent.glob("*.bak*"))


@pytest.mark.parametrize("where", ["blosc-header", "compressed-stream"])
def test_recordless_volume_flipped_payload_byte(tmp_path: Path, where: str) -> None:
    vol = build(tmp_path, records_on=False)
    with vol.open() as volume:
        assert not volume.records and "BlockfsRecords" not in vol.path.read_bytes().decode("latin-1")
    check_recordless_damage(vol, REWRITTEN[0], where)


@pytest.mark.parametrize("case", fixtures.case_params(), ids=fixtures.case_ids())
def test_fixture_flipped_payload_byte(tmp_path: Path, case: dict) -> None:
    path = fixtures.copy_volume(case, tmp_path / "copy")
    expected = np.load(fixtures.require_fixtures() / case["expected_array"])
    bz, by, bx = case["block_size_zyx"]
    missing = {tuple(m) for m in case["missing_blocks_xyz"]}
    versions = {}
    for z in range(0, case["shape_zyx"][0], bz):
        for y in range(0, case["shape_zyx"][1], by):
            for x in range(0, case["shape_zyx"][2], bx):
                versions[(x, y, z)] = 0 if (x, y, z) in missing else 1

    class FixtureVolume(Volume):
        def expected(self, origin: tuple[int, int, int], version: int | None = None) -> np.ndarray:
            x, y, z = origin
            return expected[z:z + bz, y:y + by, x:x + bx]

    vol = FixtureVolume(path, versions)
    code, report = check_json(path)
    assert code == 0 and report["blocks_written"] == len(versions) - len(missing), report
    origin = next(o for o in sorted(versions, key=lambda o: o[::-1]) if versions[o])
    check_recordless_damage(vol, origin, "compressed-stream")


# -- a shard on a full disk -----------------------------------------------------------------

def fill_volume(folder: Path, kind: str) -> Directory:
    """128 blocks of about 64 KiB each: 8 MiB that do not fit on the 2 MiB disk."""
    d = Directory(256, 256, 64, DTYPE, str(folder / "volume.blockfs"), n_filenames=2, x_block_size=BLOCK,
                  y_block_size=BLOCK, z_block_size=BLOCK).create()
    if kind == "dev-full":
        shard = d.shard_paths[0]
        os.remove(shard)
        os.symlink("/dev/full", shard)
    return d


def check_after_full_disk(path: Path, acknowledged: dict[tuple[int, int, int], np.ndarray]) -> None:
    """check passes; indexed blocks read back exactly; nothing unacknowledged is indexed."""
    result = run_blockfs("check", "--silent", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    indexed = 0
    with Directory.open(str(path)) as volume:
        for origin in block_origins(volume.shape, BLOCK):
            got = volume.read_block(*origin)
            if got.any():
                assert origin in acknowledged, f"block {origin} is indexed but was never acknowledged"
                assert np.array_equal(got, acknowledged[origin]), origin
                indexed += 1
    assert indexed >= 1, "nothing was stored before the disk filled up"
    assert indexed < len(block_origins((64, 256, 256), BLOCK)), "the disk never filled up"


@pytest.mark.parametrize("mode", ["direct", "pool"])
def test_shard_on_a_full_disk(tiny_disk: tuple[Path, str], mode: str) -> None:
    folder, kind = tiny_disk
    d = fill_volume(folder, kind)
    acknowledged: dict[tuple[int, int, int], np.ndarray] = {}
    failures: list[BaseException] = []
    try:
        if mode == "pool":
            d.start_writer_processes(queue_depth=2)
        # With /dev/full as shard 0, a block of the healthy shard goes first: the writers may report the
        # full shard before the owner queues a second block, and every write is refused from then on.
        origins = sorted(block_origins(d.shape, BLOCK), key=lambda o: d.layout.shard_of(d.layout.entry_index(*o)) == 0)
        for origin in origins:
            block = block_content(d.layout.entry_index(*origin), 1, d.get_block_size(*origin))
            try:
                d.write_block(block, *origin)
            except (OSError, BlockfsError) as exc:
                failures.append(exc)
                if mode == "direct":
                    continue
            else:
                acknowledged[origin] = block
        if mode == "pool":
            with pytest.raises(WriterError) as info:
                d.close()
            failures.append(info.value)
    finally:
        with contextlib.suppress(WriterError):
            d.close()
    assert failures, "the producer never heard of the full disk"
    for failure in failures:
        if mode == "pool":
            assert isinstance(failure, WriterError), repr(failure)
        message = str(failure)
        if kind == "tmpfs":
            assert "No space left on device" in message or getattr(failure, "errno", None) == 28, message
    check_after_full_disk(folder / "volume.blockfs", acknowledged)


@pytest.mark.parametrize("tiny_disk", ["tmpfs"], indirect=True)  # a small file system holding the index too
def test_index_entry_on_a_full_disk(tiny_disk: tuple[Path, str]) -> None:
    """The disk fills up exactly when the index entry needs a new page: the write fails, and the
    volume must still check clean (the unacknowledged record must not be left behind)."""
    folder, _ = tiny_disk
    d = Directory(256, 256, 8, "uint8", str(folder / "volume.blockfs"), n_filenames=1, x_block_size=8,
                  y_block_size=8, z_block_size=8).create()  # 1024 entries: the index spans two pages
    assert d.offsetof(248, 248, 0) >= 4096
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with open(folder / "filler", "wb") as f:
        f.write(bytes(free - 4096))  # one page left: enough for the block, not for the index page
    rng = np.random.default_rng(3)
    with pytest.raises(OSError):
        d.write_block(rng.integers(0, 255, (8, 8, 8)), 248, 248, 0)
    d.close()
    os.remove(folder / "filler")
    result = run_blockfs("check", "--silent", str(folder / "volume.blockfs"))
    assert result.returncode == 0, result.stdout


# -- verified reads and what verify=False skips ---------------------------------------------

def test_verify_false_skips_the_record_check(tmp_path: Path) -> None:
    vol = build(tmp_path)
    origin = ONCE
    shard, offset, _, _ = vol.locate(origin)
    flip(shard, offset - records.HEADER_SIZE + HEADER_FIELDS["payload-crc"])
    expected = vol.expected(origin)
    with vol.open(verify=False) as volume:
        assert volume.verify is False
        assert np.array_equal(volume.read_block(*origin), expected)
        x, y, z = origin
        assert np.array_equal(volume[z:z + 3, y:y + 32, x + 7:x + 32], expected[:3, :, 7:])
    with vol.open() as volume:
        assert volume.verify is True
        with pytest.raises(ChecksumError):
            volume.read_block(*origin)
    created = Directory(8, 8, 8, "uint16", str(tmp_path / "other.blockfs"), n_filenames=1, verify=False).create()
    created.write_block(np.ones((8, 8, 8)), 0, 0, 0)
    assert created.verify is False
    created.close()


# -- healthy volumes ------------------------------------------------------------------------

def test_repair_on_a_healthy_volume_changes_nothing(tmp_path: Path) -> None:
    vol = build(tmp_path)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    result = run_blockfs("repair", "--silent", str(vol.path))
    assert result.returncode == 0 and "nothing changed" in result.stdout, result.stdout
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    assert after == before, "repair of a healthy volume must not touch any file or create a backup"
    vol.assert_reads()


def test_check_json_on_a_healthy_volume(tmp_path: Path) -> None:
    vol = build(tmp_path)
    code, report = check_json(vol.path)
    assert code == 0
    assert report["healthy"] is True and report["problems"] == [] and report["records"] is True
    assert report["blocks_total"] == report["blocks_written"] == len(vol.versions) == 12
    referenced = {}
    for origin in vol.versions:
        shard, _, size, _ = vol.locate(origin)
        referenced[shard] = referenced.get(shard, 0) + records.HEADER_SIZE + size
    total = sum(os.path.getsize(s) for s in referenced)
    assert report["unreferenced_bytes"] == total - sum(referenced.values()) > 0  # the two old copies
    assert {Path(s["path"]): s["referenced"] for s in report["shards"]} == referenced
    text = run_blockfs("check", str(vol.path))
    assert text.returncode == 0 and "healthy" in text.stdout


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths this process fsyncs from now on, in order."""
    paths: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return paths


def test_durable_false_reads_back_and_skips_fsync(tmp_path: Path, synced: list[str]) -> None:
    (tmp_path / "scratch").mkdir()
    scratch = build(tmp_path / "scratch", durable=False)
    assert synced == [], f"durable=False must not fsync: {synced}"
    scratch.assert_reads()
    with scratch.open(mode="r+", durable=False) as volume:
        volume.start_writer_processes()  # and through the writer pool
        volume.write_block(block_content(scratch.entry(ONCE), 3, (32, 32, 32)), *ONCE)
    scratch.versions[ONCE] = 3
    scratch.assert_reads()
    assert run_blockfs("check", "--silent", str(scratch.path)).returncode == 0

    (tmp_path / "durable").mkdir()
    durable = build(tmp_path / "durable")
    shards = {str(p) for p in (tmp_path / "durable").glob("volume.blockfs.*")}
    index = str(durable.path)
    assert set(synced) == shards | {index}, synced
    assert synced[-1] == index, "the index must be synced after the shards"
    durable.assert_reads()


def _write_one_block(directory: Directory, value: int) -> None:
    directory.write_block(np.full((32, 32, 32), value, np.uint16), 32, 0, 0)


def test_close_fsyncs_shards_written_by_forked_producers(tmp_path: Path, synced: list[str]) -> None:
    """The README's Pool pattern: children append to the shards, the parent's close() must make them durable."""
    import multiprocessing

    d = Directory(64, 32, 32, np.uint16, str(tmp_path / "v.blockfs"), n_filenames=2, x_block_size=32,
                  y_block_size=32, z_block_size=32).create()
    child = multiprocessing.get_context("fork").Process(target=_write_one_block, args=(d, 7))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    synced.clear()  # only what close() syncs
    d.close()
    assert str(tmp_path / "v.blockfs.1") in synced, f"the shard a child wrote was not fsynced: {synced}"
    assert synced[-1] == str(tmp_path / "v.blockfs"), "the index must be synced after the shards"
    assert (d.read_block(32, 0, 0) == 7).all()
