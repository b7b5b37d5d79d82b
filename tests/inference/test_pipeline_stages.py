"""The pipeline's stages on their own: decode, preprocess geometry, post-processing."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from gateway.demo.synthetic import ct_chest_study
from gateway.inference.decode import decode_image, decode_volume
from models.manifest import InputSpec, Label, OutputKind, OutputSpec
from models.postprocess import InputMeta, _detection, _segmentation, interpret
from models.preprocess import prepare_2d, prepare_3d
from tests.onnx_models import classifier_with_heatmap, manifest_dict
from tests.services import require_shared_data

IMAGE_FILES = [
    "CR_chest_PA_Philips_J2KI.dcm",
    "CR_chest_PA_SIIM_JPEGBaseline.dcm",
    "CR_tibia_Fuji_J2KR.dcm",
    "CT1_RLE_frags.dcm",
    "CT_693_J2KR.dcm",
    "CT_693_UNCI.dcm",
    "CT_Philips_Ingenuity_JPEGLossless.dcm",
    "DX_chest_NIH_SC_uncompressed.dcm",
    "DX_thorax_Fuji_ForPresentation_small.dcm",
    "MG_GE_SenographeEssential_RMLO_ForPresentation_JPEGLossless.dcm",
    "OT_deflated.dcm",
]


@pytest.mark.shared_data
@pytest.mark.parametrize("name", IMAGE_FILES)
def test_every_real_transfer_syntax_decodes(name: str) -> None:
    dataset = pydicom.dcmread(require_shared_data() / name)
    image = decode_image(dataset)
    assert image.pixels.shape == (dataset.Rows, dataset.Columns)
    assert np.isfinite(image.pixels).all() and image.pixels.std() > 0


@pytest.mark.shared_data
def test_the_two_693_files_show_the_same_anatomy() -> None:
    # CT_693_J2KR and CT_693_UNCI are not one image in two encodings (different SOP
    # Instance UIDs, 16 vs 14 bits stored, different value ranges), so exact equality is
    # checked below by re-encoding; here only that both decode to the same anatomy.
    root = require_shared_data()
    compressed = decode_image(pydicom.dcmread(root / "CT_693_J2KR.dcm"))
    reference = decode_image(pydicom.dcmread(root / "CT_693_UNCI.dcm"))
    correlation = np.corrcoef(compressed.pixels.ravel(), reference.pixels.ravel())[0, 1]
    assert correlation > 0.99


@pytest.mark.shared_data
@pytest.mark.parametrize(
    "syntax", ["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80"]
)
def test_lossless_encodings_of_a_real_ct_decode_to_the_uncompressed_pixels(syntax: str) -> None:
    """The real uncompressed CT, encoded losslessly (JPEG 2000, RLE, JPEG-LS) and decoded by
    the pipeline's decoders, gives back exactly the reference pixels."""
    reference = pydicom.dcmread(require_shared_data() / "CT_693_UNCI.dcm")
    expected = decode_image(reference).pixels
    encoded = pydicom.dcmread(require_shared_data() / "CT_693_UNCI.dcm")
    encoded.compress(syntax, generate_instance_uid=False)
    assert encoded.file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(decode_image(_reread(encoded)).pixels, expected)


def test_rle_and_uncompressed_synthetic_volumes_decode_identically() -> None:
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless

    plain = ct_chest_study(
        seed=5,
        n_slices=16,
        size=(64, 64),
        with_localizer=False,
        transfer_syntax=ExplicitVRLittleEndian,
    )
    rle = ct_chest_study(
        seed=5, n_slices=16, size=(64, 64), with_localizer=False, transfer_syntax=RLELossless
    )
    a = decode_volume([_reread(d) for d in plain.datasets])
    b = decode_volume([_reread(d) for d in rle.datasets])
    assert np.array_equal(a.voxels, b.voxels)
    phantom = plain.truth[0].phantom
    assert phantom is not None
    order = [int(plain.truth_for(uid).slice_index or 0) for uid in a.sop_instance_uids]
    assert np.array_equal(a.voxels, phantom.pixels[order].astype(np.float32))  # HU


def test_volume_is_sorted_by_position_not_instance_number() -> None:
    study = ct_chest_study(
        seed=6, n_slices=5, size=(32, 32), with_localizer=False, with_nodule=False
    )
    datasets = [_reread(d) for d in study.datasets]
    for dataset, number in zip(datasets, [5, 1, 4, 2, 3], strict=True):
        dataset.InstanceNumber = number  # scanners number inconsistently
    volume = decode_volume(list(reversed(datasets)))
    z = [float(_by_uid(datasets, uid).ImagePositionPatient[2]) for uid in volume.sop_instance_uids]
    assert z == sorted(z, reverse=True)  # axial: cranial (+z in LPS) first
    assert volume.spacing_mm[0] == pytest.approx(abs(z[1] - z[0]))
    # The phantom's slice 0 is cranial: the volume is the phantom in its own order.
    assert [study.truth_for(uid).slice_index for uid in volume.sop_instance_uids] == list(range(5))


