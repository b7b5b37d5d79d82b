"""Ingest benchmark: DCMTK ``storescu`` pushes the same synthetic CT and DX files to several
DICOM receivers in turn, and the figures are compared side by side.

Receivers: DCMTK ``storescp`` (the reference: writes files, no fsync, no index), Orthanc
(fsync of every file and its SQLite index), and ``aigw serve`` as a separate process,
embedded (folder store + SQLite) and distributed (S3 on a moto server + PostgreSQL), each
with one and with two SCP processes. aigw acknowledges a C-STORE only after the object is
durable and its index row committed, so its figures include both.

Every sender and every DCMTK-based receiver runs with ``TCP_NODELAY=1`` in its
environment (Debian's DCMTK sets the socket option only then; without it every receiver
stalls ~45 ms per instance). All ends use a 128 KiB maximum PDU.

Each round starts every receiver on empty storage, sends a warm-up, then the CT and the DX
files, and counts what the receiver holds; a run that lost an instance stops with an error
instead of reporting a number. Rounds go round-robin over the receivers, and the figures are
the median round's, so a slow spell on a shared machine hits every receiver alike.

    .venv/bin/python -m benchmarks.ingest [--ct N] [--dx M] [--senders K] [--rounds R]
                                          [--receivers A,B] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from benchmarks.environment import (
    RESULTS,
    ROOT,
    machine_busy_seconds,
    machine_description,
    machine_name,
    version_line,
    work_folder,
    write_results,
)

MAX_PDU = 131072
CT_SIZE = (512, 512)
DX_SIZE = (2500, 2000)  # rows, columns: a typical flat-panel chest radiograph
WARMUP_SLICES = 4
CALLING_AE = "BENCH_SCU"
TARGET_VS_ORTHANC = 0.8
BUSY_MACHINE_CORES = 0.3  # other load above this in a median phase makes the figures suspect
DCMTK_ENV = {"TCP_NODELAY": "1"}
UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's prefix; generate_uid adds the rest

UInt16Array = npt.NDArray[np.uint16]
Int16Array = npt.NDArray[np.int16]


class BenchmarkError(RuntimeError):
    """The run cannot give a trustworthy figure (lost instances, a receiver that died…)."""


# --- synthetic files ----------------------------------------------------------------------


@dataclass(frozen=True)
class FileSet:
    """Files of one kind (CT or DX) and their total size on disk."""

    kind: str
    paths: tuple[Path, ...]

    @property
    def count(self) -> int:
        return len(self.paths)

    @property
    def total_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.paths)


@dataclass(frozen=True)
class Corpus:
    warmup: FileSet
    ct: FileSet
    dx: FileSet

    @property
    def instance_count(self) -> int:
        return self.warmup.count + self.ct.count + self.dx.count


def _base_dataset(sop_class: UID, modality: str, study_uid: UID, series_uid: UID) -> Dataset:
    sop_uid = generate_uid(UID_PREFIX)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.PatientName = "BENCH^INGEST"
    ds.PatientID = "BENCH-0001"
    ds.PatientSex = "O"
    ds.PatientAge = "050Y"
    ds.StudyDate = ds.SeriesDate = "20240101"
    ds.StudyTime = ds.SeriesTime = "120000"
    ds.AccessionNumber = "BENCH"
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.Manufacturer = "aigw benchmark"
    return ds


def _set_pixels(ds: Dataset, pixels: UInt16Array | Int16Array, bits_stored: int) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<"), copy=False).tobytes()


def _ellipse(shape: tuple[int, int], a: float, b: float) -> npt.NDArray[np.bool_]:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    y = (rows - shape[0] / 2) / (a * shape[0] / 2)
    x = (cols - shape[1] / 2) / (b * shape[1] / 2)
    return np.asarray(x * x + y * y <= 1.0)


def _ct_background() -> Int16Array:
    """An axial slice in HU: air, a soft-tissue body, two lungs."""
    image = np.full(CT_SIZE, -1000, dtype=np.int16)
    image[_ellipse(CT_SIZE, 0.8, 0.9)] = 40
    lungs = _ellipse(CT_SIZE, 0.55, 0.3)
    half = CT_SIZE[1] // 2
    shift = CT_SIZE[1] // 5
    image[:, half - shift - half // 2 : half - shift + half // 2][
        lungs[:, half // 2 : half + half // 2]
    ] = -850
    image[:, half + shift - half // 2 : half + shift + half // 2][
        lungs[:, half // 2 : half + half // 2]
    ] = -850
    return image


def write_ct_series(folder: Path, count: int, rng: np.random.Generator) -> FileSet:
    """``count`` axial CT slices of one series, 512×512 signed 16-bit, explicit VR LE."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = generate_uid(UID_PREFIX), generate_uid(UID_PREFIX)
    background = _ct_background()
    paths = []
    for number in range(1, count + 1):
        ds = _base_dataset(CTImageStorage, "CT", study_uid, series_uid)
        ds.BodyPartExamined = "CHEST"
        ds.SeriesDescription = "benchmark chest CT"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = number
        ds.SliceThickness = "1.0"
        ds.PixelSpacing = ["0.7", "0.7"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-179.2, -179.2, -float(number)]
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        noise = rng.integers(-30, 30, size=CT_SIZE, dtype=np.int16)
        _set_pixels(ds, background + noise, bits_stored=16)
        path = folder / f"ct-{number:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return FileSet("CT", tuple(paths))


