"""``aigw serve`` as a separate process (so that it can be killed with SIGKILL), configured
through ``AIGW_*`` variables as an operator would."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.services.processes import ROOT, ServiceError, stop_process, wait_for_port, wait_until


def gateway_env(**settings: str) -> dict[str, str]:
    """This environment without any ``AIGW_*`` of its own, the repository's configs, JSON
    logs, and ``settings`` as ``AIGW_<NAME>``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIGW_")}
    env["AIGW_CONFIG_FILE"] = str(ROOT / "gateway" / "configs" / "gateway.yaml")
    env["AIGW_SOURCES_FILE"] = str(ROOT / "gateway" / "configs" / "sources.yaml")
    env["AIGW_REGIONS_FILE"] = str(ROOT / "gateway" / "configs" / "regions.yaml")
    env["AIGW_LOG_JSON"] = "true"
    env["AIGW_SCP_PROCESSES"] = "1"  # the default is the cores; a test that wants more says so
    env.update({f"AIGW_{key.upper()}": value for key, value in settings.items()})
    return env


@dataclass
class GatewayProcess:
    """``scp_processes`` is how many SCP processes must accept on the DICOM port before
    :meth:`start` returns: the extra ones take the main process's listening socket a moment
    after it listens, and sending before they all accept would put every association on the
    first."""

    data_dir: Path
    dicom_port: int
    env: dict[str, str]
    args: list[str]
    scp_processes: int = 1
    start_timeout_s: float = 60.0  # start-up registers and validates every device first
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "serve.log"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        command = [sys.executable, "-m", "workers.cli", "serve", "--data-dir",
                   str(self.data_dir), "--dicom-port", str(self.dicom_port), "--http-port",
                   "0", *self.args]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            wait_for_port(self.dicom_port, self.start_timeout_s, self.process)
            wait_until(
                lambda: self._extra_scps_accepting(log_start) >= self.scp_processes - 1,
                "the extra SCP processes",
                self.process,
                timeout_s=self.start_timeout_s,
            )
        except ServiceError as exc:
            raise ServiceError(f"aigw serve: {exc}; its log ends: {self.log_tail()}") from exc

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        stop_process(self.process, timeout_s=15)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def pids(self) -> list[int]:
        return [self.process.pid] if self.process else []

    def log_lines(self) -> list[dict[str, object]]:
        lines = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                lines.append(json.loads(raw))
        return lines

    def _extra_scps_accepting(self, log_start: int) -> int:
        with self.log_path.open("rb") as log:
            log.seek(log_start)
            return log.read().count(b'"event": "DICOM SCP process accepting"')

    def log_tail(self, chars: int = 2000) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]


def indexed_rows(db_file: Path) -> int:
    """Instance rows in an embedded gateway's index, read without disturbing it."""
    if not db_file.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db_file}?mode=ro", uri=True, timeout=1) as connection:
            return int(connection.execute("SELECT count(*) FROM instances").fetchone()[0])
    except sqlite3.OperationalError:  # schema not there yet
        return 0
