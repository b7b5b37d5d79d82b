"""The suite's human-readable outputs: a markdown report and PNG plots (matplotlib, Agg
backend, so no display is needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

THROUGHPUT_PLOT = "throughput-vs-batch.png"
LATENCY_PLOT = "latency-distribution.png"


def _short(provider: str) -> str:
    return provider.removesuffix("ExecutionProvider")


def plot_throughput(devices: Sequence[dict[str, Any]], path: Path) -> None:
    """Images/s against batch size, one panel per device, a line per provider × precision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(devices), figsize=(4.2 * len(devices), 3.6), squeeze=False)
    for axis, device in zip(axes[0], devices, strict=True):
        series: dict[str, list[tuple[int, float]]] = {}
        for point in device["bare"]:
            label = f"{_short(point['provider'])} {point['precision']}"
            series.setdefault(label, []).append((point["batch"], point["images_per_s"]))
        for label, points in sorted(series.items()):
            points.sort()
            axis.plot([b for b, _ in points], [v for _, v in points], marker="o", label=label)
        pipeline = device.get("pipeline")
        if pipeline:
            axis.axhline(pipeline["images_per_s"], linestyle="--", color="grey", label="pipeline")
        axis.set_xscale("log", base=2)
        axis.set_title(device["device"], fontsize=9)
        axis.set_xlabel("batch size")
        axis.set_ylabel(f"{device['unit']}/s")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency(
    end_to_end: dict[str, Any] | None, devices: Sequence[dict[str, Any]], path: Path
) -> None:
    """End to end: last instance received → result, per study type (box plot). Without an
    end-to-end run: bare batch-1 p50/p95 per device, so the file always exists."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(7, 4))
    if end_to_end:
        latencies = end_to_end["latencies_s"]
        kinds = sorted(latencies)
        axis.boxplot([latencies[k] for k in kinds], whis=(5, 95))
        axis.set_xticks(range(1, len(kinds) + 1), [f"{k}\n(n={len(latencies[k])})" for k in kinds])
        axis.set_ylabel("seconds, last instance received → result")
        axis.set_title(
            f"end to end: {end_to_end['senders']} senders, "
            f"{end_to_end['studies_per_min']:.1f} studies/min",
            fontsize=10,
        )
    else:
        names = [d["device"] for d in devices]
        p50 = [_batch1(d, "latency_ms_p50") for d in devices]
        p95 = [_batch1(d, "latency_ms_p95") for d in devices]
        positions = range(len(names))
        axis.bar([p - 0.2 for p in positions], p50, width=0.4, label="p50")
        axis.bar([p + 0.2 for p in positions], p95, width=0.4, label="p95")
        axis.set_xticks(list(positions), names, fontsize=7)
        axis.set_ylabel("ms per batch of 1 (fp32, first provider)")
        axis.legend()
    axis.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _batch1(device: dict[str, Any], key: str) -> float:
    points = [p for p in device["bare"] if p["batch"] == 1 and p["precision"] == "fp32"]
    return float(points[0][key]) if points else 0.0


def markdown(report: dict[str, Any]) -> str:
    """The report: headline table, bare sweep, pipeline, ingest, end to end, environment."""
    env = report["environment"]
    lines = [
        f"# Benchmark suite — {report['machine']}",
        "",
        f"{report['timestamp']}, commit {str(env.get('git_commit') or '?')[:7]}, "
        f"{'quick' if report['quick'] else 'full'} run, {report['wall_s']:.0f} s. "
        f"CPU: {env.get('cpu_model')} ({env.get('cpu_count')} cores); GPU: "
        f"{env.get('gpu') or 'none'}; onnxruntime providers: "
        f"{', '.join(env.get('onnxruntime_available_providers', []))}.",
        "",
        f"> {report['notice']}",
        "",
        "## Headline",
        "",
        *headline_table(report),
        "",
        "## Bare onnxruntime: images (volumes) per second by batch",
        "",
        *bare_table(report["devices"]),
    ]
    skipped = [(d["device"], s) for d in report["devices"] for s in d["skipped"]]
    if skipped:
        lines += ["", "Not measured:", ""]
        lines += [
            f"- {name} {_short(s['provider'])} {s['precision']}"
            + (f" b{s['batch']}" if s["batch"] else "")
            + f": {s['reason']}"
            for name, s in skipped
        ]
    lines += ["", "## Pipeline against bare onnxruntime", "", *pipeline_table(report["devices"])]
    if report["ingest"]:
        lines += ["", "## Ingest (DICOM C-STORE, durable)", "", *ingest_table(report["ingest"])]
    if report["end_to_end"]:
        lines += ["", "## End to end", "", *end_to_end_lines(report["end_to_end"])]
    lines += ["", f"![throughput]({THROUGHPUT_PLOT})", "", f"![latency]({LATENCY_PLOT})", ""]
    return "\n".join(lines)


def headline_table(report: dict[str, Any]) -> list[str]:
    """Per device: best bare throughput, the pipeline's, and the end-to-end figures."""
    lines = [
        "| device | best bare /s (provider, precision, batch) | pipeline /s | pipeline ÷ bare "
        "| e2e p50 / p95 s |",
        "|---|---|---|---|---|",
    ]
    by_type = (report["end_to_end"] or {}).get("latency_by_type", {})
    for device in report["devices"]:
        best = max(device["bare"], key=lambda p: p["images_per_s"])
        pipeline = device["pipeline"]
        kind = _study_kind(device)
        e2e = by_type.get(kind)
        lines.append(
            f"| {device['device']} | {best['images_per_s']:.1f} ({_short(best['provider'])}, "
            f"{best['precision']}, b{best['batch']}) | "
            + (
                f"{pipeline['images_per_s']:.2f} | {pipeline['ratio']:.2f} | "
                if pipeline
                else "– | – | "
            )
            + (f"{e2e['p50_s']:.1f} / {e2e['p95_s']:.1f} ({kind}) |" if e2e else "– |")
        )
    e2e_all = report["end_to_end"]
    if e2e_all:
        lines += [
            "",
            f"End to end: **{e2e_all['studies_per_min']:.1f} studies/min** with "
            f"{e2e_all['senders']} senders"
            f"{' (saturated: offered ' if e2e_all['saturated'] else ' (offered '}"
            f"{e2e_all['offered_studies_per_min']:.1f}/min); "
            f"latency p50 {e2e_all['latency']['p50_s']:.1f} s, "
            f"p95 {e2e_all['latency']['p95_s']:.1f} s, p99 {e2e_all['latency']['p99_s']:.1f} s "
            f"(to {e2e_all['latency_end']}, "
            f"quiet period {e2e_all['quiet_period_s']:g} s included).",
        ]
    return lines


