"""The ingest benchmark removes what the receivers stored only after its last round: deleted
between two phases, a receiver's files slowed the next receiver's file creation on ext4
without a journal (inodes freed in the last minute are skipped, each read, when a new one
is allocated), so the receiver after Orthanc paid for Orthanc's files. They are emptied after
their receiver's round instead (blocks and memory freed, inodes kept). Every other round
runs the receivers in reverse order."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from benchmarks.environment import file_system, mount_point
from benchmarks.ingest import cli
from benchmarks.ingest.phases import PhaseResult


class _Receiver:
    def __init__(self, name: str, work: Path) -> None:
        self.name = name
        self.work = work

    def description(self) -> dict[str, Any]:
        return {}


def _phase(kind: str) -> PhaseResult:
    return PhaseResult(kind, 10, 5_000_000, 0.5, 4, 0.2, 0.05, 0.0, 0.1, 0.0)


def test_what_a_receiver_stored_stays_until_the_last_round_has_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, list[str]]] = []

    def run_round(
        receiver: _Receiver, corpus: object, senders: int
    ) -> tuple[dict[str, PhaseResult], int]:
        stored = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.dcm"))
        seen.append((f"{receiver.work.name}/{receiver.name}", stored))
        # the earlier receivers' files are still there, emptied: their inodes kept, their
        # blocks and page cache freed
        assert all(p.stat().st_size == 0 for p in tmp_path.rglob("*.dcm"))
        folder = receiver.work / receiver.name
        folder.mkdir(parents=True)
        (folder / "instance.dcm").write_bytes(b"received")
        return {"CT": _phase("CT"), "DX": _phase("DX")}, 10

    files = SimpleNamespace(count=10, total_bytes=5_000_000)
    monkeypatch.setattr(cli, "check_tools", lambda names: list(names))
    monkeypatch.setattr(
        cli, "make_corpus", lambda *a: SimpleNamespace(ct=files, dx=files, warmup=files)
    )
    monkeypatch.setattr(cli, "build_receiver", lambda name, work, pg: _Receiver(name, work))
    monkeypatch.setattr(cli, "run_round", run_round)
    args = cli.parse_args(
        ["--rounds", "2", "--receivers", "orthanc,aigw-folder-2p", "--work-dir", str(tmp_path)]
    )
    report = cli.run(args)

    assert seen == [
        ("round-1/orthanc", []),
        ("round-1/aigw-folder-2p", ["round-1/orthanc/instance.dcm"]),
        # every other round in reverse: no receiver always follows another
        (
            "round-2/aigw-folder-2p",
            ["round-1/aigw-folder-2p/instance.dcm", "round-1/orthanc/instance.dcm"],
        ),
        (
            "round-2/orthanc",
            [
                "round-1/aigw-folder-2p/instance.dcm",
                "round-1/orthanc/instance.dcm",
                "round-2/aigw-folder-2p/instance.dcm",
            ],
        ),
    ]
    assert not list(tmp_path.rglob("*.dcm")), "the run removes what was stored when it ends"
    assert report["environment"]["work_file_system"] == file_system(tmp_path)


def test_the_work_folders_file_system_is_named_with_its_journal(tmp_path: Path) -> None:
    described = file_system(tmp_path)
    assert described["type"] and described["device"] and described["mount"]
    assert tmp_path.resolve().as_posix().startswith(described["mount"].rstrip("/") + "/")
    if described["type"] == "ext4":
        assert isinstance(described["journal"], bool)
    assert file_system(Path("/proc"))["type"] == "proc"
    # mountinfo escapes what would split its fields: a mount point with a space in it
    assert mount_point("/mnt/scan\\040archive\\134x") == "/mnt/scan archive\\x"
