"""Inference benchmark: per AI device, bare onnxruntime throughput against the whole worker
pipeline, on the same model, the same session and the same execution provider.

Per device, in one run:

- **bare**: the device's onnxruntime session, made by the worker's own
  :class:`models.runtime.SessionCache` (providers and options from settings), runs tensors
  that were preprocessed beforehand, back to back from one thread: at batch 1, at the batch
  the pipeline uses (the images of one job: one chest radiograph, four mammography views,
  one CT volume) and, for 2D devices, at the pipeline's maximum micro-batch.
- **pipeline**: synthetic studies are ingested into a real object store and SQLite index
  (the embedded default, built by :class:`workers.serve.Parts` on a temporary data folder)
  through :meth:`gateway.ingest.receive.Ingest.receive`, routed by the real rules
  (``configs/routing.yaml``), one job row per study, and run by
  :func:`gateway.inference.pipeline.run_job` on the context :func:`workers.worker.inference_context`
  builds: sequentially, and from a pool of ``worker_concurrency`` threads as the worker
  runs them. The per-stage breakdown is the jobs' own ``timings_ms``; what a job costs
  beyond its stages (database start and record, registry lookup) is ``bookkeeping``.
- **ratio**: pipeline images/s ÷ bare images/s at the pipeline's batch. The target for the
  2D devices on CPU is ≥ 0.7.

Bare, sequential and concurrent phases alternate in rounds so that a slow spell on a shared
machine hits all of them alike; the median round counts. Each phase also records the CPU
this process used and the CPU the rest of the machine used meanwhile.

    .venv/bin/python -m benchmarks.inference [--quick] [--device ID ...] [--devices-dir DIR]
        [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import hashlib
import math
import os
import resource
import statistics
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import numpy as np
import yaml
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select

import gateway.inference.pipeline
from benchmarks.environment import (
    RESULTS,
    ROOT,
    gpu_name,
    machine_busy_seconds,
    machine_description,
    machine_name,
    work_folder,
    write_results,
)
from gateway.demo.synthetic import (
    SyntheticStudy,
    chest_xray_study,
    ct_chest_study,
    ct_head_study,
    mammography_study,
)
from gateway.devices.registry import RegisteredDevice, RegistryError
from gateway.index.tables import JobRow, StudyRow
from gateway.inference.decode import read_dataset
from gateway.inference.pipeline import InferenceContext, run_job
from gateway.ingest.receive import Ingest, Sender
from gateway.jobs.dispatch import job_row
from gateway.jobs.task_queue import queue_for
from gateway.routing import facts_from_index, load_rules, route
from gateway.routing.route import PlannedJob
from gateway.settings import Settings, load_settings
from models.manifest import DeviceManifest, ManifestError, load_manifest
from workers.serve import Parts
from workers.worker import inference_context

DEVICES_DIR = ROOT / "models" / "zoo"
TARGET_2D_RATIO = 0.7
BUSY_MACHINE_CORES = 0.3  # other load above this during a median phase makes it suspect
SOURCE = "irk-cami"  # a configured source in region 38, where every reference device is on
UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's prefix
STAGES = ("load", "decode", "preprocess", "infer", "postprocess")


Run = TypeVar("Run", "BareRun", "PipelineRun")


class BenchmarkError(RuntimeError):
    """The run cannot give a trustworthy figure (a job failed, a study was not routed…)."""


# --- studies --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudySpec:
    """Which synthetic study feeds a device, and how large."""

    kind: str  # chest_xray, mammography, ct_chest, ct_head
    size: tuple[int, int]  # rows, columns of one image / slice
    slices: int = 0  # CT only
    modality: Literal["DX", "CR"] = "DX"  # chest X-ray only

    def make(self, seed: int, positive: bool) -> SyntheticStudy:
        if self.kind == "mammography":
            return mammography_study(seed, with_mass=positive, size=self.size)
        if self.kind == "ct_chest":
            return ct_chest_study(seed, self.slices, self.size, with_nodule=positive)
        if self.kind == "ct_head":
            return ct_head_study(seed, self.slices, self.size, with_haemorrhage=positive)
        return chest_xray_study(
            seed, "fluorography", self.modality, with_lesion=positive, size=self.size
        )

    def describe(self) -> str:
        rows, cols = self.size
        if self.kind == "mammography":
            return f"MG screening, 4 views of {rows}×{cols} (RCC, LCC, RMLO, LMLO)"
        if self.kind in ("ct_chest", "ct_head"):
            what = "chest" if self.kind == "ct_chest" else "head"
            return f"CT {what}, {self.slices} axial slices of {rows}×{cols} + a localizer"
        return f"{self.modality} PA chest (fluorography), one image of {rows}×{cols}"


def study_spec(
    manifest: DeviceManifest, quick: bool, sizes: dict[str, tuple[int, int]] | None = None
) -> StudySpec:
    """The synthetic study a device reads: by its input dimensions and what it accepts.
    2D sizes are what detectors deliver: a flat-panel chest radiograph 2500×2048, a
    full-field digital mammogram 2048×1664 (``--quick``: a quarter of the pixels or less);
    ``sizes`` (kind → rows, columns) overrides them."""
    spec = _default_spec(manifest, quick)
    if sizes and spec.kind in sizes:
        return dataclasses.replace(spec, size=sizes[spec.kind])
    return spec


def _default_spec(manifest: DeviceManifest, quick: bool) -> StudySpec:
    accepts = manifest.accepts
    body_parts = {part.upper() for part in accepts.body_parts}
    modalities = set(accepts.modalities)
    if manifest.input.dims == 3:
        size = (256, 256) if quick else (512, 512)
        if body_parts & {"HEAD", "BRAIN"}:
            return StudySpec("ct_head", size, slices=12 if quick else 32)
        return StudySpec("ct_chest", size, slices=24 if quick else 96)
    if "MG" in modalities:
        return StudySpec("mammography", (1024, 832) if quick else (2048, 1664))
    if modalities & {"DX", "CR"} and (not body_parts or "CHEST" in body_parts):
        modality: Literal["DX", "CR"] = "DX" if "DX" in modalities else "CR"
        return StudySpec("chest_xray", (512, 512) if quick else (2500, 2048), modality=modality)
    raise BenchmarkError(
        f"{manifest.key}: no synthetic study for modalities {sorted(modalities)} and body "
        f"parts {sorted(body_parts)}"
    )


def part10(dataset: Dataset) -> bytes:
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def clone(study: SyntheticStudy, number: int) -> list[bytes]:
    """The study's instances as Part-10 bytes under new study, series and SOP instance UIDs
    (derived from the originals and ``number``): same pixels, a separate study to the index
    and separate objects in the store."""

    def uid(original: str) -> str:
        return str(generate_uid(UID_PREFIX, entropy_srcs=[original, str(number)]))

    encoded = []
    for dataset in study.datasets:
        originals = (dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID)
        dataset.StudyInstanceUID = uid(originals[0])
        dataset.SeriesInstanceUID = uid(originals[1])
        dataset.SOPInstanceUID = uid(originals[2])
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        try:
            encoded.append(part10(dataset))
        finally:
            dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID = originals
            dataset.file_meta.MediaStorageSOPInstanceUID = originals[2]
    return encoded


# --- the gateway side -----------------------------------------------------------------------


@dataclass
class Bench:
    """One device's gateway: parts on a temporary data folder, the worker's context."""

    settings: Settings
    parts: Parts
    context: InferenceContext
    device: RegisteredDevice
    ingest: Ingest
    sender: Sender

    @property
    def manifest(self) -> DeviceManifest:
        return self.device.manifest


def build_bench(data_dir: Path, manifest_path: Path) -> Bench:
    settings = load_settings(
        None,
        data_dir=data_dir,
        min_free_bytes=0,
        sources_file=ROOT / "gateway" / "configs" / "sources.yaml",
        regions_file=ROOT / "gateway" / "configs" / "regions.yaml",
        routing_file=ROOT / "gateway" / "configs" / "routing.yaml",
    )
    parts = Parts.build(settings)
    context = inference_context(parts)
    try:
        device, _new = context.registry.register(manifest_path)
    except RegistryError as exc:
        raise BenchmarkError(str(exc)) from exc
    source = parts.directory.by_name(SOURCE)
    if source is None:
        raise BenchmarkError(f"configs/sources.yaml has no source {SOURCE}")
    sender = Sender(source=source, source_id=parts.source_ids[SOURCE], calling_ae=source.ae_title)
    return Bench(settings, parts, context, device, Ingest(parts.db, parts.store), sender)


@dataclass(frozen=True)
class PlannedStudy:
    study_uid: str
    job: PlannedJob
    images: int  # instances the job reads (2D: images; 3D: slices of one volume)


def ingest_and_route(bench: Bench, instances: list[bytes]) -> PlannedStudy:
    """Store every instance as the SCP would, then route the study with the real rules."""
    study_uid = ""
    for data in instances:
        outcome = bench.ingest.receive(data, bench.sender)
        if outcome.status != 0:
            raise BenchmarkError(f"ingest refused an instance: {outcome.reason}")
        study_uid = outcome.study_uid or study_uid
    with bench.parts.db.session() as session:
        facts = facts_from_index(session, study_uid)
    decision = route(facts, load_rules(bench.settings.routing_file), [bench.manifest])
    jobs = [job for job in decision.jobs if job.device_id == bench.manifest.id]
    if len(jobs) != 1:
        raise BenchmarkError(
            f"{bench.manifest.key}: the study was routed to {len(jobs)} jobs of this device "
            f"({decision.not_applicable_reason or 'one expected'})"
        )
    counts = {series.series_uid: series.instance_count for series in facts.series}
    images = sum(counts[uid] for uid in jobs[0].series_uids)
    return PlannedStudy(study_uid, jobs[0], images)


def create_jobs(bench: Bench, studies: Sequence[PlannedStudy], tag: int) -> list[int]:
    """One queued job row per study, as the dispatcher records them; ``tag`` makes each
    phase's rows distinct (it stands for another completion of the study)."""
    completed_at = dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=tag)
    now = dt.datetime.now(dt.UTC)
    ids = []
    with bench.parts.db.session() as session:
        rows = []
        for planned in studies:
            study = session.scalars(
                select(StudyRow).where(StudyRow.study_uid == planned.study_uid)
            ).one()
            job = planned.job
            queue = queue_for(bench.settings, job.device_id)
            row = job_row(study.id, completed_at, job, queue, now)
            session.add(row)
            rows.append(row)
        session.flush()
        ids = [row.id for row in rows]
    return ids


