"""Synthetic studies are valid DICOM, deterministic, and carry exact ground truth."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import config
from pydicom.dataset import Dataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
)

from gateway.demo.headers import INSTITUTION
from gateway.demo.synthetic import (
    SyntheticStudy,
    chest_xray_study,
    ct_chest_study,
    ct_head_study,
    demo_studies,
    mammography_study,
    write_study,
)

DCIODVFY = shutil.which("dciodvfy")


@pytest.fixture(scope="module")
def strict_pydicom() -> Iterator[None]:
    """Writing and reading validation raise, so a bad value fails the test."""
    saved = (config.settings.writing_validation_mode, config.settings.reading_validation_mode)
    config.settings.writing_validation_mode = config.RAISE
    config.settings.reading_validation_mode = config.RAISE
    yield
    config.settings.writing_validation_mode, config.settings.reading_validation_mode = saved


@pytest.fixture(scope="module")
def demo(strict_pydicom: None) -> dict[str, SyntheticStudy]:
    return {study.kind: study for study in demo_studies(seed=0, small=True)}


@pytest.fixture(scope="module")
def variants(strict_pydicom: None) -> dict[str, SyntheticStudy]:
    """Storage classes and transfer syntaxes the demo set does not cover."""
    return {
        "chest_xray_sc": chest_xray_study(1, "radiography", "DX", sop="sc", size=(256, 256)),
        "ct_chest_rle": ct_chest_study(2, n_slices=8, size=(128, 128), transfer_syntax=RLELossless),
        "mammography_implicit": mammography_study(
            3, size=(256, 208), calcifications=True, transfer_syntax=ImplicitVRLittleEndian
        ),
        "ct_head_implicit": ct_head_study(
            4, n_slices=6, size=(128, 128), transfer_syntax=ImplicitVRLittleEndian
        ),
    }


@pytest.fixture(scope="module")
def written(
    demo: dict[str, SyntheticStudy],
    variants: dict[str, SyntheticStudy],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[SyntheticStudy, list[Path]]]:
    """Every study written to its own folder and read back from disk."""
    out = {}
    for name, study in {**demo, **variants}.items():
        folder = tmp_path_factory.mktemp(name)
        out[name] = (study, write_study(study, folder))
    return out


ALL = [
    "ct_chest",
    "ct_head",
    "fluorography",
    "chest_xray",
    "mammography",
    "chest_xray_sc",
    "ct_chest_rle",
    "mammography_implicit",
    "ct_head_implicit",
]


def test_demo_has_one_positive_study_of_each_kind(demo: dict[str, SyntheticStudy]) -> None:
    assert sorted(demo) == ["chest_xray", "ct_chest", "ct_head", "fluorography", "mammography"]
    assert all(study.positive for study in demo.values())
    sop_classes = {kind: {ds.SOPClassUID for ds in s.datasets} for kind, s in demo.items()}
    assert sop_classes == {
        "ct_chest": {CTImageStorage},
        "ct_head": {CTImageStorage},
        "fluorography": {DigitalXRayImageStorageForPresentation},
        "chest_xray": {ComputedRadiographyImageStorage},
        "mammography": {DigitalMammographyXRayImageStorageForPresentation},
    }
    assert len({s.study_instance_uid for s in demo.values()}) == 5
    for study in demo.values():
        assert [t.sop_instance_uid for t in study.truth] == [
            ds.SOPInstanceUID for ds in study.datasets
        ]


def test_same_seed_same_uids_and_pixels_other_seed_other(strict_pydicom: None) -> None:
    def make(seed: int) -> SyntheticStudy:
        return ct_chest_study(seed, n_slices=8, size=(96, 96))

    first, again, other = make(5), make(5), make(6)
    uids = [(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in first.datasets]
    assert uids == [
        (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in again.datasets
    ]
    assert [ds.PixelData for ds in first.datasets] == [ds.PixelData for ds in again.datasets]
    assert first.datasets[1].PatientID == again.datasets[1].PatientID
    assert first.datasets[0].FrameOfReferenceUID == first.datasets[-1].FrameOfReferenceUID
    other_uids = {uid for ds in other.datasets for uid in (ds.StudyInstanceUID, ds.SOPInstanceUID)}
    assert not other_uids & {uid for triple in uids for uid in triple}
    assert first.datasets[5].PixelData != other.datasets[5].PixelData
    assert len({uid for triple in uids for uid in triple}) == 1 + 2 + len(uids)  # study, 2 series


def test_other_parameters_give_other_uids_for_the_same_patient(strict_pydicom: None) -> None:
    dx = chest_xray_study(9, "radiography", "DX", size=(128, 128))
    sc = chest_xray_study(9, "radiography", "DX", sop="sc", size=(128, 128))
    assert dx.study_instance_uid != sc.study_instance_uid
    assert dx.datasets[0].SOPInstanceUID != sc.datasets[0].SOPInstanceUID
    assert dx.datasets[0].PatientID == sc.datasets[0].PatientID


@pytest.mark.parametrize("name", ALL)
def test_files_round_trip_to_the_phantom_values(
    name: str, written: dict[str, tuple[SyntheticStudy, list[Path]]]
) -> None:
    study, paths = written[name]
    assert [p.name for p in paths] == [f"{i:04d}.dcm" for i in range(1, len(paths) + 1)]
    assert all(p.parent.name == study.kind for p in paths)
    for path, original, truth in zip(paths, study.datasets, study.truth, strict=True):
        assert path.read_bytes()[128:132] == b"DICM"
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert ds.SOPInstanceUID == truth.sop_instance_uid
        pixels = ds.pixel_array
        assert pixels.shape == truth.mask.shape == (ds.Rows, ds.Columns)
        if truth.phantom is None:  # localizer
            assert "LOCALIZER" in ds.ImageType
            continue
        expected = truth.phantom.pixels
        if truth.slice_index is not None:
            hu = pixels.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
            assert np.array_equal(hu, expected[truth.slice_index])
        elif ds.SOPClassUID == SecondaryCaptureImageStorage:
            assert ds.BitsStored == 8
            assert np.array_equal(pixels, expected >> 4)
        else:
            assert ds.BitsStored == truth.phantom.bits_stored
            assert np.array_equal(pixels, expected)


def test_transfer_syntaxes_are_what_was_asked(
    written: dict[str, tuple[SyntheticStudy, list[Path]]],
) -> None:
    expected = {
        "ct_chest": ExplicitVRLittleEndian,
        "ct_chest_rle": RLELossless,
        "mammography_implicit": ImplicitVRLittleEndian,
    }
    for name, syntax in expected.items():
        for path in written[name][1]:
            assert (
                pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
            )


def check_patient_and_study(ds: Dataset, study: SyntheticStudy) -> None:
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName).startswith("SYNTHETIC^PHANTOM^")
    assert ds.PatientID.startswith("SYN-")
    assert ds.PatientSex in ("F", "M")
    born = date.fromisoformat(
        ds.PatientBirthDate[:4] + "-" + ds.PatientBirthDate[4:6] + "-" + ds.PatientBirthDate[6:]
    )
    seen = date.fromisoformat(ds.StudyDate[:4] + "-" + ds.StudyDate[4:6] + "-" + ds.StudyDate[6:])
    age = seen.year - born.year - ((seen.month, seen.day) < (born.month, born.day))
    assert re.fullmatch(r"\d{3}Y", ds.PatientAge) and int(ds.PatientAge[:3]) == age
    assert 40 <= age <= 75
    assert re.fullmatch(r"\d{6}", ds.StudyTime)
    assert ds.AccessionNumber and ds.StudyID
    assert "ReferringPhysicianName" in ds
    assert ds.InstitutionName == INSTITUTION == "Синтетическая больница"
    assert ds.Manufacturer == "AIGW synthetic phantom"
    assert ds.StudyInstanceUID == study.study_instance_uid
    assert ds.SeriesNumber >= 1 and ds.InstanceNumber >= 1


def read_all(paths: list[Path]) -> list[Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


def test_ct_chest_headers(written: dict[str, tuple[SyntheticStudy, list[Path]]]) -> None:
    study, paths = written["ct_chest"]
    localizer, *axial = read_all(paths)
    for ds in (localizer, *axial):
        check_patient_and_study(ds, study)
        assert (ds.Modality, ds.BodyPartExamined) == ("CT", "CHEST")
        assert ds.StudyDescription == "КТ органов грудной полости"
        assert ds.FrameOfReferenceUID == localizer.FrameOfReferenceUID
    assert list(localizer.ImageType) == ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    assert localizer.SeriesNumber == 1 and localizer.SeriesInstanceUID != axial[0].SeriesInstanceUID
    phantom = study.truth[1].phantom
    assert phantom is not None
    z = [float(ds.ImagePositionPatient[2]) for ds in axial]
    assert np.allclose(np.diff(z), -phantom.slice_spacing_mm)  # type: ignore[operator]
    for index, ds in enumerate(axial):
        assert ds.SeriesDescription == "КТ ОГК 1.25мм"
        assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
        assert ds.InstanceNumber == index + 1
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert float(ds.SliceThickness) == float(ds.SpacingBetweenSlices) == 1.25
        assert tuple(float(v) for v in ds.PixelSpacing) == pytest.approx(phantom.pixel_spacing_mm)
        assert (float(ds.RescaleIntercept), float(ds.RescaleSlope)) == (-1024, 1)
        assert ds.PatientPosition == "HFS"


def test_ct_head_headers(written: dict[str, tuple[SyntheticStudy, list[Path]]]) -> None:
    study, paths = written["ct_head"]
    for ds in read_all(paths):
        check_patient_and_study(ds, study)
        assert (ds.Modality, ds.BodyPartExamined) == ("CT", "HEAD")
        assert ds.StudyDescription == "КТ головного мозга"


@pytest.mark.parametrize(
    ("name", "modality", "descriptions"),
    [
        ("fluorography", "DX", ("Флюорография лёгких", "ФЛГ")),
        ("chest_xray", "CR", ("Рентгенография грудной клетки", "ОГК прямая")),
        ("chest_xray_sc", "DX", ("Рентгенография грудной клетки", "ОГК прямая")),
    ],
)
def test_chest_xray_headers(
    name: str,
    modality: str,
    descriptions: tuple[str, str],
    written: dict[str, tuple[SyntheticStudy, list[Path]]],
) -> None:
    study, paths = written[name]
    (ds,) = read_all(paths)
    check_patient_and_study(ds, study)
    assert (ds.Modality, ds.BodyPartExamined) == (modality, "CHEST")
    assert (ds.StudyDescription, ds.SeriesDescription) == descriptions
    assert list(ds.PatientOrientation) == ["L", "F"]
    if ds.SOPClassUID == DigitalXRayImageStorageForPresentation:
        assert ds.ViewPosition == "PA" and ds.PresentationIntentType == "FOR PRESENTATION"
    if ds.SOPClassUID == SecondaryCaptureImageStorage:
        assert ds.ConversionType == "DF"


def test_mammography_headers(written: dict[str, tuple[SyntheticStudy, list[Path]]]) -> None:
    study, paths = written["mammography"]
    datasets = read_all(paths)
    views = set()
    for ds in datasets:
        check_patient_and_study(ds, study)
        assert (ds.Modality, ds.BodyPartExamined, ds.PatientSex) == ("MG", "BREAST", "F")
        assert ds.PresentationIntentType == "FOR PRESENTATION"
        code = ds.ViewCodeSequence[0]
        expected = {"CC": "399162004", "MLO": "399368009"}[ds.ViewPosition]
        assert (code.CodeValue, code.CodingSchemeDesignator) == (expected, "SCT")
        views.add((ds.ImageLaterality, ds.ViewPosition))
    assert views == {("L", "CC"), ("R", "CC"), ("L", "MLO"), ("R", "MLO")}
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1


def test_ground_truth_sits_on_the_lesion_in_the_files(
    written: dict[str, tuple[SyntheticStudy, list[Path]]],
) -> None:
    study, paths = written["ct_chest"]
    hit = [(p, t) for p, t in zip(paths, study.truth, strict=True) if t.lesions]
    assert hit and all(t.slice_index is not None for _, t in hit)
    for path, truth in hit:
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array.astype(np.int32) - 1024
        (lesion,) = truth.lesions
        assert lesion.voxel_count == int(truth.mask.sum())
        row, col = (round(c) for c in lesion.center)
        assert truth.mask[
            lesion.bbox[0][0] : lesion.bbox[0][1], lesion.bbox[1][0] : lesion.bbox[1][1]
        ].any()
        assert (
            lesion.bbox[0][0] <= row < lesion.bbox[0][1]
            and lesion.bbox[1][0] <= col < lesion.bbox[1][1]
        )
        assert hu[truth.mask].mean() > -400
    study, paths = written["mammography"]
    for path, truth in zip(paths, study.truth, strict=True):
        ds = pydicom.dcmread(path)
        assert truth.phantom is not None
        breast = truth.phantom.regions["breast"]
        if truth.lesions:
            assert ds.pixel_array[truth.mask].mean() > ds.pixel_array[breast & ~truth.mask].mean()
        side = np.nonzero(breast)[1].mean() < ds.Columns / 2
        assert side == (ds.ImageLaterality == "L")


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) is not on PATH")
@pytest.mark.parametrize("name", ALL)
def test_dciodvfy_finds_no_errors(
    name: str, written: dict[str, tuple[SyntheticStudy, list[Path]]]
) -> None:
    for path in written[name][1]:
        result = subprocess.run(
            [str(DCIODVFY), "-new", str(path)], capture_output=True, text=True, check=False
        )
        report = result.stdout + result.stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert not errors, f"{path}: {errors}"


@pytest.mark.parametrize(
    "call",
    [
        lambda: chest_xray_study(0, modality="CR", sop="dx", size=(64, 64)),
        lambda: chest_xray_study(0, kind="tomography", size=(64, 64)),  # type: ignore[arg-type]
        lambda: ct_chest_study(0, n_slices=6, size=(64, 64), series_description="Очень " * 10),
        lambda: ct_head_study(
            0, n_slices=6, size=(64, 64), transfer_syntax="1.2.840.10008.1.2.4.50"
        ),
        lambda: mammography_study(-1, size=(128, 104)),
    ],
)
def test_bad_arguments_are_refused(call: object) -> None:
    with pytest.raises(ValueError):
        call()  # type: ignore[operator]
