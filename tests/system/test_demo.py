"""``make demo``'s command, run as a user runs it: the synthetic studies go through the whole
gateway and their results land on disk, with the dashboard's address and a token printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.services import ROOT, free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not list((ROOT / "models" / "zoo").glob("*/manifest.yaml")),
        reason="the reference devices are not built: run `make models`",
    ),
]

KINDS = ("ct_chest", "ct_head", "fluorography", "chest_xray", "mammography")


def test_demo_writes_every_studys_results_and_names_the_dashboard(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIGW_")}
    http_port = free_port()
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "workers.cli",
            "demo",
            "--exit-when-done",
            "--data-dir",
            str(tmp_path / "var"),
            "--dicom-port",
            str(free_port()),
            "--http-port",
            str(http_port),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = completed.stdout
    assert "5 studies received, assembled and routed" in out
    assert f"http://127.0.0.1:{http_port}/dashboard/" in out
    assert re.search(r"admin token for this demo \(shown once\): \S{20,}", out)
    results = tmp_path / "var" / "results"
    for kind in KINDS:
        files = {p.name for p in (results / kind).glob("job-*/*")}
        assert {"sr-1.dcm", "sc-1.dcm", "semd.xml", "semd.json"} <= files, (kind, files)
        sr = dcmread(next((results / kind).glob("job-*/sr-1.dcm")))
        assert sr.Modality == "SR"
    assert "not for clinical use" in out
    # No warning a user cannot act on (Celery's root warning, kombu's "No hostname was
    # supplied" were printed here): a good run writes nothing to stderr.
    assert completed.stderr.splitlines() == []
