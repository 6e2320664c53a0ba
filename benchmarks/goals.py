"""The goals of the performance work (issue 14; per codec since the third round), judged on one run's figures.

Judged at 1 GiB (or, if 1 GiB was not run, the largest size that was) on both microscopy-like data
sets, on minimum times; a goal whose figures are flagged (spread over 20%) is not judged. The
side-by-side goals depend on the codec (``TARGETS``); a codec without targets is only reported.
"""

from __future__ import annotations

from dataclasses import dataclass

from .codec import LZ4_5, ZSTD_5, Codec
from .compare import COMPRESS, COMPRESS_APPEND, FULL_READ, LIMIT_LABELS, PLACE, PREAD_PLACE, READ_INTO, Comparison, Row
from .data import size_label
from .measure import MIB, Figure, median

GOAL_BYTES = 2**30
KINDS = ("microscopy", "poisson")
RANDOM_SLACK_US = 30.0
MEMORY_SLACK = 8 * MIB
FLAT = 0.10
SAME_PROCESS = 0.10


@dataclass(frozen=True)
class Targets:
    """blockfs's floors on one codec: times faster than a limit (a comparison row's name) or tensorstore."""

    write_limit: str
    write: float
    read_limit: str
    read: float
    read_into: float
    over_tensorstore: float


TARGETS: dict[Codec, Targets] = {
    ZSTD_5: Targets(COMPRESS, 0.9, PLACE, 0.9, 0.95, 1.1),
    LZ4_5: Targets(COMPRESS_APPEND, 0.85, PREAD_PLACE, 0.9, 0.9, 1.2),
}


@dataclass
class Goal:
    name: str
    target: str
    measured: str
    met: bool | None  # None: not measured in this run, or its figures are flagged

    @property
    def status(self) -> str:
        return "not judged" if self.met is None else ("met" if self.met else "missed")


def goal_size(run) -> int | None:
    sizes = sorted({c.nbytes for c in run.comparisons if c.kind in KINDS})
    if not sizes:
        return None
    return GOAL_BYTES if GOAL_BYTES in sizes else sizes[-1]


def _ratio(goal: str, target: str, fast: Figure | None, slow: Figure | None, what: str, floor: float) -> Goal:
    """``slow.min / fast.min`` (how many times faster ``fast`` is) against ``floor``."""
    if fast is None or slow is None or not fast.samples or not slow.samples:
        return Goal(goal, target, "not run", None)
    ratio = slow.min / fast.min
    text = f"{fast.min * 1000:,.0f} ms vs {what} {slow.min * 1000:,.0f} ms = {ratio:.2f}x"
    if not (fast.steady and slow.steady):
        return Goal(goal, target, text + " (flagged: spread over 20%)", None)
    return Goal(goal, target, text, ratio >= floor)


def _add_net_of_fork(goals: list[Goal], c: Comparison, row: Row, others: list[Figure | None]) -> None:
    """Say in each fork Pool goal what its ratio is without the Pool's own fork and end (the verdict stays)."""
    net = c.without_pool_fork(row)
    if net is None:
        return
    for goal, other in zip(goals, others):
        if other is not None and other.samples:
            goal.measured += (f"; without forking and ending the Pool ({c.fork_pool.min * 1000:,.0f} ms here): "
                              f"{net * 1000:,.0f} ms = {other.min / net:.2f}x")


