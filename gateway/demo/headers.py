"""The parts every synthetic study shares: the patient, study, series and equipment headers
a real modality sends (all derived from the study's kind and seed), pixel encoding in the
transfer syntaxes the demo uses, and each instance's ground truth."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from models.phantoms import Lesion, Phantom

TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless)
INSTITUTION = "Синтетическая больница"
MANUFACTURER = "AIGW synthetic phantom"
_SOFTWARE = "aigw-synthetic 1"


@dataclass(frozen=True, eq=False)
class InstanceTruth:
    """Ground truth for one instance, in its own pixel coordinates.

    Attributes
    ----------
    sop_instance_uid
        The instance this describes.
    phantom
        The phantom the instance shows (a CT series shares one); ``None`` for a localizer.
        Stored pixels are its values as they are, except CT (stored ``HU + 1024``,
        RescaleIntercept -1024) and Secondary Capture (8-bit, ``pixels >> 4``).
    slice_index
        Which slice of a 3D phantom this instance is; ``None`` for 2D images.
    lesions
        Lesions visible in this instance, as 2D ``(row, col)`` lesions: for a CT slice,
        the cross-section (centre: the 3D centre's row and column; ``diameter_mm``: the
        3D lesion's; bbox and ``voxel_count``: of the cross-section).
    mask
        Lesion mask, ``(Rows, Columns)``.
    """

    sop_instance_uid: str
    phantom: Phantom | None
    slice_index: int | None
    lesions: tuple[Lesion, ...]
    mask: npt.NDArray[np.bool_]


@dataclass(frozen=True, eq=False)
class SyntheticStudy:
    """One synthetic study: its datasets and, aligned with them, their ground truth."""

    kind: str
    study_instance_uid: str
    datasets: tuple[Dataset, ...]
    truth: tuple[InstanceTruth, ...]

    @property
    def positive(self) -> bool:
        """Whether any instance shows a lesion."""
        return any(t.lesions for t in self.truth)

    def truth_for(self, sop_instance_uid: str) -> InstanceTruth:
        for t in self.truth:
            if t.sop_instance_uid == sop_instance_uid:
                return t
        raise KeyError(sop_instance_uid)


def synthetic_snils(number: int) -> str:
    """A well-formed СНИЛС (valid checksum) from a number; synthetic, belongs to nobody."""
    digits = f"{100_000_000 + number % 800_000_000:09d}"  # above 001-001-998, as required
    total = sum(int(d) * weight for d, weight in zip(digits, range(9, 0, -1), strict=True))
    check = total if total < 100 else (0 if total in (100, 101) else total % 101 % 100)
    return f"{digits[:3]}-{digits[3:6]}-{digits[6:]} {check:02d}"


def coded(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def long_string(text: str, what: str) -> str:
    """Check a long string: 64 is counted in bytes by validators, and Cyrillic takes two."""
    if len(text.encode("utf-8")) > 64:
        raise ValueError(f"{what} is longer than 64 bytes in UTF-8: {text!r}")
    return text


def decimal_string(value: float) -> str:
    """A decimal string that fits DS's 16 characters."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if len(text) <= 16 else f"{value:.8g}"


class StudyHeaders:
    """Identity, dates and UIDs of one synthetic study, all derived from (kind, seed)."""

    def __init__(
        self, kind: str, seed: int, modality_tag: str, variant: object, female: bool = False
    ) -> None:
        if seed < 0:
            raise ValueError(f"seed must be >= 0; got {seed}")
        self.kind = kind
        self.seed = seed
        self.variant = repr(variant)  # other pixels, other UIDs; same patient
        digest = hashlib.sha256(f"{kind}|{seed}".encode()).digest()
        self.stream = int.from_bytes(digest[:8], "little")
        meta = np.random.default_rng([self.stream, 1])
        self.when = datetime(2024, 1, 9, 8, 0) + timedelta(
            days=int(meta.integers(0, 700)), minutes=int(meta.integers(0, 600))
        )
        age = int(meta.integers(40, 76))
        anniversary = self.when.date() - timedelta(days=int(meta.integers(1, 364)))
        if (anniversary.month, anniversary.day) == (2, 29):
            anniversary -= timedelta(days=1)
        self.birth_date = anniversary.replace(year=anniversary.year - age).strftime("%Y%m%d")
        self.age = f"{age:03d}Y"
        self.sex = "F" if female or meta.uniform() < 0.5 else "M"
        self.number = int(meta.integers(10**7, 10**8))
        self.patient_name = f"SYNTHETIC^PHANTOM^{modality_tag}"
        self.patient_id = f"SYN-{digest[8:12].hex().upper()}"
        self.snils = synthetic_snils(int.from_bytes(digest[12:16], "little"))
        self.uid = self.make_uid("study")

    def rng(self) -> np.random.Generator:
        """The phantom's random stream (separate from the one that drew the headers)."""
        return np.random.default_rng([self.stream, 2])

    def make_uid(self, *parts: object) -> UID:
        fields = ["aigw-synthetic", self.kind, str(self.seed), self.variant, *map(str, parts)]
        source = "|".join(fields)
        return generate_uid(entropy_srcs=[source])

    def instance(
        self,
        sop_class: str,
        modality: str,
        series_number: int,
        series_description: str,
        instance_number: int,
        study_description: str,
        body_part: str,
    ) -> Dataset:
        """A dataset with the patient, study, series, equipment and SOP common modules."""
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        date_, time_ = self.when.strftime("%Y%m%d"), self.when.strftime("%H%M%S")
        series_time = (self.when + timedelta(minutes=series_number)).strftime("%H%M%S")
        ds.InstanceCreationDate, ds.InstanceCreationTime = date_, series_time
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = self.make_uid("instance", series_number, instance_number)
        ds.StudyDate, ds.StudyTime = date_, time_
        ds.SeriesDate, ds.SeriesTime = date_, series_time
        ds.AcquisitionDate, ds.AcquisitionTime = date_, series_time
        ds.ContentDate, ds.ContentTime = date_, series_time
        ds.AccessionNumber = f"SYN{self.number}"
        ds.Modality = modality
        ds.Manufacturer = MANUFACTURER
        ds.InstitutionName = INSTITUTION
        ds.ReferringPhysicianName = "СИНТЕТИЧЕСКИЙ^ВРАЧ"
        ds.StationName = "SYNTH01"
        ds.StudyDescription = long_string(study_description, "StudyDescription")
        ds.SeriesDescription = long_string(series_description, "SeriesDescription")
        ds.ManufacturerModelName = f"models.phantoms.{self.kind}"
        ds.PatientName = self.patient_name
        ds.PatientID = self.patient_id
        ds.IssuerOfPatientID = "AIGW-SYNTHETIC"
        other = Dataset()  # where Russian archives carry the СНИЛС (the SEMD needs it)
        other.PatientID = self.snils
        other.IssuerOfPatientID = "СНИЛС"
        other.TypeOfPatientID = "TEXT"
        ds.OtherPatientIDsSequence = [other]
        ds.PatientBirthDate = self.birth_date
        ds.PatientSex = self.sex
        ds.PatientAge = self.age
        ds.BodyPartExamined = body_part
        ds.DeviceSerialNumber = "0000"
        ds.SoftwareVersions = _SOFTWARE
        ds.StudyInstanceUID = self.uid
        ds.SeriesInstanceUID = self.make_uid("series", series_number)
        ds.StudyID = f"{self.number % 10**6:06d}"
        ds.SeriesNumber = series_number
        ds.InstanceNumber = instance_number
        return ds


def set_pixels(
    ds: Dataset, array: npt.NDArray[np.integer], bits_stored: int, photometric: str
) -> None:
    """Image Pixel module for unsigned single-sample data."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = array.shape
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    dtype = np.uint8 if bits_stored <= 8 else np.dtype("<u2")
    ds.PixelData = np.ascontiguousarray(array, dtype=dtype).tobytes()


def check_syntax(transfer_syntax: str) -> None:
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(
            f"transfer syntax must be one of {TRANSFER_SYNTAXES}; got {transfer_syntax}"
        )


def encode(ds: Dataset, transfer_syntax: str) -> Dataset:
    """Add the file meta information and encode the pixel data in ``transfer_syntax``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = (
        UID(transfer_syntax) if transfer_syntax != RLELossless else ExplicitVRLittleEndian
    )
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "AIGW_SYNTH_1"
    ds.file_meta = meta
    if transfer_syntax == RLELossless:
        ds.compress(RLELossless, generate_instance_uid=False)
    return ds


def set_windows(ds: Dataset, windows: Sequence[tuple[float, float, str]]) -> None:
    ds.WindowCenter = [decimal_string(c) for c, _, _ in windows]
    ds.WindowWidth = [decimal_string(w) for _, w, _ in windows]
    ds.WindowCenterWidthExplanation = [name for _, _, name in windows]


def slice_truth(phantom: Phantom, index: int, sop_uid: str) -> InstanceTruth:
    labels = phantom.labels[index]
    lesions = []
    for number, lesion in enumerate(phantom.lesions, start=1):
        here = labels == number
        if not here.any():
            continue
        rows, cols = np.nonzero(here)
        lesions.append(
            Lesion(
                kind=lesion.kind,
                subtype=lesion.subtype,
                center=lesion.center[1:],
                diameter_mm=lesion.diameter_mm,
                bbox=(
                    (int(rows.min()), int(rows.max()) + 1),
                    (int(cols.min()), int(cols.max()) + 1),
                ),
                voxel_count=int(here.sum()),
            )
        )
    return InstanceTruth(sop_uid, phantom, index, tuple(lesions), labels > 0)


def image_truth(phantom: Phantom, sop_uid: str) -> InstanceTruth:
    return InstanceTruth(sop_uid, phantom, None, phantom.lesions, phantom.mask)
