"""Decode throughput per transfer syntax, the CPU decoders against nvImageCodec on the GPU
where it is there (issue 13 item 5: where decode, not inference, bounds studies/s).

Per lossless syntax the gateway accepts, and uncompressed Explicit VR as the floor: a
CT-sized image (512², 12-bit) and a radiograph-sized one (2048², 12-bit; quick: 1024²),
encoded by the harness's independent encoders (:mod:`tests.services.lossless`), then parsed
and decoded back to back through the worker's own path
(:func:`gateway.inference.decode.decode_image`: parse, decode, modality LUT), one image at a
time in one thread — a per-core figure; the worker's ``decode_processes`` children multiply
it. The GPU column decodes the same way with ``gpu.decode_backend: gpu`` (frame by frame,
not batched across images). A syntax this machine cannot encode, or a backend it lacks, is
listed with the reason. Then every real scanner file in ``../shared/data/dicom`` whose
pixels are compressed (JPEG lossless, JPEG 2000 lossless and lossy, RLE, JPEG baseline), the
same way: real entropy, and what a GPU machine without DCMTK or OpenJPH can still measure.

    .venv/bin/python -m benchmarks.decode [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydicom.uid import UID, ExplicitVRLittleEndian

from benchmarks.environment import RESULTS, machine_description, machine_name, write_results
from benchmarks.measure import sig
from gateway.inference import gpu_decode
from gateway.inference.decode import decode_image, read_dataset
from tests.services import SHARED_DICOM, ServiceUnavailable
from tests.services.lossless import LOSSLESS, encoded, part10, synthetic

SYNTAXES: tuple[UID, ...] = (ExplicitVRLittleEndian, *LOSSLESS)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.decode", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="smaller radiograph, 0.3 s each")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    return parser.parse_args(argv)


def images(quick: bool) -> list[tuple[str, int]]:
    return [("ct-512", 512), ("dx-1024" if quick else "dx-2048", 1024 if quick else 2048)]


def measure(blob: bytes, min_seconds: float, min_runs: int = 3) -> dict[str, float]:
    """Parse ▸ decode ▸ modality LUT back to back after one untimed run."""
    decode_image(read_dataset(blob))
    runs, started = 0, time.perf_counter()
    while runs < min_runs or time.perf_counter() - started < min_seconds:
        image = decode_image(read_dataset(blob))
        runs += 1
    wall = time.perf_counter() - started
    pixels = image.pixels.size
    return {
        "runs": runs,
        "images_per_s": sig(runs / wall),
        "megapixels_per_s": sig(runs * pixels / wall / 1e6),
    }


def backends() -> dict[str, str | None]:
    """Each backend and why it cannot run here (None: it can)."""
    return {"cpu": None, "gpu": gpu_decode.unavailable_reason()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    min_seconds = 0.3 if args.quick else 2.0
    usable = backends()
    rows: list[dict[str, Any]] = []
    for label, size in images(args.quick):
        for syntax in SYNTAXES:
            row: dict[str, Any] = {"image": label, "syntax": syntax.name, "uid": str(syntax)}
            try:
                ds = synthetic("dx", size, size)
                blob = part10(ds if syntax == ExplicitVRLittleEndian else encoded(ds, syntax))
            except ServiceUnavailable as exc:
                rows.append({**row, "skipped": str(exc)})
                continue
            rows.append(_measured(row, blob, usable, min_seconds))
    for path in real_files():
        blob = path.read_bytes()
        syntax = read_dataset(blob).file_meta.TransferSyntaxUID
        row = {"image": path.name, "syntax": syntax.name, "uid": str(syntax)}
        rows.append(_measured(row, blob, usable, min_seconds))
    return {
        "benchmark": "decode",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "method": "one thread: parse ▸ decode ▸ modality LUT (decode_image), back to back; "
        "synthetic 12-bit greyscale images (tests.services.lossless)",
        "gpu_unavailable": usable["gpu"],
        "rows": rows,
        "machine": machine_description(
            ["pydicom", "pylibjpeg", "pyjpegls", "nvidia-nvimgcodec-cu13"]
        ),
    }


def real_files() -> list[Path]:
    """The shared scanner files whose pixels are compressed (none where the folder is absent)."""
    if not SHARED_DICOM.is_dir():
        return []
    found = []
    for path in sorted(SHARED_DICOM.rglob("*.dcm")):
        ds = read_dataset(path.read_bytes())
        if "PixelData" in ds and ds.file_meta.TransferSyntaxUID.is_compressed:
            found.append(path)
    return found


def _measured(
    row: dict[str, Any], blob: bytes, usable: dict[str, str | None], min_seconds: float
) -> dict[str, Any]:
    row["bytes"] = len(blob)
    for backend, reason in usable.items():
        if reason is not None:
            row[backend] = {"skipped": reason}
            continue
        gpu_decode.select_backend(backend)
        try:
            row[backend] = measure(blob, min_seconds)
        except Exception as exc:  # a file this backend cannot decode is a finding, not a stop
            row[backend] = {"skipped": f"{exc.__class__.__name__}: {str(exc)[:200]}"}
    gpu_decode.select_backend("auto")
    if "images_per_s" in row.get("gpu", {}) and "images_per_s" in row["cpu"]:
        row["gpu_vs_cpu"] = sig(row["gpu"]["images_per_s"] / row["cpu"]["images_per_s"])
    print(_line(row), flush=True)
    return row


def _line(row: dict[str, Any]) -> str:
    figures = [
        f"{backend} {row[backend]['images_per_s']:>8} img/s"
        for backend in ("cpu", "gpu")
        if "images_per_s" in row.get(backend, {})
    ]
    return f"{row['image'][:40]:>40}  {row['syntax'][:40]:<40} " + "  ".join(figures)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # A shared file's damaged UID (read leniently, as the gateway reads what arrives).
    warnings.filterwarnings("ignore", message="Invalid value for VR UI")
    report = run(args)
    gpu_used = report["gpu_unavailable"] is None
    path = write_results(args.out, machine_name(with_gpu=gpu_used), "decode", report)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
