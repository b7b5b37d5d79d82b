"""The distributed gateway as separate processes, for the self-healing scenarios: PostgreSQL,
Redis (killable, with or without AOF), an S3 server, ``aigw serve`` with HTTP (health) and
no embedded worker, two ``aigw worker`` processes, a DCMTK archive and the regional SEMD
receiver. What each scenario asserts is read from the index and from the receivers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pydicom
from sqlalchemy import select

from gateway.demo.synthetic import SyntheticStudy, chest_xray_study, write_study
from gateway.errors import DatabaseError
from gateway.index.database import Database
from gateway.index.tables import (
    InstanceRow,
    JobRow,
    OutboxRow,
    ResultRow,
    StudyEventRow,
    StudyRow,
)
from gateway.jobs.states import JobState
from tests.services import (
    ROOT,
    Postgres,
    RedisServer,
    RegionalSystem,
    S3Server,
    free_port,
    require_tool,
    wait_for_port,
)

SENDER_AET = "IRK_CAMI"  # configs/sources.yaml: region 38, every reference device
ARCHIVE_AET = "ARCHIVE"
RECOVERY_BOUND_S = 15.0  # the claim: pending work moves on within this of a return
SETTLE_TIMEOUT_S = 150.0  # a bound on each wait, not a measurement


def fluorography(seed: int) -> SyntheticStudy:
    return chest_xray_study(seed, kind="fluorography", modality="DX", sop="dx", size=(256, 256))


@dataclass
class Archive:
    """DCMTK storescp, one file per received copy (-uf): a duplicate shows as a second file."""

    folder: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self, log: Path) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [require_tool("storescp"), "-aet", ARCHIVE_AET, "-od", str(self.folder),
                   "-uf", "+xa", str(self.port)]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=log.open("ab"), stderr=subprocess.STDOUT)
        wait_for_port(self.port, process=self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def received(self) -> list[str]:
        return [
            str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            for path in sorted(self.folder.iterdir())
            if path.is_file()
        ]


@dataclass
class Sent:
    """What each C-STORE was answered: acknowledged files (→ SOP UID) and refused ones."""

    acknowledged: dict[Path, str] = field(default_factory=dict)
    refused: dict[Path, str] = field(default_factory=dict)


def send_parallel(port: int, files: list[Path], associations: int = 4) -> Sent:
    """Send ``files`` on up to ``associations`` concurrent storescu associations."""
    chunks = [files[index::associations] for index in range(associations)]
    env = {**os.environ, "TCP_NODELAY": "1"}
    running = [
        subprocess.Popen(
            [
                require_tool("storescu"),
                "-v",
                "-R",
                "-aet",
                SENDER_AET,
                "-aec",
                "AIGW",
                "127.0.0.1",
                str(port),
                *map(str, chunk),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for chunk in chunks
        if chunk
    ]
    sent = Sent()
    for process in running:
        output, _ = process.communicate(timeout=300)
        current: Path | None = None
        for line in output.splitlines():
            if line.startswith("I: Sending file: "):
                current = Path(line.removeprefix("I: Sending file: ").strip())
            elif line.startswith("I: Received Store Response") and current is not None:
                status = line.removeprefix("I: Received Store Response").strip()
                if status == "(Success)":
                    uid = pydicom.dcmread(current, stop_before_pixels=True).SOPInstanceUID
                    sent.acknowledged[current] = str(uid)
                else:
                    sent.refused[current] = status
                current = None
    return sent


def study_files(studies: list[SyntheticStudy], folder: Path) -> list[Path]:
    return [
        path
        for number, study in enumerate(studies)
        for path in write_study(study, folder / str(number))
    ]


@dataclass(frozen=True)
class Progress:
    """One study as the index has it: the jobs' states and whether all was delivered."""

    state: str
    jobs: dict[int, str]
    attempts: dict[int, int]
    reported: set[int]
    outbox: list[str]

    @property
    def delivered(self) -> bool:
        return (
            self.state == "routed"
            and bool(self.jobs)
            and all(state == JobState.INFERRED.value for state in self.jobs.values())
            and self.reported == set(self.jobs)
            and bool(self.outbox)
            and all(state == "delivered" for state in self.outbox)
        )


def progress(db: Database, uids: list[str]) -> dict[str, Progress] | None:
    """Every study's progress, or None while the database cannot be read."""
    try:
        with db.session() as session:
            query = select(StudyRow.study_uid, StudyRow.state).where(StudyRow.study_uid.in_(uids))
            studies = {uid: state for uid, state in session.execute(query)}
            jobs = session.execute(
                select(StudyRow.study_uid, JobRow.id, JobRow.state, JobRow.attempts)
                .join(StudyRow)
                .where(StudyRow.study_uid.in_(uids))
            ).all()
            ids = [job_id for _, job_id, _, _ in jobs]
            results = session.execute(
                select(ResultRow.job_id, OutboxRow.state)
                .join(OutboxRow, OutboxRow.result_id == ResultRow.id, isouter=True)
                .where(ResultRow.job_id.in_(ids))
            ).all()
    except DatabaseError:
        return None
    found = {}
    for uid in uids:
        mine = {job_id: (state, attempts) for u, job_id, state, attempts in jobs if u == uid}
        found[uid] = Progress(
            state=studies.get(uid, "absent"),
            jobs={job_id: state for job_id, (state, _) in mine.items()},
            attempts={job_id: attempts for job_id, (_, attempts) in mine.items()},
            reported={job_id for job_id, _ in results if job_id in mine},
            outbox=[str(state) for job_id, state in results if job_id in mine and state],
        )
    return found


