"""``precision: fp16``: at registration the fp16 variant is run against the fp32 model on
fixed-seed inputs and refused beyond the manifest's tolerance, naming the deviation; the
variant that passed is stored for GPU workers."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import helper, numpy_helper

from gateway.devices.registry import DeviceRegistry, RegistryError
from gateway.index.database import Database
from gateway.index.object_store import FolderStore
from models.manifest import DEFAULT_FP16_TOLERANCE, load_manifest
from models.precision import compare_fp16, to_fp16
from tests.onnx_models import classifier_with_heatmap, manifest_dict, write_device

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"


@pytest.fixture
def registry(tmp_path: Path) -> DeviceRegistry:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    db.migrate()
    return DeviceRegistry(db, FolderStore(tmp_path / "objects"))


def _reference_device_in_fp16(folder: Path, device: str, **changes: Any) -> Path:
    """A copy of a reference device whose manifest allows fp16 (the zoo's keep fp32: every
    start would pay for the check)."""
    shutil.copytree(ZOO / device, folder)
    path = folder / "manifest.yaml"
    manifest = yaml.safe_load(path.read_text(encoding="utf-8"))
    manifest.update({"precision": "fp16", **changes})
    path.write_text(yaml.safe_dump(manifest, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize("device", ["aigw-ref-cxr", "aigw-ref-ct-chest"])
def test_a_reference_device_passes_and_its_checked_variant_is_stored(
    registry: DeviceRegistry, tmp_path: Path, device: str
) -> None:
    registered, new = registry.register(_reference_device_in_fp16(tmp_path / device, device))
    assert new and registered.manifest.precision == "fp16"
    assert registered.manifest.fp16_tolerance == DEFAULT_FP16_TOLERANCE
    fp32 = registry.model_bytes(registered.key)
    load_fp16 = registry.fp16_loader(registered.manifest)
    assert load_fp16 is not None
    # The conversion is deterministic: what is stored is what was checked.
    assert load_fp16() == to_fp16(fp32)
    check = compare_fp16(registered.manifest, fp32)
    assert 0 < check.max_deviation <= DEFAULT_FP16_TOLERANCE


def test_an_fp32_device_has_no_fp16_variant(registry: DeviceRegistry, tmp_path: Path) -> None:
    registered, _ = registry.register(write_device(tmp_path / "dev", classifier_with_heatmap()))
    assert registered.manifest.precision == "fp32"
    assert registry.fp16_loader(registered.manifest) is None
    assert not list((tmp_path / "objects").rglob("*.fp16.onnx"))


def test_a_tolerance_the_variant_does_not_meet_is_refused_naming_the_deviation(
    registry: DeviceRegistry, tmp_path: Path
) -> None:
    """fp16 rounds every input to 11 significant bits: the tiny model's heat map moves by
    ~1e-4, far over a tolerance of 1e-7."""
    path = _reference_device_in_fp16(tmp_path / "cxr", "aigw-ref-cxr", fp16_tolerance=1e-7)
    with pytest.raises(RegistryError) as refused:
        registry.register(path)
    message = str(refused.value)
    assert "deviates from fp32 by up to" in message
    assert "over fp16_tolerance 1e-07" in message
    assert registry.devices() == []
    assert not (tmp_path / "objects").exists() or not list((tmp_path / "objects").rglob("*"))


def _scaled_classifier(scale: float) -> bytes:
    """The tiny classifier whose heat map is ``pooled × scale ÷ scale``: the same in fp32,
    but fp16 holds no constant above 65504 (the converter clamps it to 10⁴)."""
    model = onnx.load_model_from_string(classifier_with_heatmap(32))
    graph = model.graph
    clip = next(node for node in graph.node if node.op_type == "Clip")
    clip.input[0] = "rescaled"
    graph.node.extend(
        [
            helper.make_node("Mul", ["pooled", "up"], ["scaled_up"]),
            helper.make_node("Mul", ["scaled_up", "down"], ["rescaled"]),
        ]
    )
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(scale, dtype=np.float32), "up"),
            numpy_helper.from_array(np.array(1 / scale, dtype=np.float32), "down"),
        ]
    )
    nodes = list(graph.node)  # Clip must come after the new nodes
    del graph.node[:]
    graph.node.extend([n for n in nodes if n.op_type != "Clip"] + [clip])
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def test_a_model_fp16_cannot_represent_is_refused_at_the_default_tolerance(
    registry: DeviceRegistry, tmp_path: Path
) -> None:
    model = _scaled_classifier(1e5)
    path = write_device(tmp_path / "dev", model, precision="fp16")
    with pytest.raises(
        RegistryError, match=r"deviates from fp32 by up to 0\.\d+ \(output heatmap\)"
    ):
        registry.register(path)
    # The same model at fp32 registers: the refusal is the precision's, not the model's.
    registered, _ = registry.register(write_device(tmp_path / "dev32", model))
    assert registered.manifest.precision == "fp32"


def test_fp16_is_for_models_the_gateway_runs() -> None:
    from pydantic import ValidationError

    from models.manifest import DeviceManifest

    manifest = manifest_dict(classifier_with_heatmap(), precision="fp16")
    manifest.pop("onnx")
    manifest.pop("input")
    manifest |= {
        "runtime": "external",
        "external": {"host": "127.0.0.1", "port": 11112, "ae_title": "V", "calling_ae": "V"},
    }
    with pytest.raises(ValidationError, match="precision fp16 is for a model the gateway runs"):
        DeviceManifest.model_validate(manifest)


def test_the_zoo_keeps_fp32() -> None:
    for path in sorted(ZOO.glob("*/manifest.yaml")):
        assert load_manifest(path).precision == "fp32", path
