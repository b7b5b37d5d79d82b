"""Redis as the Celery broker: non-persistent (as a broker is usually run), so a restart in
place loses its queued messages; or with AOF (``aof_dir``), so they survive a SIGKILL."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.services.processes import (
    free_port,
    kill_process,
    require_tool,
    stop_process,
    wait_for_port,
)


@dataclass
class RedisServer:
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    aof_dir: Path | None = None  # append-only file here, fsynced at every write

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [require_tool("redis-server"), "--port", str(self.port), "--bind",
                   "127.0.0.1", "--save", "", "--appendonly", "no"]  # fmt: skip
        if self.aof_dir is not None:
            command += ["--dir", str(self.aof_dir), "--appendonly", "yes",
                        "--appendfsync", "always"]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port, process=self.process)

    def stop(self) -> None:
        stop_process(self.process, timeout_s=10)

    def kill(self) -> None:
        """SIGKILL: what was only in memory is gone."""
        kill_process(self.process)

    def run_id(self) -> str:
        """This instance's identity; another one after every start."""
        import redis

        client = redis.Redis(port=self.port, decode_responses=True)
        try:
            return str(client.info("server")["run_id"])
        finally:
            client.close()

    def describe(self) -> dict[str, str]:
        """Every key and its type."""
        import redis

        client = redis.Redis(port=self.port, decode_responses=True)
        try:
            return {str(key): str(client.type(key)) for key in client.scan_iter()}
        finally:
            client.close()

    def waiting_messages(self) -> int:
        """Messages queued and not yet taken by a worker, on every queue and priority."""
        import redis

        client = redis.Redis(port=self.port, decode_responses=True)
        try:
            lists = [
                str(key)
                for key in client.scan_iter()
                if not str(key).startswith("_kombu") and client.type(key) == "list"
            ]
            return sum(int(client.llen(key)) for key in lists)
        finally:
            client.close()


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
