"""onnxruntime sessions, one per device version, cached and shared by a worker's threads.

Providers come from settings in order of preference (TensorRT, CUDA, CPU); the ones this
onnxruntime build lacks are dropped, so the same configuration runs on a GPU node and here.
Each GPU provider gets its options (:func:`provider_options`): the CUDA device, and for
TensorRT an engine cache directory (an engine takes minutes to build; cached, a restarted
worker loads it in seconds) and fp16 kernels for a device whose manifest allows fp16.

Every run goes through IO binding (``session.io_binding()``), on the CPU as on a GPU, so the
binding, the chunking and the outputs' way back that a GPU node runs are exercised by the
tests here; only the input's copy to the device is GPU-only. On a GPU the input is staged
in a pinned host buffer (page-locked: the copy is DMA, not a bounce through a driver buffer)
and copied once into a device buffer kept for that shape (``update_inplace``: no allocation
per run); the outputs are bound on the device and copied to the host once per run, because
postprocessing (``models.postprocess``, numpy) reads them there.
:meth:`SessionCache.run_on_device` hands them over on the device for a caller that can use
them there.

Which model runs: a device whose manifest says ``precision: fp16`` has a checked fp16
variant (:mod:`models.precision`); it runs only where a GPU provider leads. On the CPU the
fp32 model runs: onnxruntime's CPU provider has float16 kernels for few operators and runs
the rest in float32 between inserted casts, so fp16 there buys no reliable speed (the
suite's CPU figures go both ways) and only costs the precision the check allowed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
GPU_PROVIDERS = frozenset({TENSORRT, CUDA})
# Batch shapes whose pinned host and device input buffers a thread keeps (see _on_device).
STAGED_SHAPES = 4
ProviderEntry = str | tuple[str, dict[str, Any]]


def usable_providers(preferred: Sequence[str]) -> list[str]:
    available = set(ort.get_available_providers())
    chosen = [p for p in preferred if p in available]
    return chosen or ["CPUExecutionProvider"]


@dataclass(frozen=True)
class GpuOptions:
    """``device_id``: the CUDA device (a worker pinned with ``CUDA_VISIBLE_DEVICES`` sees
    its GPU as 0). ``trt_engine_cache_dir``: TensorRT's engines, one folder per device
    version and precision, created on use; None builds them anew in every process."""

    device_id: int = 0
    trt_engine_cache_dir: Path | None = None


def provider_options(
    providers: Sequence[str], gpu: GpuOptions, device_key: str, fp16: bool
) -> list[ProviderEntry]:
    """The providers with their options for one device's session (creates the TensorRT
    engine cache folder)."""
    entries: list[ProviderEntry] = []
    for name in providers:
        if name == TENSORRT:
            options: dict[str, Any] = {"device_id": gpu.device_id, "trt_fp16_enable": fp16}
            if gpu.trt_engine_cache_dir is not None:
                folder = gpu.trt_engine_cache_dir / _folder_name(device_key, fp16)
                folder.mkdir(parents=True, exist_ok=True)
                options |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(folder)}
            entries.append((name, options))
        elif name == CUDA:
            entries.append((name, {"device_id": gpu.device_id}))
        else:
            entries.append(name)
    return entries


def _folder_name(device_key: str, fp16: bool) -> str:
    safe = "".join(c if c.isalnum() or c in "._-@" else "_" for c in device_key)
    return f"{safe}-{'fp16' if fp16 else 'fp32'}"


class SessionCache:
    """Creates each device's session once; ``run`` splits a batch into micro-batches."""

    def __init__(
        self,
        providers: Sequence[str] = DEFAULT_PROVIDERS,
        intra_op_threads: int = 0,
        allow_spinning: bool = False,
        gpu: GpuOptions | None = None,
    ) -> None:
        self.providers = usable_providers(providers)
        self.intra_op_threads = intra_op_threads
        # onnxruntime's intra-op threads spin after each run by default: on a worker whose
        # other thread is decoding and preprocessing the next job, that spinning takes the
        # very cores the pipeline needs (measured by benchmarks/inference.py).
        self.allow_spinning = allow_spinning
        self.gpu = gpu or GpuOptions()
        self.precisions: dict[str, str] = {}  # device key → the precision its session runs
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._lock = threading.Lock()
        self._staging = threading.local()  # per thread: shape → (pinned host, device) buffers

    @property
    def on_gpu(self) -> bool:
        """A GPU provider leads: sessions run there (nodes it lacks fall back to the CPU)."""
        return self.providers[0] in GPU_PROVIDERS

    def session(
        self,
        device_key: str,
        load: Callable[[], bytes],
        load_fp16: Callable[[], bytes] | None = None,
    ) -> ort.InferenceSession:
        """The device's session, made on first use from ``load()`` (the fp32 model), or from
        ``load_fp16()`` (its checked fp16 variant, where the manifest allows one) when a GPU
        provider leads."""
        with self._lock:
            cached = self._sessions.get(device_key)
            if cached is not None:
                return cached
            fp16 = load_fp16 is not None and self.on_gpu
            options = ort.SessionOptions()
            if self.intra_op_threads:
                options.intra_op_num_threads = self.intra_op_threads
            if not self.allow_spinning:
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            model = load_fp16() if fp16 and load_fp16 is not None else load()
            providers = provider_options(self.providers, self.gpu, device_key, fp16)
            session = ort.InferenceSession(model, sess_options=options, providers=providers)
            if fp16 and session.get_providers()[0] not in GPU_PROVIDERS:
                # onnxruntime-gpu fell back to the CPU (no usable GPU or driver): the fp16
                # model is only ever run on a GPU, so the fp32 one runs here.
                fp16 = False
                session = ort.InferenceSession(load(), sess_options=options, providers=providers)
            self._sessions[device_key] = session
            self.precisions[device_key] = "fp16" if fp16 else "fp32"
            log.info(
                "inference session ready",
                extra={
                    "device": device_key,
                    "providers": session.get_providers(),
                    "precision": self.precisions[device_key],
                },
            )
            return session

    def run(
        self, session: ort.InferenceSession, input_name: str, batch: np.ndarray, max_batch: int
    ) -> dict[str, np.ndarray]:
        """Run ``batch`` (N × C × …) in chunks of at most ``max_batch``; outputs by name,
        on the host."""
        names = [output.name for output in session.get_outputs()]
        chunks: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for start in range(0, len(batch), max(1, max_batch)):
            binding = self._bound_run(session, input_name, names, batch[start : start + max_batch])
            for name, value in zip(names, binding.copy_outputs_to_cpu(), strict=True):
                chunks[name].append(np.asarray(value))
        # One chunk (every batch the batcher forms): its arrays as they are, not copied.
        return {
            name: parts[0] if len(parts) == 1 else np.concatenate(parts)
            for name, parts in chunks.items()
        }

    def run_on_device(
        self, session: ort.InferenceSession, input_name: str, part: np.ndarray
    ) -> dict[str, ort.OrtValue]:
        """One run whose outputs stay where the session computed them (the GPU's memory on
        a GPU node), for a consumer that reads them there."""
        names = [output.name for output in session.get_outputs()]
        binding = self._bound_run(session, input_name, names, part)
        return dict(zip(names, binding.get_outputs(), strict=True))

    def _bound_run(
        self, session: ort.InferenceSession, input_name: str, names: list[str], part: np.ndarray
    ) -> ort.IOBinding:
        binding = session.io_binding()
        if session.get_providers()[0] in GPU_PROVIDERS:
            device, device_id = "cuda", self.gpu.device_id
            binding.bind_ortvalue_input(input_name, self._on_device(part))
        else:
            device, device_id = "cpu", 0
            binding.bind_cpu_input(input_name, np.ascontiguousarray(part, dtype=np.float32))
        for name in names:
            binding.bind_output(name, device, device_id)
        session.run_with_iobinding(binding)
        return binding

    def _on_device(self, part: np.ndarray) -> ort.OrtValue:
        """``part`` on the GPU: copied into this thread's pinned host buffer of its shape,
        then into its device buffer of that shape. Both are kept and reused (no allocation
        per run; the copy is synchronous and the run ends before the next copy starts), for
        the last :data:`STAGED_SHAPES` shapes: the batcher forms every batch size up to its
        maximum, and page-locked and GPU memory must not grow with each."""
        buffers: dict[tuple[int, ...], tuple[np.ndarray, ort.OrtValue]]
        buffers = getattr(self._staging, "buffers", None) or {}
        self._staging.buffers = buffers
        pair = buffers.pop(part.shape, None)
        if pair is None:
            while len(buffers) >= STAGED_SHAPES:
                del buffers[next(iter(buffers))]  # the least recently used shape
            on_device = ort.OrtValue.ortvalue_from_shape_and_type(
                part.shape, np.float32, "cuda", self.gpu.device_id
            )
            pair = (pinned_empty(part.shape), on_device)
        buffers[part.shape] = pair  # (re)inserted last: the dict's order is recency
        host, on_device = pair
        np.copyto(host, part, casting="same_kind")
        on_device.update_inplace(host)
        return on_device


def pinned_empty(shape: tuple[int, ...]) -> np.ndarray:
    """A float32 host array in page-locked memory where CUDA is there to lock it (through
    torch, which a GPU node has), else an ordinary contiguous one."""
    try:
        import torch

        if torch.cuda.is_available():
            tensor = torch.empty(shape, dtype=torch.float32, pin_memory=True)
            array: np.ndarray = tensor.numpy()
            return array
    except (ImportError, RuntimeError):  # no torch, or no driver to lock memory with
        pass
    return np.empty(shape, dtype=np.float32)