# --- the vendor-scale workload -------------------------------------------------------------
#
# The reference devices are tiny (5–7 ms per image on CPU), so reading and decoding a
# 10 MB radiograph dominates their pipeline whatever it does. Registered vendors' chest X-ray
# models are DenseNet-121 / ResNet-50 class networks at 512² or more; this workload puts the
# same pipeline in front of such a network to show its overhead against a realistic model
# cost. Its weights are random: it is not a device and its findings mean nothing.

VENDOR_SCALE_ID = "bench-vendor-scale-cxr"
VENDOR_SCALE_WORKLOAD = "vendor-scale, random weights"
VENDOR_SCALE_SIZE = 512
VENDOR_SCALE_QUICK_SIZE = 256  # --quick only, and labelled so in the report
REFERENCE_CXR = DEVICES_DIR / "aigw-ref-cxr" / "manifest.yaml"


def vendor_scale_onnx(size: int, seed: int) -> bytes:
    """MONAI DenseNet-121 (2D, one channel in, one label out) with ``torch.manual_seed``
    weights, exported as the reference devices are (TorchScript exporter, opset 17, batch
    axis dynamic). Outputs ``probability`` [N, 1] (sigmoid of the global-average-pooled
    head) and ``heatmap`` [N, 1, size, size] (the head applied at every location — a class
    activation map — sigmoid, upsampled to the input): one pass through the features."""
    import onnx
    import torch
    import torch.nn.functional as F
    from monai.networks.nets.densenet import DenseNet121

    torch.manual_seed(seed)
    densenet = DenseNet121(spatial_dims=2, in_channels=1, out_channels=1)

    class WithHeatmap(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = densenet

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            features = F.relu(self.net.features(image))
            head = cast(torch.nn.Linear, self.net.class_layers.out)
            cam = F.conv2d(features, head.weight[:, :, None, None], head.bias)
            probability = torch.sigmoid(cam.mean(dim=(2, 3)))  # = the head on pooled features
            upsampled = F.interpolate(cam, size=image.shape[-2:], mode="bilinear")
            return probability, torch.sigmoid(upsampled)

    model = WithHeatmap().eval()
    buffer = BytesIO()
    names = ["image", "probability", "heatmap"]
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.zeros((2, 1, size, size)),),
            buffer,  # type: ignore[arg-type]  # torch accepts a binary stream here
            input_names=names[:1],
            output_names=names[1:],
            dynamic_axes={name: {0: "batch"} for name in names},
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    proto.doc_string = f"{VENDOR_SCALE_ID}: benchmark workload, random weights, not a device"
    serialised: bytes = proto.SerializeToString()
    return serialised


