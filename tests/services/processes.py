"""Ports, tools and child processes: what every service of the harness is started with."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED_DICOM = ROOT.parent / "shared" / "data" / "dicom"


class ServiceError(RuntimeError):
    """A service did not start, or stopped answering, as it should."""


class ServiceUnavailable(ServiceError):
    """A tool or data set the caller needs is not on this machine: a test is skipped with
    this reason (``tests/conftest.py``), a benchmark stops and says it."""


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports are handed out below the kernel's ephemeral range: a port chosen by binding port 0
# and then released could be handed by the kernel to anything else that binds port 0 or
# connects out before the child process binds it (CI lost a run to "Address already in use"
# with two pytest-xdist workers). Each xdist worker draws from its own block, and a run's
# starting point within the block follows its pid, so concurrent runs rarely meet; a port
# something already listens on is skipped.
_PORT_FLOOR = 10000
_BLOCKS = 8
_next_in_block: list[int] = []


def _block() -> tuple[int, int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) % _BLOCKS if worker.isdigit() else 0
    size = (_ephemeral_low() - _PORT_FLOOR) // _BLOCKS
    return _PORT_FLOOR + index * size, size


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    start, size = _block()
    if size < 64:  # an unusual ephemeral range: let the kernel choose
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    if not _next_in_block:
        _next_in_block.append(os.getpid() % size)
    for _ in range(size):
        offset = _next_in_block[0]
        _next_in_block[0] = (offset + 1) % size
        if _bindable(start + offset):
            return start + offset
    raise ServiceError(f"no free port in {start}–{start + size - 1}")


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (consecutive draws never repeat within a block)."""
    return [free_port() for _ in range(count)]


def listening_sockets(port: int) -> int:
    """How many sockets listen on ``port``. Read from /proc, so
    that waiting for a DICOM port opens no association the receiver would log as aborted."""
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
    """Poll ``ready`` until it is true; :class:`ServiceError` naming ``what`` when
    ``process`` exits first or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServiceError(f"{what}: process exited with {process.returncode}")
        if ready():
            return
        time.sleep(0.05)
    raise ServiceError(f"{what}: not ready after {timeout_s:.0f} s")


def wait_for_port(
    port: int,
    timeout_s: float = 30.0,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Until a socket listens on ``port``."""
    wait_until(lambda: listening_sockets(port) >= 1, f"port {port}", process, timeout_s=timeout_s)


def stop_process(process: subprocess.Popen[bytes] | None, timeout_s: float = 20.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``; nothing when it has already ended."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_process(process)


def kill_process(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.kill()
        process.wait(timeout=10)


def find_tool(name: str, *, from_pip: bool = False) -> str | None:
    """A tool from a pip package (``from_pip``: ``weed``) is looked for beside this Python
    first, since the virtualenv's bin need not be on PATH. Any other is looked for on PATH
    without this Python's folder: pynetdicom installs scripts named ``storescu`` and
    ``storescp`` there, which are not DCMTK's."""
    own = Path(sys.executable).parent
    if from_pip:
        return str(own / name) if (own / name).is_file() else shutil.which(name)
    folders = os.environ.get("PATH", "").split(os.pathsep)
    others = [folder for folder in folders if folder and Path(folder) != own]
    return shutil.which(name, path=os.pathsep.join(others))


def require_tool(name: str, *, from_pip: bool = False) -> str:
    path = find_tool(name, from_pip=from_pip)
    if path is None:
        raise ServiceUnavailable(f"{name} is not installed (make test installs it)")
    return path


def require_shared_data() -> Path:
    if not SHARED_DICOM.is_dir():
        raise ServiceUnavailable(
            f"real DICOM files not available: {SHARED_DICOM} is absent (outside the team's "
            "workspace); the synthetic studies cover these flows"
        )
    return SHARED_DICOM
