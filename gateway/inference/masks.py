"""Segmentation masks a job produced, kept in the object store for the SEG builder.

The findings table holds where a lesion is; the voxels themselves (source grid, bool) are
too big for a row, so they go beside the study's objects as a compressed ``.npz``.
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
    buffer = io.BytesIO()
    np.savez_compressed(buffer, shape=np.asarray(mask.shape), bits=np.packbits(mask.astype(bool)))
    return buffer.getvalue()


def decode_mask(data: bytes) -> np.ndarray:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            shape = tuple(int(n) for n in stored["shape"])
            bits = np.unpackbits(stored["bits"])
    except (OSError, ValueError, KeyError) as exc:
        raise MaskError(f"stored mask unreadable: {exc}") from exc
    count = int(np.prod(shape))
    if bits.size < count:
        raise MaskError(f"stored mask too short for shape {shape}")
    return bits[:count].reshape(shape).astype(bool)
