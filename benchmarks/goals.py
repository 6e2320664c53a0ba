"""The goals of the performance work, judged on the figures of one run.

Goals are judged on the microscopy-like data at 1 GiB (or, if 1 GiB was not run, the largest size
that was), 64^3 blocks, zstd 5.
"""

from __future__ import annotations

from dataclasses import dataclass

from .data import size_label
from .measure import MB, MIB, median

GOAL_BYTES = 2**30
KIND = "microscopy"
WRITE_LIMIT_RATIO = 0.85
READ_LIMIT_RATIO = 0.85
PEER_RATIO = 1.5
RANDOM_SLACK_US = 50.0
MEMORY_SLACK = 8 * MIB
FLAT = 0.10


@dataclass
class Goal:
    name: str
    target: str
    measured: str
    met: bool | None  # None: not measured in this run

    @property
    def status(self) -> str:
        return "not measured" if self.met is None else ("met" if self.met else "missed")


def goal_size(run) -> int | None:
    sizes = sorted({n for kind, n in run.limits if kind == KIND})
    if not sizes:
        return None
    return GOAL_BYTES if GOAL_BYTES in sizes else sizes[-1]


def best_write(run, nbytes: int):
    rows = [w for w in run.writes if w.kind == KIND and w.nbytes == nbytes and not w.config.durable]
    return max(rows, key=lambda w: w.mbps, default=None)


def peer_rate(peer: dict, what: str) -> float:
    return peer["nbytes"] / median(peer[what]) / MB


def best_peer(run, nbytes: int, what: str) -> dict | None:
    rows = [p for p in run.peers if p["kind"] == KIND and p["nbytes"] == nbytes and "error" not in p]
    return max(rows, key=lambda p: peer_rate(p, what), default=None)


def evaluate(run) -> tuple[str, list[Goal]]:
    """(what the goals were judged on, the goals)."""
    nbytes = goal_size(run)
    if nbytes is None:
        return "no microscopy data was run", []
    where = f"microscopy-like data, {size_label(nbytes)}"
    limits = run.limits[(KIND, nbytes)]
    write = best_write(run, nbytes)
    read = run.reads.get((KIND, nbytes))
    goals: list[Goal] = []

    if write is None:
        goals.append(Goal("Write vs compress limit", f">= {WRITE_LIMIT_RATIO}x", "write not run", None))
    else:
        ratio = write.mbps / limits.compress
        goals.append(Goal("Write vs compress limit", f">= {WRITE_LIMIT_RATIO:.2f}x",
                          f"{write.mbps:,.0f} MB/s ({write.config.label}) / {limits.compress:,.0f} MB/s = "
                          f"{ratio:.2f}x", ratio >= WRITE_LIMIT_RATIO))
    peer = best_peer(run, nbytes, "write")
    if write is None or peer is None:
        goals.append(Goal("Write vs best peer", f">= {PEER_RATIO}x", "write or peers not run", None))
    else:
        ratio = write.mbps / peer_rate(peer, "write")
        goals.append(Goal("Write vs best peer", f">= {PEER_RATIO:.1f}x",
                          f"{write.mbps:,.0f} / {peer_rate(peer, 'write'):,.0f} MB/s ({peer['peer']}) = {ratio:.2f}x",
                          ratio >= PEER_RATIO))
    if read is None:
        goals.append(Goal("Full read vs decompress limit", f">= {READ_LIMIT_RATIO}x", "read not run", None))
        goals.append(Goal("Full read vs best peer", f">= {PEER_RATIO}x", "read not run", None))
        goals.append(Goal("Random read_block median", "<= one block's decompress + 50 us", "read not run", None))
    else:
        rate = read.mbps(read.full)
        ratio = rate / limits.decompress
        goals.append(Goal("Full read vs decompress limit", f">= {READ_LIMIT_RATIO:.2f}x",
                          f"{rate:,.0f} MB/s / {limits.decompress:,.0f} MB/s = {ratio:.2f}x",
                          ratio >= READ_LIMIT_RATIO))
        peer = best_peer(run, nbytes, "read")
        if peer is None:
            goals.append(Goal("Full read vs best peer", f">= {PEER_RATIO}x", "peers not run", None))
        else:
            ratio = rate / peer_rate(peer, "read")
            goals.append(Goal("Full read vs best peer", f">= {PEER_RATIO:.1f}x",
                              f"{rate:,.0f} / {peer_rate(peer, 'read'):,.0f} MB/s ({peer['peer']}) = {ratio:.2f}x",
                              ratio >= PEER_RATIO))
        got = median(read.random_us)
        allowed = limits.block_decompress_us + RANDOM_SLACK_US
        goals.append(Goal("Random read_block median", "<= one block's decompress + 50 us",
                          f"{got:.0f} us vs {limits.block_decompress_us:.0f} + 50 = {allowed:.0f} us", got <= allowed))

    owned = [w for w in run.writes if w.config.mode == "main"]
    if not owned:
        goals.append(Goal("Writer memory bounded by queue depth", "owner growth <= bound + 8 MiB", "write not run",
                          None))
    else:
        worst = max(owned, key=lambda w: w.owner_growth - w.memory_bound)
        writer = max(w.writer_growth for w in owned)
        goals.append(Goal(
            "Writer memory bounded by queue depth",
            "owner RSS growth <= ((queue_depth + 2) x writers + producers) x block + 8 MiB",
            f"worst owner growth {worst.owner_growth / MIB:.1f} MiB vs bound {worst.memory_bound / MIB:.1f} MiB "
            f"({worst.config.label}, {size_label(worst.nbytes)}); writer processes grow <= {writer / MIB:.1f} MiB",
            all(w.owner_growth <= w.memory_bound + MEMORY_SLACK for w in owned)))

    sizes = sorted({n for kind, n in run.limits if kind == KIND})
    if len(sizes) < 2 or write is None:
        goals.append(Goal("Throughput flat across sizes", f"within {FLAT:.0%}", "needs two sizes", None))
    else:
        rates = {}
        for n in sizes:
            same = [w for w in run.writes if w.kind == KIND and w.nbytes == n and w.config == write.config]
            if same:
                rates[n] = same[0].mbps
        spread = (max(rates.values()) - min(rates.values())) / max(rates.values())
        text = f"write ({write.config.label}): " + ", ".join(f"{size_label(n)} {r:,.0f}" for n, r in rates.items())
        ok = spread <= FLAT
        reads = {n: run.reads[(KIND, n)].mbps(run.reads[(KIND, n)].full) for n in sizes if (KIND, n) in run.reads}
        if len(reads) >= 2:
            read_spread = (max(reads.values()) - min(reads.values())) / max(reads.values())
            text += (f" MB/s (spread {spread:.0%}); full read: " + ", ".join(f"{size_label(n)} {r:,.0f}"
                                                                            for n, r in reads.items())
                     + f" MB/s (spread {read_spread:.0%})")
            ok = ok and read_spread <= FLAT
        else:
            text += f" MB/s (spread {spread:.0%})"
        goals.append(Goal("Throughput flat across sizes", f"within {FLAT:.0%}", text, ok))
    return where, goals