def vendor_scale_manifest(
    base: DeviceManifest, size: int, seed: int, sha256: str
) -> dict[str, Any]:
    """The chest X-ray reference device's manifest with this workload's identity, input
    size, model file and provenance: the same study types, acceptance and outputs, so the
    router and every pipeline stage treat it as they would a vendor's chest X-ray device."""
    raw = base.model_dump(mode="json")
    raw["input"]["size"] = [size, size]
    raw["onnx"] = {"file": "model.onnx", "sha256": sha256}
    raw["provenance"] = {
        "training_data": f"none: random weights (torch.manual_seed({seed})), never trained",
        "clinical_use": False,
        "notice_ru": "Случайные веса, без обучения: нагрузка для бенчмарка, не устройство. "
        "Не для клинического применения.",
        "notice_en": "Random weights, never trained: a benchmark workload, not a device. "
        "Not for clinical use.",
        "build": f"MONAI DenseNet121 (spatial_dims 2, in_channels 1, out_channels 1), "
        f"6.95 M parameters, random weights from torch.manual_seed({seed}); sigmoid "
        f"probability and a class-activation heatmap; input {size}×{size}; ONNX opset 17, "
        "TorchScript exporter; exported by benchmarks/inference.py at benchmark time",
    }
    return {
        **raw,
        "id": VENDOR_SCALE_ID,
        "name": f"Benchmark workload: DenseNet-121 at {size}², random weights, not a device, "
        "no findings meaning anything",
        "name_ru": f"Нагрузка для бенчмарка: DenseNet-121, {size}², случайные веса, не "
        "устройство, находки ничего не значат",
        "vendor": "AIGW benchmarks (not a vendor)",
        "registration": None,
    }