def wait_until(
    condition: Callable[[], bool], what: Callable[[], str], timeout_s: float = SETTLE_TIMEOUT_S
) -> float:
    """Seconds it took; fails the test with ``what()`` after ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s: {what()}")


def wait_delivered(db: Database, uids: list[str]) -> float:
    def done() -> bool:
        found = progress(db, uids)
        return found is not None and all(p.delivered for p in found.values())

    return wait_until(done, lambda: f"not every study delivered: {progress(db, uids)}")


def job_endings(db: Database, uids: list[str]) -> dict[int, list[str]]:
    """Per job, every end state its timeline records (exactly one ``inferred`` expected)."""
    with db.session() as session:
        events = session.scalars(
            select(StudyEventRow)
            .join(StudyRow)
            .where(StudyRow.study_uid.in_(uids), StudyEventRow.kind == "job")
        ).all()
    endings: dict[int, list[str]] = {}
    for event in events:
        job_id, state = int(event.detail["job_id"]), str(event.detail["state"])
        endings.setdefault(job_id, [])
        if state in (JobState.INFERRED.value, JobState.FAILED.value):
            endings[job_id].append(state)
    return endings


def routed_at(db: Database, uids: list[str]) -> dict[str, datetime]:
    """When each study was last routed (its timeline)."""
    with db.session() as session:
        rows = session.execute(
            select(StudyRow.study_uid, StudyEventRow.at)
            .join(StudyRow)
            .where(StudyRow.study_uid.in_(uids), StudyEventRow.state == "routed")
        ).all()
    return {uid: at for uid, at in rows}


def in_state(db: Database, state: str) -> list[str]:
    with db.session() as session:
        return list(session.scalars(select(StudyRow.study_uid).where(StudyRow.state == state)))


def indexed_objects(db: Database, sop_uids: list[str]) -> dict[str, str]:
    """SOP Instance UID → object key of what the index holds for them."""
    with db.session() as session:
        rows = session.execute(
            select(InstanceRow.sop_instance_uid, InstanceRow.object_key).where(
                InstanceRow.sop_instance_uid.in_(sop_uids)
            )
        ).all()
    return {uid: key for uid, key in rows}


class HealthWatch:
    """Polls ``/api/v1/health`` every ``every_s`` in a thread: (monotonic time, status,
    reasons); "unreachable" while the gateway does not answer."""

    def __init__(self, url: str, every_s: float = 0.5) -> None:
        self.url, self.every_s = url, every_s
        self.seen: list[tuple[float, str, list[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.wait(self.every_s):
                try:
                    report = client.get(self.url).json()
                    self.seen.append((time.monotonic(), report["status"], report["reasons"]))
                except (httpx.HTTPError, ValueError, KeyError):
                    self.seen.append((time.monotonic(), "unreachable", []))

    def between(self, start: float, end: float) -> list[tuple[str, list[str]]]:
        return [(status, reasons) for at, status, reasons in self.seen if start <= at <= end]


@dataclass
class HealCluster:
    work: Path
    pg: Postgres
    redis: RedisServer
    s3: S3Server
    archive: Archive
    regional: RegionalSystem
    env: dict[str, str]
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    serve: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    observations: dict[str, Any] = field(default_factory=dict)
    _db: Database | None = None

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database(self.pg.url, pool_size=2)
        return self._db

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/api/v1/health"

    def log(self, name: str) -> Path:
        return self.work / f"{name}.log"

    def start_serve(self) -> None:
        """Started, not waited for: it may wait for its dependencies itself."""
        command = [sys.executable, "-m", "workers.cli", "serve", "--data-dir",
                   str(self.work / "gateway"), "--dicom-port", str(self.dicom_port),
                   "--http-port", str(self.http_port)]  # fmt: skip
        self.serve = self._spawn(command, "serve")

    def start_worker(self) -> subprocess.Popen[bytes]:
        number = len(self.workers) + 1
        command = [sys.executable, "-m", "workers.cli", "worker", "--concurrency", "1"]
        process = self._spawn(command, f"worker-{number}")
        self.workers.append(process)
        return process

    def _spawn(self, command: list[str], name: str) -> subprocess.Popen[bytes]:
        with self.log(name).open("ab") as log:
            return subprocess.Popen(
                command,
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # signals reach the whole process group
            )

    def pids(self) -> list[int]:
        """The gateway's processes that are alive (serve and the workers)."""
        processes = [p for p in (self.serve, *self.workers) if p is not None]
        return [p.pid for p in processes if p.poll() is None]

    def pause_workers(self) -> None:
        for worker in self.workers:
            os.killpg(worker.pid, signal.SIGSTOP)

    def resume_workers(self) -> None:
        for worker in self.workers:
            os.killpg(worker.pid, signal.SIGCONT)

    def stop(self) -> None:
        for process in [*self.workers, self.serve]:
            if process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGCONT)
                    os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)
        if self._db is not None:
            self._db.dispose()

    def log_events(self, name: str) -> list[dict[str, Any]]:
        events = []
        for raw in self.log(name).read_text(errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                item = json.loads(raw)
                if isinstance(item, dict):
                    events.append(item)
        return events

    def warnings(self, name: str, since: float) -> dict[str, int]:
        """How often each warning or error was logged by ``name`` since ``since``
        (time.time())."""
        counts: dict[str, int] = {}
        for event in self.log_events(name):
            at = datetime.fromisoformat(str(event.get("ts", "1970-01-01T00:00:00+00:00")))
            if at.timestamp() >= since and event.get("level") in ("warning", "error"):
                key = f"{event.get('logger')}: {event.get('event')}"
                counts[key] = counts.get(key, 0) + 1
        return counts