def write_dx_studies(folder: Path, count: int, rng: np.random.Generator) -> FileSet:
    """``count`` chest radiographs, one study each, 2500×2000 unsigned 16-bit (14 stored)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = np.linspace(0.0, 1.0, DX_SIZE[0])[:, None]
    cols = np.abs(np.linspace(-1.0, 1.0, DX_SIZE[1]))[None, :]
    background = (4000 + 6000 * rows * (1 - 0.5 * cols)).astype(np.uint16)
    paths = []
    for number in range(1, count + 1):
        ds = _base_dataset(
            DigitalXRayImageStorageForPresentation,
            "DX",
            generate_uid(UID_PREFIX),
            generate_uid(UID_PREFIX),
        )
        ds.BodyPartExamined = "CHEST"
        ds.SeriesDescription = "benchmark chest PA"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.InstanceNumber = 1
        ds.ImagerPixelSpacing = ["0.15", "0.15"]
        noise = rng.integers(0, 200, size=DX_SIZE, dtype=np.uint16)
        _set_pixels(ds, background + noise, bits_stored=14)
        path = folder / f"dx-{number:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return FileSet("DX", tuple(paths))


def make_corpus(folder: Path, ct_count: int, dx_count: int, seed: int) -> Corpus:
    rng = np.random.default_rng(seed)
    warmup = write_ct_series(folder / "warmup", WARMUP_SLICES, rng)
    return Corpus(
        warmup=FileSet("warmup", warmup.paths),
        ct=write_ct_series(folder / "ct", ct_count, rng),
        dx=write_dx_studies(folder / "dx", dx_count, rng),
    )


# --- processes, ports, CPU accounting ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening_sockets(port: int) -> int:
    """How many sockets listen on ``port`` (several with SO_REUSEPORT)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as handle:
            next(handle)
            for line in handle:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def wait_until(
    ready: Callable[[], bool],
    what: str,
    process: subprocess.Popen[bytes] | None = None,
    timeout_s: float = 60.0,
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise BenchmarkError(f"{what}: process exited with {process.returncode}")
        if ready():
            return
        time.sleep(0.05)
    raise BenchmarkError(f"{what}: not ready after {timeout_s:.0f} s")


def stop_process(process: subprocess.Popen[bytes] | None, timeout_s: float = 20.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_stats() -> dict[int, tuple[int, float]]:
    """pid → (parent pid, user+system CPU seconds) for every process we can read."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        # after the command: state ppid ... utime (14th field overall) stime (15th)
        stats[int(entry.name)] = (
            int(fields[1]),
            (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS,
        )
    return stats


def tree_cpu_seconds(roots: Sequence[int]) -> float:
    """CPU seconds used so far by the processes ``roots`` and all their descendants."""
    stats = _proc_stats()
    children: dict[int, list[int]] = {}
    for pid, (parent, _cpu) in stats.items():
        children.setdefault(parent, []).append(pid)
    total, todo, seen = 0.0, list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        total += stats[pid][1]
        todo.extend(children.get(pid, []))
    return total


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- support services of the distributed aigw -----------------------------------------------


class MotoS3:
    """An S3 server over HTTP on loopback (moto in server mode; objects kept in memory)."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.work = work
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.work / "moto.log", "ab")  # noqa: SIM115 - the process owns it
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_until(lambda: listening_sockets(self.port) > 0, "moto S3 server", self.process)

    def stop(self) -> None:
        stop_process(self.process)

    def pids(self) -> list[int]:
        return [self.process.pid] if self.process else []

    def object_count(self, bucket: str) -> int:
        from minio import Minio

        client = Minio(self.endpoint, access_key="bench", secret_key="bench-secret", secure=False)
        return sum(1 for _ in client.list_objects(bucket, prefix="studies/", recursive=True))


class PostgresCluster:
    """A private PostgreSQL cluster on a free loopback port, default (durable) settings."""

    def __init__(self) -> None:
        self.bin_dir = _postgres_bin()
        # its own folder: the server runs as user postgres, who cannot enter our temp folder
        self.base = Path(tempfile.mkdtemp(prefix="aigw-bench-pg-"))
        self.data = self.base / "data"
        self.port = free_port()
        self.started = False

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run([*prefix, *command], capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchmarkError(f"{Path(command[0]).name} failed: {done.stderr.strip()}")

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres")
        initdb_options = ["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]
        self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), *initdb_options)
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1"
        log = str(self.base / "log")
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", log,
                  "-w", "start")  # fmt: skip
        self.started = True

    def stop(self) -> None:
        if self.started:
            self._run(
                str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"
            )
            self.started = False
        shutil.rmtree(self.base, ignore_errors=True)

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self._dsn("postgres"), autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
            connection.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def _dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"

    def pids(self) -> list[int]:
        pid_file = self.data / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            return [int(pid_file.read_text().splitlines()[0])]
        return []

    def version(self) -> str | None:
        return version_line([str(self.bin_dir / "postgres"), "--version"])


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        raise BenchmarkError("PostgreSQL server binaries not found under /usr/lib/postgresql")
    return found[-1].parent


