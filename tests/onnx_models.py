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
    serialised: bytes = model.SerializeToString()
    return serialised


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


def slow_classifier(size: int = 32, matmuls: int = 25, width: int = 768) -> bytes:
    """Like :func:`classifier_with_heatmap` but slow on purpose (a chain of input-dependent
    matrix products, ~1–3 s on a CPU) so a test can kill a worker in the middle of a task."""
    fast = onnx.load_model_from_string(classifier_with_heatmap(size))
    graph = fast.graph
    nodes = list(graph.node)
    # A scalar from the whole batch, expanded to a square: any batch size works.
    nodes.append(
        helper.make_node("ReduceMean", ["image"], ["level"], axes=[0, 1, 2, 3], keepdims=0)
    )
    nodes.append(helper.make_node("Expand", ["level", "square"], ["m0"]))
    previous = "m0"
    for index in range(matmuls):
        nodes.append(helper.make_node("MatMul", [previous, "weights"], [f"m{index + 1}"]))
        previous = f"m{index + 1}"
    nodes.append(helper.make_node("ReduceMean", [previous], ["slow_scalar"], keepdims=0))
    nodes.append(helper.make_node("Mul", ["slow_scalar", "nothing"], ["slow_zero"]))
    # probability = sigmoid(logit + 0·slow): the chain must run but changes nothing
    for node in nodes:
        if node.op_type == "Sigmoid":
            node.input[0] = "logit_slow"
    nodes.append(helper.make_node("Add", ["logit", "slow_zero"], ["logit_slow"]))
    ordered = _topological(
        nodes,
        {"image", *[i.name for i in graph.initializer], "axis1", "square", "weights", "nothing"},
    )
    rng = np.random.default_rng(0)
    initializers = [
        *graph.initializer,
        numpy_helper.from_array(np.array([width, width], dtype=np.int64), "square"),
        numpy_helper.from_array(
            (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), "weights"
        ),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "nothing"),
    ]
    slow_graph = helper.make_graph(
        ordered, "slow-classifier", list(graph.input), list(graph.output), initializer=initializers
    )
    model = helper.make_model(slow_graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    serialised: bytes = model.SerializeToString()
    return serialised


def _topological(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    ordered: list[onnx.NodeProto] = []
    pending = list(nodes)
    known = set(available)
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:
            raise ValueError("graph has a cycle or a missing input")
        for node in ready:
            ordered.append(node)
            known.update(node.output)
            pending.remove(node)
    return ordered
