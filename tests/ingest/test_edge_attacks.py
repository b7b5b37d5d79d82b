"""The attacks of issue 11, as processes against ``aigw serve`` on the embedded default, with
its memory read from /proc: length fields declaring gigabytes, 200 idle connections, and a
1 GiB instance. Each time the peak resident memory (VmHWM, reset before the attack) stays
within 128 MiB of what the process held before, and afterwards C-ECHO answers and a normal
C-STORE is stored."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import UID, ExplicitVRLittleEndian
from sqlalchemy import select

from gateway.index.database import Database
from gateway.index.tables import InstanceRow
from tests.ingest.edge_peers import (
    association_request,
    echo,
    is_open,
    memory_kb,
    read_until_closed,
    verification_association,
)
from tests.services import (
    GatewayProcess,
    ct_instance,
    free_port,
    gateway_env,
    make_uid,
    require_tool,
    storescu,
    write_ct_series,
)

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
HEADROOM_KB = 128 * 1024
MULTIFRAME_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[GatewayProcess]:
    """``aigw serve``; nothing completes (a long quiet period), idle connections are held
    for a minute (so the test sees them held, not timed out)."""
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    env = gateway_env(
        quiet_period_s="3600", min_free_bytes="0", dicom_request_timeout_s="60", log_level="INFO"
    )
    process = GatewayProcess(data_dir, free_port(), env, [])
    process.start()
    try:
        assert echo(process.dicom_port) == 0  # warmed up: handlers, imports, the database
        yield process
    finally:
        process.stop()


def _pid(process: GatewayProcess) -> int:
    assert process.process is not None
    return process.process.pid


def _reset_peak(pid: int) -> int:
    """Resets VmHWM to the current resident size (``5 > clear_refs``); returns that size."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return memory_kb(pid)["VmRSS"]


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def _still_serves(process: GatewayProcess, tmp_path: Path, tag: str) -> None:
    assert echo(process.dicom_port) == 0
    files = write_ct_series(tmp_path / tag, 1, seed=tag)
    result = storescu(process.dicom_port, files)
    assert result.returncode == 0, result.stderr
    sop = str(pydicom.dcmread(files[0], stop_before_pixels=True).SOPInstanceUID)
    db = Database(f"sqlite:///{process.data_dir / 'aigw.db'}")
    try:
        with db.session() as session:
            assert session.scalar(select(InstanceRow.id).where(InstanceRow.sop_instance_uid == sop))
    finally:
        db.dispose()


def _flood(connection: socket.socket, header: bytes, up_to: int) -> int:
    """Send ``header`` then zeros until the server closes; returns the bytes it took."""
    sent = 0
    zeros = b"\0" * MiB
    # Any OSError ends the flood: besides a broken pipe or a reset, pynetdicom's own thread
    # closes an association's socket when the abort arrives, and sendall then gets EBADF.
    with contextlib.suppress(OSError):
        connection.sendall(header)
        while sent < up_to:
            connection.sendall(zeros)
            sent += len(zeros)
    return sent


def test_gigabyte_length_fields_cost_no_memory(serve: GatewayProcess, tmp_path: Path) -> None:
    pid = _pid(serve)
    before = _reset_peak(pid)
    taken: list[int] = []

    def oversized_request() -> None:
        with socket.create_connection(("127.0.0.1", serve.dicom_port), timeout=30) as connection:
            taken.append(_flood(connection, bytes.fromhex("0100FFFFFFF0"), 256 * MiB))
            read_until_closed(connection)

    attackers = [threading.Thread(target=oversized_request) for _ in range(4)]
    for attacker in attackers:
        attacker.start()
    for attacker in attackers:
        attacker.join()
    # after a valid association: a P-DATA-TF declaring 2 GiB
    assoc = verification_association(serve.dicom_port)
    assert assoc.is_established
    raw = assoc.dul.socket.socket  # type: ignore[union-attr]
    assert raw is not None
    taken.append(_flood(raw, bytes.fromhex("04007FFFFFFF"), 256 * MiB))
    deadline = time.monotonic() + 30
    while not assoc.is_aborted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert assoc.is_aborted
    peak = memory_kb(pid)["VmHWM"]
    print(f"\nRSS before {before} KiB, peak {peak} KiB; bytes accepted per attack {taken}")
    assert peak - before < HEADROOM_KB
    assert max(taken) < 256 * MiB  # every attacker was cut off, none fed the whole flood
    lines = [line for line in serve.log_lines() if line.get("logger") == "gateway.ingest.refusals"]
    assert (
        sorted(str(line["reason"]) for line in lines)
        == ["pdu_too_large"] + ["request_too_large"] * 4
    )
    _still_serves(serve, tmp_path, "after-lengths")