# --- receivers --------------------------------------------------------------------------------


class Receiver(ABC):
    """A DICOM receiver under test: start it, count what it stored, stop it."""

    name: str
    ae_title: str

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stored_instances(self) -> int:
        """Instances the receiver holds now (stored and, where it has one, indexed)."""

    def stop(self) -> None:
        stop_process(self.process)

    def pids(self) -> list[int]:
        """Processes whose CPU time is the receiver's own."""
        return [self.process.pid] if self.process else []

    def helper_pids(self) -> list[int]:
        """Processes of services the receiver depends on (database, S3 server)."""
        return []

    def description(self) -> dict[str, Any]:
        return {}

    def _log(self) -> Any:
        return open(self.work / f"{self.name}.log", "ab")

    def _wait_listening(self, sockets: int = 1) -> None:
        wait_until(
            lambda: listening_sockets(self.port) >= sockets, f"{self.name} DICOM port", self.process
        )


class StorescpReceiver(Receiver):
    """DCMTK storescp: writes each instance to a file (no fsync, no index); one association
    at a time (no --fork), the others wait in the listen queue."""

    name = "storescp"
    ae_title = "STORESCP"

    def start(self) -> None:
        self.out = self.work / "storescp"
        self.out.mkdir()
        options = ["-aet", self.ae_title, "-pdu", str(MAX_PDU), "-dhl", "-od", str(self.out)]
        command = ["storescp", *options, str(self.port)]
        env = {**os.environ, **DCMTK_ENV}
        self.process = subprocess.Popen(
            command, env=env, stdout=self._log(), stderr=subprocess.STDOUT
        )
        self._wait_listening()

    def stored_instances(self) -> int:
        return sum(1 for path in self.out.iterdir() if path.is_file())

    def description(self) -> dict[str, Any]:
        return {"durable": False, "index": False, "fork": False, "max_pdu": MAX_PDU}