def write_vendor_scale_device(folder: Path, size: int, seed: int) -> Path:
    """The workload's ``model.onnx`` and ``manifest.yaml`` in ``folder`` (a temporary
    folder of the run: never in the zoo, never committed); returns the manifest's path."""
    try:
        base = load_manifest(REFERENCE_CXR)
    except ManifestError as exc:
        raise BenchmarkError(f"the vendor-scale workload is built from {exc}") from exc
    data = vendor_scale_onnx(size, seed)
    manifest = vendor_scale_manifest(base, size, seed, hashlib.sha256(data).hexdigest())
    DeviceManifest.model_validate(manifest)  # refuse here rather than at registration
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(data)
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump(manifest, allow_unicode=True, sort_keys=False))
    return path


# --- measurements ---------------------------------------------------------------------------


def sig(value: float, digits: int = 4) -> float:
    """``value`` to ``digits`` significant digits (small figures keep their precision)."""
    return float(f"{value:.{digits}g}")


def nearest_rank(values: Sequence[float], fraction: float) -> float:
    """The observed value at ``fraction`` of the sorted values (nearest-rank percentile)."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def process_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Phase:
    """Wall clock and CPU of one timed phase."""

    wall_s: float
    cpu_s: float  # this process, all threads
    other_load: float  # cores the rest of the machine kept busy meanwhile


@contextlib.contextmanager
def timed() -> Iterator[list[Phase]]:
    out: list[Phase] = []
    busy, cpu, start = machine_busy_seconds(), process_cpu_seconds(), time.perf_counter()
    yield out
    wall = time.perf_counter() - start
    used = process_cpu_seconds() - cpu
    other = max(0.0, (machine_busy_seconds() - busy - used) / wall)
    out.append(Phase(wall, used, other))


@dataclass
class BareRun:
    batch: int
    batches: int
    latencies_s: list[float]
    phase: Phase

    @property
    def images(self) -> int:
        return self.batch * self.batches

    @property
    def images_per_s(self) -> float:
        return self.images / self.phase.wall_s

    def as_dict(self) -> dict[str, Any]:
        latencies = sorted(self.latencies_s)
        return {
            "batch": self.batch,
            "batches": self.batches,
            "images_per_s": sig(self.images_per_s),
            "batch_ms_median": sig(1000 * statistics.median(latencies)),
            "batch_ms_p90": sig(1000 * latencies[int(0.9 * (len(latencies) - 1))]),
            "ms_per_image": sig(1000 * self.phase.wall_s / (self.batch * self.batches)),
            "cpu_ms_per_image": sig(1000 * self.phase.cpu_s / (self.batch * self.batches)),
            "wall_s": sig(self.phase.wall_s),
            "other_load_cores": sig(self.phase.other_load),
        }


def run_bare(
    session: Any,
    manifest: DeviceManifest,
    tensors: Sequence[np.ndarray],
    batch: int,
    min_images: int,
    min_seconds: float,
) -> BareRun:
    """``session.run`` on a ready batch, back to back, until both minimums are reached."""
    stacked = np.ascontiguousarray(
        np.stack([tensors[i % len(tensors)] for i in range(batch)]), dtype=np.float32
    )
    names = [output.name for output in session.get_outputs()]
    feed = {manifest.input.name: stacked}
    session.run(names, feed)  # the first run of a new shape allocates
    latencies: list[float] = []
    with timed() as phase:
        start = time.perf_counter()
        while (
            len(latencies) < 3
            or len(latencies) * batch < min_images
            or time.perf_counter() - start < min_seconds
        ):
            began = time.perf_counter()
            session.run(names, feed)
            latencies.append(time.perf_counter() - began)
    return BareRun(batch, len(latencies), latencies, phase[0])


@dataclass
class PipelineRun:
    threads: int
    jobs: int
    images: int
    job_latencies_s: list[float]
    timings_ms: list[dict[str, float]]
    phase: Phase

    @property
    def images_per_s(self) -> float:
        return self.images / self.phase.wall_s

    def stages_ms(self) -> dict[str, float]:
        """Mean per job of each stage, and ``bookkeeping``: the rest of the job's time."""
        means = {
            stage: statistics.fmean(t.get(stage, 0.0) for t in self.timings_ms) for stage in STAGES
        }
        total = statistics.fmean(1000 * s for s in self.job_latencies_s)
        means["bookkeeping"] = max(total - sum(means.values()), 0.01)
        return {name: sig(value) for name, value in means.items()}

    def as_dict(self) -> dict[str, Any]:
        stages = self.stages_ms()
        total = sum(stages.values())
        return {
            "threads": self.threads,
            "jobs": self.jobs,
            "images": self.images,
            "images_per_s": sig(self.images_per_s),
            "studies_per_s": sig(self.jobs / self.phase.wall_s),
            "job_ms_median": sig(1000 * statistics.median(self.job_latencies_s)),
            "job_ms_p95": sig(1000 * nearest_rank(self.job_latencies_s, 0.95)),
            "ms_per_image": sig(1000 * self.phase.wall_s / self.images),
            "cpu_ms_per_image": sig(1000 * self.phase.cpu_s / self.images),
            "stages_ms_per_job": stages,
            "stage_share": {name: sig(value / total) for name, value in stages.items()},
            "wall_s": sig(self.phase.wall_s),
            "other_load_cores": sig(self.phase.other_load),
        }


