"""A private PostgreSQL cluster on a free loopback port, default (durable) settings, that can
be stopped hard (``pg_ctl stop -m immediate``: a crash, recovered from the WAL) and started
again on the same port with the same data."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.services.processes import ServiceError, ServiceUnavailable, free_port


def _bin_dir() -> Path:
    base = Path("/usr/lib/postgresql")
    versions = sorted(base.glob("*/bin/initdb")) if base.is_dir() else []
    if not versions:
        raise ServiceUnavailable(
            "PostgreSQL server binaries are not installed (make test installs them)"
        )
    return versions[-1].parent


def _as_postgres(*command: str) -> None:
    """Run a server tool as user postgres (it refuses root), naming the failure."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    done = subprocess.run([*prefix, *command], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ServiceError(f"{Path(command[0]).name} failed: {done.stderr.strip()}")


@dataclass
class Postgres:
    port: int
    base: Path  # owned by user postgres: the server cannot enter a test's temp folder
    bin_dir: Path
    url: str = ""  # the ``aigw`` database, once created
    running: bool = False

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    def init(self) -> None:
        options = ["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]
        _as_postgres(str(self.bin_dir / "initdb"), "-D", str(self.data_dir), *options)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1"
        log = str(self.base / "log")
        _as_postgres(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-o", options,
                     "-l", log, "-w", "start")  # fmt: skip
        self.running = True

    def stop(self, mode: str = "immediate") -> None:
        """``immediate`` by default: no checkpoint, like a crash; the next start replays the
        WAL, so every committed transaction is there again."""
        _as_postgres(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w",
                     "stop")  # fmt: skip
        self.running = False

    def restart(self) -> None:
        self.stop()
        self.start()

    def create_database(self, name: str) -> str:
        """A new, empty database (dropped first if it exists); its SQLAlchemy URL."""
        import psycopg

        dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
            connection.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def pids(self) -> list[int]:
        """The postmaster (its backends are its children)."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            return [int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])]
        return []

    def version(self) -> str:
        done = subprocess.run(
            [str(self.bin_dir / "postgres"), "--version"], capture_output=True, text=True
        )
        return done.stdout.strip()


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    """A fresh cluster with an ``aigw`` database (``url``), removed afterwards."""
    bin_dir = _bin_dir()
    base = Path(tempfile.mkdtemp(prefix="aigw-pg-"))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
    server = Postgres(port=free_port(), base=base, bin_dir=bin_dir)
    try:
        server.init()
        server.start()
        server.url = server.create_database("aigw")
        yield server
    finally:
        if server.running:
            with contextlib.suppress(ServiceError):
                server.stop()
        shutil.rmtree(base, ignore_errors=True)