class OrthancReceiver(Receiver):
    """Orthanc with its built-in SQLite index and file storage (fsync on, as by default)."""

    name = "orthanc"
    ae_title = "ORTHANC"

    def start(self) -> None:
        self.http_port = free_port()
        root = self.work / "orthanc"
        config = {
            "Name": "aigw-bench",
            "StorageDirectory": str(root / "storage"),
            "IndexDirectory": str(root / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.port,
            "DicomAet": self.ae_title,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "MaximumPduLength": MAX_PDU,
            "SyncStorageArea": True,
            "StorageCompression": False,
            "Plugins": [],
            "LuaScripts": [],
        }
        root.mkdir()
        config_file = root / "orthanc.json"
        config_file.write_text(json.dumps(config, indent=2))
        env = {**os.environ, **DCMTK_ENV}
        self.process = subprocess.Popen(
            ["Orthanc", str(config_file)], env=env, stdout=self._log(), stderr=subprocess.STDOUT
        )
        self._wait_listening()
        wait_until(lambda: listening_sockets(self.http_port) > 0, "Orthanc HTTP", self.process)

    def stored_instances(self) -> int:
        url = f"http://127.0.0.1:{self.http_port}/statistics"
        with urllib.request.urlopen(url, timeout=30) as response:
            return int(json.load(response)["CountInstances"])

    def description(self) -> dict[str, Any]:
        return {"durable": True, "index": "sqlite", "max_pdu": MAX_PDU, "dicom_threads": 4}


class AigwReceiver(Receiver):
    """``aigw serve`` as its own process; embedded (folder + SQLite) or S3 + PostgreSQL."""

    ae_title = "AIGW"

    def __init__(
        self,
        work: Path,
        processes: int,
        postgres: PostgresCluster | None = None,
    ) -> None:
        super().__init__(work)
        self.processes = processes
        self.postgres = postgres
        self.backend = "s3-postgres" if postgres else "folder-sqlite"
        self.name = f"aigw-{'s3pg' if postgres else 'folder'}-{processes}p"
        self.data_dir = work / self.name
        self.s3: MotoS3 | None = None
        self.database_url: str | None = None

    def _env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("AIGW_")}
        env.update(
            {
                "AIGW_CONFIG_FILE": str(ROOT / "gateway" / "configs" / "gateway.yaml"),
                "AIGW_SOURCES_FILE": str(ROOT / "gateway" / "configs" / "sources.yaml"),
                "AIGW_REGIONS_FILE": str(ROOT / "gateway" / "configs" / "regions.yaml"),
                "AIGW_SCP_PROCESSES": str(self.processes),
                "AIGW_MAX_PDU_BYTES": str(MAX_PDU),
            }
        )
        if self.database_url is not None and self.s3 is not None:
            env.update(
                {
                    "AIGW_DATABASE_URL": self.database_url,
                    "AIGW_OBJECT_STORE": "s3",
                    "AIGW_S3_ENDPOINT": self.s3.endpoint,
                    "AIGW_S3_ACCESS_KEY": "bench",
                    "AIGW_S3_SECRET_KEY": "bench-secret",
                    "AIGW_S3_BUCKET": "aigw",
                }
            )
        return env

    def start(self) -> None:
        self.data_dir.mkdir()
        if self.postgres is not None:
            self.s3 = MotoS3(self.work)
            self.s3.start()
            self.database_url = self.postgres.create_database(self.name.replace("-", "_"))
        command = [
            sys.executable,
            "-m",
            "workers.cli",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--dicom-port",
            str(self.port),
            "--http-port",
            "0",
            "--open",
        ]
        self.process = subprocess.Popen(
            command, env=self._env(), cwd=ROOT, stdout=self._log(), stderr=subprocess.STDOUT
        )
        # Extra SCP processes bind the same port (SO_REUSEPORT) a moment after the first:
        # sending before they all listen would put every association on the first one.
        self._wait_listening(self.processes)

    def stop(self) -> None:
        super().stop()
        if self.s3 is not None:
            self.s3.stop()

    def stored_instances(self) -> int:
        """The smaller of indexed instances and stored objects: both must hold every one."""
        indexed = self.indexed_instances()
        return min(indexed, self.object_count())

    def indexed_instances(self) -> int:
        """Distinct SOP Instance UIDs in the index, read straight from its database."""
        from sqlalchemy import create_engine, text

        url = self.database_url or f"sqlite:///{self.data_dir / 'aigw.db'}"
        engine = create_engine(url)
        try:
            with engine.connect() as connection:
                query = text("SELECT count(DISTINCT sop_instance_uid) FROM instances")
                return int(connection.execute(query).scalar_one())
        finally:
            engine.dispose()

    def object_count(self) -> int:
        if self.s3 is not None:
            return self.s3.object_count("aigw")
        return sum(1 for _ in (self.data_dir / "objects" / "studies").rglob("*.dcm"))

    def refusals(self) -> int:
        log = self.work / f"{self.name}.log"
        return sum(
            1
            for line in log.read_text(errors="replace").splitlines()
            if '"instance refused"' in line or '"C-STORE handler failed"' in line
        )

    def helper_pids(self) -> list[int]:
        pids = self.s3.pids() if self.s3 else []
        return pids + (self.postgres.pids() if self.postgres else [])

    def description(self) -> dict[str, Any]:
        return {
            "durable": True,
            "backend": self.backend,
            "scp_processes": self.processes,
            "max_pdu": MAX_PDU,
            "index": "postgresql" if self.postgres else "sqlite",
        }


