"""Synthetic CT studies: a chest CT with nodules and a head CT with a haemorrhage, as thin
axial series plus a localizer, from the phantoms in :mod:`models.phantoms`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
)

from gateway.demo.headers import (
    InstanceTruth,
    StudyHeaders,
    SyntheticStudy,
    check_syntax,
    decimal_string,
    encode,
    set_pixels,
    set_windows,
    slice_truth,
)
from models import phantoms
from models.phantoms import Phantom

# The demo's nodules: from the Lung-RADS reporting size of a solid nodule to a large one.
NODULE_MM = (6.0, 25.0)
THIN_SLAB_NODULE_MM = (4.0, 25.0)  # the phantom's own range


def _ct_series(
    study: StudyHeaders,
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
        ds.ImagePositionPatient = [decimal_string(origin[0]), "0", decimal_string(z_top)]
        ds.PixelSpacing = [decimal_string(col_mm), decimal_string(col_mm)]
        ds.SliceThickness = ""
        set_pixels(ds, image, 12, "MONOCHROME2")
        set_windows(ds, [(40, 400, "LOCALIZER")])
        datasets.append(encode(ds, transfer_syntax))
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
        ds.ImagePositionPatient = [
            decimal_string(origin[0]),
            decimal_string(origin[1]),
            decimal_string(z),
        ]
        ds.SliceLocation = decimal_string(z)
        ds.PixelSpacing = [decimal_string(row_mm), decimal_string(col_mm)]
        ds.SliceThickness = decimal_string(thickness)
        ds.SpacingBetweenSlices = decimal_string(thickness)
        ds.ReconstructionDiameter = decimal_string(max(rows * row_mm, cols * col_mm))
        ds.GantryDetectorTilt = "0"
        ds.TableHeight = "150"
        ds.RotationDirection = "CW"
        ds.XRayTubeCurrent = 200
        ds.ExposureTime = 500
        set_pixels(ds, stored[k], 12, "MONOCHROME2")
        set_windows(ds, windows)
        datasets.append(encode(ds, transfer_syntax))
        truth.append(slice_truth(phantom, k, ds.SOPInstanceUID))
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
    """CT chest: an axial series (series 2) and, optionally, a localizer (series 1).

    The nodule is solid, 6–25 mm across: 6 mm is where Lung-RADS starts to call a solid
    nodule more than benign-appearing, and the CT chest reference device is stated for
    nodules from that size. A slab too thin to hold a 6 mm nodule (fewer slices than a
    device reads) draws from the phantom's own range, from 4 mm.
    """
    check_syntax(transfer_syntax)
    variant = (n_slices, size, with_nodule, slice_thickness_mm)
    study = StudyHeaders("ct_chest", seed, "CT", variant)
    thin = phantoms.largest_nodule_mm(n_slices, slice_thickness_mm) < NODULE_MM[0]
    phantom = phantoms.ct_chest(
        study.rng(),
        n_slices,
        size,
        slice_thickness_mm,
        n_nodules=1 if with_nodule else 0,
        nodule_diameter_mm=(THIN_SLAB_NODULE_MM if thin else NODULE_MM),
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
    check_syntax(transfer_syntax)
    variant = (n_slices, size, with_haemorrhage, slice_thickness_mm)
    study = StudyHeaders("ct_head", seed, "CT", variant)
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
