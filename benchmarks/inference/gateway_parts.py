"""The gateway side of one device's run: its parts on a temporary data folder (the embedded
default, built as the worker builds them), studies ingested as the SCP would and routed by
the real rules, job rows as the dispatcher records them, and the bare inputs made by the
pipeline's own decode and preprocess."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select

import gateway.inference.prepare
from benchmarks.environment import (
    ROOT,
)
from benchmarks.errors import BenchmarkError
from gateway.devices.registry import RegisteredDevice, RegistryError
from gateway.index.instances import current_instance_keys
from gateway.index.tables import StudyRow
from gateway.inference.decode import read_dataset
from gateway.inference.pipeline import InferenceContext
from gateway.ingest.receive import Ingest, Sender
from gateway.jobs.dispatch import job_row
from gateway.jobs.task_queue import queue_for
from gateway.routing import facts_from_index, load_rules, route
from gateway.routing.route import PlannedJob
from gateway.settings import Settings, load_settings
from models.manifest import DeviceManifest
from workers.serve import Parts
from workers.worker import inference_context

SOURCE = "irk-cami"  # a configured source in region 38, where every reference device is on


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
    uids = {planned.study_uid for planned in studies}
    with bench.parts.db.session() as session:
        query = select(StudyRow.study_uid, StudyRow.id).where(StudyRow.study_uid.in_(uids))
        study_ids = {uid: study_id for uid, study_id in session.execute(query)}
        rows = []
        for planned in studies:
            job = planned.job
            queue = queue_for(bench.settings, job.device_id)
            row = job_row(study_ids[planned.study_uid], completed_at, job, queue, now)
            session.add(row)
            rows.append(row)
        session.flush()
        return [row.id for row in rows]


def job_keys(bench: Bench, planned: PlannedStudy) -> list[str]:
    """The object-store keys the job reads, as the pipeline asks for them."""
    with bench.parts.db.session() as session:
        return current_instance_keys(session, tuple(planned.job.series_uids))


def job_blobs(instances: Sequence[bytes], planned: PlannedStudy) -> list[bytes]:
    """The stored instances the job reads (its series)."""
    chosen = set(planned.job.series_uids)
    return [data for data in instances if read_dataset(data).SeriesInstanceUID in chosen]


def prepared_tensors(
    instances: Sequence[bytes], planned: PlannedStudy, manifest: DeviceManifest
) -> list[np.ndarray]:
    """The model inputs of one job, made by the pipeline's own decode and preprocess stages
    (looked up when called)."""
    prepared = gateway.inference.prepare.prepare_blobs(
        job_blobs(instances, planned), manifest.input
    )
    return list(prepared.inputs)
