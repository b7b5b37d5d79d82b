"""The device registry: validation names what is wrong and leaves the registry unchanged."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gateway.devices.registry import DeviceRegistry, RegistryError
from gateway.index.database import Database
from gateway.index.object_store import FolderStore
from gateway.index.tables import RegionRow
from tests.onnx_models import classifier_with_heatmap, manifest_dict, write_device


@pytest.fixture
def registry(tmp_path: Path) -> DeviceRegistry:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    db.migrate()
    with db.session() as session:
        session.add_all(
            [
                RegionRow(code="38", name="Иркутская область"),
                RegionRow(code="71", name="Тульская область"),
            ]
        )
    return DeviceRegistry(db, FolderStore(tmp_path / "objects"))


def test_register_stores_the_model_and_is_idempotent(
    registry: DeviceRegistry, tmp_path: Path
) -> None:
    model = classifier_with_heatmap()
    device, new = registry.register(write_device(tmp_path / "dev", model))
    assert new and device.key == "test-cxr@1.0.0"
    assert registry.model_bytes("test-cxr@1.0.0") == model
    again, new_again = registry.register(tmp_path / "dev" / "manifest.yaml")
    assert not new_again and again.key == device.key
    assert len(registry.devices()) == 1


@pytest.mark.parametrize(
    ("overrides", "mutate_model", "message"),
    [
        ({"onnx": {"file": "model.onnx", "sha256": "0" * 64}}, False, "sha256 mismatch"),
        (
            {"input": {"name": "pixels", "dims": 2, "size": [32, 32]}},
            False,
            "graph inputs are ['image']",
        ),
        (
            {"input": {"name": "image", "dims": 2, "size": [64, 64]}},
            False,
            "axis 2 is 32, manifest says 64",
        ),
        ({"input": {"name": "image", "dims": 3, "size": [8, 32, 32]}}, False, "rank 4"),
        (
            {
                "outputs": [
                    {
                        "name": "score",
                        "kind": "classification",
                        "labels": [{"code": "1", "ru": "x", "en": "x", "threshold": 0.5}],
                    }
                ]
            },
            False,
            "graph lacks outputs ['score']",
        ),
        ({}, True, "not a valid ONNX model"),
    ],
)
def test_a_bad_model_is_refused_with_the_reason_and_nothing_changes(
    registry: DeviceRegistry,
    tmp_path: Path,
    overrides: dict[str, object],
    mutate_model: bool,
    message: str,
) -> None:
    model = classifier_with_heatmap()
    if mutate_model:
        model = b"\x08\x07garbage" + model[:100]
        overrides = {"onnx": {"file": "model.onnx", "sha256": hashlib.sha256(model).hexdigest()}}
    path = write_device(tmp_path / "bad", model, **overrides)
    with pytest.raises(RegistryError) as failure:
        registry.register(path)
    assert message in str(failure.value)
    assert registry.devices() == []
    assert not list((tmp_path / "objects").rglob("*.onnx"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"study_types": [{"type": "fluorography", "service_code": "7002892"}]}, "7003320"),
        (
            {
                "provenance": {
                    "training_data": "x" * 5,
                    "clinical_use": True,
                    "notice_ru": "ааа",
                    "notice_en": "aaa",
                }
            },
            "registration",
        ),
        ({"id": "../escape"}, "id"),
        ({"unexpected": 1}, "unexpected"),
        ({"onnx": {"file": "../../etc/passwd", "sha256": "0" * 64}}, "relative path"),
        (
            {
                "outputs": [
                    {
                        "name": "probability",
                        "kind": "classification",
                        "labels": [{"code": "1", "ru": "x", "en": "x", "threshold": 1.5}],
                    }
                ]
            },
            "threshold",
        ),
    ],
)
def test_a_bad_manifest_names_the_field(
    registry: DeviceRegistry, tmp_path: Path, overrides: dict[str, object], message: str
) -> None:
    path = write_device(tmp_path / "bad", classifier_with_heatmap(), **overrides)
    with pytest.raises(RegistryError) as failure:
        registry.register(path)
    assert message in str(failure.value)
    assert registry.devices() == []


def test_a_manifest_that_is_not_utf8_or_names_no_file_is_refused(
    registry: DeviceRegistry, tmp_path: Path
) -> None:
    binary = tmp_path / "binary" / "manifest.yaml"
    binary.parent.mkdir()
    binary.write_bytes(b"\xff\xfeid: x\n")
    with pytest.raises(RegistryError, match="not UTF-8"):
        registry.register(binary)
    dot = write_device(tmp_path / "dot", classifier_with_heatmap())
    dot.write_text(dot.read_text().replace("file: model.onnx", "file: ."))
    with pytest.raises(RegistryError, match="must name a file"):
        registry.register(dot)
    assert registry.devices() == []


def test_same_version_with_another_file_is_refused(
    registry: DeviceRegistry, tmp_path: Path
) -> None:
    registry.register(write_device(tmp_path / "v1", classifier_with_heatmap()))
    other = classifier_with_heatmap()[:-1] + b"\x01"  # still parses? if not, the check differs
    other_model = classifier_with_heatmap(size=32, input_name="image")
    changed = other_model.replace(b"tiny-classifier", b"tiny-classifieR")
    assert changed != other_model and other
    with pytest.raises(RegistryError, match="already registered with another ONNX file"):
        registry.register(write_device(tmp_path / "v1b", changed))


def test_versions_enablement_and_regions(registry: DeviceRegistry, tmp_path: Path) -> None:
    model = classifier_with_heatmap()
    registry.register(write_device(tmp_path / "v1", model))
    changed = model.replace(b"tiny-classifier", b"tiny-classifieR")
    registry.register(write_device(tmp_path / "v2", changed, version="1.1.0"))
    assert registry.active_for_region("38") == []  # not enabled anywhere yet
    registry.set_regions({"38": ["test-cxr"]})
    assert [m.version for m in registry.active_for_region("38")] == ["1.1.0"]
    assert registry.active_for_region("71") == []
    registry.set_enabled("test-cxr@1.1.0", False)
    assert [m.version for m in registry.active_for_region("38")] == ["1.0.0"]
    with pytest.raises(RegistryError, match="no device"):
        registry.set_enabled("test-cxr@9.9.9", True)
    assert manifest_dict(model)["id"] == "test-cxr"