# --- sending and measuring ----------------------------------------------------------------


@dataclass
class PhaseResult:
    """One kind of file sent to one receiver by K concurrent storescu processes."""

    kind: str
    instances: int
    bytes: int
    seconds: float
    senders: int
    receiver_cpu_s: float
    helper_cpu_s: float
    sender_cpu_s: float
    other_cpu_s: float  # everything else busy meanwhile: kernel threads, other processes

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds

    @property
    def other_load(self) -> float:
        """Cores kept busy by anything but this phase's receiver, helpers and senders."""
        return self.other_cpu_s / self.seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            **{
                key: round(value, 3) if isinstance(value, float) else value
                for key, value in asdict(self).items()
            },
            "instances_per_s": round(self.instances_per_s, 2),
            "mb_per_s": round(self.mb_per_s, 2),
            "receiver_cpu_ms_per_instance": round(1000 * self.receiver_cpu_s / self.instances, 3),
            "other_load_cores": round(self.other_load, 2),
        }


@dataclass
class ReceiverResult:
    """Every round of one receiver; the figures reported are the median round's."""

    name: str
    description: dict[str, Any]
    rounds: list[dict[str, PhaseResult]] = field(default_factory=list)
    verified_instances: list[int] = field(default_factory=list)

    def median(self, kind: str) -> PhaseResult:
        samples = sorted((phases[kind] for phases in self.rounds), key=lambda p: p.seconds)
        return samples[(len(samples) - 1) // 2]

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "verified_instances": self.verified_instances,
        }
        for kind in ("CT", "DX"):
            out[kind.lower()] = {
                **self.median(kind).as_dict(),
                "rounds_instances_per_s": [
                    round(phases[kind].instances_per_s, 2) for phases in self.rounds
                ],
            }
        return out


def _shares(paths: Sequence[Path], senders: int) -> list[list[Path]]:
    return [share for share in (list(paths[i::senders]) for i in range(senders)) if share]


def storescu_command(receiver: Receiver, files: Sequence[Path]) -> list[str]:
    host = ["127.0.0.1", str(receiver.port)]
    return ["storescu", "-R", "-aet", CALLING_AE, "-aec", receiver.ae_title,
            "-pdu", str(MAX_PDU), *host, *map(str, files)]  # fmt: skip