def _comparison_goals(c: Comparison, t: Targets) -> list[Goal]:
    where = f"{c.kind} {size_label(c.nbytes)}, {c.codec.label}"
    write_limit, read_limit = c.row(t.write_limit), c.row(t.read_limit)
    write_target = f">= {t.write}x the {LIMIT_LABELS[t.write_limit]} limit"
    ts, ts_sync = c.row("tensorstore"), c.row("tensorstore, file_io_sync")
    goals = []
    for row in c.rows:
        if row.role != "blockfs" or row.write is None:
            continue
        other = ts_sync if row.sync == "sync at end" else ts
        if row.sync == "no sync":
            goals.append(_ratio(f"{where}: write, {row.name}", write_target, row.write, write_limit.write, "limit",
                                t.write))
        name = other.name if other else "tensorstore"
        goals.append(_ratio(f"{where}: write, {row.name}", f">= {t.over_tensorstore}x {name}", row.write,
                            other.write if other else None, name, t.over_tensorstore))
        if row is c.fork_pool_row():
            _add_net_of_fork(goals[-2:], c, row, [write_limit.write, other.write if other else None])
    for label, read, floor in (("full read", c.row(FULL_READ), t.read), ("read_into", c.row(READ_INTO), t.read_into)):
        if read is None:
            continue
        goals.append(_ratio(f"{where}: {label}", f">= {floor}x the {LIMIT_LABELS[t.read_limit]} limit", read.read,
                            read_limit.read, "limit", floor))
        goals.append(_ratio(f"{where}: {label}", f">= {t.over_tensorstore}x tensorstore", read.read,
                            ts.read if ts else None, "tensorstore", t.over_tensorstore))
    read = c.row(FULL_READ)
    if read is not None and c.fresh_read.samples:
        slower = read.read.min / c.fresh_read.min - 1
        goals.append(Goal(f"{where}: full read after other stores ran in the process",
                          f"within {SAME_PROCESS:.0%} of a fresh process",
                          f"{read.read.min * 1000:,.0f} ms vs {c.fresh_read.min * 1000:,.0f} ms fresh ({slower:+.0%})",
                          abs(slower) <= SAME_PROCESS if read.read.steady and c.fresh_read.steady else None))
    return goals


def evaluate(run) -> tuple[str, list[Goal]]:
    """(what the goals were judged on, the goals)."""
    nbytes = goal_size(run)
    if nbytes is None:
        return "no side-by-side comparison of microscopy-like data was run", []
    goals: list[Goal] = []
    for c in run.comparisons:
        if c.nbytes == nbytes and c.kind in KINDS and c.codec in TARGETS:
            goals += _comparison_goals(c, TARGETS[c.codec])
    for kind in KINDS:
        read = run.reads.get((kind, nbytes))
        if read is None:
            continue
        lim = run.limits[(kind, nbytes)]
        got, allowed = median(read.random_us), lim.block_decompress_us + RANDOM_SLACK_US
        goals.append(Goal(f"{kind} {size_label(nbytes)}: random read_block median",
                          f"<= one block's decompress + {RANDOM_SLACK_US:.0f} us",
                          f"{got:.0f} us vs {lim.block_decompress_us:.0f} + {RANDOM_SLACK_US:.0f} = {allowed:.0f} us",
                          got <= allowed))
    owned = [w for w in run.writes if w.config.mode == "main"]
    if owned:
        worst = max(owned, key=lambda w: w.owner_growth - w.memory_bound)
        goals.append(Goal("Writer memory bounded by queue depth", "owner RSS growth <= bound + 8 MiB",
                          f"worst owner growth {worst.owner_growth / MIB:.1f} MiB vs bound "
                          f"{worst.memory_bound / MIB:.1f} MiB ({worst.config.label}, {size_label(worst.nbytes)})",
                          all(w.owner_growth <= w.memory_bound + MEMORY_SLACK for w in owned)))
    goals += _flat(run)
    return f"microscopy-like data sets ({', '.join(KINDS)}), {size_label(nbytes)}", goals


def _flat(run) -> list[Goal]:
    """blockfs's main-process write and full read, MB/s at the fastest round, across sizes."""
    from .report import scale_figures
    figures = scale_figures(run)
    goals = []
    for kind in KINDS:
        sizes = sorted(n for k, n in figures if k == kind)
        if len(sizes) < 2:
            continue
        for label, pick in (("write", 0), ("full read", 1)):
            chosen = {n: figures[(kind, n)][pick] for n in sizes}
            rates = {n: n / f.min / 1e6 for n, f in chosen.items()}
            spread = (max(rates.values()) - min(rates.values())) / max(rates.values())
            steady = all(f.steady for f in chosen.values())
            goals.append(Goal(f"{kind}: {label} flat across sizes", f"within {FLAT:.0%}",
                              ", ".join(f"{size_label(n)} {r:,.0f} MB/s" for n, r in rates.items())
                              + f" (spread {spread:.0%})" + ("" if steady else " (flagged: spread over 20%)"),
                              spread <= FLAT if steady else None))
    return goals
