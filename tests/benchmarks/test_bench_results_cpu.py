"""The results-stage CPU benchmark builds every object of a chest X-ray and a CT chest and
writes a complete report. Its figures are never asserted on, only their form."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import results_cpu


def test_writes_per_object_cpu_for_both_studies(tmp_path: Path) -> None:
    assert results_cpu.main(["--rounds", "1", "--ct-slices", "16", "--out", str(tmp_path)]) == 0
    (written,) = tmp_path.glob("cpu-*core/results-cpu-latest.json")
    report = json.loads(written.read_text())
    assert report["semd_key_image_max_px"] == 1024
    cases = report["cases"]
    assert set(cases) == {"chest_xray_2500x2048", "ct_chest_16x512"}
    common = {"SR", "SC", "GSPS", "SEMD key image", "SEMD document"}
    assert common <= set(cases["chest_xray_2500x2048"]["per_object"])
    assert "SEG" not in cases["chest_xray_2500x2048"]["per_object"]  # no mask: no SEG
    assert common | {"SEG"} <= set(cases["ct_chest_16x512"]["per_object"])
    for case in cases.values():
        assert case["semd_validated"] == results_cpu.SEMD_REFERENCE.is_dir()
        parts = case["per_object"].values()
        assert all(math.isfinite(p["cpu_ms_median"]) and p["cpu_ms_median"] >= 0 for p in parts)
        assert all(p["page_faults_median"] >= 0 for p in parts)
        # The objects alone: the SEMD's validation runs in production only when configured.
        validation = case["per_object"].get("SEMD validation", {}).get("cpu_ms_median", 0.0)
        assert case["built_cpu_ms_median"] == pytest.approx(
            case["total_cpu_ms_median"] - validation, abs=0.2
        )
        # Each share is rounded to 3 places; the medians of parts need not add up to the
        # median of totals, but with one round they do.
        shares = sum(p["share_of_total"] for p in parts)
        assert shares == pytest.approx(1.0, abs=0.001 * len(parts))
    assert cases["chest_xray_2500x2048"]["source"] == {
        "modality": "DX",
        "instances": 1,
        "rows": 2500,
        "columns": 2048,
    }