def run_pipeline(
    bench: Bench,
    job_ids: Sequence[int],
    images: int,
    threads: int,
    context: InferenceContext | None = None,
) -> PipelineRun:
    """``run_job`` for every job, one after another or from a pool of ``threads``."""
    chosen = context or bench.context

    def one(job_id: int) -> tuple[str, float]:
        began = time.perf_counter()
        state = run_job(chosen, job_id)
        return state, time.perf_counter() - began

    with timed() as phase:
        if threads == 1:
            results = [one(job_id) for job_id in job_ids]
        else:
            with ThreadPoolExecutor(threads, thread_name_prefix="bench-worker") as pool:
                results = list(pool.map(one, job_ids))
    with bench.parts.db.session() as session:
        rows = session.scalars(select(JobRow).where(JobRow.id.in_(job_ids))).all()
        failed = [f"job {r.id}: {r.state} {r.reason or ''}" for r in rows if r.state != "inferred"]
        timings = [dict(r.timings_ms) for r in rows]
    if failed:
        raise BenchmarkError(f"{bench.manifest.key}: {'; '.join(failed)}")
    return PipelineRun(
        threads, len(job_ids), images, [latency for _, latency in results], timings, phase[0]
    )


def median_run(runs: Sequence[Run]) -> Run:
    """The round with the median throughput (the lower middle of an even count)."""
    ordered = sorted(runs, key=lambda run: run.images_per_s)
    return ordered[(len(ordered) - 1) // 2]


# --- one device -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    studies: int  # jobs per phase
    distinct: int  # distinctly generated studies (the rest are clones under new UIDs)
    rounds: int
    bare_min_seconds: float
    quick: bool
    seed: int
    sizes: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)


def prepared_tensors(
    instances: Sequence[bytes], planned: PlannedStudy, manifest: DeviceManifest
) -> list[np.ndarray]:
    """The model inputs of one job, made by the pipeline's own decode and preprocess stages
    (looked up when called)."""
    chosen = set(planned.job.series_uids)
    blobs = [data for data in instances if read_dataset(data).SeriesInstanceUID in chosen]
    decoded = gateway.inference.pipeline._decode(blobs, manifest)
    prepared, _metas = gateway.inference.pipeline._preprocess(decoded, manifest)
    return [item.tensor for item in prepared]


def compare(
    sequential: PipelineRun, concurrent: PipelineRun, reference: BareRun, concurrency: int
) -> dict[str, Any]:
    """Pipeline figures and their ratios to the bare reference."""
    best = max(sequential, concurrent, key=lambda run: run.images_per_s)
    return {
        "pipeline": {"sequential": sequential.as_dict(), "concurrent": concurrent.as_dict()},
        "ratio": {
            "pipeline_vs_bare": sig(best.images_per_s / reference.images_per_s),
            "sequential_vs_bare": sig(sequential.images_per_s / reference.images_per_s),
            "concurrent_vs_bare": sig(concurrent.images_per_s / reference.images_per_s),
            "cpu_bare_vs_pipeline": sig(
                reference.phase.cpu_s
                / reference.images
                / (concurrent.phase.cpu_s / concurrent.images)
            ),
            "reference": f"bare at batch {reference.batch}; pipeline: the faster of ×1 and "
            f"×{concurrency}",
        },
    }


