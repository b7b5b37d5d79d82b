"""A stopped ``aigw serve`` leaves no process of its own running. Its fork server, left to
notice on its own that the gateway had gone, finalized an interpreter holding torch for
~1 s of CPU after the gateway's exit (in the ingest benchmark it took 0.8 s of the CPU of
the receiver measured next); it is now ended, with the extra SCP process, before the
gateway's own process exits. What those processes had started ends on its own a moment
later — a pool's children when their parent's sentinel closes (gateway.child_pool),
multiprocessing's resource tracker (no torch in it) when the last holder of its pipe has
gone: it is waited for."""

from __future__ import annotations

from pathlib import Path

from benchmarks.measure import command_line, descendants, process_table, running
from tests.services.gateway_process import GatewayProcess, gateway_env
from tests.services.processes import free_port, wait_until


def _fork_servers(pid: int) -> list[int]:
    return [
        child
        for child in descendants([pid])
        if "multiprocessing.forkserver" in command_line(child) and running(child)
    ]


def test_a_stopped_gateway_leaves_no_process_running(tmp_path: Path) -> None:
    gateway = GatewayProcess(
        tmp_path / "var", free_port(), gateway_env(scp_processes="2"), ["--open"], 2
    )
    gateway.start()
    try:
        assert gateway.process is not None
        main = gateway.process.pid
        # The worker's pools start their fork server as the gateway starts: wait for it, or
        # the test would pass with nothing there to leave behind.
        wait_until(lambda: bool(_fork_servers(main)), "the fork server", gateway.process)
        table = process_table()
        family = {pid: table[pid].started for pid in descendants([main], table)}
        children = {pid for pid in family if table[pid].parent == main}
        assert len(children) >= 2  # the fork server and the extra SCP process, at least
    finally:
        gateway.stop()
    assert gateway.process.returncode == 0
    left = {pid: command_line(pid) for pid in children if running(pid, family[pid])}
    trackers = {pid for pid, command in left.items() if "resource_tracker" in command}
    assert {pid: left[pid] for pid in left.keys() - trackers} == {}
    wait_until(
        lambda: not any(running(pid, started) for pid, started in family.items()),
        "the resource tracker and the pools' children to end after the gateway",
        timeout_s=30,
    )
