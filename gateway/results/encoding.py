"""The result objects as DICOM part-10 bytes: pydicom's writer, the same bytes, less CPU.

Two costs of :func:`pydicom.dcmwrite` that say nothing new about a freshly built object:

* Every dataset written whose encoding is not known to match (all of ours: they were built,
  not read) first has its ambiguous VRs corrected, through its whole subtree, and each of
  its sequence items again when written: an SR's content tree, six levels deep, was walked
  six times over (~5 ms of a chest X-ray's SR and SC). Here the tree is corrected once, top
  down, as the writer's first pass does, and each dataset is then marked as already in the
  encoding written, so the writer's own passes are skipped.
* A flag image's Pixel Data (~12 MB) was copied into a growing buffer and out again; it is
  joined once behind the rest instead.
"""

from __future__ import annotations

import io
import struct

from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import correct_ambiguous_vr
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian

PIXEL_DATA = Tag(0x7FE0, 0x0010)
# (is_implicit_VR, is_little_endian) of Explicit VR Little Endian, what the fast paths assume.
_WRITTEN = (False, True)
# Below this, Pixel Data goes through the writer like any element.
_JOIN_AT = 1 << 20


def part10(dataset: Dataset) -> bytes:
    """The object as a DICOM part-10 file, Explicit VR Little Endian unless it says."""
    if not getattr(dataset, "file_meta", None) or "TransferSyntaxUID" not in dataset.file_meta:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = dataset.SOPClassUID
        meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset.file_meta = meta
    if dataset.file_meta.TransferSyntaxUID != ExplicitVRLittleEndian:
        return _written(dataset)  # not the encoding the fast paths assume: pydicom as it is
    _settle(dataset)
    pixels = _joinable_pixels(dataset)
    if pixels is None:
        return _written(dataset)
    del dataset[PIXEL_DATA]
    try:
        head = _written(dataset)
    finally:
        dataset[PIXEL_DATA] = pixels
    value = pixels.value
    pad = b"\0" if len(value) % 2 else b""
    header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, pixels.VR.encode(), 0, len(value) + len(pad))
    return b"".join((head, header, value, pad))


def _written(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _joinable_pixels(dataset: Dataset) -> DataElement | None:
    """Pixel Data that can be written behind the rest: native, large, the last element."""
    if PIXEL_DATA not in dataset or max(dataset.keys()) != PIXEL_DATA:
        return None
    element = dataset[PIXEL_DATA]
    value = element.value
    if element.VR not in ("OB", "OW") or not isinstance(value, bytes) or len(value) < _JOIN_AT:
        return None
    return element


def _settle(dataset: Dataset) -> None:
    """What the writer's first pass does to ``dataset`` and its items, done once: ambiguous
    VRs corrected and elements read from bytes decoded, wherever a dataset's encoding or
    character set differs from what is written; each such dataset then says it is in that
    encoding, so that the writer does not do it again for every level of the tree."""
    if dataset.original_encoding != _WRITTEN or (
        dataset.original_character_set != dataset._character_set
    ):
        correct_ambiguous_vr(dataset, True)  # the whole subtree, as the writer's first call
        _mark(dataset)
        return
    for element in dataset.elements():
        if isinstance(element, DataElement) and element.VR == "SQ":
            for item in element.value:
                _settle(item)


def _mark(dataset: Dataset) -> None:
    """Decode every element (as the writer does, reading them by tag) and record the dataset
    as encoded as written; the same for every item below."""
    for tag in list(dataset.keys()):
        element = dataset[tag]
        if element.VR == "SQ":
            for item in element.value:
                if item.original_encoding != _WRITTEN or (
                    item.original_character_set != item._character_set
                ):
                    _mark(item)
                else:
                    _settle(item)
    dataset.set_original_encoding(*_WRITTEN, dataset._character_set)
