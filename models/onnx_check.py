"""Validation of a vendor's ONNX file against its manifest, before it is registered.

Checks, in order, each failure naming what is wrong: the checksum, ``onnx.checker``, the
graph's input and output names, ranks, fixed sizes and element types against the manifest,
and one inference on a generated input whose outputs must have the promised shapes and be
finite probabilities where the manifest says so. A manifest with ``precision: fp16`` then
has its fp16 variant derived and compared with the fp32 model (:mod:`models.precision`):
beyond ``fp16_tolerance`` the model is refused, naming the deviation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from models.manifest import DeviceManifest, OutputKind
from models.precision import compare_fp16

MAX_MODEL_BYTES = 2 * 1024**3


class ModelError(Exception):
    """The ONNX file does not match its manifest or cannot run; the message says how."""


@dataclass(frozen=True)
class ModelReport:
    sha256: str
    size_bytes: int
    opset: int
    output_shapes: dict[str, tuple[int, ...]]
    fp16_model: bytes | None = None  # precision fp16: the variant that passed the check
    fp16_deviation: float | None = None


def validate_model(manifest: DeviceManifest, data: bytes) -> ModelReport:
    if len(data) > MAX_MODEL_BYTES:
        raise ModelError(f"ONNX file is {len(data)} bytes, over the {MAX_MODEL_BYTES} limit")
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.onnx.sha256:
        raise ModelError(f"sha256 mismatch: file is {digest}, manifest says {manifest.onnx.sha256}")
    model = _parse(data)
    _check_graph(manifest, model)
    shapes = _smoke_inference(manifest, data)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    report = ModelReport(digest, len(data), opset, shapes)
    if manifest.precision == "fp16":
        fp16, deviation = _fp16_within_tolerance(manifest, data)
        report = ModelReport(digest, len(data), opset, shapes, fp16, deviation)
    return report


def _fp16_within_tolerance(manifest: DeviceManifest, data: bytes) -> tuple[bytes, float]:
    try:
        check = compare_fp16(manifest, data)
    except Exception as exc:  # the converter and onnxruntime raise unrelated types
        raise ModelError(f"precision fp16: the fp16 variant cannot run: {exc}") from exc
    if not check.max_deviation <= manifest.fp16_tolerance:
        raise ModelError(
            f"precision fp16: the fp16 variant deviates from fp32 by up to "
            f"{check.max_deviation:.6g} (output {check.output}), over fp16_tolerance "
            f"{manifest.fp16_tolerance:g}; register it with precision fp32, or with a "
            "tolerance its outputs can bear"
        )
    return check.model, check.max_deviation


def _parse(data: bytes) -> onnx.ModelProto:
    try:
        model = onnx.load_model_from_string(data)
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises several unrelated types for a bad file
        raise ModelError(f"not a valid ONNX model: {exc.__class__.__name__}: {exc}") from exc
    return model


def _check_graph(manifest: DeviceManifest, model: onnx.ModelProto) -> None:
    initializers = {init.name for init in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input if i.name not in initializers}
    outputs = {o.name: o for o in model.graph.output}
    spec = manifest.input
    if set(inputs) != {spec.name}:
        raise ModelError(f"graph inputs are {sorted(inputs)}, manifest says [{spec.name!r}]")
    expected_input = [None, spec.channels, *spec.size]  # None: the batch may vary
    _check_tensor(f"input {spec.name}", inputs[spec.name], expected_input)
    wanted = [o.name for o in manifest.outputs]
    wanted += [o.size_output for o in manifest.outputs if o.size_output]
    missing = [name for name in wanted if name not in outputs]
    if missing:
        raise ModelError(f"graph lacks outputs {missing}; it has {sorted(outputs)}")
    for output in manifest.outputs:
        rank = {OutputKind.CLASSIFICATION: 2, OutputKind.HEATMAP: 4, OutputKind.DETECTION: 4}.get(
            output.kind, 2 + spec.dims
        )
        _check_rank(f"output {output.name}", outputs[output.name], rank)


def _check_tensor(what: str, value: onnx.ValueInfoProto, expected: list[int | None]) -> None:
    tensor = value.type.tensor_type
    if tensor.elem_type != onnx.TensorProto.FLOAT:
        raise ModelError(
            f"{what} must be float32, is {onnx.TensorProto.DataType.Name(tensor.elem_type)}"
        )
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    if len(dims) != len(expected):
        raise ModelError(
            f"{what} has rank {len(dims)}, manifest implies {len(expected)} {expected}"
        )
    for axis, (have, want) in enumerate(zip(dims, expected, strict=True)):
        if want is not None and have is not None and have != want:
            raise ModelError(f"{what} axis {axis} is {have}, manifest says {want}")


def _check_rank(what: str, value: onnx.ValueInfoProto, rank: int) -> None:
    tensor = value.type.tensor_type
    if tensor.elem_type != onnx.TensorProto.FLOAT:
        raise ModelError(f"{what} must be float32")
    if tensor.HasField("shape") and len(tensor.shape.dim) != rank:
        raise ModelError(f"{what} has rank {len(tensor.shape.dim)}, expected {rank}")


def _smoke_inference(manifest: DeviceManifest, data: bytes) -> dict[str, tuple[int, ...]]:
    spec = manifest.input
    rng = np.random.default_rng(0)
    batch = rng.random((2, spec.channels, *spec.size), dtype=np.float32)
    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        results = dict(zip(names, session.run(None, {spec.name: batch}), strict=True))
    except Exception as exc:  # onnxruntime's errors are not a stable hierarchy
        raise ModelError(f"inference on a generated input failed: {exc}") from exc
    for output in manifest.outputs:
        value = results[output.name]
        if value.shape[0] != 2:
            raise ModelError(
                f"output {output.name} batch is {value.shape[0]} for an input batch of 2"
            )
        if not np.all(np.isfinite(value)):
            raise ModelError(f"output {output.name} is not finite on a generated input")
        if value.min() < -1e-4 or value.max() > 1 + 1e-4:
            raise ModelError(f"output {output.name} must be probabilities in [0, 1]")
        labels = len(output.labels) if output.labels else value.shape[1]
        if value.shape[1] != labels:
            raise ModelError(
                f"output {output.name} has {value.shape[1]} channels for {labels} labels"
            )
        if output.kind in (OutputKind.SEGMENTATION,) and list(value.shape[2:]) != spec.size:
            raise ModelError(
                f"segmentation {output.name} is {list(value.shape[2:])}, input is {spec.size}"
            )
    return {name: tuple(int(d) for d in value.shape) for name, value in results.items()}
