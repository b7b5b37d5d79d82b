"""The fp16 variant of a device's model, and how far it strays from the fp32 one.

A manifest with ``precision: fp16`` lets a GPU worker run its model in half precision. The
variant is derived, not supplied: onnxruntime's ``convert_float_to_float16`` with
``keep_io_types=True`` (weights and arithmetic in float16, the same float32 tensors in and
out, so nothing around the session changes). The conversion is deterministic: the same fp32
bytes always give the same fp16 bytes, so the variant checked at registration is the one the
registry stores and the workers run.

The check runs both models on fixed-seed inputs of the model's input shape (uniform in
[0, 1], the range the preprocessing's ``unit`` normalisation produces, and a standard
normal batch for ``zscore``) and compares every output: the largest absolute difference
must be at most the manifest's ``fp16_tolerance`` (default 0.02). Probabilities are compared
as they are, so the bound is how far any score or heat-map value may move; an output with
values above 1 (a detector's box sizes) is compared relative to its largest value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.manifest import DeviceManifest

CHECK_SEEDS = (0, 1)  # two fixed batches of two inputs each
CHECK_BATCH = 2


@dataclass(frozen=True)
class Fp16Check:
    """The fp16 variant and its largest deviation from fp32 on the check inputs."""

    model: bytes
    max_deviation: float  # absolute, over every output element; inf when not finite
    output: str  # the output where it was largest


def to_fp16(model_bytes: bytes) -> bytes:
    """The model with float16 weights and arithmetic, float32 inputs and outputs."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load_from_string(model_bytes)
    converted = convert_float_to_float16(model, keep_io_types=True)
    return bytes(converted.SerializeToString())


def check_inputs(manifest: DeviceManifest) -> list[np.ndarray]:
    """Fixed-seed batches of the model's input shape, in the range its normalisation gives."""
    spec = manifest.input
    shape = (CHECK_BATCH, spec.channels, *spec.size)
    batches = []
    for seed in CHECK_SEEDS:
        rng = np.random.default_rng(seed)
        if spec.normalisation == "zscore":
            batches.append(rng.standard_normal(shape, dtype=np.float32))
        else:
            batches.append(rng.random(shape, dtype=np.float32))
    return batches


def compare_fp16(manifest: DeviceManifest, fp32_model: bytes) -> Fp16Check:
    """Derive the fp16 variant and measure it against fp32 on the CPU provider (the one every
    registering process has; a GPU's fp16 arithmetic differs from it by less than fp16's
    own rounding, which is what the tolerance bounds)."""
    import onnxruntime as ort

    fp16_model = to_fp16(fp32_model)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    reference = ort.InferenceSession(fp32_model, options, providers=["CPUExecutionProvider"])
    half = ort.InferenceSession(fp16_model, options, providers=["CPUExecutionProvider"])
    names = [output.name for output in reference.get_outputs()]
    worst, where = 0.0, names[0]
    for batch in check_inputs(manifest):
        feed = {manifest.input.name: batch}
        expected = reference.run(names, feed)
        got = half.run(names, feed)
        for name, want, have in zip(names, expected, got, strict=True):
            want64 = np.asarray(want, np.float64)
            difference = np.abs(np.asarray(have, np.float64) - want64)
            # Probabilities are compared as they are; a larger-valued output (a detector's
            # box sizes) relative to its own largest value.
            scale = max(1.0, float(np.max(np.abs(want64)))) if want64.size else 1.0
            deviation = float(np.max(difference)) / scale if difference.size else 0.0
            if not np.isfinite(deviation) or not np.all(np.isfinite(have)):
                deviation = float("inf")  # fp16 overflowed (65504) or produced NaN
            if deviation > worst:
                worst, where = deviation, name
    return Fp16Check(fp16_model, worst, where)
