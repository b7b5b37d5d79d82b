"""Synthetic DICOM studies of phantoms, for the demo and the tests.

The patients are obviously synthetic (``SYNTHETIC^PHANTOM^…``, ``SYN-…`` ids) but the
headers are what real modalities send, so the gateway ingests and routes them like real
studies. Everything, UIDs included, follows from the seed: the same seed gives the same
bytes. Each study carries its ground truth per instance, in that instance's pixel
coordinates, so a test can check that an AI finding sits where the lesion is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from models import phantoms
from models.phantoms import Lesion, Phantom

__all__ = [
    "TRANSFER_SYNTAXES",
    "InstanceTruth",
    "SyntheticStudy",
    "chest_xray_study",
    "ct_chest_study",
    "ct_head_study",
    "demo_studies",
    "mammography_study",
    "write_study",
]

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


# --------------------------------------------------------------------------- shared parts


def synthetic_snils(number: int) -> str:
    """A well-formed СНИЛС (valid checksum) from a number; synthetic, belongs to nobody."""
    digits = f"{100_000_000 + number % 800_000_000:09d}"  # above 001-001-998, as required
    total = sum(int(d) * weight for d, weight in zip(digits, range(9, 0, -1), strict=True))
    check = total if total < 100 else (0 if total in (100, 101) else total % 101 % 100)
    return f"{digits[:3]}-{digits[3:6]}-{digits[6:]} {check:02d}"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _lo(text: str, what: str) -> str:
    """Check a long string: 64 is counted in bytes by validators, and Cyrillic takes two."""
    if len(text.encode("utf-8")) > 64:
        raise ValueError(f"{what} is longer than 64 bytes in UTF-8: {text!r}")
    return text


def _ds(value: float) -> str:
    """A decimal string that fits DS's 16 characters."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if len(text) <= 16 else f"{value:.8g}"


class _Study:
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
        ds.StudyDescription = _lo(study_description, "StudyDescription")
        ds.SeriesDescription = _lo(series_description, "SeriesDescription")
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