def bench_device(
    manifest_path: Path, work: Path, plan: Plan, workload: str | None = None
) -> dict[str, Any]:
    """One device's figures. ``workload`` labels what is not a registered device (the
    vendor-scale workload): its findings are never reported, only its timings."""
    manifest = load_manifest(manifest_path)
    spec = study_spec(manifest, plan.quick, plan.sizes)
    started = time.perf_counter()
    bench = build_bench(work / "var", manifest_path)
    key = bench.device.key
    print(f"\n{key}: {spec.describe()}", flush=True)

    bases = [spec.make(plan.seed + n, positive=n % 2 == 0) for n in range(plan.distinct)]
    generated_s = time.perf_counter() - started
    planned: list[PlannedStudy] = []
    stored_bytes = 0
    pool: list[np.ndarray] = []  # bare inputs: the pipeline's decode and preprocess
    for number in range(plan.studies):
        instances = clone(bases[number % len(bases)], number)
        stored_bytes += sum(len(data) for data in instances)
        planned.append(ingest_and_route(bench, instances))
        if number < len(bases):
            pool += prepared_tensors(instances, planned[-1], manifest)
    images_per_job = planned[0].images
    if any(p.images != images_per_job for p in planned):
        raise BenchmarkError(f"{key}: jobs read different numbers of images")
    images = images_per_job if manifest.input.dims == 2 else 1  # model inputs per job
    print(
        f"  {plan.distinct} studies generated in {generated_s:.1f} s, {plan.studies} ingested "
        f"({stored_bytes / 1e6:.0f} MB) and routed: rule {planned[0].job.rule}, "
        f"{images_per_job} instance(s) per job",
        flush=True,
    )

    context = bench.context
    session = context.sessions.session(key, lambda: context.registry.model_bytes(key))
    pipeline_batch = min(images, context.max_batch)
    batches = sorted(
        {1, pipeline_batch} | ({context.max_batch} if manifest.input.dims == 2 else set())
    )
    concurrency = bench.settings.worker_concurrency
    total_images = images * plan.studies
    tags = iter(range(1_000_000))

    def pipeline(threads: int) -> PipelineRun:
        ids = create_jobs(bench, planned, tag=next(tags))
        return run_pipeline(bench, ids, total_images, threads)

    # Warm-up: the session, torch and MONAI imports, first-run allocations.
    run_pipeline(bench, create_jobs(bench, planned[:1], tag=next(tags)), images, threads=1)

    bare_runs: dict[int, list[BareRun]] = {b: [] for b in batches}
    sequential: list[PipelineRun] = []
    concurrent: list[PipelineRun] = []
    for number in range(plan.rounds):
        for batch in batches:
            bare_runs[batch].append(
                run_bare(session, manifest, pool, batch, total_images, plan.bare_min_seconds)
            )
        sequential.append(pipeline(1))
        concurrent.append(pipeline(concurrency))
        line = (
            f"  round {number + 1}/{plan.rounds}: bare "
            + ", ".join(f"b{b} {bare_runs[b][-1].images_per_s:.1f}" for b in batches)
            + f" /s; pipeline ×1 {sequential[-1].images_per_s:.1f}, "
            f"×{concurrency} {concurrent[-1].images_per_s:.1f} /s"
        )
        print(line, flush=True)

    bare = {b: median_run(runs) for b, runs in bare_runs.items()}
    reference = bare[pipeline_batch]
    is_2d = manifest.input.dims == 2
    shipped = compare(median_run(sequential), median_run(concurrent), reference, concurrency)
    result = {
        "device": key,
        "workload": workload,
        "dims": manifest.input.dims,
        "input": {
            "name": manifest.input.name,
            "shape": [manifest.input.channels, *manifest.input.size],
        },
        "build": manifest.provenance.build,
        "unit": "images" if is_2d else "volumes",
        "study": {
            "kind": spec.kind,
            "description": spec.describe(),
            "image_size": list(spec.size),
            "slices": spec.slices or None,
            "instances_per_job": images_per_job,
            "model_inputs_per_job": images,
            "transfer_syntax": "explicit VR little endian",
            "studies_per_phase": plan.studies,
            "distinct_studies": plan.distinct,
            "mb_stored": round(stored_bytes / 1e6, 1),
        },
        "providers": list(session.get_providers()),
        "pipeline_batch": pipeline_batch,
        "bare": {f"batch_{b}": bare[b].as_dict() for b in batches},
        "pipeline": shipped["pipeline"],
        "ratio": shipped["ratio"],
        "target": TARGET_2D_RATIO if is_2d else None,
        "meets_target": shipped["ratio"]["pipeline_vs_bare"] >= TARGET_2D_RATIO if is_2d else None,
    }
    if workload is not None:
        result["workload_note"] = (
            f"not a device: random weights, input {manifest.input.size[0]}×"
            f"{manifest.input.size[1]}"
            + (" (--quick; the full run uses 512×512)" if plan.quick else "")
            + "; findings mean nothing and are not reported, only timings"
        )
    result["wall_s"] = round(time.perf_counter() - started, 1)
    bench.parts.db.dispose()
    return result


# --- report ---------------------------------------------------------------------------------


def _stages(run: dict[str, Any]) -> str:
    stages = run["stages_ms_per_job"]
    return " / ".join(f"{stages[name]:.0f}" for name in (*STAGES, "bookkeeping"))


