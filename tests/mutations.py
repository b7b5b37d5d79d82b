"""A seeded mutator of DICOM instances, for the bounded fuzz tests (C-STORE and decode).

Each source is a real or synthetic instance; each :class:`Mutant` is its file meta (left
whole, so the peer can still pick a presentation context) and a dataset body damaged one
way: byte flips, a corrupted length field, truncation, deeply nested sequences, an edited
codestream header (JPEG SOF, JPEG 2000 SIZ, RLE offsets), or impossible image attributes.
The same seed gives the same mutants.

``AIGW_FUZZ_SECONDS`` runs a fuzz test longer than its CI budget; ``AIGW_FUZZ_SEED`` picks
another sequence.
"""

from __future__ import annotations

import copy
import os
import random
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom.config
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from gateway.demo.synthetic import chest_xray_study, ct_chest_study
from tests.services.processes import SHARED_DICOM

LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV"}
HOSTILE_LENGTHS = (0, 1, 2, 0xFF, 0xFFFE, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFF0, 0xFFFFFFFF)
HOSTILE_SIZES = (0, 1, 2, 3, 255, 4096, 32767, 60000, 65535)
MAX_SOURCE_BYTES = 1 << 20  # larger real files add time, not new shapes


def fuzz_seconds(default: float) -> float:
    """The time budget: ``AIGW_FUZZ_SECONDS`` when set (hours if you like), else ``default``."""
    return float(os.environ.get("AIGW_FUZZ_SECONDS", default))


def fuzz_seed(default: int) -> int:
    return int(os.environ.get("AIGW_FUZZ_SEED", default))


@dataclass(frozen=True)
class Mutant:
    source: str
    mutation: str
    meta: bytes  # the preamble, "DICM" and the file meta group, whole
    body: bytes
    sop_class: str
    transfer_syntax: str

    def part10(self) -> bytes:
        return self.meta + self.body


def sources() -> list[Dataset]:
    """Synthetic instances in several transfer syntaxes and the shared real files under
    1 MiB (where they are present)."""
    cxr = [chest_xray_study(seed=n, kind="fluorography", size=(64, 64)).datasets[0] for n in (1, 2)]
    cxr[1].compress(RLELossless)
    j2k = chest_xray_study(seed=3, kind="radiography", modality="CR", size=(64, 64)).datasets[0]
    j2k.compress(JPEG2000Lossless)
    ct = ct_chest_study(seed=4, n_slices=2, size=(32, 32), with_nodule=False).datasets[0]
    found = [*cxr, j2k, ct]
    if SHARED_DICOM.is_dir():
        for path in sorted(SHARED_DICOM.rglob("*.dcm")):
            if path.stat().st_size <= MAX_SOURCE_BYTES:
                found.append(dcmread(path))
    return found


