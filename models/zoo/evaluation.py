"""Held-out evaluation of a reference device's ONNX file: a score and a location per image,
the operating threshold, and sensitivity / specificity / localisation error.

How a device's outputs become one decision and one location (the pipeline does the same):

* ``cam``: score = the classification probability; location = the arg-max of the heatmap
  (whose ``h × w`` cells span the model input; here ``h, w`` = the input size).
* ``segmentation``: score = the largest voxel probability; location = the centroid of the
  connected region of voxels ≥ threshold that holds that maximum (the maximum itself when
  the score is below the threshold).
* ``detection``: score = the heatmap peak; location = the peak cell's centre,
  ``(i + 0.5)·H/h − 0.5`` in model pixels.

Locations are mapped back to source pixels with :meth:`Geometry.to_source` and compared
with the phantom's true lesion centre in millimetres.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from models.zoo.datasets import Sample
from models.zoo.devices import Device

__all__ = [
    "Finding",
    "Metrics",
    "choose_threshold",
    "evaluate",
    "infer",
    "locate",
    "measure",
    "session",
]

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Finding:
    score: float
    location_model: tuple[float, ...]  # model index space


@dataclass(frozen=True)
class Metrics:
    threshold: float
    positives: int
    negatives: int
    sensitivity: float
    specificity: float
    localisation_median_mm: float  # over true positives
    localisation_p90_mm: float
    localised: float  # share of true positives within the device's tolerance
    auc: float

    def summary(self) -> str:
        return (
            f"sensitivity {self.sensitivity:.2f} ({self.positives} positive), specificity "
            f"{self.specificity:.2f} ({self.negatives} negative), ROC AUC {self.auc:.3f}, "
            f"localisation error median {self.localisation_median_mm:.1f} mm / "
            f"90th percentile {self.localisation_p90_mm:.1f} mm, "
            f"{self.localised:.0%} of true positives within tolerance"
        )


def session(model: bytes | str, threads: int = 2) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def infer(
    device: Device, sess: ort.InferenceSession, samples: Sequence[Sample], batch: int = 8
) -> list[list[FloatArray]]:
    """Raw ONNX outputs per sample, in the order the device declares them."""
    names = [device.output]
    if device.heatmap_output:
        names.append(device.heatmap_output)
    if device.size_output:
        names.append(device.size_output)
    results: list[list[FloatArray]] = []
    for start in range(0, len(samples), batch):
        chunk = samples[start : start + batch]
        inputs = np.stack([s.image for s in chunk]).astype(np.float32)
        outputs = sess.run(names, {device.input.name: inputs})
        for k in range(len(chunk)):
            results.append([np.asarray(o[k]) for o in outputs])
    return results


def locate(device: Device, outputs: Sequence[FloatArray], threshold: float) -> Finding:
    """One score and one location (model index space) from one image's outputs."""
    primary = outputs[0]
    if device.task == "cam":
        heatmap = outputs[1][0]
        index = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
        scale = [n / m for n, m in zip(device.input.size, heatmap.shape, strict=True)]
        where = tuple((i + 0.5) * s - 0.5 for i, s in zip(index, scale, strict=True))
        return Finding(float(primary[0]), where)
    volume = primary[0]
    index = np.unravel_index(int(np.argmax(volume)), volume.shape)
    score = float(volume[index])
    if device.task == "detection":
        scale = [n / m for n, m in zip(device.input.size, volume.shape, strict=True)]
        where = tuple((i + 0.5) * s - 0.5 for i, s in zip(index, scale, strict=True))
        return Finding(score, where)
    if score < threshold:
        return Finding(score, tuple(float(i) for i in index))
    region = _region(volume >= threshold, tuple(int(i) for i in index))
    weights = volume * region
    total = float(weights.sum())
    grids = np.indices(volume.shape, dtype=np.float64)
    centroid = tuple(float((g * weights).sum() / total) for g in grids)
    return Finding(score, centroid)