def format_table(devices: Sequence[dict[str, Any]]) -> str:
    """Markdown: the pipeline against bare onnxruntime, per device."""
    header = [
        "device", "study (per job)", "bare b1 /s", "bare bP /s", "bare bMax /s",
        "pipeline ×1 /s", "pipeline ×2 /s", "studies/s", "ratio",
        "×1 stages, ms per job: load / decode / preprocess / infer / postprocess / bookkeeping",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for device in devices:
        bare = device["bare"]
        batch = device["pipeline_batch"]
        largest = max(int(name.removeprefix("batch_")) for name in bare)
        seq, conc = device["pipeline"]["sequential"], device["pipeline"]["concurrent"]
        best = max(seq, conc, key=lambda run: float(run["images_per_s"]))
        label = device["device"]
        if device.get("workload"):
            label += f" (**workload: {device['workload']}**, input {device['input']['shape'][1]}²)"
        cells = [
            label,
            device["study"]["description"],
            f"{bare['batch_1']['images_per_s']:.1f}",
            f"{bare[f'batch_{batch}']['images_per_s']:.1f} (b{batch})",
            f"{bare[f'batch_{largest}']['images_per_s']:.1f} (b{largest})"
            if largest > batch
            else "",
            f"{seq['images_per_s']:.2f}",
            f"{conc['images_per_s']:.2f}",
            f"{best['studies_per_s']:.2f}",
            f"**{device['ratio']['pipeline_vs_bare']:.2f}**"
            + (" ✗" if device["meets_target"] is False else ""),
            _stages(seq),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def environment(settings: Settings | None) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    packages = ("onnxruntime", "onnxruntime-gpu", "numpy", "torch", "monai", "scipy")
    return {
        **machine_description((*packages, "pydicom", "pylibjpeg", "sqlalchemy")),
        "gpu": gpu_name(),
        "onnxruntime_available_providers": ort.get_available_providers(),
        "settings_inference_providers": list(settings.inference_providers) if settings else None,
        "worker_concurrency": settings.worker_concurrency if settings else None,
        "inference_max_batch": settings.inference_max_batch if settings else None,
        "onnxruntime_intra_op_threads": "onnxruntime default (one per physical core)",
        "torch_threads": torch.get_num_threads(),
    }


def results_machine(providers: Sequence[str]) -> str:
    """The machine's name, and the GPU's where the sessions used one."""
    return machine_name(with_gpu=any(p != "CPUExecutionProvider" for p in providers))


# --- main -----------------------------------------------------------------------------------


def find_devices(devices_dir: Path, wanted: Sequence[str]) -> list[Path]:
    found: dict[str, Path] = {}
    for path in sorted(devices_dir.glob("*/manifest.yaml")):
        try:
            manifest = load_manifest(path)
        except ManifestError as exc:
            print(f"skipping {path}: {exc}", file=sys.stderr)
            continue
        found[manifest.id] = path
    if wanted:
        missing = [name for name in wanted if name not in found]
        if missing:
            raise BenchmarkError(
                f"no device {', '.join(missing)} under {devices_dir} "
                f"(found: {', '.join(found) or 'none'})"
            )
        return [found[name] for name in wanted]
    if not found:
        raise BenchmarkError(f"no */manifest.yaml under {devices_dir}")
    return list(found.values())


KINDS = ("chest_xray", "mammography", "ct_chest", "ct_head")


def size_option(text: str) -> tuple[str, tuple[int, int]]:
    kind, _, size = text.partition("=")
    rows, _, cols = size.lower().partition("x")
    if (
        kind not in KINDS
        or not (rows.isdigit() and cols.isdigit())
        or min(int(rows), int(cols)) < 16
    ):
        raise argparse.ArgumentTypeError(f"expected KIND=ROWSxCOLS with KIND in {KINDS}: {text}")
    return kind, (int(rows), int(cols))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.inference", description=doc.split("\n\n")[0]
    )
    parser.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="ID",
        help="device id to benchmark (repeatable; default every device in --devices-dir)",
    )
    parser.add_argument(
        "--devices-dir",
        type=Path,
        default=DEVICES_DIR,
        help="folder of device folders (*/manifest.yaml); default models/zoo",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small images, few studies, one round: under 2 minutes on 2 cores",
    )
    parser.add_argument("--studies", type=int, default=None, help="jobs per phase (per device)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds; the median counts")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="data folders (default a temp folder)"
    )
    parser.add_argument(
        "--size",
        action="append",
        type=size_option,
        default=[],
        metavar="KIND=ROWSxCOLS",
        help="image or slice size of a study kind (chest_xray, mammography, ct_chest, "
        "ct_head), e.g. chest_xray=1024x1024 (repeatable)",
    )
    parser.add_argument(
        "--no-vendor-scale",
        action="store_true",
        help=f"leave out the vendor-scale workload ({VENDOR_SCALE_ID}: DenseNet-121 at "
        f"{VENDOR_SCALE_SIZE}², random weights; --quick: {VENDOR_SCALE_QUICK_SIZE}²)",
    )
    parser.add_argument("--seed", type=int, default=20240101)
    args = parser.parse_args(argv)
    args.size = dict(args.size)
    args.rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    if args.rounds < 1 or (args.studies is not None and args.studies < 1):
        parser.error("--studies and --rounds must be at least 1")
    return args


def device_plan(args: argparse.Namespace, manifest: DeviceManifest) -> Plan:
    """How many jobs a phase runs: enough for a second or more of pipeline time."""
    if args.studies is not None:
        studies = args.studies
    elif manifest.input.dims == 3:
        studies = 2 if args.quick else 4
    elif "MG" in manifest.accepts.modalities:
        studies = 2 if args.quick else 6
    else:
        studies = 4 if args.quick else 16
    return Plan(
        studies=studies,
        distinct=min(studies, 1 if args.quick else 2),
        rounds=args.rounds,
        bare_min_seconds=0.3 if args.quick else 1.0,
        quick=args.quick,
        seed=args.seed,
        sizes=args.size,
    )


