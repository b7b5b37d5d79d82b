"""Routing explained for files: :func:`explain_files`, which ``aigw rules test`` prints."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from gateway.errors import InvalidInstance
from gateway.ingest.tags import read_tags
from gateway.routing.facts import dataset_text, facts_from_datasets
from gateway.routing.route import route
from gateway.routing.rules import RoutingRules, priority_word
from models.manifest import DeviceManifest, load_manifest

DEFAULT_RULES = Path("configs/routing.yaml")
DEFAULT_DEVICES = Path("models/zoo")


def load_devices(folder: Path) -> list[DeviceManifest]:
    """Every ``*/manifest.yaml`` under ``folder`` (none when the folder is absent)."""
    return [load_manifest(path) for path in sorted(folder.glob("*/manifest.yaml"))]


def _files(paths: Iterable[Path]) -> list[tuple[Path, bool]]:
    """(file, named explicitly) for the paths, folders expanded recursively."""
    found: list[tuple[Path, bool]] = []
    for path in paths:
        if path.is_dir():
            found += [(p, False) for p in sorted(path.rglob("*")) if p.is_file()]
        else:
            found.append((path, True))
    return found


def explain_files(
    paths: Iterable[Path],
    rules: RoutingRules,
    devices: Sequence[DeviceManifest],
    region: str | None = None,
    source: str | None = None,
) -> str:
    """For DICOM files (folders are walked), grouped by study: which rule matched each
    series and why the others did not, what each device said, and the jobs planned."""
    lines: list[str] = []
    studies: dict[str, list[tuple[Path, Dataset]]] = {}
    for path, named in _files(paths):
        try:
            ds: Dataset = dcmread(path, stop_before_pixels=True)
            study_uid = dataset_text(ds, "StudyInstanceUID") or ""
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
            if named:
                lines.append(f"{path}: not readable as DICOM ({exc.__class__.__name__}: {exc})")
            continue
        studies.setdefault(study_uid, []).append((path, ds))
    if not studies:
        lines.append("no DICOM files given")
    if not devices:
        lines.append("no device manifests: every match ends without a device")
    for study_uid, files in studies.items():
        facts = facts_from_datasets([ds for _, ds in files], source=source, region=region)
        decision = route(facts, rules, devices)
        age = facts.patient_age_years if facts.patient_age_years is not None else "unknown"
        lines.append("")
        lines.append(
            f"study {study_uid or '(no StudyInstanceUID)'} — {len(files)} file(s), "
            f"patient age {age}, region {region or '—'}, source {source or '—'}"
        )
        by_series: dict[str, list[str]] = {}
        for path, ds in files:
            by_series.setdefault(dataset_text(ds, "SeriesInstanceUID") or "", []).append(str(path))
            try:
                read_tags(ds)
            except InvalidInstance as exc:
                lines.append(f"  ! {path}: the gateway refuses this file at ingest: {exc.reason}")
        for note in decision.series:
            names = by_series.get(note.series_uid, [])
            shown = names[0] if len(names) == 1 else f"{len(names)} files: {names[0]} … {names[-1]}"
            lines.append(f"  {note.summary} ← {shown}")
            if note.skipped:
                lines.append(f"    skipped: {note.skipped}")
                continue
            for e in (e for e in decision.explanations if e.series_uid == note.series_uid):
                rule = next(r for r in rules.rules if r.name == e.rule)
                extra = f" ({'; '.join(e.notes)})" if e.notes else ""
                if e.matched:
                    what = f"{rule.study_type}, {priority_word(rule.priority)}"
                    lines.append(f"    ✓ rule {e.rule}: matched → {what}{extra}")
                else:
                    lines.append(f"    ✗ rule {e.rule}: {', '.join(e.failures)}")
            for check in (c for c in decision.device_checks if c.series_uid == note.series_uid):
                verdict = "accepts" if check.accepted else f"refuses: {check.reason}"
                chosen = " (chosen)" if check.chosen else ""
                lines.append(f"      device {check.device} {verdict}{chosen}")
        for job in decision.jobs:
            lines.append(
                f"  → job: {job.device_id}@{job.device_version} reads {', '.join(job.series_uids)} "
                f"as {job.study_type} ({job.service_code}), {priority_word(job.priority)}, "
                f"rule {job.rule}"
            )
        if decision.not_applicable_reason:
            lines.append(f"  → not applicable: {decision.not_applicable_reason}")
    return "\n".join(lines).strip("\n") + "\n"
