"""Real services for tests, each started on a free loopback port and stopped afterwards:
a private PostgreSQL cluster, an S3 server (moto, over HTTP), Orthanc, and ``aigw serve``
as a separate process (so it can be killed with SIGKILL)."""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydicom
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DICOM = ROOT.parent / "shared" / "data" / "dicom"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, timeout_s: float = 30.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout_s} s")


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (make test installs it)")
    return path


def require_shared_data() -> Path:
    if not SHARED_DICOM.is_dir():
        pytest.skip(
            f"real DICOM files not available: {SHARED_DICOM} is absent (outside the team's "
            "workspace); the synthetic studies cover these flows"
        )
    return SHARED_DICOM


# --- PostgreSQL -------------------------------------------------------------------------


def _pg_bin() -> Path | None:
    base = Path("/usr/lib/postgresql")
    versions = sorted(base.glob("*/bin/initdb")) if base.is_dir() else []
    return versions[-1].parent if versions else None


@dataclass
class Postgres:
    url: str
    port: int
    data_dir: Path
    bin_dir: Path

    def _ctl(self, *args: str) -> None:
        _as_postgres([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args])

    def stop(self) -> None:
        self._ctl("-m", "immediate", "-w", "stop")

    def start(self) -> None:
        self._ctl(
            "-o",
            f"-p {self.port} -k {self.data_dir.parent} -c listen_addresses=127.0.0.1",
            "-l",
            str(self.data_dir.parent / "log"),
            "-w",
            "start",
        )

    def create_database(self, name: str) -> str:
        subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-q",
                "-c",
                f"CREATE DATABASE {name}",
            ],
            check=True,
            capture_output=True,
        )
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"


def _as_postgres(command: list[str]) -> None:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run(prefix + command, check=True, capture_output=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries are not installed (make test installs them)")
    base = Path(tempfile.mkdtemp(prefix="aigw-pg-"))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
    data = base / "data"
    _as_postgres(
        [
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        ]
    )
    server = Postgres(url="", port=free_port(), data_dir=data, bin_dir=bin_dir)
    server.start()
    server.url = server.create_database("aigw")
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


# --- S3 (moto in server mode, a separate process speaking HTTP) ---------------------------


@dataclass
class S3Server:
    endpoint: str
    port: int
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, process=self.process)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server]:
    port = free_port()
    server = S3Server(endpoint=f"127.0.0.1:{port}", port=port)
    server.start()
    try:
        yield server
    finally:
        server.stop()


S3_CREDENTIALS = {"s3_access_key": "testing", "s3_secret_key": "testing-secret"}


# --- aigw serve as a real process ---------------------------------------------------------


@dataclass
class GatewayProcess:
    data_dir: Path
    dicom_port: int
    env: dict[str, str]
    args: list[str]
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.data_dir / "serve.log", "ab")  # noqa: SIM115 - the process owns it
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "workers.cli",
                "serve",
                "--data-dir",
                str(self.data_dir),
                "--dicom-port",
                str(self.dicom_port),
                "--http-port",
                "0",
                *self.args,
            ],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.dicom_port, process=self.process)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_lines(self) -> list[dict[str, object]]:
        lines = []
        for raw in (self.data_dir / "serve.log").read_text(errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                lines.append(json.loads(raw))
        return lines


def gateway_env(**settings: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIGW_")}
    env["AIGW_CONFIG_FILE"] = str(ROOT / "gateway" / "configs" / "gateway.yaml")
    env["AIGW_SOURCES_FILE"] = str(ROOT / "gateway" / "configs" / "sources.yaml")
    env["AIGW_REGIONS_FILE"] = str(ROOT / "gateway" / "configs" / "regions.yaml")
    env["AIGW_LOG_JSON"] = "true"
    env.update({f"AIGW_{key.upper()}": value for key, value in settings.items()})
    return env


# --- DCMTK ----------------------------------------------------------------------------------


def storescu(
    port: int,
    files: list[Path],
    *,
    calling_ae: str = "IRK_CAMI",
    called_ae: str = "AIGW",
    extra: list[str] | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    tool = require_tool("storescu")
    env = {**os.environ, "TCP_NODELAY": "1"}
    return subprocess.run(
        [
            tool,
            "-R",
            "-aet",
            calling_ae,
            "-aec",
            called_ae,
            *(extra or []),
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=check,
        timeout=300,
    )


# --- small synthetic CT instances (for tests that need many quick instances) -----------------

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def make_uid(*parts: object) -> str:
    """A valid, deterministic UID under the pydicom test root for ``parts``."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[str(part) for part in parts]))


def ct_instance(
    study_uid: str, series_uid: str, sop_uid: str, number: int = 1, *, size: int = 8, fill: int = 0
) -> pydicom.Dataset:
    """A small but complete CT Image Storage instance, Explicit VR Little Endian."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(CT_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = make_uid(study_uid, "frame")
    ds.PatientName = "Test^Phantom"
    ds.PatientID = "PHANTOM-1"
    ds.PatientSex = "O"
    ds.PatientAge = "045Y"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC1"
    ds.StudyID = "1"
    ds.Modality = "CT"
    ds.BodyPartExamined = "CHEST"
    ds.SeriesDescription = "test series"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SliceThickness = 1.5
    ds.ImagePositionPatient = [0.0, 0.0, float(number) * 1.5]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.PixelData = (((number + fill) % 65536).to_bytes(2, "little")) * (size * size)
    return ds


def write_ct_series(
    folder: Path,
    n: int,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    seed: object = 0,
    size: int = 8,
) -> list[Path]:
    """``n`` small CT slices of one series written as Part-10 files; returns their paths."""
    study_uid = study_uid or make_uid("study", seed)
    series_uid = series_uid or make_uid("series", study_uid, seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(1, n + 1):
        ds = ct_instance(
            study_uid, series_uid, make_uid("sop", series_uid, number), number, size=size
        )
        path = folder / f"ct{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def dciodvfy_errors(dataset: pydicom.Dataset, folder: Path) -> list[str]:
    """dciodvfy's Error lines for the dataset as we would send it."""
    tool = require_tool("dciodvfy")
    path = folder / f"{dataset.SOPInstanceUID}.dcm"
    dataset.save_as(path, enforce_file_format=True)
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


# --- the regional system ----------------------------------------------------------------


class RegionalSystem:
    """The regional system's SEMD intake: answers 200 with an id and records every POST
    (Idempotency-Key, Authorization, the document and its metadata); can start late."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._posts: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def received(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._posts)

    def keys(self) -> list[str]:
        return [str(post["key"]) for post in self.received]

    def start(self) -> None:
        posts, lock = self._posts, self._lock

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                raw = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body
                message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
                parts = {
                    part.get_param("name", header="content-disposition"): part.get_content()
                    for part in message.iter_parts()
                }
                with lock:
                    posts.append(
                        {
                            "key": self.headers["Idempotency-Key"],
                            "auth": self.headers["Authorization"],
                            "document": parts["document"],
                            "metadata": json.loads(parts["metadata"]),
                        }
                    )
                    answer = json.dumps({"id": f"remd-{len(posts)}"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
