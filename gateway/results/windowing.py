"""Grey levels: how a source image is shown by default.

Its own first window, else its VOI LUT, else a window over the 0.5–99.5 percentiles (as the
devices' preprocessing); MONOCHROME1 shown inverted. The flag images render with this, and
the GSPS hands the same window to the viewer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydicom import Dataset
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

from gateway.inference.decode import decode_image
from gateway.inference.native import native_words


def display_pixels(source: Dataset) -> np.ndarray:
    """The source as a viewer would show it by default, float32 in [0, 1], white bright."""
    values = decode_image(source).pixels
    window = source_window(source)
    if window is not None:
        shown = apply_window(values, *window)
    elif source.get("VOILUTSequence"):
        out = np.asarray(apply_voi_lut(values, source, prefer_lut=True), dtype=np.float32)
        low, high = float(out.min()), float(out.max())
        shown = (out - low) / max(high - low, 1e-6)
    else:
        centre, width = default_window(source, values)
        shown = apply_window(values, centre, width, "LINEAR_EXACT")
    return 1.0 - shown if _inverted(source) else shown


def display_bytes(source: Dataset) -> np.ndarray:
    """:func:`display_pixels` as 8-bit grey, 0 black and 255 white (rounded to nearest)."""
    stored = native_words(source)  # in place; the table reads what each word means
    try:
        raw = np.asarray(source.pixel_array) if stored is None else stored
    except Exception:  # decoders raise anything: display_pixels says what, as DecodeError
        return _to_bytes(display_pixels(source))
    window = source_window(source)
    if raw.ndim != 2 or raw.dtype.kind not in "iu" or raw.itemsize > 2:
        return _to_bytes(display_pixels(source))  # an odd layout
    if window is None:
        if source.get("VOILUTSequence"):
            return _to_bytes(display_pixels(source))
        # The percentiles need every pixel once; the window they give goes through the
        # table like any other (windowing 5 Mpx one by one took ~30 ms more).
        window = (*default_window(source), "LINEAR_EXACT")
    unsigned = np.dtype(f"u{raw.itemsize}")
    # Every value the stored type can hold, in the order of its unsigned reading.
    levels = np.arange(2 ** (8 * raw.itemsize), dtype=unsigned).view(raw.dtype)
    if stored is not None:
        levels = _meant(levels, source)  # the bits above Bits Stored are left in the raw view
    values = np.asarray(apply_modality_lut(levels, source), dtype=np.float32)
    shown = apply_window(values, *window)
    table = _to_bytes(1.0 - shown if _inverted(source) else shown)
    return _looked_up(table, raw.view(unsigned))


# Rows looked up at a time: numpy turns the indices into a temporary intp array first, and
# a block of it that stays in the cache cuts a 5-Mpx radiograph's lookup from ~10.7 to ~4 ms.
_LOOKUP_ROWS = 32


def _looked_up(table: np.ndarray, indices: np.ndarray) -> np.ndarray:
    out = np.empty(indices.shape, dtype=table.dtype)
    for start in range(0, indices.shape[0], _LOOKUP_ROWS):
        # "clip" changes nothing (the table has an entry for every value of the indices'
        # type) and skips numpy's bounds check: ~4.5 -> ~3.3 ms.
        rows = slice(start, start + _LOOKUP_ROWS)
        np.take(table, indices[rows], out=out[rows], mode="clip")
    return out


def _meant(words: np.ndarray, source: Dataset) -> np.ndarray:
    """The value each stored word means: its low Bits Stored bits, sign-extended when the
    pixels are signed (as pydicom's decode corrects them)."""
    bits = int(source.BitsStored)
    if bits == 8 * words.itemsize:
        return words
    unsigned = words.view(np.dtype(f"u{words.itemsize}")) & ((1 << bits) - 1)
    if int(source.PixelRepresentation) != 1:
        return unsigned.astype(words.dtype)
    extended = unsigned.astype(np.int64) - ((unsigned >> (bits - 1)) << bits)
    return extended.astype(words.dtype)


def _to_bytes(shown: np.ndarray) -> np.ndarray:
    return np.rint(shown * 255.0).astype(np.uint8)


def source_window(source: Dataset) -> tuple[float, float, str] | None:
    """The source's first window (centre, width, VOI LUT function), if it has a usable one."""
    centre, width = source.get("WindowCenter"), source.get("WindowWidth")
    if centre is None or width is None:
        return None
    centre = centre[0] if isinstance(centre, Sequence) and not isinstance(centre, str) else centre
    width = width[0] if isinstance(width, Sequence) and not isinstance(width, str) else width
    try:
        c, w = float(centre), float(width)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(c) and math.isfinite(w)) or w <= 0:
        return None
    return c, w, str(source.get("VOILUTFunction") or "LINEAR").upper()


# Where default_window keeps its answer on the source's dataset, as pydicom keeps the
# decoded pixel_array there: for as long as the job holds the dataset, and no longer.
_DEFAULT_WINDOW = "_aigw_default_window"


def default_window(source: Dataset, values: np.ndarray | None = None) -> tuple[float, float]:
    """:func:`percentile_window` of the source's pixels (``values``: decoded already),
    computed once per dataset: the flag image draws with it and the GSPS hands it to the
    viewer, and for a radiograph the decode and percentiles took ~40 ms each time."""
    known: tuple[float, float] | None = source.__dict__.get(_DEFAULT_WINDOW)
    if known is None:
        if values is None:
            values = decode_image(source).pixels
        known = percentile_window(values)
        object.__setattr__(source, _DEFAULT_WINDOW, known)  # not a DICOM attribute
    return known


def percentile_window(values: np.ndarray) -> tuple[float, float]:
    """Centre and width spanning the 0.5–99.5 percentiles (as the devices' preprocessing)."""
    low, high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    width = max(high - low, 1.0)
    return low + width / 2, width


def apply_window(values: np.ndarray, centre: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2: the three VOI LUT functions, mapped to [0, 1] instead of a bit
    range."""
    if function == "SIGMOID":
        shown = 1.0 / (1.0 + np.exp(-4.0 * (values - centre) / width))
    elif function == "LINEAR_EXACT":
        shown = (values - centre) / width + 0.5
    else:
        shown = (values - (centre - 0.5)) / max(width - 1.0, 1e-6) + 0.5
    return np.clip(shown, 0.0, 1.0).astype(np.float32)


def _inverted(source: Dataset) -> bool:
    photometric = str(source.get("PhotometricInterpretation", ""))
    if photometric == "MONOCHROME1":
        return True  # INVERSE presentation shape with MONOCHROME1 says the same, not again
    return photometric == "MONOCHROME2" and source.get("PresentationLUTShape") == "INVERSE"