class Mutator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.edits: list[tuple[str, Callable[[Dataset], None]]] = [
            ("image attributes", self._image_attributes),
            ("nested sequences", self._nested_sequences),
        ]
        self.damages: list[tuple[str, Callable[[bytearray, bool], bytearray]]] = [
            ("byte flips", self._flips),
            ("length field", self._length_field),
            ("truncation", self._truncate),
            ("codestream header", self._codestream),
        ]

    def mutants(self, datasets: list[Dataset]) -> Iterator[Mutant]:
        """Endless: a random source, a random way of damaging it."""
        while True:
            yield self.mutant(self.rng.choice(datasets))

    def mutant(self, original: Dataset) -> Mutant:
        dataset = _copy(original)
        dataset.file_meta = FileMetaDataset(dataset.file_meta)
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        names = []
        if self.rng.random() < 0.35:
            name, edit = self.rng.choice(self.edits)
            edit(dataset)
            names.append(name)
        syntax = str(dataset.file_meta.TransferSyntaxUID)
        body = bytearray(encode_body(dataset, syntax))
        if not names or self.rng.random() < 0.5:
            name, damage = self.rng.choice(self.damages)
            body = damage(body, syntax == ImplicitVRLittleEndian)
            names.append(name)
        return Mutant(
            str(original.get("SOPInstanceUID", "?")),
            " + ".join(names),
            encode_meta(dataset.file_meta),
            bytes(body),
            str(dataset.SOPClassUID),
            syntax,
        )

    # --- dataset edits ------------------------------------------------------------------

    def _image_attributes(self, dataset: Dataset) -> None:
        for keyword in self.rng.sample(
            ["Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "NumberOfFrames"], 2
        ):
            if keyword == "NumberOfFrames":
                dataset.NumberOfFrames = self.rng.choice(HOSTILE_SIZES)
            elif keyword == "BitsAllocated":
                dataset.BitsAllocated = self.rng.choice((0, 1, 7, 8, 12, 16, 32, 64, 65535))
            elif keyword == "SamplesPerPixel":
                dataset.SamplesPerPixel = self.rng.choice((0, 1, 2, 3, 4, 255))
            else:
                setattr(dataset, keyword, self.rng.choice(HOSTILE_SIZES))

    def _nested_sequences(self, dataset: Dataset) -> None:
        depth = self.rng.randint(1, 60)
        inner = Dataset()
        inner.ReferencedSOPInstanceUID = generate_uid()
        for _level in range(depth):
            outer = Dataset()
            outer.ReferencedImageSequence = Sequence([inner])
            inner = outer
        dataset.ReferencedImageSequence = inner.ReferencedImageSequence

    # --- byte damage --------------------------------------------------------------------

    def _flips(self, body: bytearray, _implicit: bool) -> bytearray:
        for _flip in range(self.rng.randint(1, 16)):
            body[self.rng.randrange(len(body))] ^= self.rng.randint(1, 255)
        return body

    def _length_field(self, body: bytearray, implicit: bool) -> bytearray:
        starts = _element_starts(body, implicit)
        if not starts:
            return self._flips(body, implicit)
        start = self.rng.choice(starts)
        value = self.rng.choice(HOSTILE_LENGTHS)
        if implicit or bytes(body[start + 4 : start + 6]) in LONG_VRS:
            offset = start + (4 if implicit else 8)
            struct.pack_into("<I", body, offset, value)
        else:
            struct.pack_into("<H", body, start + 6, value & 0xFFFF)
        return body

    def _truncate(self, body: bytearray, _implicit: bool) -> bytearray:
        return body[: self.rng.randrange(len(body))]

    def _codestream(self, body: bytearray, implicit: bool) -> bytearray:
        size = self.rng.choice(HOSTILE_SIZES)
        for marker, offset, fmt in (
            (b"\xff\x4f\xff\x51", 8, ">I"),  # J2K SIZ: Xsiz or Ysiz
            (b"\xff\xc0", 5, ">H"),  # JPEG SOF0: Y or X
            (b"\xff\xc3", 5, ">H"),  # JPEG SOF3
            (b"\xff\xf7", 5, ">H"),  # JPEG-LS SOF55
        ):
            at = body.find(marker)
            if at >= 0 and at + offset + 8 <= len(body):
                struct.pack_into(
                    fmt, body, at + offset + self.rng.choice((0, 4 if fmt == ">I" else 2)), size
                )
                return body
        rle = body.find(b"\xfe\xff\x00\xe0", body.find(b"\xe0\x7f\x10\x00") + 12)
        if rle >= 0 and rle + 8 + 64 <= len(body):  # RLE: a segment count or an offset
            field = self.rng.randrange(16)
            struct.pack_into("<I", body, rle + 16 + 4 * field, self.rng.choice(HOSTILE_LENGTHS))
            return body
        return self._length_field(body, implicit)


def _element_starts(body: bytearray, implicit: bool) -> list[int]:
    """Where top-level elements start, walked from the front until the walk loses its way
    (explicit VR little endian, or implicit)."""
    starts: list[int] = []
    position = 0
    while position + 8 <= len(body) and len(starts) < 400:
        starts.append(position)
        vr = bytes(body[position + 4 : position + 6])
        if implicit:
            (length,) = struct.unpack_from("<I", body, position + 4)
            header = 8
        elif vr in LONG_VRS:
            (length,) = struct.unpack_from("<I", body, position + 8)
            header = 12
        else:
            (length,) = struct.unpack_from("<H", body, position + 6)
            header = 8
        if length == 0xFFFFFFFF:
            break  # a sequence or encapsulated Pixel Data of undefined length: stop here
        position += header + length
    return starts


def _copy(dataset: Dataset) -> Dataset:
    return copy.deepcopy(dataset)  # sources stay as they are for the next mutant


def encode_body(dataset: Dataset, syntax: str) -> bytes:
    """The dataset in ``syntax`` (deflated for the deflated syntax), invalid values allowed."""
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = syntax == ImplicitVRLittleEndian
    mode = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        write_dataset(buffer, dataset)
    finally:
        pydicom.config.settings.writing_validation_mode = mode
    data = buffer.getvalue()
    if syntax == DeflatedExplicitVRLittleEndian:
        deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = deflate.compress(data) + deflate.flush()
    return data


def encode_meta(meta: FileMetaDataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return b"\0" * 128 + b"DICM" + buffer.getvalue()


def write_mutant(mutant: Mutant, folder: Path, number: int) -> Path:
    path = folder / f"mutant{number % 64}.dcm"
    path.write_bytes(mutant.part10())
    return path
