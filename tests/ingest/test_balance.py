"""SCP processes sharing one listening socket take connections least loaded first
(gateway.ingest.balance): four associations over two processes land 2:2, every time."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.association import Association

from gateway.ingest.balance import AcceptBalance
from pacs_adapters.requestor import associate
from tests.services import GatewayProcess, free_port, gateway_env, wait_until

VERIFICATION = "1.2.840.10008.1.1"


def test_a_seat_waits_only_for_a_lighter_accepting_process() -> None:
    balance = AcceptBalance(3)
    first, second, third = (balance.seat(n, 0.2) for n in range(3))
    assert not first.should_wait(5)  # nobody else accepts yet
    second.publish(2)
    assert first.should_wait(3)
    assert not first.should_wait(2)  # as loaded: no reason to leave it
    third.publish(0)
    assert first.should_wait(1)
    third.leave()  # stopped: not a place to leave connections to
    assert not first.should_wait(2)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _established_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            next(handle)
            for line in handle:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "01":
                    inodes.add(fields[9])
    return inodes


def _held_by(pid: int, inodes: set[str]) -> int:
    held = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            held += 1
    return held


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads sockets from Linux /proc")
def test_four_associations_over_two_processes_land_two_each(tmp_path: Path) -> None:
    port = free_port()
    # A long grace: the lighter process always has the time to take what is left to it,
    # however busy the machine running the test.
    env = gateway_env(scp_processes="2", scp_balance_grace_ms="3000")
    gateway = GatewayProcess(tmp_path / "var", port, env, [], scp_processes=2)
    gateway.start()
    ae = AE(ae_title="IRK_CAMI")
    ae.add_requested_context(VERIFICATION)
    held: list[Association] = []
    try:
        for _ in range(4):  # one after another: each sees the loads the last one left
            assoc = associate(ae, "127.0.0.1", port, ae_title="AIGW")
            assert assoc.is_established
            assert assoc.send_c_echo().Status == 0x0000
            held.append(assoc)
        assert gateway.process is not None
        pids = [gateway.process.pid, *_children(gateway.process.pid)]
        inodes = _established_inodes(port)
        counts = sorted(_held_by(pid, inodes) for pid in pids)
        assert counts[-2:] == [2, 2], counts

        # A child killed keeps the load it published; the main process empties its seat,
        # and new connections go on being accepted by the survivor.
        child = max((pid for pid in pids[1:]), key=lambda pid: _held_by(pid, inodes))
        os.kill(child, signal.SIGKILL)
        wait_until(
            lambda: any(line.get("event") == "SCP process ended" for line in gateway.log_lines()),
            "the dead SCP process's seat emptied",
            gateway.process,
        )
        assoc = associate(ae, "127.0.0.1", port, ae_title="AIGW")
        assert assoc.is_established
        held.append(assoc)
    finally:
        for assoc in held:
            assoc.release()
        gateway.stop()
