"""A real Redis broker for fault tests: killed with SIGKILL and started again on the same
port, without persistence (its messages die with it) or with AOF (they survive)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.services import free_port, require_tool, wait_for_port


@dataclass
class RedisBroker:
    folder: Path
    aof: bool = False
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.aof else []
        self.process = subprocess.Popen(
            [
                require_tool("redis-server"),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.folder),
                "--save",
                "",
                "--appendonly",
                "no",
                *persistence,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, process=self.process)

    def kill(self) -> None:
        """SIGKILL: whatever was only in memory is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def run_id(self) -> str:
        client = redis.Redis(port=self.port, decode_responses=True)
        try:
            return str(client.info("server")["run_id"])
        finally:
            client.close()

    def waiting_messages(self) -> int:
        """Messages queued and not yet taken by a worker, on every queue and priority."""
        client = redis.Redis(port=self.port, decode_responses=True)
        try:
            keys = [str(key) for key in client.scan_iter() if not str(key).startswith("_kombu")]
            return sum(int(client.llen(key)) for key in keys if client.type(key) == "list")
        finally:
            client.close()


@contextlib.contextmanager
def redis_broker(aof: bool = False) -> Iterator[RedisBroker]:
    folder = Path(tempfile.mkdtemp(prefix="aigw-redis-"))
    broker = RedisBroker(folder, aof=aof)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(folder, ignore_errors=True)