def _study_kind(device: dict[str, Any]) -> str:
    study = (device.get("pipeline") or {}).get("study", "")
    if study.startswith("MG"):
        return "mammography"
    if "CT head" in study:
        return "ct_head"
    if "CT chest" in study:
        return "ct_chest"
    return "fluorography"


def bare_table(devices: Sequence[dict[str, Any]]) -> list[str]:
    batches = sorted({p["batch"] for d in devices for p in d["bare"]})
    lines = [
        "| device | provider | precision | " + " | ".join(f"b{b}" for b in batches)
        + " | p50 / p95 ms at b1 |",
        "|---|---|---|" + "---|" * len(batches) + "---|",
    ]  # fmt: skip
    for device in devices:
        combos = sorted({(p["provider"], p["precision"]) for p in device["bare"]})
        for provider, precision in combos:
            points = {
                p["batch"]: p
                for p in device["bare"]
                if (p["provider"], p["precision"]) == (provider, precision)
            }
            cells = [f"{points[b]['images_per_s']:.1f}" if b in points else "" for b in batches]
            first = points.get(1)
            latency = (
                f"{first['latency_ms_p50']:.1f} / {first['latency_ms_p95']:.1f}" if first else ""
            )
            lines.append(
                f"| {device['device']} | {_short(provider)} | {precision} | "
                + " | ".join(cells)
                + f" | {latency} |"
            )
    return lines


