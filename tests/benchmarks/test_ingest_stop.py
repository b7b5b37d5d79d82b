"""A receiver's round ends only when nothing it started still runs: a process that outlives
the receiver's own stop (aigw's fork server once finalized torch for ~1 s after the gateway
had exited, in the next receiver's CT phase) is waited for, and one still running after the
allowed time is killed and named in a warning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.ingest import phases
from benchmarks.ingest.receivers import Receiver
from benchmarks.measure import descendants, running
from tests.services.processes import wait_until


class _Parent(Receiver):
    """A receiver that is one process which started a child of its own (``child``: a
    shell command) and exits at once when stopped, leaving that child behind."""

    name = "parent"
    ae_title = "PARENT"

    def __init__(self, work: Path, child: str) -> None:
        super().__init__(work)
        script = f"import subprocess, time; subprocess.Popen({child!r}, shell=True); time.sleep(60)"
        self.process = subprocess.Popen([sys.executable, "-c", script])

    @property
    def port(self) -> int:
        return 0

    def start(self) -> None:
        wait_until(lambda: bool(descendants([self.process.pid])), "the child", self.process)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)

    def stored_instances(self) -> int:
        return 0

    def pids(self) -> list[int]:
        return [self.process.pid]


def test_a_leftover_that_ends_is_waited_for(tmp_path: Path) -> None:
    receiver = _Parent(tmp_path, "exec sleep 1.5")
    receiver.start()
    (child,) = descendants(receiver.pids())
    phases.stop_all(receiver)
    assert not running(child)
    assert receiver.process.returncode is not None


def test_a_leftover_still_running_is_killed_and_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(phases, "LEFTOVER_TIMEOUT_S", 0.5)
    receiver = _Parent(tmp_path, "exec sleep 300")
    receiver.start()
    (child,) = descendants(receiver.pids())
    phases.stop_all(receiver)
    wait_until(lambda: not running(child), "the leftover's end", timeout_s=10)
    assert f"parent left pid {child} running" in capsys.readouterr().err
