"""The per-association benchmark runs Orthanc and aigw side by side and reports every step
of each, with every instance it sent held by its receiver."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.ingest.associations import STEPS, main
from tests.services.processes import find_tool

pytestmark = pytest.mark.skipif(
    find_tool("storescu") is None or find_tool("Orthanc") is None,
    reason="needs DCMTK storescu and Orthanc (apt-get install dcmtk orthanc)",
)


def test_one_round_reports_each_step_for_both_receivers(tmp_path: Path) -> None:
    assert main(["--rounds", "1", "--senders", "2", "--out", str(tmp_path)]) == 0
    (path,) = [p for p in tmp_path.glob("*/associations-*.json") if "latest" not in p.name]
    report = json.loads(path.read_text())
    assert set(report["receivers"]) == {"orthanc", "aigw-folder-2p"}
    for figures in report["receivers"].values():
        # The warm-up round and the counted one: one pynetdicom association, one storescu
        # alone, then two at once, each a slice of a new study; all held.
        assert figures["held"] == 2 * (1 + 1 + 2)
        assert all(len(figures["rounds_ms"][step]) == 1 for step in STEPS)
        assert all(figures["median_ms"][step] > 0 for step in STEPS)
    assert set(report["vs_orthanc"]) == set(STEPS)
    assert all(ratio > 0 for ratio in report["vs_orthanc"].values())
