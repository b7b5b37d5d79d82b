"""The reference devices in models/zoo: committed files are consistent and honest, the
models find lesions on fresh phantoms, and the build itself runs (smoke)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from models.manifest import DeviceManifest, OutputKind, load_manifest
from models.zoo.datasets import Sample, generate
from models.zoo.devices import DEVICES, NOTICE_EN, NOTICE_RU
from models.zoo.evaluation import error_mm, infer, locate, session
from tests.services import ROOT

ZOO = ROOT / "models" / "zoo"
MAX_ONNX_BYTES = 30 * 1024 * 1024
CHECK_PHANTOMS = 6  # per device: 3 with a lesion, 3 without

# The trained ONNX files are committed by `make models`; until they are, only the build
# itself (the smoke test) can be checked. A committed manifest makes these tests run.
needs_trained_models = pytest.mark.skipif(
    not list(ZOO.glob("*/manifest.yaml")),
    reason="the reference devices are not built yet: run `make models` and commit models/zoo",
)


def _manifest(device_id: str) -> DeviceManifest:
    return load_manifest(ZOO / device_id / "manifest.yaml")


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


@needs_trained_models
@pytest.mark.parametrize("device_id", sorted(DEVICES))
def test_committed_device_is_consistent(device_id: str) -> None:
    manifest = _manifest(device_id)
    assert manifest.id == device_id and manifest.version == "1.0.0"
    data = (ZOO / device_id / manifest.onnx.file).read_bytes()
    assert len(data) <= MAX_ONNX_BYTES
    assert hashlib.sha256(data).hexdigest() == manifest.onnx.sha256

    # Not a registered device, and it says so in both languages.
    assert manifest.registration is None
    assert manifest.provenance.clinical_use is False
    assert (
        manifest.provenance.notice_en == NOTICE_EN and "not for clinical use" in NOTICE_EN.lower()
    )
    assert manifest.provenance.notice_ru == NOTICE_RU and "не для клинического" in NOTICE_RU.lower()
    assert "phantom" in manifest.provenance.training_data

    model = onnx.load_from_string(data)
    onnx.checker.check_model(model, full_check=True)
    assert {o.domain or "ai.onnx": o.version for o in model.opset_import}["ai.onnx"] == 17
    spec = manifest.input
    (graph_input,) = model.graph.input
    assert graph_input.name == spec.name
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert _dims(graph_input) == ["batch", spec.channels, *spec.size]

    outputs = {o.name: o for o in model.graph.output}
    expected: dict[str, int] = {}
    for out in manifest.outputs:
        if out.kind == OutputKind.CLASSIFICATION:
            expected[out.name] = 2
        elif out.kind == OutputKind.SEGMENTATION:
            expected[out.name] = 2 + spec.dims
        else:
            expected[out.name] = 4
        if out.size_output:
            expected[out.size_output] = 4
    assert set(outputs) == set(expected)
    for name, rank in expected.items():
        assert outputs[name].type.tensor_type.elem_type == onnx.TensorProto.FLOAT, name
        dims = _dims(outputs[name])
        assert len(dims) == rank and dims[0] == "batch", (name, dims)
    for out in manifest.outputs:
        if out.kind == OutputKind.SEGMENTATION:
            assert _dims(outputs[out.name])[1:] == [len(out.labels), *spec.size]
        if out.kind == OutputKind.DETECTION:
            assert out.size_output is not None
            assert _dims(outputs[out.size_output])[1] == 2


def _check_samples(device_id: str) -> list[Sample]:
    return generate(device_id, "check", CHECK_PHANTOMS, workers=1)


@needs_trained_models
@pytest.mark.parametrize("device_id", sorted(DEVICES))
def test_device_finds_lesions_on_fresh_phantoms(device_id: str) -> None:
    device = DEVICES[device_id]
    manifest = _manifest(device_id)
    primary = next(o for o in manifest.outputs if o.kind != OutputKind.HEATMAP)
    threshold = primary.labels[0].threshold
    samples = _check_samples(device_id)
    outputs = infer(device, session(str(ZOO / device_id / manifest.onnx.file)), samples)

    # Outputs are probabilities of the declared shapes.
    for out in outputs:
        for array in out:
            assert array.dtype == np.float32 and np.isfinite(array).all()
        assert float(out[0].min()) >= 0.0 and float(out[0].max()) <= 1.0
    findings = [locate(device, out, threshold) for out in outputs]
    positive = [s.positive for s in samples]
    assert positive.count(True) == positive.count(False) == CHECK_PHANTOMS // 2
    hits = [f.score >= threshold for f in findings]
    sensitivity = sum(h for h, p in zip(hits, positive, strict=True) if p) / positive.count(True)
    false_rate = sum(h for h, p in zip(hits, positive, strict=True) if not p) / positive.count(
        False
    )
    assert sensitivity > false_rate, (device_id, [f.score for f in findings], threshold)

    # Lesions found are found where they are (within the device's stated tolerance): at
    # least as often as not, since a weak device's strongest response is sometimes
    # elsewhere (the manifest's held-out figures say how often).
    errors = [
        error_mm(sample, finding)
        for sample, finding, hit in zip(samples, findings, hits, strict=True)
        if hit and sample.positive
    ]
    located = sum(e <= device.tolerance_mm for e in errors)
    assert errors and located * 2 >= len(errors), (device_id, errors)


def test_smoke_build_writes_valid_devices(tmp_path: Path) -> None:
    """`python -m models.zoo.build --smoke DIR`: the whole build path, 2 steps per device."""
    result = subprocess.run(
        [sys.executable, "-m", "models.zoo.build", "--smoke", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for device_id in DEVICES:
        manifest = load_manifest(tmp_path / device_id / "manifest.yaml")
        data = (tmp_path / device_id / "model.onnx").read_bytes()
        assert hashlib.sha256(data).hexdigest() == manifest.onnx.sha256
        onnx.checker.check_model(onnx.load_from_string(data))
        if (ZOO / device_id / "manifest.yaml").is_file():  # the build matches what is committed
            committed = _manifest(device_id)
            assert manifest.input == committed.input
            assert [o.name for o in manifest.outputs] == [o.name for o in committed.outputs]