def phases(device: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every timed phase of a device's result, by name."""
    for group in ("bare", "pipeline"):
        for name, figures in device[group].items():
            yield f"{group} {name}", figures


def selected_devices(args: argparse.Namespace) -> tuple[list[Path], bool]:
    """The registered devices' manifests to run, and whether to run the vendor-scale
    workload: every device and the workload by default; with ``--device``, those named
    (the workload by its id)."""
    wanted = [name for name in args.device if name != VENDOR_SCALE_ID]
    vendor_scale = not args.no_vendor_scale and (not args.device or VENDOR_SCALE_ID in args.device)
    paths = find_devices(args.devices_dir, wanted) if wanted or not args.device else []
    return paths, vendor_scale


def bench_vendor_scale(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The vendor-scale workload, exported into ``work`` and run as the devices are."""
    size = VENDOR_SCALE_QUICK_SIZE if args.quick else VENDOR_SCALE_SIZE
    started = time.perf_counter()
    path = write_vendor_scale_device(work / "device", size, args.seed)
    print(
        f"\n{VENDOR_SCALE_ID}: workload {VENDOR_SCALE_WORKLOAD!r}, DenseNet-121 at {size}², "
        f"exported in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    manifest = load_manifest(path)
    return bench_device(path, work, device_plan(args, manifest), VENDOR_SCALE_WORKLOAD)


def target_checks(devices: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The 2D target applied to every 2D device and to the vendor-scale workload, each
    named, so that a miss stays visible beside a hit."""
    checks = [
        {
            "device": device["device"],
            "workload": device.get("workload"),
            "ratio": device["ratio"]["pipeline_vs_bare"],
            "meets_target": device["meets_target"],
        }
        for device in devices
        if device["dims"] == 2
    ]

    def verdict(rows: list[dict[str, Any]]) -> bool | None:
        return all(row["meets_target"] for row in rows) if rows else None

    return {
        "pipeline_vs_bare_2d_min": TARGET_2D_RATIO,
        "checks": checks,
        "registered_devices_meet": verdict([c for c in checks if c["workload"] is None]),
        "vendor_scale_meets": verdict([c for c in checks if c["workload"] is not None]),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    paths, vendor_scale = selected_devices(args)
    load_at_start = os.getloadavg()
    started = time.perf_counter()
    devices = []
    with work_folder(args.work_dir, "aigw-bench-infer-") as work, warnings.catch_warnings():
        # Blank borders make MONAI's percentile scaling warn about a zero range: harmless.
        warnings.filterwarnings("ignore", message="Divide by zero", category=Warning)
        for number, path in enumerate(paths):
            manifest = load_manifest(path)
            devices.append(
                bench_device(path, work / f"{number}-{manifest.id}", device_plan(args, manifest))
            )
        if vendor_scale:
            devices.append(bench_vendor_scale(args, work / VENDOR_SCALE_ID))
        settings = load_settings(None, data_dir=work / "settings")
    providers = sorted({p for device in devices for p in device["providers"]})
    report = {
        "benchmark": "inference",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": results_machine(providers),
        "parameters": {
            "quick": args.quick,
            "rounds": args.rounds,
            "seed": args.seed,
            "devices_dir": str(args.devices_dir),
            "size_overrides": {kind: list(size) for kind, size in args.size.items()},
            "source": SOURCE,
            "store": "folder object store + SQLite index (the embedded default)",
            "timing": "wall clock per phase; bare: session.run back to back from one thread; "
            "pipeline: run_job per job, sequentially and from a thread pool of "
            "worker_concurrency; figures are the median round's",
            "ratio": "pipeline images/s (the faster of sequential and concurrent) ÷ bare "
            "images/s at the batch the pipeline uses",
            "vendor_scale": {
                "id": VENDOR_SCALE_ID,
                "workload": VENDOR_SCALE_WORKLOAD,
                "run": vendor_scale,
                "why": "the reference devices' models are tiny (5–7 ms per image on CPU), "
                "less than reading and decoding one radiograph; this DenseNet-121 stands for "
                "a registered vendor's chest X-ray model so that the pipeline's overhead is "
                "seen against a realistic model cost",
            },
            "wall_s": round(time.perf_counter() - started, 1),
        },
        "devices": devices,
        "target": target_checks(devices),
        "environment": {
            **environment(settings),
            "load_average_at_start": [round(value, 2) for value in load_at_start],
        },
    }
    busy = [
        f"{device['device']} {phase}"
        for device in devices
        for phase, figures in phases(device)
        if figures["other_load_cores"] > BUSY_MACHINE_CORES
    ]
    report["busy_machine_phases"] = busy
    print("\n" + format_table(devices))
    if vendor_scale:
        print(
            f"\n{VENDOR_SCALE_ID} is a benchmark workload with random weights, not a device: "
            "its findings mean nothing and are not reported, only its timings."
        )
    if busy:
        print(
            f"\nWARNING: other processes kept more than {BUSY_MACHINE_CORES} cores busy during "
            f"{len(busy)} phase(s): the figures are noisy; rerun on a quiet machine"
        )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run(args)
    except BenchmarkError as exc:
        print(f"\nBENCHMARK FAILED: {exc}", file=sys.stderr)
        return 1
    path = write_results(args.out, str(report["machine"]), "inference", report)
    print(f"\nresults: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