def send(receiver: Receiver, files: Sequence[Path], senders: int) -> float:
    """Send ``files`` split over ``senders`` concurrent storescu processes; wall seconds from
    the start of the first to the end of the last."""
    env = {**os.environ, **DCMTK_ENV}
    shares = _shares(files, senders)
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(tempfile.TemporaryFile()) for _ in shares]
        started = time.perf_counter()
        running = [
            subprocess.Popen(
                storescu_command(receiver, share), env=env, stdout=log, stderr=subprocess.STDOUT
            )
            for share, log in zip(shares, logs, strict=True)
        ]
        codes = [process.wait() for process in running]
        seconds = time.perf_counter() - started
        for code, log in zip(codes, logs, strict=True):
            log.seek(0)
            output = log.read().decode(errors="replace")
            if code != 0 or "E: " in output:
                raise BenchmarkError(f"storescu → {receiver.name} exited {code}: {output[-2000:]}")
    return seconds


def measure(receiver: Receiver, files: FileSet, senders: int) -> PhaseResult:
    os.sync()  # the previous phase's dirty pages are not this phase's work
    receiver_before = tree_cpu_seconds(receiver.pids())
    helper_before = tree_cpu_seconds(receiver.helper_pids())
    senders_before = children_cpu_seconds()
    busy_before = machine_busy_seconds()
    seconds = send(receiver, files.paths, senders)
    busy = machine_busy_seconds() - busy_before
    receiver_cpu = tree_cpu_seconds(receiver.pids()) - receiver_before
    helper_cpu = tree_cpu_seconds(receiver.helper_pids()) - helper_before
    sender_cpu = children_cpu_seconds() - senders_before
    return PhaseResult(
        kind=files.kind,
        instances=files.count,
        bytes=files.total_bytes,
        seconds=seconds,
        senders=senders,
        receiver_cpu_s=receiver_cpu,
        helper_cpu_s=helper_cpu,
        sender_cpu_s=sender_cpu,
        other_cpu_s=max(0.0, busy - receiver_cpu - helper_cpu - sender_cpu),
    )


def verify(receiver: Receiver, expected: int) -> int:
    stored = receiver.stored_instances()
    if stored != expected:
        detail = ""
        if isinstance(receiver, AigwReceiver):
            detail = (
                f" (indexed {receiver.indexed_instances()}, objects "
                f"{receiver.object_count()}, refusals logged {receiver.refusals()})"
            )
        raise BenchmarkError(
            f"{receiver.name} holds {stored} instances, {expected} were sent{detail}: "
            "instances were lost, no figure is reported"
        )
    return stored


def run_round(
    receiver: Receiver, corpus: Corpus, senders: int
) -> tuple[dict[str, PhaseResult], int]:
    """Start the receiver on empty storage, send the warm-up, CT and DX files, check that
    it holds every instance, stop it."""
    phases: dict[str, PhaseResult] = {}
    try:
        receiver.start()
        send(receiver, corpus.warmup.paths, 1)
        for files in (corpus.ct, corpus.dx):
            phases[files.kind] = phase = measure(receiver, files, senders)
            print(
                f"  {receiver.name:<15} {files.kind}: {phase.instances} in {phase.seconds:6.2f} s"
                f" = {phase.instances_per_s:6.1f} inst/s {phase.mb_per_s:6.1f} MB/s   CPU s:"
                f" receiver {phase.receiver_cpu_s:.1f}, helpers {phase.helper_cpu_s:.1f},"
                f" senders {phase.sender_cpu_s:.1f}; other load {phase.other_load:.2f} cores",
                flush=True,
            )
        verified = verify(receiver, corpus.instance_count)
    finally:
        receiver.stop()
    return phases, verified


# --- report -----------------------------------------------------------------------------------


KINDS = ("CT", "DX")


