"""DCMTK: ``storescu`` as the sender, ``storescp`` as a receiver, ``dciodvfy`` (dicom3tools)
as the validator of what we write.

Every DCMTK process runs with ``TCP_NODELAY=1`` in its environment: Debian's DCMTK sets the
socket option only then, and without it every association stalls ~45 ms per instance.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from tests.services.processes import free_port, require_tool, stop_process, wait_for_port

DCMTK_ENV = {"TCP_NODELAY": "1"}


def dcmtk_env() -> dict[str, str]:
    return {**os.environ, **DCMTK_ENV}


def storescu_command(
    port: int,
    files: Sequence[Path],
    *,
    calling_ae: str = "IRK_CAMI",
    called_ae: str = "AIGW",
    max_pdu: int | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """``storescu -R`` (only the presentation contexts the files need) to loopback."""
    pdu = ["-pdu", str(max_pdu)] if max_pdu else []
    return [require_tool("storescu"), "-R", "-aet", calling_ae, "-aec", called_ae, *pdu,
            *extra, "127.0.0.1", str(port), *map(str, files)]  # fmt: skip


def storescu(
    port: int,
    files: Sequence[Path],
    *,
    calling_ae: str = "IRK_CAMI",
    called_ae: str = "AIGW",
    extra: list[str] | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Send ``files`` in one association and wait for storescu to end."""
    command = storescu_command(
        port, files, calling_ae=calling_ae, called_ae=called_ae, extra=extra or ()
    )
    return subprocess.run(
        command, capture_output=True, text=True, env=dcmtk_env(), check=check, timeout=300
    )


@dataclass
class Storescp:
    """DCMTK storescp writing what it receives into ``folder``. ``options`` are storescp's
    own (``-uf``: one file per received copy; ``-B``: bit-preserving; ``-pdu N``…)."""

    folder: Path
    ae_title: str = "STORESCP"
    options: Sequence[str] = ()
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self, log: Path | None = None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [require_tool("storescp"), "-aet", self.ae_title, *self.options,
                   "-od", str(self.folder), str(self.port)]  # fmt: skip
        out = log.open("ab") if log else None
        try:
            self.process = subprocess.Popen(
                command,
                env=dcmtk_env(),
                stdout=out or subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
        finally:
            if out:
                out.close()  # the child holds its own descriptor
        wait_for_port(self.port, process=self.process)

    def stop(self) -> None:
        stop_process(self.process, timeout_s=10)

    def pids(self) -> list[int]:
        return [self.process.pid] if self.process else []

    def files(self) -> list[Path]:
        return sorted(path for path in self.folder.iterdir() if path.is_file())

    def received(self) -> list[str]:
        """SOP Instance UIDs of every file received, one entry per file."""
        return [
            str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            for path in self.files()
        ]


def dciodvfy_errors(dataset: pydicom.Dataset, folder: Path) -> list[str]:
    """dciodvfy's Error lines for the dataset as we would send it."""
    tool = require_tool("dciodvfy")
    path = folder / f"{dataset.SOPInstanceUID}.dcm"
    dataset.save_as(path, enforce_file_format=True)
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def acknowledged_files(storescu_log: str) -> list[Path]:
    """Files for which ``storescu -v`` printed a successful C-STORE response."""
    acked, current = [], None
    for line in storescu_log.splitlines():
        if line.startswith("I: Sending file: "):
            current = Path(line.removeprefix("I: Sending file: ").strip())
        elif line.startswith("I: Received Store Response (Success)") and current is not None:
            acked.append(current)
            current = None
    return acked
