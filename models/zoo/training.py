"""Training loops for the three kinds of reference device, deterministic on CPU.

Batches are drawn with a seeded ``torch.Generator``; augmentation (left-right flips, 3D
crops) uses the same generator, so one seed and one thread count give the same weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.zoo.datasets import Sample, Truth
from models.zoo.devices import Device, Training
from models.zoo.networks import CamDenseNet, CenterNetResNet, SegmentationNet

__all__ = ["TrainLog", "deterministic", "recalibrate_batch_norm", "train"]

SEED = 20240917


@dataclass(frozen=True)
class TrainLog:
    steps: int
    seconds: float
    first_loss: float
    last_loss: float  # mean over the last 10 % of steps


def deterministic(seed: int = SEED, threads: int = 2) -> torch.Generator:
    """Fix every source of randomness and the thread count; returns the batch generator."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def train(
    device: Device,
    model: nn.Module,
    samples: Sequence[Sample],
    training: Training,
    generator: torch.Generator,
    log: Callable[[str], None] = print,
) -> TrainLog:
    """Train ``model`` in place on ``samples`` for ``training.steps`` steps."""
    step_fn: Callable[[Sequence[Sample], torch.Tensor], torch.Tensor]
    if device.task == "cam":
        assert isinstance(model, CamDenseNet)
        step_fn = _CamLoss(model, generator)
    elif device.task == "segmentation":
        assert isinstance(model, SegmentationNet) and training.crop is not None
        step_fn = _SegmentationLoss(model, generator, training)
    else:
        assert isinstance(model, CenterNetResNet)
        step_fn = _DetectionLoss(model, generator, training)
    optimiser = torch.optim.AdamW(model.parameters(), lr=training.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=training.lr, total_steps=max(training.steps, 2), pct_start=0.15
    )
    model.train()
    losses: list[float] = []
    started = time.perf_counter()
    for step in range(training.steps):
        picks = torch.randint(len(samples), (training.batch,), generator=generator)
        flips = torch.rand(training.batch, generator=generator) < 0.5
        loss = step_fn([samples[int(i)] for i in picks], flips)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if (step + 1) % max(1, training.steps // 10) == 0 or step + 1 == training.steps:
            recent = losses[-max(1, training.steps // 10) :]
            log(
                f"  step {step + 1}/{training.steps} loss {sum(recent) / len(recent):.4f} "
                f"({time.perf_counter() - started:.0f} s)"
            )
    model.eval()
    tail = losses[-max(1, len(losses) // 10) :]
    return TrainLog(
        steps=training.steps,
        seconds=time.perf_counter() - started,
        first_loss=losses[0] if losses else math.nan,
        last_loss=sum(tail) / len(tail) if tail else math.nan,
    )


def recalibrate_batch_norm(
    model: nn.Module, samples: Sequence[Sample], batch: int, log: Callable[[str], None] = print
) -> None:
    """Re-estimate every batch-norm layer's running statistics on whole model inputs
    (forward passes only). After training on crops, this makes inference on the whole
    canvas see the normalisation its own inputs have."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the passes below
    model.train()
    with torch.no_grad():
        for start in range(0, len(samples), batch):
            model(_stack([s.image for s in samples[start : start + batch]]))
    for m, momentum in zip(layers, momenta, strict=True):
        m.momentum = momentum
    model.eval()
    log(f"  batch norm re-estimated on {len(samples)} whole inputs")


def _stack(arrays: Sequence[np.ndarray]) -> torch.Tensor:
    return torch.as_tensor(np.stack(arrays)).float()


def _gaussian_map(
    shape: tuple[int, int],
    stride: float,
    centres: Sequence[tuple[float, float]],
    sigmas: Sequence[float],
    flip: bool,
    width: int,
) -> torch.Tensor:
    """Gaussian blobs on a grid whose cell ``(i, j)`` is the model point
    ``((i + 0.5)·stride − 0.5, (j + 0.5)·stride − 0.5)``."""
    rows = (torch.arange(shape[0], dtype=torch.float32) + 0.5) * stride - 0.5
    cols = (torch.arange(shape[1], dtype=torch.float32) + 0.5) * stride - 0.5
    target = torch.zeros(shape)
    for (r, c), sigma in zip(centres, sigmas, strict=True):
        if flip:
            c = width - 1 - c
        d2 = (rows[:, None] - r) ** 2 + (cols[None, :] - c) ** 2
        target = torch.maximum(target, torch.exp(-d2 / (2 * sigma * sigma)))
    return target


def _crop_origin(
    shape: Sequence[int],
    crop: Sequence[int],
    centre: Sequence[float] | None,
    uniform: Sequence[float],
    align: int = 1,
) -> list[int]:
    """Where a crop starts on each axis: anywhere, or (``centre`` given) so that the
    centre lies inside the crop, at least an eighth of the crop from its edges."""
    origin = []
    for axis, (n, c) in enumerate(zip(shape, crop, strict=True)):
        low, high = 0, n - c
        if centre is not None:
            low = max(0, math.ceil(centre[axis] - c + c / 8))
            high = min(n - c, math.floor(centre[axis] - c / 8))
            if high < low:
                low = high = min(max(0, round(centre[axis] - c / 2)), n - c)
        start = low + int(uniform[axis] * (high - low + 1)) if high > low else low
        origin.append(min(n - c, start - start % align))
    return origin


class _CamLoss:
    """Image-level BCE on the pooled logit plus a dense, positive-weighted BCE that teaches
    the CAM where the nodule is (a Gaussian half the nodule's extent wide at its centre):
    weak labels made strong by the phantom's ground truth. Sparse targets (a focal loss on
    the centre cell alone) learnt far too slowly for a few hundred CPU steps."""

    positive_weight = 30.0

    def __init__(self, model: CamDenseNet, generator: torch.Generator) -> None:
        self.model = model

    def __call__(self, batch: Sequence[Sample], flips: torch.Tensor) -> torch.Tensor:
        images = _stack([s.image for s in batch])
        images = torch.where(flips[:, None, None, None], images.flip(-1), images)
        cam = self.model.cam(images)
        height, width = images.shape[-2:]
        stride = height / cam.shape[-2]
        targets = torch.stack(
            [
                _gaussian_map(
                    (cam.shape[-2], cam.shape[-1]),
                    stride,
                    [(t.centre_model[0], t.centre_model[1]) for t in s.lesions],
                    [max(4.0, 0.5 * max(t.extent_model)) for t in s.lesions],
                    bool(flip),
                    width,
                )
                for s, flip in zip(batch, flips, strict=True)
            ]
        )[:, None]
        labels = torch.tensor([[float(s.positive)] for s in batch])
        image_loss = F.binary_cross_entropy_with_logits(self.model.pooled(cam), labels)
        map_loss = F.binary_cross_entropy_with_logits(
            cam, targets, pos_weight=torch.tensor(self.positive_weight)
        )
        return image_loss + map_loss


class _SegmentationLoss:
    """Positive-weighted BCE + soft Dice over the batch, on 3D crops, a share of them
    around a lesion."""

    positive_weight = 10.0

    def __init__(
        self, model: SegmentationNet, generator: torch.Generator, training: Training
    ) -> None:
        self.model = model
        self.generator = generator
        assert training.crop is not None
        self.crop = training.crop
        self.positive_share = training.positive_crop_share
        self.hard_level = training.hard_negative_level
        self.hard_share = training.hard_negative_share

    def _origin(self, sample: Sample) -> list[int]:
        uniform = torch.rand(len(self.crop) + 3, generator=self.generator).tolist()
        shape = sample.image.shape[1:]
        centre: Sequence[float] | None = None
        if sample.lesions and uniform[-1] < self.positive_share:
            centre = sample.lesions[0].centre_model
        elif self.hard_level is not None and uniform[-2] < self.hard_share:
            assert sample.mask is not None
            bright = np.flatnonzero((sample.image[0] >= self.hard_level) & (sample.mask < 0.5))
            if bright.size:
                pick = bright[min(bright.size - 1, int(uniform[-3] * bright.size))]
                centre = [float(i) for i in np.unravel_index(pick, shape)]
        return _crop_origin(shape, self.crop, centre, uniform)

    def __call__(self, batch: Sequence[Sample], flips: torch.Tensor) -> torch.Tensor:
        images, masks = [], []
        for sample in batch:
            assert sample.mask is not None
            window = tuple(
                slice(o, o + c) for o, c in zip(self._origin(sample), self.crop, strict=True)
            )
            images.append(sample.image[(slice(None), *window)])
            masks.append(sample.mask[window][None])
        x, y = _stack(images), _stack(masks)
        x = torch.where(flips[:, None, None, None, None], x.flip(-1), x)
        y = torch.where(flips[:, None, None, None, None], y.flip(-1), y)
        logits = self.model.logits(x)
        bce = F.binary_cross_entropy_with_logits(logits, y, pos_weight=torch.tensor(3.0))
        p = torch.sigmoid(logits)
        dice = 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
        return bce + dice


class _DetectionLoss:
    """CenterNet-style targets: a Gaussian at each mass centre on the stride-4 heatmap
    (σ = 0.3 × the mass's extent), learnt with a positive-weighted BCE (denser than
    CenterNet's focal loss on the peak cell, so it converges in a few hundred steps), and
    an L1 loss on the log box size wherever the centre Gaussian exceeds 0.5. Trained on
    crops (half around a mass) when the device says so: four times the images per second."""

    positive_weight = 20.0

    def __init__(
        self, model: CenterNetResNet, generator: torch.Generator, training: Training
    ) -> None:
        self.model = model
        self.generator = generator
        self.crop = training.crop
        self.positive_share = training.positive_crop_share

    def _view(self, sample: Sample) -> tuple[np.ndarray, list[tuple[float, ...]], list[Truth]]:
        if self.crop is None:
            return sample.image, [t.centre_model for t in sample.lesions], list(sample.lesions)
        uniform = torch.rand(3, generator=self.generator).tolist()
        around = bool(sample.lesions) and uniform[-1] < self.positive_share
        centre = sample.lesions[0].centre_model if around else None
        stride = self.model.stride
        top, left = _crop_origin(sample.image.shape[1:], self.crop, centre, uniform, stride)
        image = sample.image[:, top : top + self.crop[0], left : left + self.crop[1]]
        centres: list[tuple[float, ...]] = [
            (t.centre_model[0] - top, t.centre_model[1] - left) for t in sample.lesions
        ]
        return image, centres, list(sample.lesions)

    def __call__(self, batch: Sequence[Sample], flips: torch.Tensor) -> torch.Tensor:
        views = [self._view(s) for s in batch]
        images = _stack([v[0] for v in views])
        images = torch.where(flips[:, None, None, None], images.flip(-1), images)
        heat_logits, log_size = self.model.raw(images)
        h, w = heat_logits.shape[-2:]
        width = images.shape[-1]
        stride = images.shape[-2] / h
        targets = torch.zeros((len(batch), 1, h, w))
        size_target = torch.zeros((len(batch), 2, h, w))
        for k, ((_, centres, truths), flip) in enumerate(zip(views, flips, strict=True)):
            for centre, truth in zip(centres, truths, strict=True):
                sigma = max(stride, 0.3 * sum(truth.extent_model) / 2)
                blob = _gaussian_map(
                    (h, w), stride, [(centre[0], centre[1])], [sigma], bool(flip), width
                )
                closer = blob > targets[k, 0]
                targets[k, 0] = torch.where(closer, blob, targets[k, 0])
                extent = torch.log(torch.tensor(truth.extent_model) / self.model.size_scale)
                size_target[k] = torch.where(closer, extent[:, None, None], size_target[k])
        heat_loss = F.binary_cross_entropy_with_logits(
            heat_logits, targets, pos_weight=torch.tensor(self.positive_weight)
        )
        weight = (targets > 0.5).float() * targets
        size_loss = (torch.abs(log_size - size_target) * weight).sum() / weight.sum().clamp(min=1)
        return heat_loss + size_loss
