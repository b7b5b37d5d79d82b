"""What every benchmark records about the machine it ran on, and where its results go.

Shared by the ingest, inference and suite benchmarks so that their JSON files describe the
machine the same way and land in the same ``benchmarks/results/<machine>/`` folder.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEVICES_DIR = ROOT / "models" / "zoo"
RESULTS = ROOT / "benchmarks" / "results"

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def version_line(command: list[str], timeout_s: float = 20.0) -> str | None:
    """The first line a tool prints about itself, or None where it is missing or fails."""
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


def cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def package_versions(names: Iterable[str]) -> dict[str, str]:
    """Installed versions of the packages that shape a figure; absent ones are left out."""
    found = {}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def machine_description(packages: Iterable[str]) -> dict[str, Any]:
    """CPU, memory, kernel, Python, the given packages' versions and the git commit."""
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": package_versions(packages),
        "git_commit": version_line(["git", "-C", str(ROOT), "rev-parse", "HEAD"]),
    }


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs have spent busy since boot (not idle, iowait or steal)."""
    with open("/proc/stat") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / _CLOCK_TICKS


def gpu_name() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    return version_line(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], 10.0)


def machine_name(with_gpu: bool = False) -> str:
    """``cpu-<N>core``, and the GPU's name after it where the figures used one."""
    name = f"cpu-{os.cpu_count()}core"
    gpu = gpu_name() if with_gpu else None
    if gpu:
        name += "-" + "".join(c if c.isalnum() else "-" for c in gpu.lower()).strip("-")
    return name


def write_results(out_dir: Path, machine: str, benchmark: str, report: dict[str, Any]) -> Path:
    """``<out>/<machine>/<benchmark>-<UTC stamp>.json`` and ``<benchmark>-latest.json``."""
    folder = out_dir / machine
    folder.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"{benchmark}-{stamp}.json"
    text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    path.write_text(text)
    (folder / f"{benchmark}-latest.json").write_text(text)
    return path


def mount_point(field: str) -> str:
    """A mount point as ``/proc/self/mountinfo`` writes it, its escapes undone (a space is
    ``\\040``, a tab ``\\011``, a newline ``\\012``, a backslash ``\\134``)."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def file_system(path: Path) -> dict[str, Any]:
    """The file system ``path`` is on: its mount point, type, device and, for ext4, whether it
    has a journal. Without one, ext4 skips inodes freed in the last minute (five more while
    their inode table block is unwritten) when it allocates a new one (``recently_deleted``),
    reading each such inode's block: files created after many were deleted cost more."""
    resolved = str(path.resolve())
    best: list[str] = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields = line.split()
            mount = fields[4] = mount_point(fields[4])
            inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best[4] if best else ""):
                best = fields
    if not best:
        return {}
    tail = best[best.index("-") + 1 :]
    kind, device = tail[0], tail[1]
    described: dict[str, Any] = {"mount": best[4], "type": kind, "device": device}
    if kind == "ext4":
        journals = Path("/proc/fs/jbd2")
        name = Path(device).name
        described["journal"] = journals.is_dir() and any(
            entry.name.startswith(name + "-") for entry in journals.iterdir()
        )
    return described


@contextlib.contextmanager
def work_folder(chosen: Path | None, prefix: str) -> Iterator[Path]:
    """``chosen`` (kept afterwards), else a temporary folder removed afterwards."""
    if chosen is not None:
        chosen.mkdir(parents=True, exist_ok=True)
        yield chosen
        return
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
