"""The CT chest reference device on the studies the demo and the tests generate
(``gateway.demo.ct.ct_chest_study``), not on its training phantoms, read by the worker's own
stages (``benchmarks.field_check``): decode ▸ preprocess ▸ onnxruntime ▸ postprocess.

The seeds are the field check's (from 7000), which neither the demo (0), the tests (below
1000) nor the training phantoms (their own seed space) use. The device states sensitivity
and specificity ≥ 0.85 on held-out phantoms; 5 of 6 each way is that, with room for one
miss in six.
"""

from __future__ import annotations

import pytest

from benchmarks.field_check import FIRST_SEED, FieldResult, check
from tests.services import ROOT

DEVICE = ROOT / "models" / "zoo" / "aigw-ref-ct-chest"
STUDIES = 6  # per size: 6 with a nodule, 6 without


@pytest.mark.skipif(
    not (DEVICE / "manifest.yaml").exists(), reason="the CT chest device is not built yet"
)
@pytest.mark.parametrize(
    ("side", "slices"),
    [(512, 40), (192, 40)],
    ids=["scanner-512px", "tests-192px"],
)
def test_demo_nodules_are_found_and_clean_chests_stay_negative(side: int, slices: int) -> None:
    result: FieldResult = check(DEVICE, side, slices, STUDIES, FIRST_SEED + 100)
    positives = [v for v in result.verdicts if v.positive]
    negatives = [v for v in result.verdicts if not v.positive]
    assert len(positives) == len(negatives) == STUDIES
    assert sum(v.flagged for v in positives) >= STUDIES - 1, result.summary()
    assert sum(not v.flagged for v in negatives) >= STUDIES - 1, result.summary()
