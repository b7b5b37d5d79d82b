"""Groups of the one settings object (:mod:`gateway.settings`), each a mapping in YAML and
``AIGW_<GROUP>__<NAME>`` in the environment: the health bounds per working state, and the
GPU node's settings (all optional; none needs a GPU to be valid, so the same configuration
runs on a CPU node)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DecodeBackend = Literal["auto", "cpu", "gpu"]


class GpuSettings(BaseModel):
    """CUDA device, TensorRT engine cache, and where compressed pixels are decoded."""

    model_config = ConfigDict(extra="forbid")

    cuda_device_id: int = Field(
        default=0,
        ge=0,
        le=63,
        description="The CUDA device for onnxruntime (CUDA, TensorRT) and nvImageCodec; a "
        "worker pinned with CUDA_VISIBLE_DEVICES sees its GPU as 0.",
    )
    trt_engine_cache_dir: Path | None = Field(
        default=None,
        description="TensorRT engines, one folder per device version and precision, created "
        "on use; unset: <data_dir>/trt-engines.",
    )
    decode_backend: DecodeBackend = Field(
        default="auto",
        description="auto: nvImageCodec on the GPU where it is installed and a GPU is "
        "present, else the CPU decoders; cpu: always the CPU; gpu: a worker without "
        "nvImageCodec or a GPU refuses to start.",
    )


class StuckBounds(BaseModel):
    """How long an item may stay in each working state before the gateway is degraded."""

    model_config = ConfigDict(extra="forbid")

    routing: float = Field(default=60.0, gt=0, description="A complete study not yet routed.")
    queued: float = Field(default=900.0, gt=0, description="A job waiting for a worker.")
    running: float = Field(default=900.0, gt=0, description="A job being analysed.")
    reporting: float = Field(
        default=300.0, gt=0, description="An inferred job whose results are not recorded."
    )
    delivering: float = Field(
        default=900.0, gt=0, description="A result not yet acknowledged by its destination."
    )
