"""The inference pipeline for one job, as one explicit sequence of named stages:

load (object store) ▸ decode (each codestream's header checked against its dataset and
the pixel budget, then pydicom + plugins) ▸ preprocess (MONAI, as in training)
▸ infer (onnxruntime, micro-batched) ▸ postprocess (findings in source coordinates) ▸ record.

Idempotent: a job already finished is left alone; a job re-run after a worker died replaces
its findings in the same transaction that finishes it, so redelivery never duplicates.
Transient failures (object store, database) raise :class:`TransientError` for the queue to
retry with backoff; everything else ends the job ``failed`` with the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
from sqlalchemy import delete

from gateway.devices.registry import DeviceRegistry, RegistryError
from gateway.errors import DatabaseError, GatewayError, StorageError
from gateway.index.database import Database
from gateway.index.instances import current_instance_keys
from gateway.index.object_store import ObjectStore
from gateway.index.tables import FindingRow, JobRow, utcnow
from gateway.inference.decode import DecodeError, Image2D, Volume, read_dataset
from gateway.inference.decode_pool import DecodePool, decode_datasets
from gateway.inference.findings import Finding, Location
from gateway.inference.lease import a_live_run_of, heartbeat
from gateway.inference.masks import encode_mask, mask_key
from gateway.inference.pixel_checks import PixelBudget, check_job
from gateway.jobs.states import DONE_STATES, JobState, fail_job, set_job_state
from models.manifest import DeviceManifest
from models.postprocess import InputMeta, RawFinding, interpret
from models.preprocess import Prepared, prepare_2d, prepare_3d
from models.runtime import SessionCache

log = logging.getLogger(__name__)


class TransientError(GatewayError):
    """Worth retrying: the object store or the database is briefly unavailable."""


class JobFailure(GatewayError):
    """The job cannot succeed with this input; the message is the recorded reason."""


@dataclass
class InferenceContext:
    db: Database
    store: ObjectStore
    registry: DeviceRegistry
    sessions: SessionCache
    max_batch: int = 16
    lease_s: float = 30.0  # gateway.inference.lease
    budget: PixelBudget = field(default_factory=PixelBudget)
    decoder: DecodePool | None = None  # None: decode in this process, without a ceiling
    # (job id, manifest) → the series of the job's prior studies (gateway.jobs.priors)
    priors: Callable[[int, DeviceManifest], tuple[str, ...]] | None = None


@dataclass
class JobInput:
    """What the decode stage produced: the images or the volume of one series."""

    images: list[Image2D]
    volume: Volume | None


class Stopwatch:
    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = round((time.perf_counter() - start) * 1000, 2)


def run_job(context: InferenceContext, job_id: int, runner: str | None = None) -> str:
    """Run one job to its end state and return it. ``runner`` names the delivery (the task
    and its retry count): a second copy of a delivery still running the job is skipped."""
    try:
        job = _start(context.db, job_id, context.lease_s, runner)
    except DatabaseError as exc:
        raise TransientError(f"database: {exc}") from exc
    if job is None:
        return "skipped"
    try:
        with heartbeat(context.db, job_id, runner, context.lease_s):
            job = _with_priors(context, job)
            findings, timings = _pipeline(context, job)
        _record(context.db, job_id, findings, timings)
        return JobState.INFERRED.value
    except (JobFailure, DecodeError, RegistryError) as exc:
        fail_job(context.db, job_id, str(exc))
        log.warning("job failed", extra={"job_id": job_id, "reason": str(exc)})
        return JobState.FAILED.value
    except (StorageError, DatabaseError) as exc:
        raise TransientError(f"{exc.__class__.__name__}: {exc}") from exc


@dataclass(frozen=True)
class _Job:
    id: int
    series_uids: tuple[str, ...]
    device_key: str
    # The series of the prior studies its device asked for; the reference devices read none.
    prior_series_uids: tuple[str, ...] = ()


def _with_priors(context: InferenceContext, job: _Job) -> _Job:
    if context.priors is None:
        return job
    manifest = context.registry.manifest(job.device_key)
    return replace(job, prior_series_uids=context.priors(job.id, manifest))


def _start(db: Database, job_id: int, lease_s: float, runner: str | None) -> _Job | None:
    with db.session() as session:
        job = session.get(JobRow, job_id, with_for_update=True)  # one runner records
        if job is None or job.state in DONE_STATES:
            return None
        if a_live_run_of(job, runner, utcnow(), lease_s):
            log.info("a copy of the delivery running this job: skipped", extra={"job_id": job_id})
            return None
        set_job_state(session, job, JobState.RUNNING, {"attempt": job.attempts + 1})
        job.runner = runner
        return _Job(job.id, tuple(job.series_uids or [job.series_uid]), job.device_key)


def _pipeline(context: InferenceContext, job: _Job) -> tuple[list[Finding], dict[str, float]]:
    watch = Stopwatch()
    manifest = context.registry.manifest(job.device_key)
    with watch.stage("load"):
        blobs = [context.store.get(key) for key in _object_keys(context.db, job.series_uids)]
    with watch.stage("decode"):
        decoded = _decode(blobs, manifest, context.budget, context.decoder)
    with watch.stage("preprocess"):
        prepared, metas = _preprocess(decoded, manifest)
    with watch.stage("infer"):
        session = context.sessions.session(
            job.device_key, lambda: context.registry.model_bytes(job.device_key)
        )
        batch = np.stack([p.tensor for p in prepared])
        outputs = context.sessions.run(session, manifest.input.name, batch, context.max_batch)
    with watch.stage("postprocess"):
        raw = interpret(manifest, outputs, metas)
        located = [_locate(finding, decoded) for finding in raw]
        findings = _store_masks(context.store, job.id, raw, located)
    return findings, watch.ms


def _store_masks(
    store: ObjectStore, job_id: int, raw: list[RawFinding], findings: list[Finding]
) -> list[Finding]:
    """Keep each segmented lesion's voxels for the SEG; the finding's location names the
    object."""
    kept = []
    for finding, located in zip(raw, findings, strict=True):
        if finding.mask is not None and not located.location.empty:
            key = mask_key(job_id, finding.label.code)
            store.put(key, encode_mask(finding.mask))
            located = located.with_location(mask_key=key)
        kept.append(located)
    return kept


def _object_keys(db: Database, series_uids: tuple[str, ...]) -> list[str]:
    with db.session() as session:
        keys = current_instance_keys(session, series_uids)
    if not keys:
        raise JobFailure(f"series {', '.join(series_uids)} have no stored instances")
    return keys


def _decode(
    blobs: list[bytes],
    manifest: DeviceManifest,
    budget: PixelBudget | None = None,
    decoder: DecodePool | None = None,
) -> JobInput:
    datasets = [read_dataset(blob) for blob in blobs]
    if len(datasets) < manifest.accepts.min_instances:
        raise JobFailure(
            f"{len(datasets)} instances, the device needs at least {manifest.accepts.min_instances}"
        )
    check_job(datasets, budget or PixelBudget())  # before a decoder allocates what a header claims
    if decoder is None:
        images, volume = decode_datasets(datasets, manifest.input.dims)
    else:
        images, volume = decoder.decode(blobs, manifest.input.dims)
    return JobInput(images, volume)


def _preprocess(
    decoded: JobInput, manifest: DeviceManifest
) -> tuple[list[Prepared], list[InputMeta]]:
    spec = manifest.input
    if decoded.volume is not None:
        prepared = [prepare_3d(decoded.volume.voxels, spec)]
        return prepared, [InputMeta(prepared[0].geometry, decoded.volume.spacing_mm)]
    prepared = []
    metas = []
    for image in decoded.images:
        item = prepare_2d(image.pixels, image.photometric, spec)
        prepared.append(item)
        metas.append(InputMeta(item.geometry, image.spacing_mm))
    return prepared, metas


def _locate(finding: RawFinding, decoded: JobInput) -> Finding:
    return Finding(
        label_code=finding.label.code,
        label_scheme=finding.label.scheme,
        label_ru=finding.label.ru,
        label_en=finding.label.en,
        probability=round(finding.probability, 4),
        threshold=finding.label.threshold,
        positive=finding.positive,
        location=_location(finding, decoded),
        measurements=finding.measurements,
    )


def _location(finding: RawFinding, decoded: JobInput) -> Location:
    """Where the device located the finding, in source pixels; the image of a 2D input even
    when it did not localise, nothing for an unlocalised 3D finding."""
    if finding.centre is None:
        if not decoded.images:
            return Location()
        return Location(sop_instance_uid=decoded.images[finding.input_index].sop_instance_uid)
    centre = tuple(round(c, 2) for c in finding.centre)
    box = tuple((round(a, 2), round(b, 2)) for a, b in finding.box or ())
    if decoded.volume is None:
        uid = decoded.images[finding.input_index].sop_instance_uid
        return Location(centre=centre, box=box, sop_instance_uid=uid)
    uids = decoded.volume.sop_instance_uids
    index = min(max(round(finding.centre[0]), 0), len(uids) - 1)
    return Location(centre=centre, box=box, slice_index=index, sop_instance_uid=uids[index])


def _record(db: Database, job_id: int, findings: list[Finding], timings: dict[str, float]) -> None:
    with db.session() as session:
        job = session.get(JobRow, job_id, with_for_update=True)  # one runner records
        if job is None or job.state in DONE_STATES:
            return
        session.execute(delete(FindingRow).where(FindingRow.job_id == job_id))
        session.add_all(finding.to_row(job_id) for finding in findings)
        job.timings_ms = timings
        positive = any(f.positive for f in findings)
        set_job_state(
            session, job, JobState.INFERRED, {"positive": positive, "timings_ms": timings}
        )
    log.info("job inferred", extra={"job_id": job_id, "timings_ms": timings})
