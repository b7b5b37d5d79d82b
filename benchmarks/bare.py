"""Bare onnxruntime throughput of a device's model: per execution provider, precision and
batch size, with nothing of the gateway around it.

The input is a fixed-seed random tensor of the model's input shape: a convolutional
network's cost does not depend on the pixel values, and the pipeline's own figures (see
:mod:`benchmarks.inference`) use real preprocessed studies. fp16 is the fp32 graph converted
by onnxruntime's ``convert_float_to_float16`` with ``keep_io_types=True``: the same float32
tensors go in and come out, so the pipeline could switch without other changes.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from benchmarks.measure import percentile, sig
from models.manifest import DeviceManifest
from models.precision import to_fp16  # the registry's conversion: the variant GPU workers run

Precision = Literal["fp32", "fp16"]
PREFERRED_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build has, of the ones the workers use."""
    import onnxruntime as ort

    present = set(ort.get_available_providers())
    return [name for name in PREFERRED_PROVIDERS if name in present]


def open_session(model_bytes: bytes, provider: str) -> Any:
    """A session led by ``provider`` (nodes it lacks run on the CPU, as in the workers; a
    provider that failed to initialise is an error, not a silent CPU run), without intra-op
    spinning, as the workers configure theirs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = list(dict.fromkeys([provider, "CPUExecutionProvider"]))
    session = ort.InferenceSession(model_bytes, sess_options=options, providers=providers)
    if session.get_providers()[0] != provider:
        raise RuntimeError(f"onnxruntime chose {session.get_providers()[0]} instead")
    return session


@dataclass(frozen=True)
class BareFigures:
    """One (device, provider, precision, batch) measurement."""

    provider: str
    precision: Precision
    batch: int
    runs: int
    images_per_s: float
    latency_ms_p50: float  # one batch
    latency_ms_p95: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "precision": self.precision,
            "batch": self.batch,
            "runs": self.runs,
            "images_per_s": sig(self.images_per_s),
            "latency_ms_p50": sig(self.latency_ms_p50),
            "latency_ms_p95": sig(self.latency_ms_p95),
        }


def input_batch(manifest: DeviceManifest, batch: int, seed: int = 0) -> np.ndarray:
    spec = manifest.input
    shape = (batch, spec.channels, *spec.size)
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def measure(
    session: Any,
    manifest: DeviceManifest,
    provider: str,
    precision: Precision,
    batch: int,
    min_seconds: float,
    min_runs: int,
) -> BareFigures:
    """``session.run`` back to back after one untimed run (first-run allocations, TensorRT
    engine build), until both minimums are reached."""
    feed = {manifest.input.name: input_batch(manifest, batch)}
    names = [output.name for output in session.get_outputs()]
    session.run(names, feed)
    latencies: list[float] = []
    started = time.perf_counter()
    while len(latencies) < min_runs or time.perf_counter() - started < min_seconds:
        began = time.perf_counter()
        session.run(names, feed)
        latencies.append(time.perf_counter() - began)
    wall = time.perf_counter() - started
    return BareFigures(
        provider=provider,
        precision=precision,
        batch=batch,
        runs=len(latencies),
        images_per_s=batch * len(latencies) / wall,
        latency_ms_p50=1000 * statistics.median(latencies),
        latency_ms_p95=1000 * percentile(latencies, 0.95),
    )


@dataclass(frozen=True)
class Skipped:
    """A combination that could not be measured, and why (an op without an fp16 kernel on
    this provider, an allocation that failed…)."""

    provider: str
    precision: Precision
    batch: int | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "precision": self.precision,
            "batch": self.batch,
            "reason": self.reason,
        }


def sweep(
    manifest: DeviceManifest,
    model_bytes: bytes,
    providers: Sequence[str],
    precisions: Sequence[Precision],
    batches: Sequence[int],
    min_seconds: float,
    min_runs: int,
) -> tuple[list[BareFigures], list[Skipped]]:
    """Every provider × precision × batch that runs here; the rest with the reason."""
    figures: list[BareFigures] = []
    skipped: list[Skipped] = []
    models: dict[Precision, bytes] = {"fp32": model_bytes}
    for precision in precisions:
        if precision in models:
            continue
        try:
            models[precision] = to_fp16(model_bytes)
        except Exception as exc:  # a converter failure is a finding, not a crash
            for provider in providers:
                skipped.append(Skipped(provider, precision, None, _reason(exc)))
    for provider in providers:
        for precision in precisions:
            if precision not in models:
                continue
            try:
                session = open_session(models[precision], provider)
            except Exception as exc:
                skipped.append(Skipped(provider, precision, None, _reason(exc)))
                continue
            for batch in batches:
                try:
                    figures.append(
                        measure(
                            session, manifest, provider, precision, batch, min_seconds, min_runs
                        )
                    )
                except Exception as exc:
                    skipped.append(Skipped(provider, precision, batch, _reason(exc)))
                    break  # a larger batch fails the same way
            print(
                f"  bare {provider.removesuffix('ExecutionProvider')} {precision}: "
                + ", ".join(
                    f"b{f.batch} {f.images_per_s:.1f}/s"
                    for f in figures
                    if (f.provider, f.precision) == (provider, precision)
                ),
                flush=True,
            )
    return figures, skipped


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0][:300] if text else ''}"
