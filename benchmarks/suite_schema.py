"""The suite's JSON report as a pydantic schema: the suite validates what it writes against
it, and the test validates what it reads. Every figure is positive and finite (``gt=0``,
``allow_inf_nan=False``); what can legitimately be zero (GPU utilisation, other load) says so.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class BarePoint(Strict):
    provider: str
    precision: Literal["fp32", "fp16"]
    batch: int = Field(ge=1, le=1024)
    runs: int = Field(ge=1)
    images_per_s: float = Field(gt=0)
    latency_ms_p50: float = Field(gt=0)
    latency_ms_p95: float = Field(gt=0)


class SkippedPoint(Strict):
    provider: str
    precision: Literal["fp32", "fp16"]
    batch: int | None = Field(default=None, ge=1)
    reason: str = Field(min_length=1)


class Pipeline(Strict):
    """The whole worker pipeline on real synthetic studies (benchmarks/inference.py)."""

    providers: list[str] = Field(min_length=1)
    study: str
    images_per_s: float = Field(gt=0)
    studies_per_s: float = Field(gt=0)
    bare_images_per_s: float = Field(gt=0)  # same session, same batch as the pipeline
    ratio: float = Field(gt=0)
    job_ms_p50: float = Field(gt=0)
    job_ms_p95: float = Field(gt=0)
    stages_ms_per_job: dict[str, float]
    target: float | None = Field(default=None, gt=0)
    meets_target: bool | None = None
    other_load_cores: float = Field(ge=0)


class Device(Strict):
    device: str
    dims: Literal[2, 3]
    unit: Literal["images", "volumes"]
    input_shape: list[int] = Field(min_length=3)
    notice_en: str | None
    notice_ru: str | None
    bare: list[BarePoint] = Field(min_length=1)
    skipped: list[SkippedPoint]
    pipeline: Pipeline | None


class IngestReceiver(Strict):
    name: str
    ct_instances_per_s: float = Field(gt=0)
    ct_mb_per_s: float = Field(gt=0)
    dx_instances_per_s: float = Field(gt=0)
    dx_mb_per_s: float = Field(gt=0)
    other_load_cores: float = Field(ge=0)


class Ingest(Strict):
    ct_instances: int = Field(ge=1)
    dx_instances: int = Field(ge=1)
    senders: int = Field(ge=1)
    rounds: int = Field(ge=1)
    receivers: list[IngestReceiver] = Field(min_length=1)


class Latency(Strict):
    studies: int = Field(ge=1)
    p50_s: float = Field(gt=0)
    p95_s: float = Field(gt=0)
    p99_s: float = Field(gt=0)


class GpuUse(Strict):
    gpus: list[str]
    samples: int = Field(ge=1)
    utilisation_percent_mean: float = Field(ge=0, le=100)
    utilisation_percent_max: float = Field(ge=0, le=100)
    memory_used_mib_max: float = Field(gt=0)


class EndToEnd(Strict):
    senders: int = Field(ge=1)
    send_seconds_planned: float = Field(gt=0)
    send_seconds: float = Field(gt=0)
    studies_prepared: int = Field(ge=1)
    pool_exhausted: bool
    studies_sent: int = Field(ge=1)
    studies_with_result: int = Field(ge=1)
    unfinished: list[str]
    failed: list[str]
    window_seconds: float = Field(gt=0)
    studies_per_min: float = Field(gt=0)
    offered_studies_per_min: float = Field(gt=0)
    saturated: bool
    latency_end: str
    latency_start: str
    quiet_period_s: float = Field(gt=0)
    latency: Latency
    latency_by_type: dict[str, Latency]
    latencies_s: dict[str, list[float]]
    mix: dict[str, float]
    sizes: dict[str, list[int] | int]
    gateway: str
    gpu: GpuUse | None
    gpu_unavailable: str | None


class Files(Strict):
    json_report: str
    markdown: str
    plots: list[str] = Field(min_length=2)


class SuiteReport(Strict):
    benchmark: Literal["suite"]
    timestamp: str
    machine: str
    quick: bool
    parameters: dict[str, object]
    notice: str
    devices: list[Device] = Field(min_length=1)
    ingest: Ingest | None
    end_to_end: EndToEnd | None
    gpu_bare: GpuUse | None
    environment: dict[str, object]
    files: Files
    wall_s: float = Field(gt=0)
