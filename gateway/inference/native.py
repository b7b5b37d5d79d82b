"""Native (uncompressed, little-endian) Pixel Data read in place from the stored bytes.

For a 2500 × 2048 16-bit radiograph pydicom's ``pixel_array`` costs ~6 ms before any
arithmetic: the parser copies the 10 MB value out of the part-10 bytes, the decoder copies it
again to make it writeable, and shifts every pixel left and right to clear the bits above
Bits Stored. Here the dataset is parsed with large values left in the bytes (``DEFER_BYTES``;
pydicom reads one from the same buffer if anything asks for it), and the frames are a
read-only array over the stored bytes at the value's offset. The bits above Bits Stored are
cleared (unsigned) or sign-extended (signed), as pydicom does, only where some pixel needs
it: one min/max pass says whether any does (most writers leave them clear).

Only what is plain: Explicit or Implicit VR Little Endian, one sample, 8 or 16 bits
allocated, monochrome. Everything else — big endian, deflate, bit-packed, colour, float,
every compressed syntax — is pydicom's, and so is any value shorter than it declares (which
the pixel checks refuse first).
"""

from __future__ import annotations

import mmap
from io import BytesIO

import numpy as np
from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from gateway.pixel_data import pixel_geometry

PIXEL_DATA = Tag(0x7FE0, 0x0010)
IN_PLACE_SYNTAXES = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})
DEFER_BYTES = 1 << 16  # values longer than this stay in the stored bytes until asked for
_MONOCHROME = frozenset({"MONOCHROME1", "MONOCHROME2"})


def native_pixels(dataset: Dataset) -> np.ndarray | None:
    """The array ``dataset.pixel_array`` would give (rows × columns, or frames × rows ×
    columns), read-only and where possible a view on the stored bytes; None where this is
    not a plain native image (pydicom's decoders then take it)."""
    words = native_words(dataset)
    if words is None:
        return None
    return _clear_unused_bits(words, int(dataset.get("BitsStored") or 8 * words.itemsize))


def native_words(dataset: Dataset) -> np.ndarray | None:
    """The stored words of a plain native image as they are in the bytes (the bits above
    Bits Stored as the writer left them), read-only and where possible a view; None where
    this is not a plain native image. The results' flag image reads these and maps every
    word through one table (gateway.results.windowing)."""
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if syntax not in IN_PLACE_SYNTAXES:
        return None
    layout = _layout(dataset)
    if layout is None:
        return None
    dtype, shape = layout
    value = _stored_value(dataset)
    if value is None:
        return None
    source, offset, length = value
    count = int(np.prod(shape))
    if length < count * dtype.itemsize:
        return None
    return np.frombuffer(source, dtype=dtype, count=count, offset=offset).reshape(shape)


def _layout(dataset: Dataset) -> tuple[np.dtype, tuple[int, ...]] | None:
    """dtype and shape of a plain monochrome image, or None."""
    try:
        geometry = pixel_geometry(dataset)
        signed = int(dataset.get("PixelRepresentation", 0) or 0)
    except Exception:  # a damaged value: pydicom's decoder names what is wrong
        return None
    if (
        geometry.samples != 1
        or geometry.bits_allocated not in (8, 16)
        or signed not in (0, 1)
        or geometry.photometric not in _MONOCHROME
    ):
        return None
    dtype = np.dtype(f"<{'i' if signed else 'u'}{geometry.bits_allocated // 8}")
    frames, rows, columns = geometry.frames, geometry.rows, geometry.columns
    return dtype, (frames, rows, columns) if frames > 1 else (rows, columns)


def _stored_value(dataset: Dataset) -> tuple[bytes | mmap.mmap, int, int] | None:
    """The bytes holding the Pixel Data value, its offset in them and its length: the
    part-10 bytes (or their map) where its reading was deferred, else the value read."""
    element = dataset.get_item(PIXEL_DATA, keep_deferred=True)
    if element is None:
        return None
    if isinstance(element, RawDataElement) and element.value is None:
        buffer = getattr(dataset, "buffer", None)
        if isinstance(buffer, mmap.mmap):
            return buffer, element.value_tell, element.length
        if not isinstance(buffer, BytesIO):
            return None
        # getvalue() hands back the very bytes the BytesIO was made from: no copy.
        return buffer.getvalue(), element.value_tell, element.length
    value = element.value
    if not isinstance(value, bytes | bytearray):
        return None
    return bytes(value), 0, len(value)


def _clear_unused_bits(pixels: np.ndarray, bits_stored: int) -> np.ndarray:
    """pydicom's correction of the bits above Bits Stored (a left then a right shift),
    applied only when a pixel's value shows that it changes something."""
    bits = pixels.dtype.itemsize * 8
    if bits_stored >= bits:
        return pixels
    if pixels.dtype.kind == "u":
        if int(pixels.max()) < 1 << bits_stored:
            return pixels
        masked: np.ndarray = pixels & pixels.dtype.type((1 << bits_stored) - 1)
        return masked
    low, high = -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1
    if int(pixels.min()) >= low and int(pixels.max()) <= high:
        return pixels
    shift = bits - bits_stored
    extended: np.ndarray = np.right_shift(np.left_shift(pixels, shift), shift)
    return extended
