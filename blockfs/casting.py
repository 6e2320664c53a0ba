"""One casting rule for every write (``write_block``, region writes, ``PlaneWriter``).

Values that fit the volume's dtype are cast as numpy's ``astype`` casts them (floats are truncated
toward zero), so float deconvolution output and uint64 means go into uint16 volumes as before.
Values outside the dtype's range are clipped to it and NaN becomes 0, never wrapped; one
:class:`BlockfsWarning` per volume object says so, and :attr:`Caster.clipped` counts them all.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np

from .errors import BlockfsWarning


class Caster:
    """Casts arrays to one volume's dtype by the rule above, counting the values it clipped."""

    def __init__(self, dtype: np.dtype, where: str):
        self.dtype = np.dtype(dtype)
        self.where = where
        #: Values clipped (or NaN set to 0) so far by this volume object.
        self.clipped = 0
        self._lock = threading.Lock()
        self._limits = np.iinfo(self.dtype) if self.dtype.kind in "iu" else None

    def __call__(self, array: np.ndarray, what: str) -> np.ndarray:
        """``array`` as the volume's dtype (C-contiguous); ``what`` names it in the warning."""
        if (self._limits is None or array.dtype.kind not in "iuf"  # float or complex volumes, complex input
                or np.can_cast(array.dtype, self.dtype, "safe")):
            return np.ascontiguousarray(array, self.dtype)  # numpy's cast, as before
        lo, hi = int(self._limits.min), int(self._limits.max)
        if array.dtype.kind == "f":
            with np.errstate(invalid="ignore"):
                outside = ~((array > lo - 1) & (array < hi + 1))  # NaN compares false: outside too
        else:
            outside = (array < lo) | (array > hi)
        count = int(np.count_nonzero(outside))
        if count:
            self._report(count, what)
            array = self._clip(array, lo, hi)
        return np.ascontiguousarray(array, self.dtype)

    @staticmethod
    def _clip(array: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """``array`` clipped to [lo, hi] (bounds the source dtype can hold), NaN set to 0."""
        if array.dtype.kind == "f":
            top = float(hi) if float(hi) <= hi else float(np.nextafter(float(hi), 0))  # 2**64 - 1 is no float
            clipped: np.ndarray = np.clip(np.nan_to_num(array, nan=0.0), float(lo), top)
            return clipped
        source = np.iinfo(array.dtype)
        clipped = np.clip(array, max(lo, int(source.min)), min(hi, int(source.max)))
        return clipped

    def _report(self, count: int, what: str) -> None:
        with self._lock:
            first = not self.clipped
            self.clipped += count
        if first:
            warnings.warn(BlockfsWarning(
                f"{self.where}: {count} values of {what} lie outside the range of {self.dtype.name} (or are NaN) and "
                f"were clipped to it (NaN to 0) instead of wrapping around. This warning is shown once per volume "
                "object; its clipped_values attribute counts every clipped value. Scale or clip the data first to "
                "silence it."), stacklevel=4)
