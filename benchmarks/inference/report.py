"""The inference report: the table printed, the 2D target applied to every device and to
the workload, the phases during which the machine was busy, the versions behind it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from benchmarks.environment import (
    gpu_name,
    machine_description,
    machine_name,
)
from benchmarks.inference.runs import STAGES
from gateway.settings import Settings

TARGET_2D_RATIO = 0.7
STAGE_OVERLAP_TARGET = 0.8  # issue 13 item 5, on CPU: every device and the workload
BUSY_MACHINE_CORES = 0.3  # other load above this during a median phase makes it suspect


def _stages(run: dict[str, Any]) -> str:
    stages = run["stages_ms_per_job"]
    return " / ".join(f"{stages[name]:.0f}" for name in (*STAGES, "bookkeeping"))


def format_table(devices: Sequence[dict[str, Any]]) -> str:
    """Markdown: the pipeline against bare onnxruntime, per device."""
    header = [
        "device", "study (per job)", "bare b1 /s", "bare bP /s", "bare bMax /s",
        "pipeline ×1 /s", "pipeline ×N /s (mean batch)", "studies/s", "ratio",
        "decode+preprocess alone /s", "stage overlap",
        "×1 stages, ms per job: load / decode / preprocess / infer / postprocess / bookkeeping",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for device in devices:
        bare = device["bare"]
        batch = device["pipeline_batch"]
        largest = max(int(name.removeprefix("batch_")) for name in bare)
        seq, conc = device["pipeline"]["sequential"], device["pipeline"]["concurrent"]
        overlap = device["stage_overlap"]
        best = max(seq, conc, key=lambda run: float(run["images_per_s"]))
        label = device["device"]
        if device.get("workload"):
            label += f" (**workload: {device['workload']}**, input {device['input']['shape'][1]}²)"
        cells = [
            label,
            device["study"]["description"],
            f"{bare['batch_1']['images_per_s']:.1f}",
            f"{bare[f'batch_{batch}']['images_per_s']:.1f} (b{batch})",
            f"{bare[f'batch_{largest}']['images_per_s']:.1f} (b{largest})"
            if largest > batch
            else "",
            f"{seq['images_per_s']:.2f}",
            f"{conc['images_per_s']:.2f} (×{conc['threads']}, b{conc['mean_batch']:.1f})",
            f"{best['studies_per_s']:.2f}",
            f"**{device['ratio']['pipeline_vs_bare']:.2f}**"
            + (" ✗" if device["meets_target"] is False else ""),
            f"{overlap['stages_alone_images_per_s']['decode_preprocess']:.1f}",
            f"**{overlap['value']:.2f}** ({overlap['slowest_stage']}; ceiling "
            f"{overlap['ceiling_on_shared_cores']:.2f})"
            + (" ✗" if overlap["value"] < STAGE_OVERLAP_TARGET else ""),
            _stages(seq),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def environment(settings: Settings | None) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    packages = ("onnxruntime", "onnxruntime-gpu", "numpy", "torch", "monai", "scipy")
    return {
        **machine_description((*packages, "pydicom", "pylibjpeg", "sqlalchemy")),
        "gpu": gpu_name(),
        "onnxruntime_available_providers": ort.get_available_providers(),
        "settings_inference_providers": list(settings.inference_providers) if settings else None,
        "worker_concurrency": settings.worker_concurrency if settings else None,
        "inference_max_batch": settings.inference_max_batch if settings else None,
        "inference_max_wait_ms": settings.inference_max_wait_ms if settings else None,
        "decode_processes": settings.decode_processes if settings else None,
        "onnxruntime_intra_op_threads": "onnxruntime default (one per physical core)",
        "torch_threads": torch.get_num_threads(),
    }


def results_machine(providers: Sequence[str]) -> str:
    """The machine's name, and the GPU's where the sessions used one."""
    return machine_name(with_gpu=any(p != "CPUExecutionProvider" for p in providers))


def phases(device: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every timed phase of a device's result, by name."""
    for group in ("bare", "pipeline"):
        for name, figures in device[group].items():
            yield f"{group} {name}", figures


def target_checks(devices: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The 2D target applied to every 2D device and to the vendor-scale workload, each
    named, so that a miss stays visible beside a hit."""
    checks = [
        {
            "device": device["device"],
            "workload": device.get("workload"),
            "ratio": device["ratio"]["pipeline_vs_bare"],
            "meets_target": device["meets_target"],
        }
        for device in devices
        if device["dims"] == 2
    ]

    def verdict(rows: list[dict[str, Any]]) -> bool | None:
        return all(row["meets_target"] for row in rows) if rows else None

    overlaps = [
        {
            "device": device["device"],
            "workload": device.get("workload"),
            "stage_overlap": device["stage_overlap"]["value"],
            "meets_target": device["stage_overlap"]["value"] >= STAGE_OVERLAP_TARGET,
        }
        for device in devices
    ]
    return {
        "pipeline_vs_bare_2d_min": TARGET_2D_RATIO,
        "stage_overlap_min": STAGE_OVERLAP_TARGET,
        "stage_overlap_checks": overlaps,
        "stage_overlap_meets": all(row["meets_target"] for row in overlaps) if overlaps else None,
        "checks": checks,
        "registered_devices_meet": verdict([c for c in checks if c["workload"] is None]),
        "vendor_scale_meets": verdict([c for c in checks if c["workload"] is not None]),
    }
