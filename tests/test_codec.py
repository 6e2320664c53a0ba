"""blockfs's blosc calls depend on no process-wide blosc setting, and importing blockfs sets none.

python-blosc's thread count (``set_nthreads``) and GIL switch (``set_releasegil``) are global to the
process: any library or user may set them. Each check runs in a fresh interpreter so that the
order of ``import blockfs`` and ``blosc.set_nthreads`` is the one under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import blosc
import numpy as np

from blockfs.codec import compress, compress_into, decompress_into
from blockfs.sample import microscopy_block

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Writes two blocks through blockfs and prints their stored bytes (hex) and the blosc settings after.
WRITE_AND_REPORT = """
import json, os, sys, tempfile
import numpy as np
{before}
import blockfs
from blockfs import Directory
from blockfs.codec import compress
from blockfs.sample import microscopy_block
{after}
import blosc
block = microscopy_block((0, 0, 0), (64, 64, 64), seed=3)
with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "v.blockfs")
    d = Directory(128, 64, 64, np.uint16, path, n_filenames=1, durable=False).create()
    d.write_block(block, 0, 0, 0)
    d.write_block(block[::-1].copy(), 64, 0, 0)
    d.close()
    reader = Directory.open(path)
    stored = [reader.read_block_payload(x, 0, 0).hex() for x in (0, 64)]
    reader.close()
print(json.dumps({{"compress": compress(block, "zstd", 5).hex(), "stored": stored,
                  "nthreads": blosc.set_nthreads(1), "releasegil": blosc.set_releasegil(False)}}))
"""

#: Peak thread count while compressing and decompressing 32 MiB, with python-blosc told to use 4 threads.
COUNT_THREADS = """
import json, os, threading
import blosc
import numpy as np
from blockfs.codec import compress, compress_into, decompress_into
blosc.set_nthreads(4)
blosc.set_releasegil(True)
data = (np.arange(256 ** 3, dtype=np.uint64) * 2654435761 % 4099).astype(np.uint16).reshape(256, 256, 256)
out = np.empty_like(data)

def python_blosc():
    packed = blosc.compress_ptr(data.ctypes.data, data.size, typesize=2, clevel=5, shuffle=blosc.SHUFFLE, cname="zstd")
    blosc.decompress_ptr(packed, out.ctypes.data)

def blockfs_codec():
    decompress_into(compress(data, "zstd", 5), out, "test")

def peak_threads(action):
    done, peak = threading.Event(), []
    def sample():
        while not done.is_set():
            peak.append(len(os.listdir("/proc/self/task")))
    sampler = threading.Thread(target=sample)
    sampler.start()
    for _ in range(3):
        action()
    done.set()
    sampler.join()
    return max(peak)

before = len(os.listdir("/proc/self/task"))
print(json.dumps({"before": before, "blockfs": peak_threads(blockfs_codec), "python_blosc": peak_threads(python_blosc),
                  "same": bool(np.array_equal(out, data))}))
"""


def _run(code: str, env: dict[str, str] | None = None) -> dict:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
                          env={**os.environ, "PYTHONPATH": REPO_ROOT, **(env or {})})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_leaves_blosc_settings_and_thread_count_changes_no_byte() -> None:
    plain = _run(WRITE_AND_REPORT.format(before="import blosc; blosc.set_nthreads(3)", after=""))
    assert plain["nthreads"] == 3, "importing blockfs changed blosc.set_nthreads's value"
    assert plain["releasegil"] == 0, "importing blockfs changed blosc.set_releasegil's value"
    two_before = _run(WRITE_AND_REPORT.format(before="import blosc; blosc.set_nthreads(2); blosc.set_releasegil(True)",
                                              after=""))
    two_after = _run(WRITE_AND_REPORT.format(before="",
                                             after="import blosc; blosc.set_nthreads(2); blosc.set_releasegil(True)"))
    assert two_after["nthreads"] == two_before["nthreads"] == 2
    for run in (two_before, two_after):
        assert run["compress"] == plain["compress"]
        assert run["stored"] == plain["stored"]


def test_codec_never_starts_blosc_threads_whatever_the_process_settings() -> None:
    counts = _run(COUNT_THREADS, env={"BLOSC_NTHREADS": "4"})
    assert counts["same"]
    assert counts["blockfs"] <= counts["before"] + 1, f"blockfs ran blosc threads: {counts}"  # + 1: the sampler
    # The control: python-blosc's calls do follow the global setting, so the sampler would have seen them.
    assert counts["python_blosc"] >= counts["before"] + 3, f"the sampler saw no blosc threads: {counts}"


def test_frames_are_blosc1_frames_that_python_blosc_reads() -> None:
    block = microscopy_block((64, 0, 64), (64, 64, 64), seed=1)
    packed = compress(block, "zstd", 5)
    version, _, flags, typesize = packed[:4]
    assert version == 2, "not a c-blosc 1.x frame (format version 2)"
    assert typesize == block.dtype.itemsize
    assert flags & 0x1, "byte shuffle flag not set"
    assert blosc.decompress(packed) == block.tobytes()
    reference = blosc.compress(block.tobytes(), typesize=2, clevel=5, shuffle=blosc.SHUFFLE, cname="zstd")
    out = np.empty_like(block)
    decompress_into(reference, out, "python-blosc frame")
    assert np.array_equal(out, block)


def test_compressing_into_a_larger_buffer_gives_the_same_bytes() -> None:
    """A thread's encoding buffer is sized for the largest block it has stored: an incompressible small block
    compressed into it still falls back to blosc's copy (its bytes plus 16), as compress() makes it."""
    block = np.random.default_rng(3).integers(0, 256, (16, 16, 16), dtype=np.uint8)
    buffer = bytearray(1 << 20)
    filled = compress_into(block, "zstd", 5, memoryview(buffer)[32:])
    assert bytes(filled) == compress(block, "zstd", 5)
    assert len(filled) <= block.nbytes + 16
