"""The inference pipeline for one job, as one explicit sequence of named stages:

start (:mod:`gateway.inference.start`: the claim and the instance keys, committed with
other jobs' starts and ends) ▸ load (object store) ▸ decode (each codestream's header
checked against its dataset and the pixel budget, then pydicom + plugins) ▸ preprocess
(MONAI, as in training) ▸ infer (onnxruntime, batched with other jobs' inputs) ▸
postprocess (findings in source coordinates) ▸ record (:mod:`gateway.inference.record`:
one transaction with the other jobs that end or start at the same moment).

The worker's threads each run one job through this sequence; what makes it a pipeline
across jobs is where two stages run: decode ▸ preprocess in the process pool
(:mod:`gateway.inference.decode_pool`, one child per core), infer in the device's batcher
(:mod:`gateway.inference.batcher`, one session per device per process, batches formed
from every job waiting), so one job decodes while another's batch runs.

Idempotent: a job already finished is left alone; a job re-run after a worker died replaces
its findings in the same transaction that finishes it, so redelivery never duplicates.
Transient failures (object store, database) raise :class:`TransientError` for the queue to
retry with backoff; everything else ends the job ``failed`` with the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
from sqlalchemy import exists, select

from gateway.devices.registry import DeviceRegistry, RegistryError
from gateway.errors import DatabaseError, GatewayError, StorageError
from gateway.index.database import Database
from gateway.index.object_store import ObjectStore
from gateway.index.tables import JobRow
from gateway.inference.batcher import Batcher, BatchLimits, Outputs
from gateway.inference.decode import DecodeError
from gateway.inference.decode_pool import DecodePool
from gateway.inference.findings import Finding, Location
from gateway.inference.lease import Heartbeats
from gateway.inference.masks import encode_mask, mask_key
from gateway.inference.pixel_checks import PixelBudget
from gateway.inference.prepare import PreparedJob, prepare_blobs
from gateway.inference.record import Ending, GroupRecorder, Outcome
from gateway.inference.start import Start, StartedJob
from gateway.jobs.states import JobState, fail_job, unreported
from models.manifest import DeviceManifest
from models.postprocess import RawFinding, interpret
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
    batcher: Batcher | None = None  # None: one made with max_batch and no wait
    recorder: GroupRecorder | None = None  # None: one made on db
    # The running jobs' heartbeats, one thread and one UPDATE a tick for all: made here.
    heartbeats: Heartbeats = field(init=False)

    def __post_init__(self) -> None:
        if self.batcher is None:
            self.batcher = Batcher(BatchLimits(self.max_batch, 0.0, 4 * self.max_batch))
        if self.recorder is None:
            self.recorder = GroupRecorder(self.db)
        self.heartbeats = Heartbeats(self.db, self.lease_s)

    def close(self) -> None:
        """Stop the batchers, the recorder, the heartbeats and the decode pool (a worker
        that stops)."""
        if self.batcher is not None:
            self.batcher.close()
        if self.recorder is not None:
            self.recorder.close()
        self.heartbeats.close()
        if self.decoder is not None:
            self.decoder.close()


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
    assert context.recorder is not None  # made in __post_init__
    try:
        started = context.recorder.start(Start(job_id, runner, context.lease_s))
    except DatabaseError as exc:
        raise TransientError(f"database: {exc}") from exc
    if started is None:
        return _found_done(context, job_id)
    job = started
    try:
        with ExitStack() as after_inference:  # the outcome announced once its batch ran
            with context.heartbeats.holding(job_id, runner):
                job = _with_priors(context, job)
                findings, timings, ending = _pipeline(context, job, after_inference)
            _record(ending, job_id, findings, timings)
        return JobState.INFERRED.value
    except (JobFailure, DecodeError, RegistryError) as exc:
        fail_job(context.db, job_id, str(exc))
        log.warning("job failed", extra={"job_id": job_id, "reason": str(exc)})
        return JobState.FAILED.value
    except (StorageError, DatabaseError) as exc:
        raise TransientError(f"{exc.__class__.__name__}: {exc}") from exc


def _found_done(context: InferenceContext, job_id: int) -> str:
    """The job is done, or a live copy of this delivery runs it. Done but without results:
    its inference was committed by a run that never heard so (the database went away
    during the commit, and the task retried). "inferred" then makes this task send the
    report now, rather than the re-drive after ``job_requeue_after_s``; a second report of
    a job stores nothing twice."""
    try:
        with context.db.session() as session:
            waiting = session.scalar(select(exists().where(JobRow.id == job_id, unreported())))
    except DatabaseError as exc:
        raise TransientError(f"database: {exc}") from exc
    if waiting:
        log.info("job found inferred without results: its report is sent", extra={"job_id": job_id})
        return JobState.INFERRED.value
    return "skipped"


def _with_priors(context: InferenceContext, job: StartedJob) -> StartedJob:
    if context.priors is None:
        return job
    manifest = context.registry.manifest(job.device_key)
    return replace(job, prior_series_uids=context.priors(job.id, manifest))


def _pipeline(
    context: InferenceContext, job: StartedJob, after_inference: ExitStack
) -> tuple[list[Finding], dict[str, float], Ending]:
    """The job's stages up to its findings; once its batch has run, its outcome is
    announced to the recorder (in ``after_inference``), whose groups wait a little for it."""
    watch = Stopwatch()
    assert context.recorder is not None  # made in __post_init__
    manifest = context.registry.manifest(job.device_key)
    assert context.batcher is not None  # made in __post_init__
    # Announced to the device's batcher from here: a batch not yet full waits for this job.
    with context.batcher.arrival(job.device_key) as arrival:
        with watch.stage("load"):  # the keys (read at the start); the bytes where decoded
            keys = _object_keys(job)
        with watch.stage("decode"):  # load ▸ checks ▸ decode ▸ preprocess: in the pool
            prepared = _decode_and_preprocess(context, keys, manifest)
        _split_pool_time(watch.ms, prepared.stage_ms)
        with watch.stage("infer"):
            outputs = arrival.infer(
                prepared.inputs, _session_run(context, job, manifest), job.priority
            )
    ending = after_inference.enter_context(context.recorder.ending())
    with watch.stage("postprocess"):
        raw = interpret(manifest, outputs, prepared.metas)
        located = [_locate(finding, prepared) for finding in raw]
        findings = _store_masks(context.store, job.id, raw, located)
    return findings, watch.ms, ending


def _session_run(
    context: InferenceContext, job: StartedJob, manifest: DeviceManifest
) -> Callable[[np.ndarray], Outputs]:
    """The device's session as the batcher runs it (made here, so a model that will not
    load fails this job, not the batcher)."""
    session = context.sessions.session(
        job.device_key,
        lambda: context.registry.model_bytes(job.device_key),
        context.registry.fp16_loader(manifest),  # runs only where a GPU provider leads
    )
    name, max_batch = manifest.input.name, context.max_batch

    def run(batch: np.ndarray) -> Outputs:
        return context.sessions.run(session, name, batch, max_batch)

    return run


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


def _object_keys(job: StartedJob) -> list[str]:
    if not job.keys:
        raise JobFailure(f"series {', '.join(job.series_uids)} have no stored instances")
    return list(job.keys)


def _decode_and_preprocess(
    context: InferenceContext, keys: list[str], manifest: DeviceManifest
) -> PreparedJob:
    """The job's instances read, checked against the pixel budget, decoded and
    preprocessed: in a pool child, or here without a pool."""
    if len(keys) < manifest.accepts.min_instances:
        raise JobFailure(
            f"{len(keys)} instances, the device needs at least {manifest.accepts.min_instances}"
        )
    decoder = context.decoder
    if decoder is not None and decoder.settings is not None:
        return decoder.load_and_prepare(keys, manifest.input, context.budget)
    blobs = context.store.get_many(keys)
    if decoder is not None:
        return decoder.prepare(blobs, manifest.input, context.budget)
    return prepare_blobs(blobs, manifest.input, context.budget)


def _split_pool_time(ms: dict[str, float], child: dict[str, float]) -> None:
    """The decode stage's wall time is the pool's round trip: the child's own load and
    preprocess are moved to their stages; decode keeps the rest (queueing and transfer)."""
    ms["load"] = round(ms["load"] + child.get("load", 0.0), 2)
    ms["preprocess"] = child.get("preprocess", 0.0)
    pool_ms = ms["decode"] - child.get("load", 0.0) - ms["preprocess"]
    ms["decode"] = round(max(pool_ms, 0.0), 2)


def _locate(finding: RawFinding, prepared: PreparedJob) -> Finding:
    return Finding(
        label_code=finding.label.code,
        label_scheme=finding.label.scheme,
        label_ru=finding.label.ru,
        label_en=finding.label.en,
        probability=round(finding.probability, 4),
        threshold=finding.label.threshold,
        positive=finding.positive,
        location=_location(finding, prepared),
        measurements=finding.measurements,
    )


def _location(finding: RawFinding, prepared: PreparedJob) -> Location:
    """Where the device located the finding, in source pixels; the image of a 2D input even
    when it did not localise, nothing for an unlocalised 3D finding."""
    images, slices = prepared.image_uids, prepared.volume_uids
    if finding.centre is None:
        if not images:
            return Location()
        return Location(sop_instance_uid=images[finding.input_index])
    centre = tuple(round(c, 2) for c in finding.centre)
    box = tuple((round(a, 2), round(b, 2)) for a, b in finding.box or ())
    if not slices:
        return Location(centre=centre, box=box, sop_instance_uid=images[finding.input_index])
    index = min(max(round(finding.centre[0]), 0), len(slices) - 1)
    return Location(centre=centre, box=box, slice_index=index, sop_instance_uid=slices[index])


def _record(
    ending: Ending, job_id: int, findings: list[Finding], timings: dict[str, float]
) -> None:
    ending.record(Outcome(job_id, findings, timings))
    log.info("job inferred", extra={"job_id": job_id, "timings_ms": timings})
