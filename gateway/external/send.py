"""A job of an external device: its series, de-identified, to the vendor by C-STORE
(``protocol: dicom``) or STOW-RS, one bounded multipart request per series (``stow``); then
the job waits ``sent`` (no worker held) until the results come back or the deadline passes.

This runs in the infer task where an ONNX device's job runs the pipeline, and keeps its
rules: a vendor that does not answer, like the database or the object store being away, is
a :class:`~gateway.inference.pipeline.TransientError` — the task retries with its backoff,
then hands the job back to the gateway's re-drive — never the job's final outcome. Sending
is idempotent: the seed kept per (study, device) gives a resent series the same
pseudonymised UIDs, so the vendor sees one copy. A series with text in its pixels
(BurnedInAnnotation YES) fails the job unless the manifest accepts it.
"""

from __future__ import annotations

import copy
import io
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from pydicom import Dataset, dcmread
from sqlalchemy.exc import IntegrityError

from gateway.devices.endpoint import NoVendorToken, vendor_peer, vendor_stow
from gateway.devices.registry import DeviceRegistry, RegistryError
from gateway.errors import DatabaseError, StorageError
from gateway.external import pseudonyms
from gateway.external.deidentify import (
    BurnedInAnnotation,
    NotDeidentified,
    Pseudonyms,
    deidentify,
    identifying_left,
    originals_of,
)
from gateway.index.database import Database
from gateway.index.instances import current_instance_keys
from gateway.index.object_store import ObjectStore
from gateway.index.tables import JobRow, StudyRow, utcnow
from gateway.inference.lease import a_live_run_of, heartbeat
from gateway.inference.pipeline import TransientError
from gateway.jobs.states import DONE_STATES, JobState, fail_job, mark_sent, set_job_state
from models.manifest import DeviceManifest
from pacs_adapters.dicom_scu import ScuError, send
from pacs_adapters.dicomweb import StowError, stow_series
from pacs_adapters.tls import TlsConfigError

log = logging.getLogger(__name__)


@dataclass
class SendContext:
    db: Database
    store: ObjectStore
    registry: DeviceRegistry
    calling_ae: str  # settings.ae_title
    timeout_s: float  # settings.delivery_timeout_s: connect, associate, each answer
    lease_s: float = 30.0  # gateway.inference.lease
    # Where a ``stow`` vendor's token is read (by the variable the manifest names): the
    # process environment, passed in by the entry point.
    environ: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Job:
    id: int
    study_uid: str
    series_uids: tuple[str, ...]
    device_key: str


def is_external_job(db: Database, registry: DeviceRegistry, job_id: int) -> bool:
    """Whether the job's device runs as its vendor's service."""
    try:
        with db.session() as session:
            job = session.get(JobRow, job_id)
            device_key = job.device_key if job is not None else None
    except DatabaseError as exc:
        raise TransientError(f"database: {exc}") from exc
    if device_key is None:
        return False
    try:
        return registry.manifest(device_key).is_external
    except RegistryError:
        return False  # the pipeline fails it with the reason


def send_job(context: SendContext, job_id: int, runner: str | None = None) -> str:
    """Send the job's series to its vendor; the job's state afterwards (``sent``, or
    ``failed`` for what no retry mends), or "skipped"."""
    try:
        job = _start(context.db, job_id, context.lease_s, runner)
    except DatabaseError as exc:
        raise TransientError(f"database: {exc}") from exc
    if job is None:
        return "skipped"
    try:
        manifest = context.registry.manifest(job.device_key)
        with heartbeat(context.db, job_id, runner, context.lease_s):
            count = _send(context, job, manifest)
        deadline = utcnow() + timedelta(seconds=manifest.service.deadline_s)
        detail = {"instances": count, "deadline_s": manifest.service.deadline_s}
        mark_sent(context.db, job_id, deadline, detail)
        log.info("job sent to its vendor", extra={"job_id": job_id, "instances": count})
        return JobState.SENT.value
    except (
        BurnedInAnnotation,
        NotDeidentified,
        NoVendorToken,
        RegistryError,
        TlsConfigError,
        _NothingToSend,
    ) as exc:
        fail_job(context.db, job_id, str(exc))
        log.warning("job failed", extra={"job_id": job_id, "reason": str(exc)})
        return JobState.FAILED.value
    except (StorageError, DatabaseError, ScuError, StowError, OSError) as exc:
        raise TransientError(f"{exc.__class__.__name__}: {exc}") from exc


class _NothingToSend(Exception):
    pass


def _start(db: Database, job_id: int, lease_s: float, runner: str | None) -> _Job | None:
    with db.session() as session:
        job = session.get(JobRow, job_id, with_for_update=True)
        # A sent job's vendor has it: a late copy of its task must not send it again.
        if job is None or job.state in DONE_STATES or job.state == JobState.SENT.value:
            return None
        if a_live_run_of(job, runner, utcnow(), lease_s):
            return None
        set_job_state(session, job, JobState.RUNNING, {"attempt": job.attempts + 1})
        job.runner = runner
        study = session.get(StudyRow, job.study_id)
        assert study is not None
        return _Job(
            job.id, study.study_uid, tuple(job.series_uids or [job.series_uid]), job.device_key
        )


