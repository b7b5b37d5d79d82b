"""Orthanc on free loopback ports: its own SQLite index and file storage in a folder, no
plugins, no authentication (loopback only)."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.services.dcmtk import dcmtk_env
from tests.services.processes import free_port, require_tool, stop_process, wait_for_port


@dataclass
class Orthanc:
    """``config`` adds to or overrides the base configuration (``DicomModalities``,
    ``MaximumPduLength``, ``SyncStorageArea``…)."""

    work: Path
    ae_title: str = "ORTHANC"
    config: dict[str, Any] = field(default_factory=dict)
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def configuration(self) -> dict[str, Any]:
        return {
            "Name": f"aigw-{self.ae_title.lower()}",
            "StorageDirectory": str(self.work / "storage"),
            "IndexDirectory": str(self.work / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.ae_title,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
            **self.config,
        }

    def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        config_file = self.work / "orthanc.json"
        config_file.write_text(json.dumps(self.configuration(), indent=2))
        with (self.work / "orthanc.log").open("ab") as log:
            self.process = subprocess.Popen(
                [require_tool("Orthanc"), str(config_file)],
                env=dcmtk_env(),  # Orthanc's DICOM side is DCMTK's
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.dicom_port, process=self.process)
        wait_for_port(self.http_port, process=self.process)

    def stop(self) -> None:
        stop_process(self.process)

    def pids(self) -> list[int]:
        return [self.process.pid] if self.process else []

    def instance_count(self) -> int:
        with urllib.request.urlopen(f"{self.url}/statistics", timeout=30) as response:
            return int(json.load(response)["CountInstances"])
