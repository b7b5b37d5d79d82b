"""One job's result objects built from what the database said about it: its sources and
masks read from the object store, then every builder run.

:func:`build_job` is what a results child (:mod:`gateway.results.build_pool`) runs, or the
worker's own thread where there are no children: it needs an object store and the
:class:`BuildRequest`, never the database, so the request and the objects it returns are
all that cross between processes. A builder that fails withholds its object with the reason
and the others go ahead; inputs that cannot be read raise :class:`InputsUnreadable`.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread

from gateway.delivery.destinations import ResultKind
from gateway.errors import StorageError
from gateway.index.object_store import ObjectStore
from gateway.inference.decode import volume_order
from gateway.inference.findings import Finding
from gateway.inference.masks import decode_mask
from gateway.results import flags, gsps, seg, sr
from gateway.results.encoding import part10
from gateway.results.input import Organisation, ReportFinding, ReportInput
from gateway.results.semd import document as semd
from gateway.results.semd.config import SemdConfig
from gateway.results.semd.facts import SemdMissing
from gateway.results.semd.validation import validate_semd
from models.manifest import DeviceManifest

log = logging.getLogger(__name__)


class InputsUnreadable(Exception):
    """The job's stored sources or masks cannot be read as DICOM / masks (not transient)."""


@dataclass(frozen=True)
class BuildOptions:
    """What the builders take beyond the job (settings ``semd_*``)."""

    semd_config: SemdConfig | None  # None: SEMDs withheld (no semd_file)
    semd_reference_dir: Path | None = None  # the official schematron: each SEMD checked
    semd_key_image_max_px: int = 1024


@dataclass(frozen=True)
class BuildRequest:
    """One finished job as the database has it: the builders' input but for the stored
    objects, which are named by their keys."""

    job_id: int
    study_uid: str
    device: DeviceManifest
    study_type: str
    service_code: str
    source_keys: list[str]  # the analysed series' current instances
    findings: list[Finding]  # in the order inference recorded them
    organisation: Organisation
    started_at: datetime
    completed_at: datetime
    uid_root: str | None = None


@dataclass
class Artifact:
    """One result object: its bytes until stored, then where and what was stored; or,
    withheld, why."""

    kind: ResultKind
    data: bytes | None = None
    name: str = ""
    sop_instance_uid: str | None = None
    series_instance_uid: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None  # withheld: why
    object_key: str | None = None  # stored: its key, digest and size
    sha256: str | None = None
    size: int | None = None

    def stored_as(self, key: str) -> None:
        """Its bytes are stored under ``key``: keep only what the index records of them."""
        assert self.data is not None
        self.object_key, self.sha256 = key, hashlib.sha256(self.data).hexdigest()
        self.size, self.data = len(self.data), None


def result_key(study_uid: str, job_id: int, name: str) -> str:
    return f"results/{study_uid}/job-{job_id}/{name}"


def store_artifacts(
    artifacts: list[Artifact], store: ObjectStore, study_uid: str, job_id: int
) -> None:
    """Every built object under the job's key for it (derived, so a second run of the job
    writes the same keys), side by side where the store gains by it (S3: ~5 PUTs a job)."""
    built = [artifact for artifact in artifacts if artifact.data is not None]
    keys = [result_key(study_uid, job_id, artifact.name) for artifact in built]
    store.put_many([(key, artifact.data or b"") for key, artifact in zip(keys, built, strict=True)])
    for key, artifact in zip(keys, built, strict=True):
        artifact.stored_as(key)


def build_job(request: BuildRequest, store: ObjectStore, options: BuildOptions) -> list[Artifact]:
    """The job's inputs read, every result object built and stored: what comes back is
    what the index records (a flag image's ~15 MB never crosses a pipe)."""
    try:
        report = load_input(request, store)
    except StorageError:
        raise  # the store is away, or the objects are gone: the caller tells which
    except Exception as exc:
        raise InputsUnreadable(f"inputs unreadable: {exc.__class__.__name__}: {exc}") from None
    artifacts = build_artifacts(report, options)
    store_artifacts(artifacts, store, request.study_uid, request.job_id)
    return artifacts


