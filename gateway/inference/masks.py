"""Segmentation masks a job produced, kept in the object store for the SEG builder.

The findings table holds where a lesion is; the voxels themselves (source grid, bool) are
too big for a row, so they go beside the study's objects as a compressed ``.npz``: the
mask's ``shape``, its voxels in C order packed eight to a byte, and ``start``, the first
byte the packed ``bits`` stand at — only the span from the first row (slice, for a volume)
that holds a voxel to the last is stored, the bytes around it are zeros. Deflating a CT's
whole packed grid (1–3 MB, nearly all zeros) cost ~4–13 ms per finding; a lesion's few
slices cost a fraction of one. A mask stored without ``start`` (written before it) holds
every byte, from 0.
"""

from __future__ import annotations

import io

import numpy as np

from gateway.errors import GatewayError


class MaskError(GatewayError):
    """A stored mask that cannot be read back."""


def mask_key(job_id: int, label_code: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label_code)
    return f"results/masks/job-{job_id}/{safe}.npz"


def encode_mask(mask: np.ndarray) -> bytes:
    voxels = np.asarray(mask, dtype=bool)
    start, stop = _set_span(voxels)
    flat = voxels.reshape(-1)
    bits = np.packbits(flat[8 * start : min(8 * stop, flat.size)])
    buffer = io.BytesIO()
    np.savez_compressed(buffer, shape=np.asarray(voxels.shape), start=np.asarray(start), bits=bits)
    return buffer.getvalue()


def _set_span(voxels: np.ndarray) -> tuple[int, int]:
    """The packed bytes [start, stop) that hold every set voxel, whole rows (the first
    axis) at a time: a scan of each row for any voxel, not a search for each voxel."""
    if voxels.ndim == 0 or voxels.size == 0:
        return 0, 0
    rows = np.flatnonzero(voxels.reshape(voxels.shape[0], -1).any(axis=1))
    if not rows.size:
        return 0, 0
    row_size = voxels.size // voxels.shape[0]
    return int(rows[0]) * row_size // 8, _bytes_for((int(rows[-1]) + 1) * row_size)


def _bytes_for(bits: int) -> int:
    return -(-bits // 8)


def decode_mask(data: bytes) -> np.ndarray:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            shape = tuple(int(n) for n in stored["shape"])
            whole = "start" not in stored.files  # written before spans were
            start = 0 if whole else int(stored["start"])
            bits = np.unpackbits(stored["bits"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MaskError(f"stored mask unreadable: {exc}") from exc
    count = int(np.prod(shape))
    if whole and bits.size < count:
        raise MaskError(f"stored mask too short for shape {shape}")
    if start < 0 or 8 * start + bits.size > 8 * _bytes_for(count):
        raise MaskError(f"stored mask's bits ({start} bytes on) overrun shape {shape}")
    voxels = np.zeros(count, dtype=bool)
    end = min(8 * start + bits.size, count)
    voxels[8 * start : end] = bits[: end - 8 * start]
    return voxels.reshape(shape)