def test_volume_order_does_not_depend_on_the_orientation_sign() -> None:
    """A scanner writing the normal the other way (feet first) gives the same order."""
    study = ct_chest_study(
        seed=6, n_slices=5, size=(32, 32), with_localizer=False, with_nodule=False
    )
    datasets = [_reread(d) for d in study.datasets]
    for dataset in datasets:
        dataset.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]  # normal -z
    volume = decode_volume(datasets)
    z = [float(_by_uid(datasets, uid).ImagePositionPatient[2]) for uid in volume.sop_instance_uids]
    assert z == sorted(z, reverse=True)


def test_2d_geometry_maps_model_points_back_to_source_pixels() -> None:
    spec = InputSpec(name="image", dims=2, size=[64, 64])
    image = np.zeros((200, 100), dtype=np.float32)
    image[150:160, 20:30] = 1000.0  # a bright square at rows 150–160, cols 20–30
    prepared = prepare_2d(image, "MONOCHROME2", spec)
    assert prepared.tensor.shape == (1, 64, 64)
    bright = np.unravel_index(np.argmax(prepared.tensor[0]), (64, 64))
    row, col = prepared.geometry.to_source((bright[0] + 0.5, bright[1] + 0.5))
    assert 148 <= row <= 162 and 18 <= col <= 32


def test_monochrome1_is_inverted_so_that_bright_means_dense() -> None:
    spec = InputSpec(name="image", dims=2, size=[32, 32], keep_aspect=False)
    image = np.full((32, 32), 100.0, dtype=np.float32)
    image[10:20, 10:20] = 0.0  # dense object: dark in MONOCHROME1
    inverted = prepare_2d(image, "MONOCHROME1", spec).tensor[0]
    assert inverted[15, 15] > inverted[2, 2]


def test_segmentation_centre_and_volume_in_source_space() -> None:
    spec = InputSpec(name="volume", dims=3, size=[16, 32, 32])
    volume = np.zeros((32, 64, 64), dtype=np.float32)
    prepared = prepare_3d(volume, spec)
    output = np.zeros((1, 1, 16, 32, 32), dtype=np.float32)
    output[0, 0, 8:10, 20:24, 4:8] = 0.9  # 2×4×4 model voxels
    label = Label(code="x", ru="очаг", en="nodule", threshold=0.5)
    meta = InputMeta(prepared.geometry, (1.0, 0.5, 0.5))
    (finding,) = _segmentation(
        OutputSpec(name="seg", kind=OutputKind.SEGMENTATION, labels=[label]), output, [meta]
    )
    assert finding.positive and finding.probability == pytest.approx(0.9)
    assert finding.centre == pytest.approx((17.0, 43.0, 11.0), abs=0.6)
    # 32 model voxels, each 2×2×2 source voxels of 1×0.5×0.5 mm = 0.25 mm³
    assert finding.measurements["volume_mm3"] == pytest.approx(32 * 8 * 0.25)


def test_detection_box_from_peak_and_size_map() -> None:
    spec = InputSpec(name="image", dims=2, size=[64, 64])
    prepared = prepare_2d(np.zeros((128, 128), dtype=np.float32), "MONOCHROME2", spec)
    heat = np.zeros((1, 1, 16, 16), dtype=np.float32)
    heat[0, 0, 4, 10] = 0.8  # cell centre at model (18, 42)
    sizes = np.zeros((1, 2, 16, 16), dtype=np.float32)
    sizes[0, :, 4, 10] = (8.0, 12.0)
    label = Label(code="m", ru="образование", en="mass", threshold=0.5)
    spec_out = OutputSpec(name="h", kind=OutputKind.DETECTION, labels=[label], size_output="s")
    (finding,) = _detection(spec_out, heat, sizes, [InputMeta(prepared.geometry, (0.1, 0.1))])
    assert finding.centre == pytest.approx((36.0, 84.0))
    assert finding.box is not None
    assert [list(axis) for axis in finding.box] == [[28.0, 44.0], [72.0, 96.0]]
    assert finding.measurements["max_diameter_mm"] == pytest.approx(2.4)


def test_classification_heatmap_localises_a_bright_spot() -> None:
    import onnxruntime as ort

    from models.manifest import DeviceManifest

    model = classifier_with_heatmap()
    manifest = DeviceManifest.model_validate(manifest_dict(model))
    image = np.zeros((256, 256), dtype=np.float32)
    image[200:216, 40:56] = 4000.0
    prepared = prepare_2d(image, "MONOCHROME2", manifest.input)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, {"image": prepared.tensor[None]}), strict=True))
    (finding,) = interpret(manifest, outputs, [InputMeta(prepared.geometry, (0.2, 0.2))])
    assert finding.positive
    assert finding.centre is not None
    assert abs(finding.centre[0] - 208) <= 16 and abs(finding.centre[1] - 48) <= 16


def _reread(dataset: pydicom.Dataset) -> pydicom.Dataset:
    buffer = pydicom.filebase.DicomBytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(pydicom.filebase.DicomBytesIO(buffer.getvalue()))


def _by_uid(datasets: list[pydicom.Dataset], uid: str) -> pydicom.Dataset:
    return next(d for d in datasets if d.SOPInstanceUID == uid)