def _pixels(
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


def _check_syntax(transfer_syntax: str) -> None:
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(
            f"transfer syntax must be one of {TRANSFER_SYNTAXES}; got {transfer_syntax}"
        )


def _encode(ds: Dataset, transfer_syntax: str) -> Dataset:
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


def _voi(ds: Dataset, windows: Sequence[tuple[float, float, str]]) -> None:
    ds.WindowCenter = [_ds(c) for c, _, _ in windows]
    ds.WindowWidth = [_ds(w) for _, w, _ in windows]
    ds.WindowCenterWidthExplanation = [name for _, _, name in windows]


def _slice_truth(phantom: Phantom, index: int, sop_uid: str) -> InstanceTruth:
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


def _image_truth(phantom: Phantom, sop_uid: str) -> InstanceTruth:
    return InstanceTruth(sop_uid, phantom, None, phantom.lesions, phantom.mask)


# --------------------------------------------------------------------------- CT


def _ct_series(
    study: _Study,
    phantom: Phantom,
    *,
    series_number: int,
    series_description: str,
    study_description: str,
    body_part: str,
    windows: Sequence[tuple[float, float, str]],
    kernel: str,
    with_localizer: bool,
    transfer_syntax: str,
) -> SyntheticStudy:
    """An axial CT series of a phantom, optionally preceded by a one-image localizer."""
    n, rows, cols = phantom.pixels.shape
    row_mm, col_mm = phantom.pixel_spacing_mm
    thickness = phantom.slice_spacing_mm or 1.0
    frame_uid = study.make_uid("frame")
    z_top = -100.0 + (n - 1) * thickness
    origin = (-(cols - 1) / 2 * col_mm, -(rows - 1) / 2 * row_mm)

    def ct_common(ds: Dataset) -> None:
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.PatientPosition = "HFS"
        ds.KVP = "120"
        ds.AcquisitionNumber = 1
        ds.ConvolutionKernel = kernel
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.BurnedInAnnotation = "NO"

    datasets: list[Dataset] = []
    truth: list[InstanceTruth] = []
    if with_localizer:
        ds = study.instance(CTImageStorage, "CT", 1, "Топограмма", 1, study_description, body_part)
        ct_common(ds)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        del ds.RescaleType  # a projection is not in Hounsfield units
        # Coronal projection of the slab, rows resampled to square pixels.
        projection = np.clip(phantom.pixels.astype(np.float32) + 1000, 0, None).mean(axis=1)
        out_rows = max(1, round(n * thickness / col_mm))
        source = np.minimum((np.arange(out_rows) * col_mm / thickness).astype(int), n - 1)
        image = np.clip(projection[source] * 2.5, 0, 4095).astype(np.uint16)
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
        ds.ImagePositionPatient = [_ds(origin[0]), "0", _ds(z_top)]
        ds.PixelSpacing = [_ds(col_mm), _ds(col_mm)]
        ds.SliceThickness = ""
        _pixels(ds, image, 12, "MONOCHROME2")
        _voi(ds, [(40, 400, "LOCALIZER")])
        datasets.append(_encode(ds, transfer_syntax))
        truth.append(InstanceTruth(ds.SOPInstanceUID, None, None, (), np.zeros(image.shape, bool)))

    stored = (phantom.pixels.astype(np.int32) + 1024).astype(np.uint16)
    for k in range(n):
        ds = study.instance(
            CTImageStorage,
            "CT",
            series_number,
            series_description,
            k + 1,
            study_description,
            body_part,
        )
        ct_common(ds)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        z = z_top - k * thickness
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.ImagePositionPatient = [_ds(origin[0]), _ds(origin[1]), _ds(z)]
        ds.SliceLocation = _ds(z)
        ds.PixelSpacing = [_ds(row_mm), _ds(col_mm)]
        ds.SliceThickness = _ds(thickness)
        ds.SpacingBetweenSlices = _ds(thickness)
        ds.ReconstructionDiameter = _ds(max(rows * row_mm, cols * col_mm))
        ds.GantryDetectorTilt = "0"
        ds.TableHeight = "150"
        ds.RotationDirection = "CW"
        ds.XRayTubeCurrent = 200
        ds.ExposureTime = 500
        _pixels(ds, stored[k], 12, "MONOCHROME2")
        _voi(ds, windows)
        datasets.append(_encode(ds, transfer_syntax))
        truth.append(_slice_truth(phantom, k, ds.SOPInstanceUID))
    return SyntheticStudy(study.kind, study.uid, tuple(datasets), tuple(truth))


def ct_chest_study(
    seed: int,
    n_slices: int = 40,
    size: tuple[int, int] = (512, 512),
    with_nodule: bool = True,
    series_description: str = "КТ ОГК 1.25мм",
    slice_thickness_mm: float = 1.25,
    with_localizer: bool = True,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> SyntheticStudy:
    """CT chest: an axial series (series 2) and, optionally, a localizer (series 1)."""
    _check_syntax(transfer_syntax)
    variant = (n_slices, size, with_nodule, slice_thickness_mm)
    study = _Study("ct_chest", seed, "CT", variant)
    phantom = phantoms.ct_chest(
        study.rng(), n_slices, size, slice_thickness_mm, n_nodules=1 if with_nodule else 0
    )
    return _ct_series(
        study,
        phantom,
        series_number=2,
        series_description=series_description,
        study_description="КТ органов грудной полости",
        body_part="CHEST",
        windows=[(-600, 1500, "LUNG"), (40, 400, "MEDIASTINUM")],
        kernel="LUNG",
        with_localizer=with_localizer,
        transfer_syntax=transfer_syntax,
    )


def ct_head_study(
    seed: int,
    n_slices: int = 24,
    size: tuple[int, int] = (512, 512),
    with_haemorrhage: bool = True,
    series_description: str = "КТ головного мозга 5мм",
    slice_thickness_mm: float = 5.0,
    with_localizer: bool = True,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> SyntheticStudy:
    """CT brain: an axial series (series 2) and, optionally, a localizer (series 1)."""
    _check_syntax(transfer_syntax)
    variant = (n_slices, size, with_haemorrhage, slice_thickness_mm)
    study = _Study("ct_head", seed, "CT", variant)
    phantom = phantoms.ct_head(
        study.rng(), n_slices, size, slice_thickness_mm, haemorrhage=with_haemorrhage
    )
    return _ct_series(
        study,
        phantom,
        series_number=2,
        series_description=series_description,
        study_description="КТ головного мозга",
        body_part="HEAD",
        windows=[(40, 80, "BRAIN"), (600, 2800, "BONE")],
        kernel="SOFT",
        with_localizer=with_localizer,
        transfer_syntax=transfer_syntax,
    )


# --------------------------------------------------------------------------- projection X-ray


def _projection(ds: Dataset, spacing: tuple[float, float], for_presentation: bool) -> None:
    """Detector, intensity and presentation attributes shared by DX, MG and CR images."""
    ds.ImagerPixelSpacing = [_ds(spacing[0]), _ds(spacing[1])]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    if for_presentation:
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.DetectorType = "SCINTILLATOR"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = -1
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "US"
        ds.PresentationLUTShape = "IDENTITY"
        ds.AcquisitionContextSequence = DicomSequence([])


def chest_xray_study(
    seed: int,
    kind: Literal["fluorography", "radiography"] = "fluorography",
    modality: Literal["DX", "CR"] = "DX",
    sop: Literal["dx", "cr", "sc"] | None = None,
    with_lesion: bool = True,
    size: tuple[int, int] = (1024, 1024),
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> SyntheticStudy:
    """A one-image PA chest study: fluorography or chest radiography.

    ``sop`` picks the storage class: ``"dx"`` (Digital X-Ray For Presentation, needs
    ``modality="DX"``), ``"cr"`` (Computed Radiography, needs ``"CR"``) or ``"sc"``
    (Secondary Capture of a digitised film, 8-bit: the stored pixels are the phantom's
    12-bit values shifted right by 4). By default it follows ``modality``.
    """
    if kind not in ("fluorography", "radiography") or modality not in ("DX", "CR"):
        raise ValueError(
            f"kind must be fluorography/radiography and modality DX/CR; got {kind}, {modality}"
        )
    _check_syntax(transfer_syntax)
    sop = sop or ("dx" if modality == "DX" else "cr")
    if (sop, modality) in (("dx", "CR"), ("cr", "DX")) or sop not in ("dx", "cr", "sc"):
        raise ValueError(f"sop {sop!r} does not fit modality {modality!r}")
    name = "fluorography" if kind == "fluorography" else "chest_xray"
    study = _Study(name, seed, modality, (modality, sop, with_lesion, size))
    phantom = phantoms.chest_radiograph(study.rng(), size, n_lesions=1 if with_lesion else 0)
    if kind == "fluorography":
        descriptions = ("Флюорография лёгких", "ФЛГ")
    else:
        descriptions = ("Рентгенография грудной клетки", "ОГК прямая")
    sop_class = {
        "dx": DigitalXRayImageStorageForPresentation,
        "cr": ComputedRadiographyImageStorage,
        "sc": SecondaryCaptureImageStorage,
    }[sop]
    ds = study.instance(sop_class, modality, 1, descriptions[1], 1, descriptions[0], "CHEST")
    ds.PatientOrientation = ["L", "F"]
    spacing = phantom.pixel_spacing_mm
    if sop == "sc":
        ds.ConversionType = "DF"
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.NominalScannedPixelSpacing = [_ds(spacing[0]), _ds(spacing[1])]
        ds.PixelSpacing = [_ds(spacing[0]), _ds(spacing[1])]
        ds.DateOfSecondaryCapture = ds.ContentDate
        ds.TimeOfSecondaryCapture = ds.ContentTime
        ds.BurnedInAnnotation = "NO"
        _pixels(ds, phantom.pixels >> 4, 8, "MONOCHROME2")
        _voi(ds, [(128, 256, "FULL")])
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.ViewPosition = "PA"
        ds.KVP = "110" if kind == "radiography" else "90"
        ds.DistanceSourceToDetector = "1800"
        _projection(ds, spacing, for_presentation=sop == "dx")
        if sop == "dx":
            ds.ImageLaterality = "U"
            ds.PositionerType = "COLUMN"
            pa = _code("399348003", "SCT", "postero-anterior")
            pa.ViewModifierCodeSequence = DicomSequence([])
            ds.ViewCodeSequence = DicomSequence([pa])
            ds.AnatomicRegionSequence = DicomSequence([_code("43799004", "SCT", "Chest")])
            ds.PixelSpacing = [_ds(spacing[0]), _ds(spacing[1])]
        _pixels(ds, phantom.pixels, 12, "MONOCHROME2")
        _voi(ds, [(2048, 4096, "FULL"), (1400, 2000, "LUNG")])
    datasets = (_encode(ds, transfer_syntax),)
    return SyntheticStudy(name, study.uid, datasets, (_image_truth(phantom, ds.SOPInstanceUID),))


# (laterality, view) -> PatientOrientation, view code (SNOMED CT)
_MG_VIEWS: dict[
    tuple[Literal["L", "R"], Literal["CC", "MLO"]], tuple[list[str], tuple[str, str]]
] = {
    ("R", "CC"): (["P", "L"], ("399162004", "cranio-caudal")),
    ("L", "CC"): (["A", "R"], ("399162004", "cranio-caudal")),
    ("R", "MLO"): (["P", "FL"], ("399368009", "medio-lateral oblique")),
    ("L", "MLO"): (["A", "FR"], ("399368009", "medio-lateral oblique")),
}


def mammography_study(
    seed: int,
    with_mass: bool = True,
    size: tuple[int, int] = (2048, 1664),
    calcifications: bool = False,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> SyntheticStudy:
    """Screening mammography: RCC, LCC, RMLO, LMLO in one series, for presentation.

    With ``with_mass`` one breast (chosen by the seed) shows the same-sized mass in both
    its views; ``calcifications`` adds a cluster to that breast's CC view.
    """
    _check_syntax(transfer_syntax)
    study = _Study("mammography", seed, "MG", (with_mass, size, calcifications), female=True)
    rng = study.rng()
    side = "L" if rng.uniform() < 0.5 else "R"
    diameter = float(rng.uniform(8, 30))
    datasets: list[Dataset] = []
    truth: list[InstanceTruth] = []
    for number, (laterality, view) in enumerate(_MG_VIEWS, start=1):
        orientation, (code, meaning) = _MG_VIEWS[laterality, view]
        affected = with_mass and laterality == side
        phantom = phantoms.mammogram(
            rng,
            size,
            laterality=laterality,
            view=view,
            n_masses=1 if affected else 0,
            mass_diameter_mm=(diameter, diameter),
            calcifications=calcifications and laterality == side and view == "CC",
        )
        ds = study.instance(
            DigitalMammographyXRayImageStorageForPresentation,
            "MG",
            1,
            "Маммография",
            number,
            "Маммография",
            "BREAST",
        )
        ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
        ds.ImageLaterality = laterality
        ds.ViewPosition = view
        ds.PatientOrientation = orientation
        view_item = _code(code, "SCT", meaning)
        view_item.ViewModifierCodeSequence = DicomSequence([])
        ds.ViewCodeSequence = DicomSequence([view_item])
        ds.AnatomicRegionSequence = DicomSequence([_code("76752008", "SCT", "Breast")])
        ds.OrganExposed = "BREAST"
        ds.PositionerType = "MAMMOGRAPHIC"
        ds.BreastImplantPresent = "NO"
        ds.KVP = "29"
        ds.DistanceSourceToDetector = "660"
        _projection(ds, phantom.pixel_spacing_mm, for_presentation=True)
        _pixels(ds, phantom.pixels, phantom.bits_stored or 12, "MONOCHROME2")
        _voi(ds, [(2000, 3000, "NORMAL")])
        datasets.append(_encode(ds, transfer_syntax))
        truth.append(_image_truth(phantom, ds.SOPInstanceUID))
    return SyntheticStudy(study.kind, study.uid, tuple(datasets), tuple(truth))


# --------------------------------------------------------------------------- files, demo


def write_study(study: SyntheticStudy, folder: str | Path) -> list[Path]:
    """Write ``folder/<kind>/<NNNN>.dcm`` (Part-10 files), in dataset order."""
    target = Path(folder) / study.kind
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, ds in enumerate(study.datasets, start=1):
        path = target / f"{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def demo_studies(seed: int = 0, small: bool = True) -> list[SyntheticStudy]:
    """One study of each kind: CT chest, CT head, fluorography (DX), chest X-ray (CR),
    mammography; ``small`` sizes (CT 256², CXR 512², MG 1024 × 832) keep it quick."""
    ct_size, cxr_size, mg_size = (
        ((256, 256), (512, 512), (1024, 832))
        if small
        else (
            (512, 512),
            (1024, 1024),
            (2048, 1664),
        )
    )
    return [
        ct_chest_study(seed, n_slices=24 if small else 40, size=ct_size),
        ct_head_study(seed, n_slices=12 if small else 24, size=ct_size),
        chest_xray_study(seed, "fluorography", "DX", size=cxr_size),
        chest_xray_study(seed, "radiography", "CR", size=cxr_size),
        mammography_study(seed, size=mg_size),
    ]
