"""Small, valid ONNX graphs and manifests for registry and pipeline tests (no torch)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper


def classifier_with_heatmap(size: int = 32, input_name: str = "image") -> bytes:
    """[N,1,S,S] → probability [N,1] = sigmoid(12·max(pooled) − 6) and heatmap
    [N,1,S/4,S/4] = the input average-pooled (4×4): a bright spot is a "lesion"."""
    pool = helper.make_node(
        "AveragePool", [input_name], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]
    )
    peak = helper.make_node("ReduceMax", ["pooled"], ["peak"], axes=[2, 3], keepdims=0)
    scaled = helper.make_node("Mul", ["peak", "gain"], ["logit_raw"])
    shifted = helper.make_node("Sub", ["logit_raw", "bias"], ["logit"])
    probability = helper.make_node("Sigmoid", ["logit"], ["probability"])
    heat_min = helper.make_node("Clip", ["pooled", "zero", "one"], ["heatmap"])
    graph = helper.make_graph(
        [pool, peak, scaled, shifted, probability, heat_min],
        "tiny-classifier",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", 1, size, size])],
        [
            helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info(
                "heatmap", TensorProto.FLOAT, ["batch", 1, size // 4, size // 4]
            ),
        ],
        initializer=[
            numpy_helper.from_array(np.array(12.0, dtype=np.float32), "gain"),
            numpy_helper.from_array(np.array(6.0, dtype=np.float32), "bias"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
            numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def manifest_dict(onnx_bytes: bytes, **overrides: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "id": "test-cxr",
        "version": "1.0.0",
        "name": "Test chest X-ray device",
        "name_ru": "Тестовое устройство",
        "vendor": "Tests",
        "registration": None,
        "group": "image_analysis",
        "study_types": [
            {"type": "fluorography", "service_code": "7003320"},
            {"type": "chest_xray", "service_code": "7002892"},
        ],
        "accepts": {"modalities": ["DX", "CR"], "body_parts": ["CHEST"], "min_instances": 1},
        "input": {"name": "image", "dims": 2, "size": [32, 32]},
        "outputs": [
            {
                "name": "probability",
                "kind": "classification",
                "labels": [{"code": "427359005", "ru": "Очаг", "en": "Nodule", "threshold": 0.5}],
            },
            {"name": "heatmap", "kind": "heatmap"},
        ],
        "onnx": {"file": "model.onnx", "sha256": hashlib.sha256(onnx_bytes).hexdigest()},
        "provenance": {
            "training_data": "none: a fixed test graph",
            "clinical_use": False,
            "notice_ru": "Тестовая модель. Не для клинического применения.",
            "notice_en": "Test model. Not for clinical use.",
        },
    }
    manifest.update(overrides)
    return manifest


def write_device(folder: Path, onnx_bytes: bytes, **overrides: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(onnx_bytes)
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump(manifest_dict(onnx_bytes, **overrides), allow_unicode=True))
    return path
