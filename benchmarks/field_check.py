"""Field check of the CT chest reference device: its sensitivity and specificity on the studies
the demo and the tests generate (``gateway.demo.ct.ct_chest_study``), not on its training
phantoms, read by the worker's own stages — DICOM bytes ▸ ``gateway.inference.decode`` ▸
``models.preprocess`` ▸ onnxruntime ▸ ``models.postprocess`` — with the manifest's threshold.

    python -m benchmarks.field_check                       # 20 + 20 studies per size
    python -m benchmarks.field_check --studies 6 --sizes 512x40 --model /tmp/zoo/aigw-ref-ct-chest

Seeds start at 7000: the demo uses seed 0 and the tests use seeds below 1000; the device's
training phantoms are drawn from their own seed space (``models/zoo/datasets.py``), never
from a study seed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import dcmwrite
from pydicom.dataset import Dataset

from gateway.demo.ct import ct_chest_study
from gateway.inference.decode import decode_volume, read_dataset
from models.manifest import DeviceManifest, load_manifest
from models.postprocess import InputMeta, RawFinding, interpret
from models.preprocess import prepare_3d
from models.runtime import SessionCache

__all__ = ["FIRST_SEED", "SIZES", "FieldResult", "Verdict", "check", "read_study"]

ZOO_DEVICE = Path(__file__).resolve().parents[1] / "models" / "zoo" / "aigw-ref-ct-chest"
FIRST_SEED = 7000
# (side in pixels, slices): the full demo, the demo as it runs (`demo_studies(small=True)`),
# and the tests' sizes.
SIZES: tuple[tuple[int, int], ...] = ((512, 40), (256, 24), (192, 40), (64, 40))


@dataclass(frozen=True)
class Verdict:
    seed: int
    positive: bool  # the study has a nodule
    probability: float
    flagged: bool
    diameter_mm: float | None


@dataclass(frozen=True)
class FieldResult:
    side: int
    slices: int
    verdicts: tuple[Verdict, ...]

    @property
    def sensitivity(self) -> float:
        positives = [v for v in self.verdicts if v.positive]
        return sum(v.flagged for v in positives) / len(positives)

    @property
    def specificity(self) -> float:
        negatives = [v for v in self.verdicts if not v.positive]
        return sum(not v.flagged for v in negatives) / len(negatives)

    def summary(self) -> str:
        missed = [
            f"{v.diameter_mm:.1f} mm (p={v.probability:.2f})"
            for v in self.verdicts
            if v.positive and not v.flagged
        ]
        false = [f"p={v.probability:.2f}" for v in self.verdicts if not v.positive and v.flagged]
        n_pos = sum(v.positive for v in self.verdicts)
        return (
            f"{self.side}² × {self.slices}: sensitivity {self.sensitivity:.2f} ({n_pos} positive), "
            f"specificity {self.specificity:.2f} ({len(self.verdicts) - n_pos} negative); "
            f"missed {missed or 'none'}; false positives {false or 'none'}"
        )


def _axial_series(datasets: Sequence[Dataset]) -> list[Dataset]:
    """The study's axial slices through a DICOM byte round trip, as the store hands them over."""
    read = []
    for ds in datasets:
        if "LOCALIZER" in ds.ImageType:
            continue
        buffer = BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
        read.append(read_dataset(buffer.getvalue()))
    return read


def read_study(
    manifest: DeviceManifest, sessions: SessionCache, session_key: str, datasets: Sequence[Dataset]
) -> RawFinding:
    """One CT series through the worker's decode, preprocessing, inference and postprocessing."""
    volume = decode_volume(_axial_series(datasets))
    prepared = prepare_3d(volume.voxels, manifest.input)
    session = sessions.session(session_key, lambda: b"")  # opened by ``check``
    outputs = sessions.run(session, manifest.input.name, prepared.tensor[None], 1)
    (finding,) = interpret(manifest, outputs, [InputMeta(prepared.geometry, volume.spacing_mm)])
    return finding


def check(
    model_dir: Path, side: int, slices: int, studies: int, first_seed: int = FIRST_SEED
) -> FieldResult:
    """``studies`` studies with a nodule and ``studies`` without, at one size."""
    manifest = load_manifest(model_dir / "manifest.yaml")
    sessions = SessionCache(("CPUExecutionProvider",), intra_op_threads=2)
    key = str(model_dir)
    sessions.session(key, lambda: (model_dir / manifest.onnx.file).read_bytes())
    verdicts = []
    for seed in range(first_seed, first_seed + studies):
        for positive in (True, False):
            study = ct_chest_study(seed, n_slices=slices, size=(side, side), with_nodule=positive)
            finding = read_study(manifest, sessions, key, study.datasets)
            phantom = next(t.phantom for t in study.truth if t.phantom is not None)
            diameter = phantom.lesions[0].diameter_mm if phantom.lesions else None
            verdicts.append(
                Verdict(seed, positive, finding.probability, finding.positive, diameter)
            )
    return FieldResult(side, slices, tuple(verdicts))


def _size(text: str) -> tuple[int, int]:
    side, _, slices = text.partition("x")
    return int(side), int(slices)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.field_check", description=__doc__)
    parser.add_argument("--model", type=Path, default=ZOO_DEVICE, help="device folder")
    parser.add_argument("--studies", type=int, default=20, help="positive (and negative) per size")
    parser.add_argument("--first-seed", type=int, default=FIRST_SEED)
    parser.add_argument(
        "--sizes",
        type=_size,
        nargs="+",
        default=list(SIZES),
        help="SIDExSLICES, e.g. 512x40 256x24",
    )
    args = parser.parse_args(argv)
    worst = 1.0
    for side, slices in args.sizes:
        result = check(args.model, side, slices, args.studies, args.first_seed)
        print(result.summary(), flush=True)
        worst = min(worst, result.sensitivity, result.specificity)
    print(f"worst of sensitivity and specificity over all sizes: {worst:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
