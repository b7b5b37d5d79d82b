"""onnxruntime sessions, one per device version, cached and shared by a worker's threads.

Providers come from settings in order of preference (TensorRT, CUDA, CPU); the ones this
onnxruntime build lacks are dropped, so the same configuration runs on a GPU node and here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def usable_providers(preferred: Sequence[str]) -> list[str]:
    available = set(ort.get_available_providers())
    chosen = [p for p in preferred if p in available]
    return chosen or ["CPUExecutionProvider"]


class SessionCache:
    """Creates each device's session once; ``run`` splits a batch into micro-batches."""

    def __init__(
        self,
        providers: Sequence[str] = DEFAULT_PROVIDERS,
        intra_op_threads: int = 0,
        allow_spinning: bool = False,
    ) -> None:
        self.providers = usable_providers(providers)
        self.intra_op_threads = intra_op_threads
        # onnxruntime's intra-op threads spin after each run by default: on a worker whose
        # other thread is decoding and preprocessing the next job, that spinning takes the
        # very cores the pipeline needs (measured by benchmarks/inference.py).
        self.allow_spinning = allow_spinning
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._lock = threading.Lock()

    def session(self, device_key: str, load: Callable[[], bytes]) -> ort.InferenceSession:
        with self._lock:
            cached = self._sessions.get(device_key)
            if cached is not None:
                return cached
            options = ort.SessionOptions()
            if self.intra_op_threads:
                options.intra_op_num_threads = self.intra_op_threads
            if not self.allow_spinning:
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(load(), sess_options=options, providers=self.providers)
            self._sessions[device_key] = session
            log.info(
                "inference session ready",
                extra={"device": device_key, "providers": session.get_providers()},
            )
            return session

    @staticmethod
    def run(
        session: ort.InferenceSession, input_name: str, batch: np.ndarray, max_batch: int
    ) -> dict[str, np.ndarray]:
        """Run ``batch`` (N × C × …) in chunks of at most ``max_batch``; outputs by name."""
        names = [output.name for output in session.get_outputs()]
        chunks: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for start in range(0, len(batch), max(1, max_batch)):
            part = np.ascontiguousarray(batch[start : start + max_batch], dtype=np.float32)
            for name, value in zip(names, session.run(names, {input_name: part}), strict=True):
                chunks[name].append(np.asarray(value))
        return {name: np.concatenate(parts) for name, parts in chunks.items()}
