"""Build the reference devices: train on phantoms, export ONNX, choose thresholds on
held-out phantoms, write ``models/zoo/<id>/{model.onnx,manifest.yaml}``.

    python -m models.zoo.build                      # all four, into models/zoo/
    python -m models.zoo.build --device aigw-ref-cxr
    python -m models.zoo.build --smoke /tmp/zoo     # 2 steps each: proves the build runs
    python -m models.zoo.build --device aigw-ref-ct-chest --describe-only  # manifest only

Deterministic: fixed seeds, deterministic algorithms, two threads, phantoms drawn from
fixed seeds; the same machine and library versions rebuild the same bytes.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
import yaml
from torch import nn

from models.manifest import DeviceManifest, load_manifest
from models.zoo import networks
from models.zoo.datasets import generate
from models.zoo.devices import DEVICES, Device, Training
from models.zoo.evaluation import Metrics, evaluate, session
from models.zoo.training import TrainLog, deterministic, recalibrate_batch_norm, train

__all__ = ["OPSET", "ZOO_DIR", "BuildResult", "build_device", "export_onnx", "main", "new_model"]

ZOO_DIR = Path(__file__).resolve().parent
OPSET = 17
SMOKE = Training(n_train=4, steps=2, batch=2, lr=1e-3, n_val=2, n_test=2)


@dataclass(frozen=True)
class BuildResult:
    device: str
    folder: Path
    sha256: str
    onnx_bytes: int
    parameters: int
    threshold: float
    train: TrainLog
    validation: Metrics
    test: Metrics
    seconds: float


def new_model(device: Device) -> nn.Module:
    if device.id == "aigw-ref-cxr":
        return networks.CamDenseNet()
    if device.id == "aigw-ref-ct-chest":
        return networks.ct_chest_unet()
    if device.id == "aigw-ref-ct-brain":
        return networks.ct_brain_segresnet()
    if device.id == "aigw-ref-mammo":
        return networks.CenterNetResNet()
    raise KeyError(device.id)


def output_names(device: Device) -> list[str]:
    names = [device.output]
    for extra in (device.heatmap_output, device.size_output):
        if extra:
            names.append(extra)
    return names


def export_onnx(device: Device, model: nn.Module) -> bytes:
    """TorchScript-based export (``dynamo=False``): opset 17, float32, batch axis dynamic."""
    model.eval()
    example = torch.zeros((2, device.input.channels, *device.input.size), dtype=torch.float32)
    names = output_names(device)
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            buffer,  # type: ignore[arg-type]  # torch accepts a binary stream here
            input_names=[device.input.name],
            output_names=names,
            dynamic_axes={name: {0: "batch"} for name in [device.input.name, *names]},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    proto.producer_name = "aigw models.zoo.build"
    proto.doc_string = f"{device.id}: {device.architecture}. {device.training_notice}"
    onnx.checker.check_model(proto, full_check=True)
    serialised: bytes = proto.SerializeToString()
    return serialised


def _build_text(
    device: Device,
    training: Training,
    parameters: int,
    threshold: float,
    validation: Metrics,
    test: Metrics,
) -> str:
    crop = f" (crops {' × '.join(map(str, training.crop))})" if training.crop is not None else ""
    if training.recalibrate:
        crop += f", batch norm then re-estimated on {training.recalibrate} whole images"
    scope = device.extra.get("intended_use")
    return (
        (f"Intended use: {scope}. " if scope else "")
        + f"{device.architecture}. {parameters:,} parameters, slimmed for CPU training. "
        f"Trained from scratch: {training.steps} AdamW steps (one-cycle, max lr "
        f"{training.lr:g}) of batch {training.batch}{crop} on {training.n_train} phantoms "
        f"(half with a lesion), left-right flips; torch {torch.__version__.split('+')[0]}, "
        f"deterministic, 2 threads; ONNX opset {OPSET}, TorchScript exporter. "
        f"Threshold {threshold:g}: the highest sensitivity at specificity ≥ 0.90 on "
        f"{training.n_val} validation phantoms. Held-out test on {training.n_test} further "
        f"phantoms: {test.summary()} (tolerance {device.tolerance_mm:g} mm). "
        f"Built by `python -m models.zoo.build`."
    )


def write_manifest(device: Device, folder: Path, data: dict[str, object]) -> DeviceManifest:
    header = (
        f"# {device.id}: reference AI device of the AIGW project, built by\n"
        f"# `python -m models.zoo.build --device {device.id}` (do not edit by hand).\n"
        f"# {device.training_notice}\n"
    )
    text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=100)
    path = folder / "manifest.yaml"
    path.write_text(header + text, encoding="utf-8")
    return load_manifest(path)


def describe(
    device: Device, folder: Path, training: Training, parameters: int, workers: int = 2
) -> tuple[str, float, Metrics, Metrics]:
    """Evaluate the ``model.onnx`` in ``folder`` on the held-out phantoms and write its
    manifest: sha256, threshold, validation and test metrics."""
    onnx_bytes = (folder / "model.onnx").read_bytes()
    sha256 = hashlib.sha256(onnx_bytes).hexdigest()
    validation = generate(device.id, "val", training.n_val, workers=workers)
    test = generate(device.id, "test", training.n_test, workers=workers)
    threshold, val_metrics, test_metrics = evaluate(device, session(onnx_bytes), validation, test)
    build = _build_text(device, training, parameters, threshold, val_metrics, test_metrics)
    write_manifest(device, folder, device.manifest(threshold, sha256, build))
    return sha256, threshold, val_metrics, test_metrics


def build_device(
    device: Device,
    folder: Path,
    training: Training | None = None,
    workers: int = 2,
    log: Callable[[str], None] = print,
) -> BuildResult:
    started = time.perf_counter()
    training = training or device.training
    generator = deterministic()
    log(f"{device.id}: {training.n_train} training phantoms")
    samples = generate(device.id, "train", training.n_train, workers=workers)
    torch.manual_seed(0)
    model = new_model(device)
    parameters = networks.parameter_count(model)
    log(f"{device.id}: training {parameters:,} parameters for {training.steps} steps")
    train_log = train(device, model, samples, training, generator, log)
    if training.recalibrate:
        recalibrate_batch_norm(model, samples[: training.recalibrate], training.batch, log)
    del samples
    onnx_bytes = export_onnx(device, model)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(onnx_bytes)
    log(f"{device.id}: exported {len(onnx_bytes):,} bytes; evaluating")
    sha256, threshold, val_metrics, test_metrics = describe(
        device, folder, training, parameters, workers
    )
    seconds = time.perf_counter() - started
    log(f"{device.id}: threshold {threshold:g}; validation: {val_metrics.summary()}")
    log(f"{device.id}: test: {test_metrics.summary()}")
    log(f"{device.id}: done in {seconds:.0f} s (training {train_log.seconds:.0f} s)")
    return BuildResult(
        device=device.id,
        folder=folder,
        sha256=sha256,
        onnx_bytes=len(onnx_bytes),
        parameters=parameters,
        threshold=threshold,
        train=train_log,
        validation=val_metrics,
        test=test_metrics,
        seconds=seconds,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.zoo.build", description=__doc__)
    parser.add_argument(
        "--device", action="append", choices=sorted(DEVICES), help="build only these (repeat)"
    )
    parser.add_argument(
        "--smoke",
        metavar="OUTDIR",
        type=Path,
        help="2 optimisation steps per device on a handful of phantoms, written to OUTDIR",
    )
    parser.add_argument("--out", type=Path, default=ZOO_DIR, help="zoo folder (default: here)")
    parser.add_argument("--workers", type=int, default=2, help="phantom-generating processes")
    parser.add_argument(
        "--describe-only",
        action="store_true",
        help="keep each model.onnx, re-evaluate it and rewrite its manifest (after a change "
        "to the manifest's text; the weights must come from the device's current training)",
    )
    args = parser.parse_args(argv)
    out: Path = args.smoke or args.out
    if args.describe_only:
        for device_id in args.device or list(DEVICES):
            device = DEVICES[device_id]
            parameters = networks.parameter_count(new_model(device))
            sha256, threshold, _, test = describe(
                device, out / device.id, device.training, parameters, args.workers
            )
            print(f"{device.id}: threshold {threshold:g}; test: {test.summary()}; sha256 {sha256}")
        return 0
    results = []
    for device_id in args.device or list(DEVICES):
        device = DEVICES[device_id]
        training = None
        if args.smoke:
            training = dataclasses.replace(
                SMOKE, crop=device.training.crop, recalibrate=min(2, device.training.recalibrate)
            )
        workers = 1 if args.smoke else args.workers
        results.append(build_device(device, out / device.id, training, workers))
    for r in results:
        print(
            f"{r.device}: {r.parameters:,} parameters, {r.onnx_bytes / 1e6:.2f} MB, "
            f"threshold {r.threshold:g}, train {r.train.seconds:.0f} s, total {r.seconds:.0f} s, "
            f"sha256 {r.sha256}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
