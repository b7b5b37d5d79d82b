"""Stored objects' headers — each dataset up to its Pixel Data — read from their first bytes.

WADO-RS metadata, QIDO-RS's result attributes and a vendor's answer need a stored object's
attributes, not its pixels. Reading whole objects for them moved a CT slice's 512 KiB or a
mammogram's tens of MiB (from S3, over the network, one after another) to parse a few KiB.
Here the first :data:`HEAD_BYTES` of each object are read (S3: ranged GETs, side by side),
parsed by pydicom, and taken only where pydicom stopped at the Pixel Data or they hold the
whole object; otherwise (a header longer than that) the whole object is read and parsed, as
before. Ingest parses a received instance's first bytes the same way (:func:`parse_head`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from io import BytesIO

from pydicom import Dataset, dcmread
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag

from gateway.errors import StorageError
from gateway.index.object_store import ObjectStore

HEAD_BYTES = 64 * 1024
BATCH = 64  # objects whose heads are read together: 4 MiB held at most
# (7FE0,0008/0009/0010): where pydicom's stop_before_pixels stops
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})


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
            except (StorageError, MemoryError):
                raise  # the store or this process, not the object
            except Exception as exc:  # damaged bytes can raise nearly anything in pydicom
                yield key, exc


def read_header(store: ObjectStore, key: str) -> Dataset:
    """One object's header; pydicom's error when it does not parse."""
    ((_key, found),) = read_headers(store, [key])
    if isinstance(found, Exception):
        raise found
    return found


def _header(store: ObjectStore, key: str, head: bytes) -> Dataset:
    parsed = parse_head(head, whole=len(head) < HEAD_BYTES)
    if parsed is not None:
        return parsed[0]
    return dcmread(BytesIO(store.get(key)), stop_before_pixels=True)


def parse_head(head: bytes, whole: bool) -> tuple[Dataset, int] | None:
    """The dataset up to its Pixel Data parsed from an object's first bytes (``whole``:
    they are all of it), and where the Pixel Data starts; None where the parse did not
    stop at the Pixel Data (the caller reads the whole object). A damaged whole object
    raises pydicom's error.

    Only pydicom's own stop says the head reached the pixels: a parse that ran out of
    bytes may end quietly (a value cut short, an undefined length whose delimiter lies
    beyond, both only warned of) wherever the head ends."""
    stopped = False

    def at_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
        nonlocal stopped
        stopped = tag in _PIXEL_TAGS
        return stopped

    buffer = BytesIO(head)
    try:
        dataset = read_partial(buffer, stop_when=at_pixels)
    except Exception:
        if whole:
            raise
        return None  # cut inside an element, maybe: the whole object says
    if whole or stopped:
        return dataset, buffer.tell()
    return None