def load_input(request: BuildRequest, store: ObjectStore) -> ReportInput:
    """The builders' input: the sources as full datasets (volume order for 3D devices) and
    each finding with its mask."""
    sources: list[Dataset] = [
        dcmread(io.BytesIO(data)) for data in store.get_many(request.source_keys)
    ]
    if request.device.input_spec is not None and request.device.input_spec.dims == 3:
        sources = volume_order(sources)
    return ReportInput(
        job_id=request.job_id,
        device=request.device,
        study_type=request.study_type,
        service_code=request.service_code,
        sources=sources,
        findings=_with_masks(request.findings, store),
        organisation=request.organisation,
        started_at=request.started_at,
        completed_at=request.completed_at,
        uid_root=request.uid_root,
    )


def _with_masks(findings: list[Finding], store: ObjectStore) -> list[ReportFinding]:
    keys = [finding.location.mask_key for finding in findings]
    masks = iter(store.get_many([key for key in keys if key]))
    return [
        ReportFinding.of(finding, decode_mask(next(masks)) if key else None)
        for finding, key in zip(findings, keys, strict=True)
    ]


def build_artifacts(report: ReportInput, options: BuildOptions) -> list[Artifact]:
    """Every result of the job; a builder's failure withholds its result, not the others."""
    artifacts: list[Artifact] = []
    artifacts += _attempt(ResultKind.SR, lambda: [sr.build_sr(report)])
    # The flag images' drawings, kept for the SEMD's key image: no second decode.
    drawn: list[flags.FlagImage] = []

    def flag_images() -> list[Dataset]:
        drawn.extend(flags.build_flags(report))
        return [flag.dataset for flag in drawn]

    artifacts += _attempt(ResultKind.SC, flag_images)
    artifacts += _attempt(ResultKind.GSPS, lambda: _optional(gsps.build_gsps(report)))
    if any(f.mask is not None for f in report.findings):
        artifacts += _attempt(ResultKind.SEG, lambda: _optional(seg.build_seg(report)))
    artifacts.append(build_semd(report, options, drawn[0].drawing if drawn else None))
    return artifacts


def _optional(dataset: Dataset | None) -> list[Dataset]:
    return [dataset] if dataset is not None else []


def _attempt(kind: ResultKind, build: Callable[[], list[Dataset]]) -> list[Artifact]:
    try:
        datasets = build()
    except Exception as exc:  # a builder's bug must not lose the other results
        log.exception("result not built", extra={"kind": kind.value})
        return [Artifact(kind, reason=f"{exc.__class__.__name__}: {exc}")]
    return [
        Artifact(
            kind,
            data=part10(ds),
            name=f"{kind.value}-{index}.dcm",
            sop_instance_uid=str(ds.SOPInstanceUID),
            series_instance_uid=str(ds.SeriesInstanceUID),
        )
        for index, ds in enumerate(datasets, start=1)
    ]


def build_semd(
    report: ReportInput, options: BuildOptions, key_image: flags.Drawing | None
) -> Artifact:
    """The SEMD, with the flag image's drawing as its key image where there is one."""
    if options.semd_config is None:
        return Artifact(ResultKind.SEMD, reason="SEMD not configured (no semd_file)")
    try:
        jpeg = None
        if key_image is not None:
            jpeg = flags.key_image_jpeg(key_image, options.semd_key_image_max_px)
        document = semd.build_semd(report, options.semd_config, jpeg)
    except SemdMissing as exc:
        return Artifact(ResultKind.SEMD, reason=str(exc), meta={"missing": exc.missing})
    except Exception as exc:
        log.exception("SEMD not built")
        return Artifact(ResultKind.SEMD, reason=f"{exc.__class__.__name__}: {exc}")
    if options.semd_reference_dir is not None:
        problems = validate_semd(document.xml, options.semd_reference_dir)
        if problems:
            return Artifact(
                ResultKind.SEMD,
                reason=f"SEMD invalid ({len(problems)} problems): {problems[0]}",
                meta={"problems": problems[:50]},
            )
    return Artifact(
        ResultKind.SEMD,
        data=document.xml,
        name="semd.xml",
        meta={"document_id": document.document_id, "metadata": document.metadata},
    )
