"""Synthetic projection radiographs: chest X-ray / fluorography (DX, CR or a digitised
Secondary Capture) and four-view mammography."""

from __future__ import annotations

from typing import Literal

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
)

from gateway.demo.headers import (
    InstanceTruth,
    StudyHeaders,
    SyntheticStudy,
    check_syntax,
    coded,
    decimal_string,
    encode,
    image_truth,
    set_pixels,
    set_windows,
)
from models import phantoms


def _projection(ds: Dataset, spacing: tuple[float, float], for_presentation: bool) -> None:
    """Detector, intensity and presentation attributes shared by DX, MG and CR images."""
    ds.ImagerPixelSpacing = [decimal_string(spacing[0]), decimal_string(spacing[1])]
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
    check_syntax(transfer_syntax)
    sop = sop or ("dx" if modality == "DX" else "cr")
    if (sop, modality) in (("dx", "CR"), ("cr", "DX")) or sop not in ("dx", "cr", "sc"):
        raise ValueError(f"sop {sop!r} does not fit modality {modality!r}")
    name = "fluorography" if kind == "fluorography" else "chest_xray"
    study = StudyHeaders(name, seed, modality, (modality, sop, with_lesion, size))
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
        ds.NominalScannedPixelSpacing = [decimal_string(spacing[0]), decimal_string(spacing[1])]
        ds.PixelSpacing = [decimal_string(spacing[0]), decimal_string(spacing[1])]
        ds.DateOfSecondaryCapture = ds.ContentDate
        ds.TimeOfSecondaryCapture = ds.ContentTime
        ds.BurnedInAnnotation = "NO"
        set_pixels(ds, phantom.pixels >> 4, 8, "MONOCHROME2")
        set_windows(ds, [(128, 256, "FULL")])
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.ViewPosition = "PA"
        ds.KVP = "110" if kind == "radiography" else "90"
        ds.DistanceSourceToDetector = "1800"
        _projection(ds, spacing, for_presentation=sop == "dx")
        if sop == "dx":
            ds.ImageLaterality = "U"
            ds.PositionerType = "COLUMN"
            pa = coded("399348003", "SCT", "postero-anterior")
            pa.ViewModifierCodeSequence = DicomSequence([])
            ds.ViewCodeSequence = DicomSequence([pa])
            ds.AnatomicRegionSequence = DicomSequence([coded("43799004", "SCT", "Chest")])
            ds.PixelSpacing = [decimal_string(spacing[0]), decimal_string(spacing[1])]
        set_pixels(ds, phantom.pixels, 12, "MONOCHROME2")
        set_windows(ds, [(2048, 4096, "FULL"), (1400, 2000, "LUNG")])
    datasets = (encode(ds, transfer_syntax),)
    return SyntheticStudy(name, study.uid, datasets, (image_truth(phantom, ds.SOPInstanceUID),))


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
    check_syntax(transfer_syntax)
    study = StudyHeaders("mammography", seed, "MG", (with_mass, size, calcifications), female=True)
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
        view_item = coded(code, "SCT", meaning)
        view_item.ViewModifierCodeSequence = DicomSequence([])
        ds.ViewCodeSequence = DicomSequence([view_item])
        ds.AnatomicRegionSequence = DicomSequence([coded("76752008", "SCT", "Breast")])
        ds.OrganExposed = "BREAST"
        ds.PositionerType = "MAMMOGRAPHIC"
        ds.BreastImplantPresent = "NO"
        ds.KVP = "29"
        ds.DistanceSourceToDetector = "660"
        _projection(ds, phantom.pixel_spacing_mm, for_presentation=True)
        set_pixels(ds, phantom.pixels, phantom.bits_stored or 12, "MONOCHROME2")
        set_windows(ds, [(2000, 3000, "NORMAL")])
        datasets.append(encode(ds, transfer_syntax))
        truth.append(image_truth(phantom, ds.SOPInstanceUID))
    return SyntheticStudy(study.kind, study.uid, tuple(datasets), tuple(truth))
