"""``make demo``: the main job on the embedded default, end to end, with no services.

Starts the gateway in this process (SQLite + folder store under the data dir, the in-process
worker), generates synthetic studies (CT chest, CT head, fluorography, chest X-ray,
mammography — phantoms with known lesions), sends them over DICOM as the first configured
source, waits until each study is assembled, routed and analysed by the reference devices
and its results are built, prints the findings beside the truth, and writes each study's
results (SR, flag images, GSPS, SEG, SEMD with its metadata) under ``<data_dir>/results``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.access.tokens import Role, create_token
from gateway.demo.synthetic import demo_studies, write_study
from gateway.errors import ConfigError
from gateway.index.read_model import (
    JobFilter,
    JobItem,
    StudyFilter,
    StudyItem,
    list_jobs,
    list_studies,
)
from gateway.index.study_state import StudyState
from gateway.jobs.states import DONE_STATES, JobState
from gateway.results.build import export_results, results_of
from gateway.settings import Settings
from pacs_adapters.dicom_scu import Peer, send
from workers.serve import Gateway


def run_demo(
    settings: Settings,
    build: Callable[[Settings], Gateway],
    say: Callable[[str], None] = print,
    keep_serving: bool = False,
    timeout_s: float = 300.0,
) -> list[StudyItem]:
    gateway = build(settings)
    sender = next(iter(gateway.parts.directory.sources), None)
    if sender is None:
        raise ConfigError("the demo sends as the first source of the sources file; it has none")
    gateway.start()
    try:
        say(
            f"gateway: AE {settings.ae_title} on port {settings.dicom_port}, "
            f"data in {settings.data_dir.resolve()}"
        )
        studies = demo_studies(seed=0)
        inbox = settings.data_dir / "demo-input"
        peer = Peer("127.0.0.1", settings.dicom_port, settings.ae_title, sender.ae_title)
        for study in studies:
            files = write_study(study, inbox)
            report = send(files, peer)
            say(
                f"sent {study.kind:<14} {report.sent:>3} instances as {sender.ae_title} "
                f"({sender.title or sender.name}, region {sender.region})"
            )
        uids = {study.study_instance_uid for study in studies}
        summaries = _wait_complete(gateway, uids, timeout_s)
        kinds = {study.study_instance_uid: study.kind for study in studies}
        _print_table(summaries, kinds, say)
        truth = {study.study_instance_uid: study.positive for study in studies}
        _print_findings(gateway, summaries, kinds, truth, say)
        _write_results(gateway, summaries, kinds, say)
        if settings.http_port:
            _print_dashboard(gateway, say)
        if keep_serving:
            say("serving until interrupted (Ctrl-C)")
            gateway.wait()
        return summaries
    finally:
        gateway.stop()


def _wait_complete(gateway: Gateway, uids: set[str], timeout_s: float) -> list[StudyItem]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = [
            s
            for s in list_studies(gateway.parts.db, StudyFilter(limit=1000))
            if s.study_uid in uids
        ]
        if len(found) == len(uids) and all(_finished(gateway, s) for s in found):
            return found
        if time.monotonic() > deadline:
            states = {s.study_uid: s.state for s in found}
            raise TimeoutError(f"studies not finished after {timeout_s} s: {states}")
        time.sleep(0.2)


def _finished(gateway: Gateway, study: StudyItem) -> bool:
    if study.state == StudyState.NOT_APPLICABLE:
        return True
    if study.state != StudyState.ROUTED:
        return False
    jobs = list_jobs(gateway.parts.db, JobFilter(study_uid=study.study_uid, limit=1000))
    if not jobs or not all(job.state in DONE_STATES for job in jobs):
        return False
    reported = {row.job_id for row in results_of(gateway.parts.db, study.study_uid)}
    return all(job.job_id in reported for job in jobs if job.state == JobState.INFERRED)


def _print_dashboard(gateway: Gateway, say: Callable[[str], None]) -> None:
    settings = gateway.parts.settings
    _token, secret = create_token(gateway.parts.db, Role.ADMIN, name="demo")
    host = "127.0.0.1" if settings.http_host in ("0.0.0.0", "::") else settings.http_host
    say(f"\ndashboard: http://{host}:{settings.http_port}/dashboard/  (Russian, no internet)")
    say(f"API:       http://{host}:{settings.http_port}/docs")
    say(f"admin token for this demo (shown once): {secret}")


def _write_results(
    gateway: Gateway,
    summaries: list[StudyItem],
    kinds: dict[str, str],
    say: Callable[[str], None],
) -> None:
    root = gateway.parts.settings.data_dir.resolve() / "results"
    say(f"\nResults (DICOM SR, flag images, GSPS, SEG, SEMD + metadata) in {root}:")
    for summary in summaries:
        folder = root / kinds[summary.study_uid]
        written = export_results(gateway.parts.db, gateway.parts.store, summary.study_uid, folder)
        if not written:
            continue
        stored = sorted({row.kind for row, paths in written if paths})
        say(f"  {kinds[summary.study_uid]:<14} {folder}: {', '.join(stored)}")
        for row, _paths in written:
            if row.reason:
                say(f"    {row.kind} withheld: {row.reason}")


def _print_findings(
    gateway: Gateway,
    summaries: list[StudyItem],
    kinds: dict[str, str],
    truth: dict[str, bool],
    say: Callable[[str], None],
) -> None:
    say("\nAI findings (reference devices trained on synthetic phantoms — not for clinical use):")
    for summary in summaries:
        jobs = list_jobs(gateway.parts.db, JobFilter(study_uid=summary.study_uid, limit=1000))
        expected = "lesion" if truth[summary.study_uid] else "no lesion"
        say(f"  {kinds[summary.study_uid]} (phantom has {expected}):")
        if not jobs:
            say(f"    {summary.state}: {summary.state_reason or ''}")
        for job in jobs:
            say(f"    {_job_line(job)}")


def _job_line(job: JobItem) -> str:
    if job.state != "inferred":
        return f"{job.device}: {job.state} {job.reason or ''}"
    best = max(job.findings, key=lambda f: f.probability, default=None)
    if best is None:
        return f"{job.device}: no findings"
    verdict = "ПОЛОЖИТЕЛЬНО" if best.positive else "отрицательно"
    where = ""
    if best.positive and best.location and "centre" in best.location:
        where = f" at {best.location['centre']}"
    size = ", ".join(f"{k}={v}" for k, v in best.measurements.items())
    return (
        f"{job.device}: {best.label_ru} p={best.probability:.2f} "
        f"(порог {best.threshold}) {verdict}{where} {size}".rstrip()
    )


def _print_table(
    summaries: list[StudyItem], kinds: dict[str, str], say: Callable[[str], None]
) -> None:
    say(f"\n{'STUDY':<14} {'STATE':<14} {'SOURCE':<10} RG {'MOD':<4} SER INST  STUDY UID")
    for s in summaries:
        say(
            f"{kinds[s.study_uid]:<14} {s.state:<14} {s.source:<10} {s.region} "
            f"{','.join(s.modalities):<4} {s.series_count:>3} {s.instance_count:>4}  {s.study_uid}"
        )
    say(f"{len(summaries)} studies received, assembled and routed")
