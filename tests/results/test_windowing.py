"""Grey levels: a source shown as a viewer would show it by default."""

from __future__ import annotations

import copy

import numpy as np
import pydicom

from gateway.results.windowing import display_bytes, display_pixels
from tests import report_fixtures
from tests.services import require_shared_data


def test_monochrome1_is_shown_inverted() -> None:
    source = pydicom.dcmread(require_shared_data() / "DX_thorax_Fuji_ForPresentation_small.dcm")
    assert source.PhotometricInterpretation == "MONOCHROME1"
    as_monochrome2 = copy.deepcopy(source)
    as_monochrome2.PhotometricInterpretation = "MONOCHROME2"
    del as_monochrome2.PresentationLUTShape
    np.testing.assert_allclose(
        display_pixels(source), 1.0 - display_pixels(as_monochrome2), atol=1e-6
    )


def test_without_a_window_the_percentiles_are_used() -> None:
    chest = report_fixtures.chest_xray_input(positive=True)
    source = copy.deepcopy(chest.sources[0])
    del source.WindowCenter, source.WindowWidth
    shown = display_pixels(source)
    assert shown.min() == 0.0 and shown.max() == 1.0
    assert 0.002 < float((shown == 0.0).mean()) < 0.02  # 0.5 % clipped each side, no more
    assert 0.002 < float((shown == 1.0).mean()) < 0.02


def _as_bytes(shown: np.ndarray) -> np.ndarray:
    return np.rint(shown * 255.0).astype(np.uint8)


def _variants() -> dict[str, pydicom.Dataset]:
    chest = report_fixtures.chest_xray_input(positive=True).sources[0]
    ct = report_fixtures.ct_chest_input(positive=False, n_slices=4).sources[1]
    sigmoid = copy.deepcopy(ct)
    sigmoid.VOILUTFunction = "SIGMOID"
    scaled = copy.deepcopy(ct)
    scaled.RescaleSlope, scaled.RescaleIntercept = 0.5, -1000.25  # not exact in float32
    signed = copy.deepcopy(ct)  # int16 with negative stored values (HU without intercept)
    hounsfield = ct.pixel_array.astype(np.int16) - 1024
    signed.PixelRepresentation, signed.BitsStored, signed.HighBit = 1, 16, 15
    signed.RescaleIntercept = 0
    signed.PixelData = hounsfield.tobytes()
    inverted = copy.deepcopy(chest)
    inverted.PhotometricInterpretation = "MONOCHROME1"
    unwindowed = copy.deepcopy(chest)
    del unwindowed.WindowCenter, unwindowed.WindowWidth
    # Words with noise above Bits Stored (12): read in place, they must mean what pydicom's
    # decode makes of them (masked; sign-extended when signed).
    noise = np.random.default_rng(13).integers(0, 16, chest.pixel_array.shape, dtype=np.uint16)
    high_bits = copy.deepcopy(chest)
    high_bits.PixelData = (chest.pixel_array.astype(np.uint16) | (noise << 12)).tobytes()
    signed12 = copy.deepcopy(ct)
    ct_words = (ct.pixel_array.astype(np.int32) - 1024) & 0x0FFF
    noise = np.random.default_rng(14).integers(0, 16, ct_words.shape, dtype=np.int32)
    signed12.PixelRepresentation, signed12.BitsStored, signed12.HighBit = 1, 12, 11
    signed12.RescaleIntercept = 0
    signed12.PixelData = (ct_words | (noise << 12)).astype(np.uint16).tobytes()
    return {
        "dx": chest,
        "ct": ct,
        "sigmoid": sigmoid,
        "scaled": scaled,
        "signed": signed,
        "inverted": inverted,
        "unwindowed": unwindowed,
        "high bits": high_bits,
        "signed 12 bits": signed12,
    }


def test_display_bytes_are_the_display_pixels_rounded() -> None:
    """The table of stored values gives the very bytes that windowing each pixel gives."""
    for name, source in _variants().items():
        expected = _as_bytes(display_pixels(source))
        got = display_bytes(source)
        assert got.dtype == np.uint8 and got.shape == expected.shape, name
        assert np.array_equal(got, expected), name
        assert int(got.std()) > 0, name  # a picture, not a constant


def test_display_bytes_of_a_real_monochrome1_radiograph() -> None:
    source = pydicom.dcmread(require_shared_data() / "DX_thorax_Fuji_ForPresentation_small.dcm")
    assert np.array_equal(display_bytes(source), _as_bytes(display_pixels(source)))
