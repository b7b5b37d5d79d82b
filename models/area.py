"""Area (box) shrinking of an integer image, equal bit for bit to torch's.

``torch.nn.functional.interpolate(mode="area")`` — what MONAI's ``Resize(mode="area")``
runs — is adaptive average pooling: output row ``i`` of ``m`` averages input rows
``floor(i·n/m)`` to ``ceil((i+1)·n/m)``, and likewise for columns; on the CPU it sums each
window in float32 and divides by the window's height, then by its width. On a radiograph it
first needs the image in float32 (5 Mpx: ~1 ms to convert) and then ~2.4 ms to pool.

Where the image is whole numbers (≤ 16-bit stored values plus a whole intercept) and no
window's sum can reach 2**24, every partial sum torch forms is an integer float32 holds
exactly, in whatever order it adds: so any exact sum gives its result. Here the window
sums come from the stored integers directly — rows summed into float32 window by window,
then columns with ``np.add.reduceat`` (alternate windows do not overlap) — and are divided
as torch divides: ~2 ms, with no float32 copy of the image.
"""

from __future__ import annotations

import numpy as np

EXACT = 1 << 24  # float32 holds every integer of at most this magnitude exactly


def windows(length: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive pooling's windows: starts and (exclusive) ends of ``size`` windows."""
    index = np.arange(size, dtype=np.int64)
    return (index * length) // size, ((index + 1) * length + size - 1) // size


def area_shrink(stored: np.ndarray, intercept: float, size: tuple[int, int]) -> np.ndarray | None:
    """``stored + intercept`` shrunk to ``size`` by area, as torch gives it in float32;
    None where that is not exact this way (not integers, enlarging, sums past 2**24)."""
    if stored.ndim != 2 or stored.dtype.kind not in "iu" or stored.itemsize > 2:
        return None
    if not float(intercept).is_integer() or abs(intercept) >= EXACT:
        return None
    (rows, columns), (out_rows, out_columns) = stored.shape, size
    if not (1 <= out_rows <= rows and 1 <= out_columns <= columns):
        return None
    row_starts, row_ends = windows(rows, out_rows)
    col_starts, col_ends = windows(columns, out_columns)
    largest_window = int((row_ends - row_starts).max() * (col_ends - col_starts).max())
    if not _sums_exact(stored, intercept, largest_window):
        return None
    sums = _column_sums(_row_sums(stored, row_starts, row_ends), col_starts, col_ends)
    heights = (row_ends - row_starts)[:, None]
    widths = (col_ends - col_starts)[None, :]
    # The intercept once per pixel of each window: exact in float64, then exact in float32.
    total = (sums.astype(np.float64) + intercept * heights * widths).astype(np.float32)
    result: np.ndarray = (total / heights.astype(np.float32)) / widths.astype(np.float32)
    return result


def _sums_exact(stored: np.ndarray, intercept: float, window: int) -> bool:
    """No window sum, of stored values or of values plus intercept, reaches 2**24: from
    the dtype's range where that settles it, else from the image's own."""
    info = np.iinfo(stored.dtype)
    if _largest(info.min, info.max, intercept) * window < EXACT:
        return True
    return _largest(int(stored.min()), int(stored.max()), intercept) * window < EXACT


def _largest(low: int, high: int, intercept: float) -> float:
    return max(abs(low), abs(high), abs(low + intercept), abs(high + intercept))


def _row_sums(stored: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    sums = np.empty((len(starts), stored.shape[1]), dtype=np.float32)
    for index, (start, end) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        np.add.reduce(stored[start:end], axis=0, dtype=np.float32, out=sums[index])
    return sums


def _column_sums(rows: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Window sums along each row. Shrinking, windows ``j`` and ``j + 2`` never overlap
    (they are at least ``columns / size`` ≥ 1 apart), so each parity's windows are one
    ``reduceat`` whose sums at even places are theirs."""
    sums = np.empty((rows.shape[0], len(starts)), dtype=np.float32)
    for parity in (0, 1):
        if parity >= len(starts):
            continue
        bounds = np.stack([starts[parity::2], ends[parity::2]], axis=1).ravel()
        if bounds[-1] == rows.shape[1]:  # the last window runs to the end anyway
            bounds = bounds[:-1]
        sums[:, parity::2] = np.add.reduceat(rows, bounds, axis=1)[:, ::2]
    return sums
