"""The DICOM receivers under test, each started on empty storage from the harness's parts
(:mod:`tests.services`): DCMTK storescp (the reference: files, no fsync, no index), Orthanc
(fsync of every file and its SQLite index), and ``aigw serve`` as its own process, embedded
(folder store + SQLite) or distributed (S3 on SeaweedFS + PostgreSQL)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.services import (
    S3_CREDENTIALS,
    GatewayProcess,
    Orthanc,
    Postgres,
    S3Server,
    Storescp,
    free_port,
    gateway_env,
)

MAX_PDU = 131072
BUCKET = "aigw"


class Receiver(ABC):
    """A DICOM receiver under test: start it, count what it stored, stop it."""

    name: str
    ae_title: str

    def __init__(self, work: Path) -> None:
        self.work = work

    @property
    @abstractmethod
    def port(self) -> int: ...

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    @abstractmethod
    def stored_instances(self) -> int:
        """Instances the receiver holds now (stored and, where it has one, indexed)."""

    @abstractmethod
    def pids(self) -> list[int]:
        """Processes whose CPU time is the receiver's own."""

    def helper_pids(self) -> list[int]:
        """Processes of services the receiver depends on (database, S3 server)."""
        return []

    def description(self) -> dict[str, Any]:
        return {}


class StorescpReceiver(Receiver):
    """DCMTK storescp: writes each instance to a file (no fsync, no index); one association
    at a time (no --fork), the others wait in the listen queue."""

    name = "storescp"
    ae_title = "STORESCP"

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        options = ["-pdu", str(MAX_PDU), "-dhl"]
        self.scp = Storescp(work / "storescp", self.ae_title, options)

    @property
    def port(self) -> int:
        return self.scp.port

    def start(self) -> None:
        self.scp.start(self.work / "storescp.log")

    def stop(self) -> None:
        self.scp.stop()

    def stored_instances(self) -> int:
        return len(self.scp.files())

    def pids(self) -> list[int]:
        return self.scp.pids()

    def description(self) -> dict[str, Any]:
        return {"durable": False, "index": False, "fork": False, "max_pdu": MAX_PDU}


class OrthancReceiver(Receiver):
    """Orthanc with its built-in SQLite index and file storage (fsync on, as by default)."""

    name = "orthanc"
    ae_title = "ORTHANC"

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        config = {
            "MaximumPduLength": MAX_PDU,
            "SyncStorageArea": True,
            "StorageCompression": False,
            "LuaScripts": [],
        }
        self.orthanc = Orthanc(work / "orthanc", self.ae_title, config)

    @property
    def port(self) -> int:
        return self.orthanc.dicom_port

    def start(self) -> None:
        self.orthanc.start()

    def stop(self) -> None:
        self.orthanc.stop()

    def stored_instances(self) -> int:
        return self.orthanc.instance_count()

    def pids(self) -> list[int]:
        return self.orthanc.pids()

    def description(self) -> dict[str, Any]:
        return {"durable": True, "index": "sqlite", "max_pdu": MAX_PDU, "dicom_threads": 4}


class AigwReceiver(Receiver):
    """``aigw serve`` as its own process; embedded (folder + SQLite) or S3 + PostgreSQL."""

    ae_title = "AIGW"

    def __init__(self, work: Path, processes: int, postgres: Postgres | None = None) -> None:
        super().__init__(work)
        self.processes = processes
        self.postgres = postgres
        self.backend = "s3-postgres" if postgres else "folder-sqlite"
        self.name = f"aigw-{'s3pg' if postgres else 'folder'}-{processes}p"
        self.data_dir = work / self.name
        self.s3: S3Server | None = None
        self.database_url: str | None = None
        self.gateway = GatewayProcess(self.data_dir, free_port(), {}, ["--open"], processes)

    @property
    def port(self) -> int:
        return self.gateway.dicom_port

    def _settings(self) -> dict[str, str]:
        settings = {"scp_processes": str(self.processes), "max_pdu_bytes": str(MAX_PDU)}
        if self.database_url is not None and self.s3 is not None:
            settings |= {
                "database_url": self.database_url,
                "object_store": "s3",
                "s3_endpoint": self.s3.endpoint,
                "s3_bucket": BUCKET,
                **S3_CREDENTIALS,
            }
        return settings

    def start(self) -> None:
        self.data_dir.mkdir()
        if self.postgres is not None:
            self.s3 = S3Server(self.data_dir / "seaweedfs")  # removed with the round's data
            self.s3.start()
            self.database_url = self.postgres.create_database(self.name.replace("-", "_"))
        self.gateway.env = gateway_env(**self._settings())
        self.gateway.start()

    def stop(self) -> None:
        self.gateway.stop()
        if self.s3 is not None:
            self.s3.kill()  # its data goes with the round's folder

    def stored_instances(self) -> int:
        """The smaller of indexed instances and stored objects: both must hold every one."""
        return min(self.indexed_instances(), self.object_count())

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
            return self.s3.object_count(BUCKET, prefix="studies/")
        return sum(1 for _ in (self.data_dir / "objects" / "studies").rglob("*.dcm"))

    def refusals(self) -> int:
        return sum(
            1
            for line in self.gateway.log_tail(chars=10**9).splitlines()
            if '"instance refused"' in line or '"C-STORE handler failed"' in line
        )

    def pids(self) -> list[int]:
        return self.gateway.pids()

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


def build_receiver(name: str, work: Path, postgres: Callable[[], Postgres]) -> Receiver:
    if name == "storescp":
        return StorescpReceiver(work)
    if name == "orthanc":
        return OrthancReceiver(work)
    backend, processes = name.removeprefix("aigw-").rsplit("-", 1)
    return AigwReceiver(
        work, int(processes.removesuffix("p")), postgres() if backend == "s3pg" else None
    )