def _region(mask: npt.NDArray[np.bool_], seed: tuple[int, ...]) -> npt.NDArray[np.bool_]:
    """The face-connected component of ``mask`` that holds ``seed``."""
    region = np.zeros_like(mask)
    region[seed] = True
    while True:
        grown = region.copy()
        for axis in range(mask.ndim):
            lead = [slice(None)] * mask.ndim
            trail = [slice(None)] * mask.ndim
            lead[axis], trail[axis] = slice(1, None), slice(None, -1)
            grown[tuple(lead)] |= region[tuple(trail)]
            grown[tuple(trail)] |= region[tuple(lead)]
        grown &= mask
        if np.array_equal(grown, region):
            return region
        region = grown


def error_mm(sample: Sample, finding: Finding) -> float:
    """Distance from the finding to the nearest true lesion centre, in millimetres."""
    source = sample.geometry.to_source(finding.location_model)
    return min(
        math.dist(
            [p * s for p, s in zip(source, sample.spacing_mm, strict=True)],
            [p * s for p, s in zip(t.centre_source, sample.spacing_mm, strict=True)],
        )
        for t in sample.lesions
    )


def choose_threshold(
    scores: Sequence[float], positive: Sequence[bool], specificity: float = 0.9
) -> float:
    """The operating point: the highest sensitivity whose specificity on these phantoms is
    at least ``specificity``, placed halfway between the last negative let through and
    the next positive above it (a margin on both sides), rounded to 3 decimals."""
    negatives = sorted((s for s, p in zip(scores, positive, strict=True) if not p), reverse=True)
    positives = sorted(s for s, p in zip(scores, positive, strict=True) if p)
    allowed = math.floor(len(negatives) * (1 - specificity) + 1e-9)
    floor = negatives[allowed] if allowed < len(negatives) else 0.0
    above = [s for s in positives if s > floor]
    ceiling = above[0] if above else min(1.0, floor + 0.1)
    threshold = round((floor + ceiling) / 2, 3)
    if threshold <= floor:
        threshold = math.nextafter(floor, 1.0)
    return float(min(max(threshold, 0.001), 0.999))


def _auc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    pos = [s for s, p in zip(scores, positive, strict=True) if p]
    neg = [s for s, p in zip(scores, positive, strict=True) if not p]
    if not pos or not neg:
        return math.nan
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def measure(
    device: Device,
    samples: Sequence[Sample],
    outputs: Sequence[Sequence[FloatArray]],
    threshold: float,
) -> Metrics:
    findings = [locate(device, o, threshold) for o in outputs]
    positive = [s.positive for s in samples]
    scores = [f.score for f in findings]
    hits = [f.score >= threshold for f in findings]
    errors = [
        error_mm(s, f) for s, f, h in zip(samples, findings, hits, strict=True) if h and s.positive
    ]
    n_pos = sum(positive)
    n_neg = len(samples) - n_pos
    tp = sum(h and p for h, p in zip(hits, positive, strict=True))
    tn = sum(not h and not p for h, p in zip(hits, positive, strict=True))
    return Metrics(
        threshold=threshold,
        positives=n_pos,
        negatives=n_neg,
        sensitivity=tp / n_pos if n_pos else math.nan,
        specificity=tn / n_neg if n_neg else math.nan,
        localisation_median_mm=float(np.median(errors)) if errors else math.nan,
        localisation_p90_mm=float(np.percentile(errors, 90)) if errors else math.nan,
        localised=sum(e <= device.tolerance_mm for e in errors) / len(errors)
        if errors
        else math.nan,
        auc=_auc(scores, positive),
    )


def evaluate(
    device: Device,
    sess: ort.InferenceSession,
    validation: Sequence[Sample],
    test: Sequence[Sample],
    specificity: float = 0.9,
) -> tuple[float, Metrics, Metrics]:
    """Choose the threshold on ``validation``; measure it there and on ``test``."""
    val_outputs = infer(device, sess, validation)
    scores = [locate(device, o, 1.0).score for o in val_outputs]
    threshold = choose_threshold(scores, [s.positive for s in validation], specificity)
    return (
        threshold,
        measure(device, validation, val_outputs, threshold),
        measure(device, test, infer(device, sess, test), threshold),
    )