def _send(context: SendContext, job: _Job, manifest: DeviceManifest) -> int:
    with context.db.session() as session:
        keys = current_instance_keys(session, job.series_uids)
    if not keys:
        raise _NothingToSend("the series has no stored instances any more")
    datasets: list[Dataset] = [dcmread(io.BytesIO(data)) for data in context.store.get_many(keys)]
    service = manifest.service
    if service.deidentify:
        datasets = _pseudonymised(context.db, job, manifest.id, datasets, service.accept_burned_in)
    else:
        _check_burned_in(datasets, service.accept_burned_in)
        _record_identity(context.db, job, manifest.id, datasets)
    if service.protocol == "stow":
        return _stow(context, manifest, datasets)
    return _c_store(context, manifest, datasets)


def _c_store(context: SendContext, manifest: DeviceManifest, datasets: list[Dataset]) -> int:
    peer = vendor_peer(manifest, context.calling_ae, context.timeout_s)
    with tempfile.TemporaryDirectory(prefix="aigw-external-") as folder:
        paths = []
        for number, dataset in enumerate(datasets):
            path = Path(folder) / f"{number:06d}.dcm"
            dataset.save_as(path, enforce_file_format=True)
            paths.append(path)
        report = send(paths, peer)
    if report.failed or report.skipped:
        problems = list(report.failed.values()) + list(report.skipped.values())
        endpoint = manifest.service.endpoint
        raise ScuError(f"{len(problems)} instances not taken by {endpoint}: {problems[0]}")
    return report.sent


def _stow(context: SendContext, manifest: DeviceManifest, datasets: list[Dataset]) -> int:
    """Each series in its own requests; a failed one fails the send (TransientError), and
    the retry sends every series again — the same UIDs, so the vendor keeps one copy."""
    target = vendor_stow(manifest, context.environ, context.timeout_s)
    series: dict[str, list[Dataset]] = {}
    for dataset in datasets:
        series.setdefault(str(dataset.SeriesInstanceUID), []).append(dataset)
    stored = 0
    for members in series.values():
        try:
            stored += stow_series(target, members)
        except StowError as exc:
            raise StowError(f"{manifest.service.endpoint}: {exc}") from exc
    return stored


def _pseudonymised(
    db: Database, job: _Job, device_id: str, datasets: list[Dataset], accept_burned_in: bool
) -> list[Dataset]:
    """The datasets de-identified with the study's seed for this device, the pseudonyms
    kept; a concurrent first send of the same study (another series) decides the seed."""
    for _ in range(2):
        with db.session() as session:
            seed = pseudonyms.seed_of(session, job.study_uid, device_id)
        made = Pseudonyms()
        copies = [copy.deepcopy(ds) for ds in datasets]
        for original, dataset in zip(datasets, copies, strict=True):
            try:
                deidentify(dataset, seed, made, accept_burned_in)
            except BurnedInAnnotation as exc:
                raise BurnedInAnnotation(
                    f"{exc} in the series: the device's manifest does not accept burned-in text"
                ) from exc
            left = identifying_left(dataset, originals_of(original))
            if left:  # never sent; the names of the attributes only, not their values
                raise NotDeidentified(f"de-identification left {sorted(set(left))}")
        try:
            with db.session() as session:
                pseudonyms.record(
                    session,
                    study_uid=job.study_uid,
                    device_id=device_id,
                    seed=seed,
                    pseudo_patient_id=str(copies[0].get("PatientID", "")),
                    job_id=job.id,
                    made=made,
                )
            return copies
        except IntegrityError:
            continue
    raise DatabaseError("pseudonyms of the study could not be recorded")


def _record_identity(db: Database, job: _Job, device_id: str, datasets: list[Dataset]) -> None:
    """``deidentify: false``: the UIDs are their own pseudonyms, still recorded, so the
    vendor's results are matched and checked the same way."""
    made = Pseudonyms()
    for dataset in datasets:
        for keyword, kind in (
            ("StudyInstanceUID", "study"),
            ("SeriesInstanceUID", "series"),
            ("SOPInstanceUID", "instance"),
        ):
            made.uids[str(dataset[keyword].value)] = str(dataset[keyword].value)
            made.kinds[str(dataset[keyword].value)] = kind
    with db.session() as session:
        pseudonyms.record(
            session,
            study_uid=job.study_uid,
            device_id=device_id,
            seed="",
            pseudo_patient_id=str(datasets[0].get("PatientID", "")),
            job_id=job.id,
            made=made,
        )


def _check_burned_in(datasets: list[Dataset], accept: bool) -> None:
    if not accept and any(
        str(ds.get("BurnedInAnnotation", "")).upper() == "YES" for ds in datasets
    ):
        raise BurnedInAnnotation(
            "BurnedInAnnotation is YES in the series: the device's manifest does not accept it"
        )
