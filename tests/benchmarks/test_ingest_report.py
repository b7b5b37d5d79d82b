"""The ingest benchmark's figures from its phases: the ratios against Orthanc, and the CPU
behind an instance rate split into what one instance costs and how many cores the receiver
kept busy (two receivers at the same CPU per instance differ in rate only by the latter)."""

from __future__ import annotations

from benchmarks.ingest.phases import PhaseResult, ReceiverResult
from benchmarks.ingest.report import format_table, ratios


def _phase(kind: str, instances: int, seconds: float, cpu_s: float, system_s: float) -> PhaseResult:
    return PhaseResult(
        kind=kind,
        instances=instances,
        bytes=instances * 525_000,
        seconds=seconds,
        senders=4,
        receiver_cpu_s=cpu_s,
        receiver_system_cpu_s=system_s,
        helper_cpu_s=0.0,
        sender_cpu_s=seconds * 0.25,
        other_cpu_s=0.0,
    )


def _receiver(name: str, ct_seconds: float, ct_cpu_s: float) -> ReceiverResult:
    result = ReceiverResult(name=name, description={})
    result.rounds.append(
        {
            "CT": _phase("CT", 300, ct_seconds, ct_cpu_s, ct_cpu_s / 3),
            "DX": _phase("DX", 1, 0.1, 0.05, 0.01),
        }
    )
    return result


def test_a_receiver_as_cheap_per_instance_but_keeping_fewer_cores_busy_is_slower() -> None:
    # Both spend 3.5 ms of CPU a slice; Orthanc keeps 1.4 cores busy, aigw 1.05.
    orthanc = _receiver("orthanc", ct_seconds=0.75, ct_cpu_s=1.05)
    aigw = _receiver("aigw-folder-2p", ct_seconds=1.0, ct_cpu_s=1.05)
    ct = {name: result.median("CT").as_dict() for name, result in (("o", orthanc), ("a", aigw))}
    assert ct["o"]["receiver_cpu_ms_per_instance"] == ct["a"]["receiver_cpu_ms_per_instance"] == 3.5
    assert (ct["o"]["receiver_cores_busy"], ct["a"]["receiver_cores_busy"]) == (1.4, 1.05)
    assert ct["a"]["sender_cores_busy"] == 0.25
    assert ratios([orthanc, aigw])["aigw-folder-2p"]["vs_orthanc"]["ct"] == 0.75
    table = format_table([orthanc, aigw]).splitlines()
    assert table[0].endswith("| CT cores busy: receiver, senders |")
    assert table[-1].startswith("| aigw-folder-2p |") and table[-1].endswith("| 1.05, 0.25 |")
    assert table[-1].count("|") == table[0].count("|")