def pipeline_table(devices: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "| device | study | bare /s | pipeline /s | studies/s | ratio | job p50 / p95 ms | "
        "stages ms: load / decode / preprocess / infer / postprocess / bookkeeping |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for device in devices:
        run = device["pipeline"]
        if not run:
            continue
        stages = run["stages_ms_per_job"]
        order = ("load", "decode", "preprocess", "infer", "postprocess", "bookkeeping")
        mark = " ✗" if run["meets_target"] is False else ""
        lines.append(
            f"| {device['device']} | {run['study']} | {run['bare_images_per_s']:.1f} | "
            f"{run['images_per_s']:.2f} | {run['studies_per_s']:.2f} | "
            f"**{run['ratio']:.2f}**{mark} | "
            f"{run['job_ms_p50']:.0f} / {run['job_ms_p95']:.0f} | "
            + " / ".join(f"{stages.get(name, 0):.0f}" for name in order)
            + " |"
        )
    return lines


def ingest_table(ingest: dict[str, Any]) -> list[str]:
    lines = [
        f"{ingest['ct_instances']} CT + {ingest['dx_instances']} DX instances, "
        f"{ingest['senders']} storescu senders, {ingest['rounds']} round(s).",
        "",
        "| receiver | CT inst/s | CT MB/s | DX inst/s | DX MB/s |",
        "|---|---|---|---|---|",
    ]
    for r in ingest["receivers"]:
        lines.append(
            f"| {r['name']} | {r['ct_instances_per_s']:.1f} | {r['ct_mb_per_s']:.1f} | "
            f"{r['dx_instances_per_s']:.1f} | {r['dx_mb_per_s']:.1f} |"
        )
    return lines


def end_to_end_lines(e2e: dict[str, Any]) -> list[str]:
    lines = [
        f"{e2e['senders']} concurrent storescu senders for {e2e['send_seconds']:.0f} s "
        f"(planned {e2e['send_seconds_planned']:g} s"
        + (", the prepared studies ran out first" if e2e["pool_exhausted"] else "")
        + f"): {e2e['studies_sent']} studies sent, {e2e['studies_with_result']} with a result, "
        f"**{e2e['studies_per_min']:.1f} studies/min** over {e2e['window_seconds']:.0f} s "
        f"(offered {e2e['offered_studies_per_min']:.1f}/min"
        + (
            ": saturated, a queue built up and the latencies are mostly waiting in it). "
            if e2e["saturated"]
            else "). "
        )
        + f"Latency from {e2e['latency_start']} to {e2e['latency_end']}; it includes the "
        f"{e2e['quiet_period_s']:g} s quiet period before a study counts as complete.",
        "",
        "| study type | studies | p50 s | p95 s | p99 s |",
        "|---|---|---|---|---|",
    ]
    for kind, figures in sorted(e2e["latency_by_type"].items()):
        lines.append(
            f"| {kind} | {figures['studies']} | {figures['p50_s']:.2f} | "
            f"{figures['p95_s']:.2f} | {figures['p99_s']:.2f} |"
        )
    overall = e2e["latency"]
    lines.append(
        f"| all | {overall['studies']} | {overall['p50_s']:.2f} | {overall['p95_s']:.2f} | "
        f"{overall['p99_s']:.2f} |"
    )
    if e2e["gpu"]:
        gpu = e2e["gpu"]
        lines += [
            "",
            f"GPU ({', '.join(gpu['gpus'])}): utilisation mean "
            f"{gpu['utilisation_percent_mean']}%, max {gpu['utilisation_percent_max']}%; "
            f"memory used up to {gpu['memory_used_mib_max']} MiB.",
        ]
    else:
        lines += ["", f"GPU utilisation: not measured ({e2e['gpu_unavailable']})."]
    for what in ("unfinished", "failed"):
        if e2e[what]:
            lines += ["", f"{what.capitalize()}: " + "; ".join(e2e[what][:10])]
    return lines
