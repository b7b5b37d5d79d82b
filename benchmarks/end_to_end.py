"""End to end: N concurrent DICOM senders push a realistic mix of studies into a real
``aigw serve`` process for T seconds; how many studies a minute it carries, and how long
from the last instance received to the result.

The mix is fluorography-heavy, as a regional archive's day is: mostly one-image DX chest
studies, some mammography screening and some CT (chest, head), all synthetic studies of
:mod:`gateway.demo.synthetic` cloned under new UIDs so that each send is a new study. The
senders are DCMTK ``storescu -R`` processes (``TCP_NODELAY=1``, 128 KiB PDU) calling as a
configured source (``IRK_CAMI``, region 38, where every reference device is enabled), each
taking the next study from a shared queue until time is up.

Latency runs from the study's ``last_received_at`` (the index time of its last instance)
to the result: the outbox's ``delivered_at`` where the results/outbox pipeline filled it for
every result of the study, else the last of its jobs' ``finished_at``. The output says which
end was used. It includes the quiet period the gateway waits before it calls a study
complete (``AIGW_QUIET_PERIOD_S``, recorded).
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydicom import dcmread

from benchmarks.bare import percentile
from benchmarks.environment import ROOT
from benchmarks.gpu import GpuMonitor
from benchmarks.inference import clone
from benchmarks.ingest import (
    DCMTK_ENV,
    MAX_PDU,
    BenchmarkError,
    free_port,
    listening_sockets,
    stop_process,
    wait_until,
)
from gateway.demo.synthetic import (
    SyntheticStudy,
    chest_xray_study,
    ct_chest_study,
    ct_head_study,
    mammography_study,
)

CALLING_AE = "IRK_CAMI"  # configs/sources.yaml: region 38, loopback allowed
CALLED_AE = "AIGW"
StudyKind = Literal["fluorography", "mammography", "ct_chest", "ct_head"]
# Share of each kind in the mix: a regional archive's day is mostly fluorography.
MIX: dict[StudyKind, float] = {
    "fluorography": 0.70,
    "mammography": 0.15,
    "ct_chest": 0.10,
    "ct_head": 0.05,
}
FINISHED_STUDY_STATES = ("not_applicable", "failed")
JOB_DONE_STATES = ("inferred", "failed", "reported", "delivered")


@dataclass(frozen=True)
class Sizes:
    """Image sizes of the mix: realistic detectors, or small ones for ``--quick``."""

    dx: tuple[int, int]
    mg: tuple[int, int]
    ct: tuple[int, int]
    ct_chest_slices: int
    ct_head_slices: int

    @classmethod
    def for_run(cls, quick: bool) -> Sizes:
        if quick:
            return cls((512, 512), (1024, 832), (256, 256), 24, 12)
        return cls((2500, 2048), (2048, 1664), (512, 512), 96, 32)

    def make(self, kind: StudyKind, seed: int) -> SyntheticStudy:
        positive = seed % 2 == 0
        if kind == "mammography":
            return mammography_study(seed, with_mass=positive, size=self.mg)
        if kind == "ct_chest":
            return ct_chest_study(seed, self.ct_chest_slices, self.ct, with_nodule=positive)
        if kind == "ct_head":
            return ct_head_study(seed, self.ct_head_slices, self.ct, with_haemorrhage=positive)
        return chest_xray_study(seed, "fluorography", "DX", with_lesion=positive, size=self.dx)


@dataclass(frozen=True)
class PlannedSend:
    kind: StudyKind
    study_uid: str
    files: tuple[Path, ...]


def schedule(count: int, seed: int) -> list[StudyKind]:
    """``count`` study kinds: one of each kind first (so each has a latency figure even in a
    short run), then kinds drawn from :data:`MIX` with a seeded generator."""
    rng = np.random.default_rng(seed)
    kinds: list[StudyKind] = list(MIX)
    drawn = rng.choice(len(kinds), size=max(0, count - len(kinds)), p=list(MIX.values()))
    return [*kinds, *(kinds[int(index)] for index in drawn)][:count]


def prepare_studies(folder: Path, count: int, sizes: Sizes, seed: int) -> list[PlannedSend]:
    """Part-10 files of ``count`` studies: two generated studies per kind (one with a
    lesion), the rest clones of them under new UIDs."""
    bases: dict[StudyKind, list[SyntheticStudy]] = {}
    planned = []
    for number, kind in enumerate(schedule(count, seed)):
        generated = bases.setdefault(kind, [])
        if len(generated) < 2:
            generated.append(sizes.make(kind, seed + 7 * len(generated)))
        base = generated[number % len(generated)]
        target = folder / f"{number:05d}-{kind}"
        target.mkdir(parents=True)
        files = []
        for index, data in enumerate(clone(base, number + 1)):
            path = target / f"{index:04d}.dcm"
            path.write_bytes(data)
            files.append(path)
        study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        planned.append(PlannedSend(kind, study_uid, tuple(files)))
    return planned


# --- the gateway process --------------------------------------------------------------------


@dataclass
class ServeProcess:
    """``aigw serve`` on the embedded default (folder store, SQLite, in-process worker)."""

    data_dir: Path
    devices_dir: Path
    quiet_period_s: float
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'aigw.db'}"

    def env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("AIGW_")}
        configs = ROOT / "gateway" / "configs"
        env.update(
            {
                "AIGW_CONFIG_FILE": str(configs / "gateway.yaml"),
                "AIGW_SOURCES_FILE": str(configs / "sources.yaml"),
                "AIGW_REGIONS_FILE": str(configs / "regions.yaml"),
                "AIGW_ROUTING_FILE": str(configs / "routing.yaml"),
                "AIGW_DEVICES_DIR": str(self.devices_dir),
                "AIGW_QUIET_PERIOD_S": str(self.quiet_period_s),
                "AIGW_ASSEMBLY_POLL_S": "0.2",
                "AIGW_MAX_PDU_BYTES": str(MAX_PDU),
                "AIGW_MIN_FREE_BYTES": "0",
                "AIGW_LOG_LEVEL": "WARNING",
            }
        )
        return env

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "serve.log", "ab")  # noqa: SIM115 - the process owns it
        command = [sys.executable, "-m", "workers.cli", "serve", "--data-dir", str(self.data_dir)]
        command += ["--dicom-port", str(self.port), "--http-port", "0"]
        self.process = subprocess.Popen(
            command, env=self.env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        # Start-up registers and validates every device (one inference each) first.
        wait_until(lambda: listening_sockets(self.port) > 0, "aigw serve", self.process, 180.0)

    def stop(self) -> None:
        stop_process(self.process)

    def log_tail(self) -> str:
        path = self.data_dir / "serve.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


# --- senders --------------------------------------------------------------------------------


@dataclass
class SendLog:
    sent: list[PlannedSend] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def storescu(port: int, files: Sequence[Path]) -> list[str]:
    return [
        "storescu",
        "-R",
        "-pdu",
        str(MAX_PDU),
        "-aet",
        CALLING_AE,
        "-aec",
        CALLED_AE,
        "127.0.0.1",
        str(port),
        *map(str, files),
    ]


def send_for(
    port: int, studies: Sequence[PlannedSend], senders: int, seconds: float
) -> tuple[SendLog, float]:
    """``senders`` threads, each running one storescu per study from a shared queue, until
    ``seconds`` have passed or the queue is empty; the send window's wall seconds."""
    waiting: queue.Queue[PlannedSend] = queue.Queue()
    for study in studies:
        waiting.put(study)
    log = SendLog()
    env = {**os.environ, **DCMTK_ENV}
    deadline = time.monotonic() + seconds

    def sender() -> None:
        while time.monotonic() < deadline:
            try:
                study = waiting.get_nowait()
            except queue.Empty:
                return
            done = subprocess.run(
                storescu(port, study.files), env=env, capture_output=True, text=True, check=False
            )
            with log.lock:
                if done.returncode != 0 or "E: " in done.stdout + done.stderr:
                    log.errors.append(f"{study.kind} {study.study_uid}: {done.stderr[-300:]}")
                else:
                    log.sent.append(study)

    started = time.monotonic()
    threads = [threading.Thread(target=sender, name=f"sender-{n}") for n in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return log, time.monotonic() - started


# --- reading the outcome from the gateway's database ----------------------------------------


@dataclass(frozen=True)
class StudyOutcome:
    study_uid: str
    state: str
    last_received_at: datetime
    result_at: datetime | None  # None: not finished
    end: Literal["outbox.delivered_at", "jobs.finished_at", "none"]
    failed_jobs: int


def read_outcomes(database_url: str, study_uids: Sequence[str]) -> dict[str, StudyOutcome]:
    """Each study's state and the time its result was ready, read with Core statements on
    short connections (no ORM session, no write lock taken on the gateway's database)."""
    from sqlalchemy import create_engine, select
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.index.tables import JobRow, OutboxRow, ResultRow, StudyRow

    studies_t, jobs_t = StudyRow.__table__, JobRow.__table__
    results_t, outbox_t = ResultRow.__table__, OutboxRow.__table__
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            studies = connection.execute(
                select(studies_t.c.id, studies_t.c.study_uid, studies_t.c.state,
                       studies_t.c.last_received_at)
            ).all()  # fmt: skip
            jobs = connection.execute(
                select(jobs_t.c.id, jobs_t.c.study_id, jobs_t.c.state, jobs_t.c.finished_at)
            ).all()
            try:
                deliveries = connection.execute(
                    select(results_t.c.job_id, outbox_t.c.delivered_at).join(
                        outbox_t, outbox_t.c.result_id == results_t.c.id
                    )
                ).all()
            except SQLAlchemyError:  # no results/outbox tables in this database yet
                deliveries = []
    finally:
        engine.dispose()
    wanted = set(study_uids)
    jobs_by_study: dict[int, list[Any]] = {}
    for job in jobs:
        jobs_by_study.setdefault(job.study_id, []).append(job)
    delivered: dict[int, list[datetime | None]] = {}
    for job_id, delivered_at in deliveries:
        delivered.setdefault(job_id, []).append(delivered_at)
    return {
        row.study_uid: _outcome(row, jobs_by_study.get(row.id, []), delivered)
        for row in studies
        if row.study_uid in wanted
    }


def _outcome(
    study: Any, jobs: list[Any], delivered: dict[int, list[datetime | None]]
) -> StudyOutcome:
    received = study.last_received_at
    failed = sum(1 for job in jobs if job.state == "failed")
    if not jobs or any(job.state not in JOB_DONE_STATES for job in jobs):
        return StudyOutcome(study.study_uid, study.state, received, None, "none", failed)
    deliveries = [at for job in jobs for at in delivered.get(job.id, [])]
    if deliveries and all(at is not None for at in deliveries):
        end = max(at for at in deliveries if at is not None)
        return StudyOutcome(
            study.study_uid, study.state, received, end, "outbox.delivered_at", failed
        )
    end = max(job.finished_at for job in jobs)
    return StudyOutcome(study.study_uid, study.state, received, end, "jobs.finished_at", failed)


def wait_for_results(
    database_url: str, study_uids: Sequence[str], timeout_s: float, alive: Callable[[], bool]
) -> dict[str, StudyOutcome]:
    """Poll until every study has its result (or ended without one), or ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        outcomes = read_outcomes(database_url, study_uids)
        finished = [o for o in outcomes.values() if o.result_at or o.state in FINISHED_STUDY_STATES]
        if len(finished) == len(study_uids) or time.monotonic() > deadline or not alive():
            return outcomes
        time.sleep(0.5)


# --- the run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class EndToEndPlan:
    senders: int
    seconds: float
    studies: int  # prepared; senders stop early when they run out
    quick: bool
    seed: int
    quiet_period_s: float = 2.0
    drain_timeout_s: float = 300.0


def latency_figures(values_s: Sequence[float]) -> dict[str, Any]:
    return {
        "studies": len(values_s),
        "p50_s": round(percentile(values_s, 0.50), 3),
        "p95_s": round(percentile(values_s, 0.95), 3),
        "p99_s": round(percentile(values_s, 0.99), 3),
    }


def run_end_to_end(plan: EndToEndPlan, devices_dir: Path, work: Path) -> dict[str, Any]:
    """Prepare the studies, start ``aigw serve``, send for ``plan.seconds``, wait for the
    results and summarise: studies/min and latency per study type."""
    if not any(devices_dir.glob("*/manifest.yaml")):
        raise BenchmarkError(f"no devices under {devices_dir} for the end-to-end run")
    sizes = Sizes.for_run(plan.quick)
    started = time.perf_counter()
    studies = prepare_studies(work / "studies", plan.studies, sizes, plan.seed)
    print(
        f"  end to end: {len(studies)} studies prepared in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    serve = ServeProcess(work / "serve", devices_dir, plan.quiet_period_s)
    try:
        serve.start()
        with GpuMonitor() as gpu:
            send_started = time.time()
            log, send_s = send_for(serve.port, studies, plan.senders, plan.seconds)
            uids = [study.study_uid for study in log.sent]
            outcomes = wait_for_results(
                serve.database_url,
                uids,
                plan.drain_timeout_s,
                lambda: serve.process is not None and serve.process.poll() is None,
            )
    finally:
        serve.stop()
    if log.errors:
        raise BenchmarkError(f"storescu failed: {'; '.join(log.errors[:3])}")
    if not uids:
        raise BenchmarkError("no study was sent")
    return summarise(plan, sizes, log, outcomes, send_started, send_s, gpu, serve, len(studies))


def summarise(
    plan: EndToEndPlan,
    sizes: Sizes,
    log: SendLog,
    outcomes: dict[str, StudyOutcome],
    send_started: float,
    send_s: float,
    gpu: GpuMonitor,
    serve: ServeProcess,
    prepared: int,
) -> dict[str, Any]:
    kinds = {study.study_uid: study.kind for study in log.sent}
    missing = [uid for uid in kinds if uid not in outcomes]
    if missing:
        raise BenchmarkError(
            f"{len(missing)} sent studies are not in the index: {serve.log_tail()}"
        )
    done = [o for o in outcomes.values() if o.result_at is not None]
    unfinished = [f"{kinds[o.study_uid]} {o.study_uid}: {o.state}" for o in outcomes.values()
                  if o.result_at is None]  # fmt: skip
    if not done:
        raise BenchmarkError(f"no study got a result: {unfinished[:3]} {serve.log_tail()}")
    ends = {o.end for o in done}
    last_result = max(o.result_at.timestamp() for o in done if o.result_at)
    window_s = last_result - send_started
    per_kind: dict[str, list[float]] = {}
    for outcome in done:
        assert outcome.result_at is not None
        latency = (outcome.result_at - outcome.last_received_at).total_seconds()
        per_kind.setdefault(kinds[outcome.study_uid], []).append(max(latency, 1e-3))
    every = [value for values in per_kind.values() for value in values]
    return {
        "senders": plan.senders,
        "send_seconds_planned": plan.seconds,
        "send_seconds": round(send_s, 2),
        "studies_prepared": prepared,
        "pool_exhausted": len(log.sent) == prepared,
        "studies_sent": len(log.sent),
        "studies_with_result": len(done),
        "unfinished": unfinished,
        "failed": [
            f"{kinds[o.study_uid]} {o.study_uid}: {o.failed_jobs} failed job(s)"
            for o in outcomes.values()
            if o.failed_jobs
        ],
        "window_seconds": round(window_s, 2),
        "studies_per_min": round(60 * len(done) / window_s, 2),
        # Offered well above carried: a queue built up and the latencies are mostly waiting.
        "offered_studies_per_min": round(60 * len(log.sent) / send_s, 2),
        "saturated": len(log.sent) / send_s > 1.1 * len(done) / window_s,
        "latency_end": ends.pop() if len(ends) == 1 else "mixed: " + ", ".join(sorted(ends)),
        "latency_start": "studies.last_received_at (the last instance indexed)",
        "quiet_period_s": plan.quiet_period_s,
        "latency": latency_figures(every),
        "latency_by_type": {kind: latency_figures(values) for kind, values in per_kind.items()},
        "latencies_s": {kind: [round(v, 3) for v in values] for kind, values in per_kind.items()},
        "mix": dict(MIX),
        "sizes": {
            "dx": list(sizes.dx),
            "mg": list(sizes.mg),
            "ct": list(sizes.ct),
            "ct_chest_slices": sizes.ct_chest_slices,
            "ct_head_slices": sizes.ct_head_slices,
        },
        "gateway": "aigw serve, embedded default (folder store, SQLite, in-process worker)",
        "gpu": gpu.summary(),
        "gpu_unavailable": gpu.unavailable,
    }
