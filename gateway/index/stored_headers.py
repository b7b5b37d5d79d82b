"""Stored objects' headers — each dataset up to its Pixel Data — read from their first bytes.

WADO-RS metadata, QIDO-RS's result attributes and a vendor's answer need a stored object's
attributes, not its pixels. Reading whole objects for them moved a CT slice's 512 KiB or a
mammogram's tens of MiB (from S3, over the network, one after another) to parse a few KiB.
Here the first :data:`HEAD_BYTES` of each object are read (S3: ranged GETs, side by side),
parsed by pydicom, and taken only where they reach the Pixel Data or hold the whole object;
otherwise — a header longer than that, a cut that pydicom cannot tell from an end — the
whole object is read and parsed, as before.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from io import BytesIO

from pydicom import Dataset, dcmread

from gateway.errors import StorageError
from gateway.index.object_store import ObjectStore

HEAD_BYTES = 64 * 1024
BATCH = 64  # objects whose heads are read together: 4 MiB held at most
_PIXEL_ELEMENTS = frozenset({0x0008, 0x0009, 0x0010})  # (7FE0,0008/0009/0010): pydicom's stop


def read_headers(
    store: ObjectStore, keys: Sequence[str]
) -> Iterator[tuple[str, Dataset | Exception]]:
    """Each key's header in order, or why it could not be parsed (the caller says what an
    unreadable object means); :class:`~gateway.errors.StorageError` when the store fails."""
    for start in range(0, len(keys), BATCH):
        batch = keys[start : start + BATCH]
        for key, head in zip(batch, store.get_heads(batch, HEAD_BYTES), strict=True):
            try:
                yield key, _header(store, key, head)
            except StorageError:
                raise  # the store, not the object (read whole when its head was not enough)
            except Exception as exc:  # damaged bytes can raise nearly anything in pydicom
                yield key, exc


def read_header(store: ObjectStore, key: str) -> Dataset:
    """One object's header; pydicom's error when it does not parse."""
    ((_key, found),) = read_headers(store, [key])
    if isinstance(found, Exception):
        raise found
    return found


def _header(store: ObjectStore, key: str, head: bytes) -> Dataset:
    whole = len(head) < HEAD_BYTES
    buffer = BytesIO(head)
    try:
        dataset = dcmread(buffer, stop_before_pixels=True)
        if whole or at_pixel_data(head, buffer.tell()):
            return dataset
    except Exception:
        if whole:
            raise
        # Cut inside an element, maybe: the whole object says whether it is damaged.
    return dcmread(BytesIO(store.get(key)), stop_before_pixels=True)


def at_pixel_data(prefix: bytes, position: int) -> bool:
    """Whether the element at ``position`` is whole inside ``prefix`` (tag, VR, length) and
    is the Pixel Data pydicom stops before, in either byte order: otherwise a parse of the
    prefix may have ended at the prefix's end, not at the pixels."""
    if position + 12 > len(prefix):
        return False
    little, big = (
        struct.unpack_from("<HH", prefix, position),
        struct.unpack_from(">HH", prefix, position),
    )
    return any(group == 0x7FE0 and element in _PIXEL_ELEMENTS for group, element in (little, big))
