"""Grey levels: a source shown as a viewer would show it by default."""

from __future__ import annotations

import copy

import numpy as np
import pydicom

from gateway.results.windowing import display_pixels
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
