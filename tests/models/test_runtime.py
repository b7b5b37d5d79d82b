"""The worker's onnxruntime sessions: IO binding gives what ``session.run`` gives, provider
options for the GPU providers, and which precision a session runs where.

The CPU tests run everywhere; the GPU ones run where onnxruntime offers CUDA and skip with
the reason elsewhere (provider assertions follow what is present)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from models.manifest import load_manifest
from models.precision import to_fp16
from models.runtime import (
    CUDA,
    TENSORRT,
    GpuOptions,
    SessionCache,
    pinned_empty,
    provider_options,
)
from tests.onnx_models import classifier_with_heatmap

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"
CPU = "CPUExecutionProvider"
HAS_CUDA = CUDA in ort.get_available_providers()


def _plain_run(model: bytes, name: str, batch: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model, providers=[CPU])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, {name: batch}), strict=True))


@pytest.mark.parametrize("device", ["tiny", "aigw-ref-cxr", "aigw-ref-ct-brain"])
def test_the_binding_path_gives_what_session_run_gives(device: str) -> None:
    shape: tuple[int, ...]
    if device == "tiny":
        model, name, shape = classifier_with_heatmap(32), "image", (1, 32, 32)
    else:
        manifest = load_manifest(ZOO / device / "manifest.yaml")
        model = (ZOO / device / manifest.onnx.file).read_bytes()
        name, shape = manifest.input.name, (manifest.input.channels, *manifest.input.size)
    count = 3 if len(shape) == 4 else 5
    batch = np.random.default_rng(7).random((count, *shape), dtype=np.float32)
    sessions = SessionCache([CPU])
    session = sessions.session(device, lambda: model)
    bound = sessions.run(session, name, batch, max_batch=2)  # chunks of 2, 2 and 1 (or 2, 1)
    plain = _plain_run(model, name, batch)
    assert set(bound) == set(plain)
    for output, value in plain.items():
        assert bound[output].dtype == np.float32
        np.testing.assert_array_equal(bound[output], value)


def test_outputs_left_on_the_device_are_the_same_values() -> None:
    sessions = SessionCache([CPU])
    model = classifier_with_heatmap(32)
    session = sessions.session("tiny", lambda: model)
    batch = np.random.default_rng(3).random((2, 1, 32, 32), dtype=np.float32)
    values = sessions.run_on_device(session, "image", batch)
    device = "cuda" if sessions.on_gpu else "cpu"
    assert {value.device_name().lower() for value in values.values()} == {device}
    for output, value in _plain_run(model, "image", batch).items():
        np.testing.assert_array_equal(values[output].numpy(), value)


def test_tensorrt_gets_its_engine_cache_folder_and_fp16_cuda_its_device(tmp_path: Path) -> None:
    gpu = GpuOptions(device_id=1, trt_engine_cache_dir=tmp_path / "engines")
    entries = provider_options([TENSORRT, CUDA, CPU], gpu, "aigw-ref-cxr@1.0.0", fp16=True)
    folder = tmp_path / "engines" / "aigw-ref-cxr@1.0.0-fp16"
    assert entries == [
        (
            TENSORRT,
            {
                "device_id": 1,
                "trt_fp16_enable": True,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(folder),
            },
        ),
        (CUDA, {"device_id": 1}),
        CPU,
    ]
    assert folder.is_dir()
    fp32 = provider_options([TENSORRT], GpuOptions(), "a/b@1", fp16=False)
    assert fp32 == [(TENSORRT, {"device_id": 0, "trt_fp16_enable": False})]


def test_the_cpu_runs_fp32_even_where_the_manifest_allows_fp16() -> None:
    """On the CPU the fp16 variant is never loaded (models.runtime says why)."""

    def refuse() -> bytes:
        raise AssertionError("the fp16 variant was loaded on the CPU")

    sessions = SessionCache([CPU])
    assert not sessions.on_gpu
    sessions.session("tiny@1", lambda: classifier_with_heatmap(32), refuse)
    assert sessions.precisions == {"tiny@1": "fp32"}


@pytest.mark.skipif(not HAS_CUDA, reason="this onnxruntime has no CUDAExecutionProvider")
def test_a_gpu_runs_the_fp16_variant_through_the_binding() -> None:
    model = classifier_with_heatmap(32)
    sessions = SessionCache([CUDA, CPU])
    assert sessions.on_gpu
    session = sessions.session("tiny@1", lambda: model, lambda: to_fp16(model))
    assert sessions.precisions == {"tiny@1": "fp16"}
    assert session.get_providers()[0] == CUDA
    batch = np.random.default_rng(5).random((4, 1, 32, 32), dtype=np.float32)
    outputs = sessions.run(session, "image", batch, max_batch=3)
    for output, value in _plain_run(model, "image", batch).items():
        np.testing.assert_allclose(outputs[output], value, atol=0.02)


def test_the_staging_buffer_is_a_contiguous_float32_array() -> None:
    buffer = pinned_empty((2, 1, 8, 8))
    assert buffer.dtype == np.float32 and buffer.flags.c_contiguous
    assert buffer.shape == (2, 1, 8, 8)
