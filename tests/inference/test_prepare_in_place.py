"""What the decode children hand the model is what it was before native Pixel Data was
read in place and integer images were shrunk by models.area: the same float32 inputs, bit
for bit, as pydicom's pixel_array ▸ modality LUT in float64 ▸ float32 ▸ torch's area resize
— for the radiograph and mammography reference devices, on their synthetic studies at
detector size and on the real files. Same inputs to the same ONNX graphs: the same
findings."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels.processing import apply_modality_lut

from gateway.demo.synthetic import chest_xray_study, mammography_study
from gateway.inference.prepare import prepare_blobs
from models.manifest import InputSpec, load_manifest
from models.preprocess import prepare_2d
from tests.services import require_shared_data

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"
DEVICES = ["aigw-ref-cxr", "aigw-ref-mammo"]
REAL_FILES = [
    "DX_chest_NIH_SC_uncompressed.dcm",
    "DX_thorax_Fuji_ForPresentation_small.dcm",
    "CR_chest_PA_Philips_J2KI.dcm",
    "CR_chest_PA_SIIM_JPEGBaseline.dcm",
    "CR_tibia_Fuji_J2KR.dcm",
    "MG_GE_SenographeEssential_RMLO_ForPresentation_JPEGLossless.dcm",
    "CT_693_UNCI.dcm",
]


def _spec(device: str) -> InputSpec:
    return load_manifest(ZOO / device / "manifest.yaml").input


def _reference(blob: bytes, spec: InputSpec) -> np.ndarray:
    """The model input as main computed it: float32 pixels, torch's area resize."""
    dataset = pydicom.dcmread(BytesIO(blob))
    raw = dataset.pixel_array
    if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
        raw = raw[0]
    pixels = np.asarray(apply_modality_lut(raw, dataset), dtype=np.float32)
    photometric = str(dataset.PhotometricInterpretation)
    return prepare_2d(pixels, photometric, spec).tensor


def _part10(dataset: pydicom.Dataset) -> bytes:
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _assert_same_inputs(blobs: list[bytes], spec: InputSpec) -> None:
    inputs = prepare_blobs(blobs, spec).inputs
    expected = np.stack([_reference(blob, spec) for blob in blobs])
    assert inputs.dtype == expected.dtype == np.float32
    assert np.array_equal(inputs, expected)  # tolerance 0: bit-identical


@pytest.mark.parametrize("device", DEVICES)
def test_detector_sized_studies_give_the_same_inputs(device: str) -> None:
    if device == "aigw-ref-cxr":
        study = chest_xray_study(3, "fluorography", "DX", size=(2500, 2048))
    else:
        study = mammography_study(3, size=(2048, 1664), calcifications=True)
    _assert_same_inputs([_part10(ds) for ds in study.datasets], _spec(device))


@pytest.mark.parametrize("device", DEVICES)
def test_monochrome1_with_an_intercept_gives_the_same_inputs(device: str) -> None:
    dataset = chest_xray_study(4, "radiography", "CR", size=(1200, 1000)).datasets[0]
    dataset.PhotometricInterpretation = "MONOCHROME1"
    dataset.RescaleSlope, dataset.RescaleIntercept, dataset.RescaleType = 1, -512, "US"
    _assert_same_inputs([_part10(dataset)], _spec(device))


@pytest.mark.shared_data
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", REAL_FILES)
def test_real_files_give_the_same_inputs(device: str, name: str) -> None:
    _assert_same_inputs([(require_shared_data() / name).read_bytes()], _spec(device))