def test_200_idle_connections_do_not_lock_a_sender_out(
    serve: GatewayProcess, tmp_path: Path
) -> None:
    pid = _pid(serve)
    before, threads_before = _reset_peak(pid), _threads(pid)
    idle = [
        socket.create_connection(
            ("127.0.0.1", serve.dicom_port), timeout=30, source_address=(f"127.0.1.{n}", 0)
        )
        for n in range(1, 26)
        for _ in range(8)
    ]
    half_requests = [
        socket.create_connection(
            ("127.0.0.1", serve.dicom_port), timeout=30, source_address=(f"127.0.2.{n}", 0)
        )
        for n in range(1, 9)
    ]
    try:
        for connection in half_requests:  # slow senders: a part of the request, then nothing
            connection.sendall(association_request()[:50])
        with socket.create_connection(
            ("127.0.0.1", serve.dicom_port), timeout=30, source_address=("127.0.1.1", 0)
        ) as ninth:
            assert read_until_closed(ninth) == b""  # that address holds its 8 already
        files = write_ct_series(tmp_path / "sender", 3, seed="idle")
        started = time.monotonic()
        result = storescu(serve.dicom_port, files)
        took = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        assert all(is_open(c) for c in idle + half_requests)  # held, not timed out yet
        threads, peak = _threads(pid), memory_kb(pid)["VmHWM"]
    finally:
        for connection in idle + half_requests:
            connection.close()
    print(
        f"\nwith {len(idle) + len(half_requests)} idle connections: storescu of 3 instances "
        f"took {took:.3f} s; threads {threads_before} → {threads}; "
        f"RSS before {before} KiB, peak {peak} KiB"
    )
    assert threads - threads_before < 20  # no thread per pending connection
    assert peak - before < HEADROOM_KB
    _still_serves(serve, tmp_path, "after-idle")


def _write_big_instance(path: Path, frames: int) -> tuple[str, int]:
    """A multi-frame 16-bit secondary capture of ``frames`` × 4096² pixels (32 MiB each),
    written without holding its pixels in memory; returns its SOP Instance UID and the
    length of its dataset (what the sender puts on the wire after the file meta)."""
    sop = make_uid("big", frames)
    ds = ct_instance(make_uid("big-study"), make_uid("big-series"), sop, size=8)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(MULTIFRAME_WORD_SC)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Modality = "OT"
    ds.Rows = ds.Columns = 4096
    ds.NumberOfFrames = frames
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    pixels = frames * 4096 * 4096 * 2
    block = os.urandom(MiB)
    with open(path, "ab") as handle:
        handle.write(b"\xe0\x7f\x10\x00OW\x00\x00" + pixels.to_bytes(4, "little"))
        for _ in range(pixels // MiB):
            handle.write(block)
    meta_end = 132 + 12 + int.from_bytes(path.read_bytes()[140:144], "little")
    return sop, path.stat().st_size - meta_end


def _digest_tail(path: Path, length: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(path.stat().st_size - length)
        while chunk := handle.read(8 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def test_a_1_gib_instance_is_received_with_memory_flat(
    serve: GatewayProcess, tmp_path: Path
) -> None:
    require_tool("storescu")
    big = tmp_path / "big.dcm"
    sop, dataset_length = _write_big_instance(big, frames=32)  # 1 GiB of pixels
    pid = _pid(serve)
    before = _reset_peak(pid)
    started = time.monotonic()
    result = storescu(serve.dicom_port, [big])
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    peak = memory_kb(pid)["VmHWM"]
    print(
        f"\n1 GiB instance ({big.stat().st_size} bytes) stored in {took:.1f} s; "
        f"RSS before {before} KiB, peak {peak} KiB"
    )
    assert peak - before < HEADROOM_KB
    db = Database(f"sqlite:///{serve.data_dir / 'aigw.db'}")
    try:
        with db.session() as session:
            key, size, sha = session.execute(
                select(InstanceRow.object_key, InstanceRow.size_bytes, InstanceRow.sha256).where(
                    InstanceRow.sop_instance_uid == sop
                )
            ).one()
    finally:
        db.dispose()
    stored = serve.data_dir / "objects" / key
    assert stored.stat().st_size == size
    with open(stored, "rb") as handle:
        assert hashlib.file_digest(handle, "sha256").hexdigest() == sha
    assert _digest_tail(stored, dataset_length) == _digest_tail(big, dataset_length)
    _still_serves(serve, tmp_path, "after-big")