def ratios(results: Sequence[ReceiverResult]) -> dict[str, dict[str, dict[str, float]]]:
    """For each aigw receiver: median instances/s relative to storescp and to Orthanc."""
    by_name = {result.name: result for result in results}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for result in results:
        if not result.name.startswith("aigw"):
            continue
        for reference in ("storescp", "orthanc"):
            if reference not in by_name:
                continue
            out.setdefault(result.name, {})[f"vs_{reference}"] = {
                kind.lower(): round(
                    result.median(kind).instances_per_s
                    / by_name[reference].median(kind).instances_per_s,
                    3,
                )
                for kind in KINDS
            }
    return out


def busy_phases(results: Sequence[ReceiverResult]) -> list[str]:
    """The median phases during which the machine was busy with other work."""
    return [
        f"{result.name} {kind}"
        for result in results
        for kind in KINDS
        if result.median(kind).other_load > BUSY_MACHINE_CORES
    ]


def format_table(results: Sequence[ReceiverResult]) -> str:
    """A markdown table of the median rounds, with the ratios of each aigw receiver."""
    table = ratios(results)
    header = [
        "receiver", "CT inst/s", "CT MB/s", "DX inst/s", "DX MB/s", "CT ×storescp",
        "DX ×storescp", "CT ×Orthanc", "DX ×Orthanc", "receiver CPU ms/inst CT, DX",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result in results:
        ct, dx = result.median("CT"), result.median("DX")
        rel = table.get(result.name, {})
        cells = [
            result.name,
            f"{ct.instances_per_s:.0f}",
            f"{ct.mb_per_s:.0f}",
            f"{dx.instances_per_s:.1f}",
            f"{dx.mb_per_s:.0f}",
            *(
                f"{rel[f'vs_{ref}'][kind]:.2f}" if f"vs_{ref}" in rel else ""
                for ref in ("storescp", "orthanc")
                for kind in ("ct", "dx")
            ),
            f"{1000 * ct.receiver_cpu_s / ct.instances:.1f}, "
            f"{1000 * dx.receiver_cpu_s / dx.instances:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def environment(postgres_version: str | None) -> dict[str, Any]:
    packages = ("pydicom", "pynetdicom", "sqlalchemy", "psycopg", "minio", "moto", "numpy")
    return {
        **machine_description((*packages, "pydantic")),
        "dcmtk": version_line(["storescu", "--version"]),
        "orthanc": version_line(["Orthanc", "--version"]),
        "postgresql": postgres_version,
    }


# --- main ---------------------------------------------------------------------------------------

ALL_RECEIVERS = (
    "storescp",
    "orthanc",
    "aigw-folder-1p",
    "aigw-folder-2p",
    "aigw-s3pg-1p",
    "aigw-s3pg-2p",
)


def build_receiver(name: str, work: Path, postgres: Callable[[], PostgresCluster]) -> Receiver:
    if name == "storescp":
        return StorescpReceiver(work)
    if name == "orthanc":
        return OrthancReceiver(work)
    backend, processes = name.removeprefix("aigw-").rsplit("-", 1)
    return AigwReceiver(
        work, int(processes.removesuffix("p")), postgres() if backend == "s3pg" else None
    )


def check_tools(names: Sequence[str]) -> list[str]:
    """The receivers that can run here; storescu itself is required."""
    if shutil.which("storescu") is None:
        raise BenchmarkError("DCMTK storescu is not installed (apt-get install dcmtk)")
    needed = {"storescp": "storescp", "orthanc": "Orthanc"}
    usable = []
    for name in names:
        tool = needed.get(name)
        if tool and shutil.which(tool) is None:
            print(f"skipping {name}: {tool} is not installed", file=sys.stderr)
            continue
        usable.append(name)
    return usable


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ingest", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--ct", type=int, default=None, help="CT slices (default 300)")
    parser.add_argument("--dx", type=int, default=None, help="DX images (default 30)")
    parser.add_argument(
        "--senders", type=int, default=4, help="concurrent storescu processes per phase (default 4)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="rounds over all receivers; the median counts (default 3)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="60 CT + 6 DX, one round: under 2 minutes"
    )
    parser.add_argument(
        "--receivers",
        default=",".join(ALL_RECEIVERS),
        help=f"comma-separated subset of {', '.join(ALL_RECEIVERS)}",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where files and receiver data go (default a temp folder)",
    )
    parser.add_argument("--seed", type=int, default=20240101)
    args = parser.parse_args(argv)
    args.ct = args.ct if args.ct is not None else (60 if args.quick else 300)
    args.dx = args.dx if args.dx is not None else (6 if args.quick else 30)
    args.rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    unknown = set(args.receivers.split(",")) - set(ALL_RECEIVERS)
    if unknown:
        parser.error(f"unknown receivers: {', '.join(sorted(unknown))}")
    if min(args.ct, args.dx, args.senders, args.rounds) < 1:
        parser.error("--ct, --dx, --senders and --rounds must be at least 1")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    names = check_tools(args.receivers.split(","))
    results = {name: ReceiverResult(name, {}) for name in names}
    load_at_start = os.getloadavg()
    with (
        work_folder(args.work_dir, "aigw-bench-ingest-") as work,
        contextlib.ExitStack() as cleanup,
    ):
        started = time.perf_counter()
        corpus = make_corpus(work / "files", args.ct, args.dx, args.seed)
        print(
            f"generated {corpus.ct.count} CT ({corpus.ct.total_bytes / 1e6:.0f} MB) and "
            f"{corpus.dx.count} DX ({corpus.dx.total_bytes / 1e6:.0f} MB) in "
            f"{time.perf_counter() - started:.1f} s; load average {load_at_start[0]:.2f}",
            flush=True,
        )
        cluster: list[PostgresCluster] = []

        def postgres() -> PostgresCluster:
            if not cluster:
                cluster.append(PostgresCluster())
                cleanup.callback(cluster[0].stop)
                cluster[0].start()
            return cluster[0]

        # Round-robin: a slow spell on a shared machine hits every receiver alike.
        for number in range(1, args.rounds + 1):
            print(f"\nround {number} of {args.rounds}", flush=True)
            for name in names:
                receiver = build_receiver(name, work, postgres)
                results[name].description = receiver.description()
                phases, verified = run_round(receiver, corpus, args.senders)
                results[name].rounds.append(phases)
                results[name].verified_instances.append(verified)
                shutil.rmtree(work / receiver.name, ignore_errors=True)  # what it received
        pg_version = cluster[0].version() if cluster else None
        report = {
            "benchmark": "ingest",
            "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine_name(),
            "parameters": {
                "ct_instances": args.ct,
                "ct_size": list(CT_SIZE),
                "ct_bytes": corpus.ct.total_bytes,
                "dx_instances": args.dx,
                "dx_size": list(DX_SIZE),
                "dx_bytes": corpus.dx.total_bytes,
                "transfer_syntax": "explicit VR little endian (uncompressed)",
                "senders": args.senders,
                "sender": "DCMTK storescu -R -pdu 131072, TCP_NODELAY=1",
                "max_pdu": MAX_PDU,
                "warmup_instances": corpus.warmup.count,
                "rounds": args.rounds,
                "timing": "wall clock from the start of the first storescu to the end of the "
                "last, per phase; figures are the median round's",
                "mb": "10^6 bytes of Part-10 files",
                "wall_s": round(time.perf_counter() - started, 1),
            },
            "receivers": [result.as_dict() for result in results.values()],
            "ratios": ratios(list(results.values())),
            "target": {"aigw_vs_orthanc_min": TARGET_VS_ORTHANC},
            "environment": {
                **environment(pg_version),
                "load_average_at_start": [round(value, 2) for value in load_at_start],
            },
        }
    print("\n" + format_table(list(results.values())))
    busy = busy_phases(list(results.values()))
    report["busy_machine_phases"] = busy
    if busy:
        print(
            f"\nWARNING: other processes kept more than {BUSY_MACHINE_CORES} cores busy during "
            f"{', '.join(busy)}: the figures are noisy; rerun on a quiet machine"
        )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run(args)
    except BenchmarkError as exc:
        print(f"\nBENCHMARK FAILED: {exc}", file=sys.stderr)
        return 1
    path = write_results(args.out, machine_name(), "ingest", report)
    print(f"\nresults: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
