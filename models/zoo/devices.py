"""The four reference devices: what each manifest says, how its training phantoms are drawn,
and how long it trains.

Everything a build needs that is not learnt lives here, so the manifest a build writes is
this skeleton plus the ONNX checksum, the operating thresholds chosen on held-out phantoms
and a line on how the file was made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from models import phantoms
from models.manifest import InputSpec, Window
from models.study_types import StudyType, service_code

__all__ = ["DEVICES", "NOTICE_EN", "NOTICE_RU", "VENDOR", "Device", "Training"]

VENDOR = "AIGW project (reference device)"
NOTICE_RU = "Обучено на синтетических фантомах. Не для клинического применения."
NOTICE_EN = "Trained on synthetic phantoms. Not for clinical use."

Task = Literal["cam", "segmentation", "detection"]
PhantomMaker = Callable[[np.random.Generator, bool], phantoms.Phantom]


@dataclass(frozen=True)
class Training:
    """How much data a device sees and for how long; ``smoke`` shrinks all of it."""

    n_train: int  # phantoms, half with a lesion
    steps: int  # optimiser steps
    batch: int
    lr: float
    n_val: int  # phantoms for choosing the threshold, half positive
    n_test: int  # phantoms for the reported metrics, half positive
    crop: tuple[int, ...] | None = None  # train on crops of this size
    positive_crop_share: float = 0.5  # share of crops placed around a lesion
    recalibrate: int = 0  # after crop training: re-estimate batch norm on this many inputs
    # Segmentation: the share of lesion-free crops centred on a voxel at least this bright
    # (model input units) outside any lesion: hard negatives such as the skull's inner table.
    hard_negative_level: float | None = None
    hard_negative_share: float = 0.0


@dataclass(frozen=True)
class Device:
    id: str
    task: Task
    name: str
    name_ru: str
    study_types: tuple[StudyType, ...]
    accepts: dict[str, Any]
    input: InputSpec
    output: str  # primary output name
    size_output: str | None  # detection: box-size map
    heatmap_output: str | None  # cam: localisation map
    label: dict[str, str]  # code, scheme, ru, en
    architecture: str
    phantom: PhantomMaker
    training: Training
    tolerance_mm: float  # localisation tolerance the tests hold the device to
    extra: dict[str, Any] = field(default_factory=dict)

    def manifest(self, threshold: float, sha256: str, build: str) -> dict[str, Any]:
        """The manifest as plain data, ready for :class:`models.manifest.DeviceManifest`."""
        label = {**self.label, "threshold": threshold}
        outputs: list[dict[str, Any]] = []
        primary: dict[str, Any] = {"name": self.output, "labels": [label]}
        if self.task == "cam":
            outputs.append({**primary, "kind": "classification"})
            outputs.append({"name": self.heatmap_output, "kind": "heatmap", "labels": []})
        elif self.task == "segmentation":
            outputs.append({**primary, "kind": "segmentation"})
        else:
            outputs.append({**primary, "kind": "detection", "size_output": self.size_output})
        return {
            "id": self.id,
            "version": "1.0.0",
            "name": self.name,
            "name_ru": self.name_ru,
            "vendor": VENDOR,
            "registration": None,
            "group": "image_analysis",
            "study_types": [
                {"type": t.value, "service_code": service_code(t)} for t in self.study_types
            ],
            "accepts": self.accepts,
            "input": self.input.model_dump(mode="json"),
            "outputs": outputs,
            "onnx": {"file": "model.onnx", "sha256": sha256},
            "provenance": {
                "training_data": (
                    f"synthetic phantoms only: models/phantoms.py ({self.phantom_summary()}), "
                    "numpy seeds (device, split, index) — see models/zoo/datasets.py"
                ),
                "clinical_use": False,
                "notice_ru": NOTICE_RU,
                "notice_en": NOTICE_EN,
                "build": build,
            },
        }

    @property
    def training_notice(self) -> str:
        return f"{NOTICE_EN} / {NOTICE_RU}"

    def phantom_summary(self) -> str:
        return str(self.extra.get("phantoms", self.id))


# --------------------------------------------------------------------------- phantoms


def _cxr_phantom(rng: np.random.Generator, positive: bool) -> phantoms.Phantom:
    rows = int(rng.integers(256, 481))
    cols = round(rows * rng.uniform(0.8, 1.2))
    return phantoms.chest_radiograph(rng, size=(rows, cols), n_lesions=int(positive))


def _ct_chest_phantom(rng: np.random.Generator, positive: bool) -> phantoms.Phantom:
    n_slices = int(rng.integers(24, 49))
    thickness = float(rng.choice([1.0, 1.25, 1.5, 2.0, 2.5]))
    # Every in-plane size from the tests' 128 px to a scanner's 512 px: the field of view
    # stays ~358 mm, so the model input (128 px) always has ~2.8 mm pixels, but how the
    # resize samples the source (1:1 up to 4:1) differs.
    side = int(rng.choice([128, 160, 192, 256, 384, 512]))
    return phantoms.ct_chest(
        rng,
        n_slices=n_slices,
        size=(side, side),
        slice_thickness_mm=thickness,
        n_nodules=int(positive),
        nodule_diameter_mm=(5.0, 25.0),
    )


def _ct_head_phantom(rng: np.random.Generator, positive: bool) -> phantoms.Phantom:
    thickness = float(rng.choice([4.0, 5.0, 5.0, 6.0]))
    n_slices = int(rng.integers(12, int(150 / thickness) + 1))
    side = int(rng.choice([128, 160, 192, 256]))
    return phantoms.ct_head(
        rng,
        n_slices=n_slices,
        size=(side, side),
        slice_thickness_mm=thickness,
        haemorrhage=positive,
    )


def _mammo_phantom(rng: np.random.Generator, positive: bool) -> phantoms.Phantom:
    rows = int(rng.integers(288, 417))
    cols = round(rows * 0.8125 * rng.uniform(0.95, 1.05))
    laterality: Literal["L", "R"] = "L" if rng.uniform() < 0.5 else "R"
    view: Literal["CC", "MLO"] = "CC" if rng.uniform() < 0.5 else "MLO"
    return phantoms.mammogram(
        rng,
        size=(rows, cols),
        laterality=laterality,
        view=view,
        n_masses=int(positive),
        calcifications=bool(rng.uniform() < 0.2),
    )


# --------------------------------------------------------------------------- devices

_NODULE = {
    "code": "427359005",
    "scheme": "SCT",
    "ru": "Очаговое образование лёгкого",
    "en": "Pulmonary nodule",
}

DEVICES: dict[str, Device] = {
    d.id: d
    for d in (
        Device(
            id="aigw-ref-cxr",
            task="cam",
            name="AIGW reference device: pulmonary nodules on chest X-ray and fluorography",
            name_ru=(
                "Эталонное ИИ-устройство AIGW: очаговые образования лёгких (рентгенография, ФЛГ)"
            ),
            study_types=(StudyType.FLUOROGRAPHY, StudyType.CHEST_XRAY),
            accepts={
                "modalities": ["DX", "CR", "RF"],
                "body_parts": ["CHEST"],
                "min_instances": 1,
                "adult_only": True,
                "photometric": ["MONOCHROME1", "MONOCHROME2"],
            },
            input=InputSpec(name="image", dims=2, size=[256, 256], keep_aspect=True, window=None),
            output="probability",
            size_output=None,
            heatmap_output="heatmap",
            label=_NODULE,
            architecture=(
                "MONAI DenseNet (2D; init_features 16, growth_rate 8, block_config (4, 6), "
                "bn_size 4) with class-activation-map localisation: the linear head applied at "
                "every 1/8-resolution location, log-sum-exp pooled (r = 6) to the image "
                "probability, sigmoid CAM bilinearly upsampled to the 256 × 256 input canvas"
            ),
            phantom=_cxr_phantom,
            training=Training(n_train=320, steps=160, batch=12, lr=3e-3, n_val=60, n_test=60),
            tolerance_mm=20.0,
            extra={"phantoms": "chest_radiograph, 256–480 px, nodules 8–30 mm"},
        ),
        Device(
            id="aigw-ref-ct-chest",
            task="segmentation",
            name="AIGW reference device: pulmonary nodules on chest CT",
            name_ru="Эталонное ИИ-устройство AIGW: очаговые образования лёгких (КТ ОГК)",
            study_types=(StudyType.CT_CHEST, StudyType.LDCT_CHEST),
            accepts={
                "modalities": ["CT"],
                "body_parts": ["CHEST"],
                "slice_thickness_mm": {"max": 2.5},
                "min_instances": 16,
                "adult_only": True,
                "photometric": ["MONOCHROME1", "MONOCHROME2"],
            },
            input=InputSpec(
                name="volume",
                dims=3,
                size=[48, 128, 128],
                window=Window(center=-600.0, width=1500.0),
            ),
            output="nodule_probability",
            size_output=None,
            heatmap_output=None,
            label=_NODULE,
            architecture=(
                "MONAI UNet (3D; channels (8, 16, 32, 64), strides (2, 2, 2), 1 residual unit "
                "per level, batch norm, 8 output features) + 1 × 1 × 1 convolution and sigmoid"
            ),
            phantom=_ct_chest_phantom,
            training=Training(
                n_train=200,
                steps=700,
                batch=4,
                lr=3e-3,
                n_val=40,
                n_test=40,
                crop=(24, 48, 48),
                positive_crop_share=0.7,
            ),
            tolerance_mm=10.0,
            extra={
                "phantoms": "ct_chest, 24–48 slices of 1–2.5 mm, 128–512 px, nodules 5–25 mm",
                "intended_use": (
                    "solid pulmonary nodules of 6–25 mm (6 mm: the Lung-RADS reporting size "
                    "of a solid nodule) on thin-slice chest CT (≤ 2.5 mm, ≥ 16 slices) of "
                    "128–512 px over a ~36 cm field of view; smaller nodules are below what "
                    "its 2.8 mm input pixels resolve"
                ),
            },
        ),
        Device(
            id="aigw-ref-ct-brain",
            task="segmentation",
            name="AIGW reference device: intracranial haemorrhage on head CT",
            name_ru=(
                "Эталонное ИИ-устройство AIGW: внутричерепное кровоизлияние (КТ головного мозга)"
            ),
            study_types=(StudyType.CT_BRAIN,),
            accepts={
                "modalities": ["CT"],
                "body_parts": ["HEAD", "BRAIN"],
                "slice_thickness_mm": {"max": 6.0},
                "min_instances": 8,
                "adult_only": True,
                "photometric": ["MONOCHROME1", "MONOCHROME2"],
            },
            input=InputSpec(
                name="volume",
                dims=3,
                size=[24, 128, 128],
                window=Window(center=40.0, width=80.0),
            ),
            output="haemorrhage_probability",
            size_output=None,
            heatmap_output=None,
            label={
                "code": "1386000",
                "scheme": "SCT",
                "ru": "Внутричерепное кровоизлияние",
                "en": "Intracranial haemorrhage",
            },
            architecture=(
                "MONAI SegResNet (3D; init_filters 8, blocks_down (0, 1, 1, 1), blocks_up "
                "(1, 1, 0), batch norm), sigmoid in the graph"
            ),
            phantom=_ct_head_phantom,
            training=Training(
                n_train=120,
                steps=420,
                batch=4,
                lr=3e-3,
                n_val=40,
                n_test=40,
                crop=(16, 48, 48),
                positive_crop_share=0.6,
                # The skull and skull base are as bright as blood in the brain window.
                hard_negative_level=0.99,
                hard_negative_share=0.5,
            ),
            tolerance_mm=25.0,
            extra={
                "phantoms": "ct_head, 12–37 slices of 4–6 mm, 128–256 px, "
                "intraparenchymal and subdural haemorrhages"
            },
        ),
        Device(
            id="aigw-ref-mammo",
            task="detection",
            name="AIGW reference device: breast masses on mammography",
            name_ru="Эталонное ИИ-устройство AIGW: образования молочной железы (маммография)",
            study_types=(StudyType.MAMMOGRAPHY,),
            accepts={
                "modalities": ["MG"],
                "body_parts": ["BREAST"],
                "min_instances": 1,
                "adult_only": True,
                "photometric": ["MONOCHROME1", "MONOCHROME2"],
            },
            # A fixed window over the 12-bit "for presentation" range, not percentiles: a mass
            # is denser than the densest gland around it, and the 99.5th percentile clips
            # exactly that difference away.
            input=InputSpec(
                name="image",
                dims=2,
                size=[256, 224],
                keep_aspect=True,
                window=Window(center=2000.0, width=3000.0),
            ),
            output="mass_heatmap",
            size_output="mass_size",
            heatmap_output=None,
            label={
                "code": "129788004",
                "scheme": "SCT",
                "ru": "Образование молочной железы",
                "en": "Breast mass",
            },
            architecture=(
                "CenterNet-style detector (objects as points) on a MONAI ResNet backbone "
                "(basic blocks, layers (1, 1, 1, 1), widths (16, 32, 48, 64)) with a "
                "feature-pyramid decoder to stride 4: centre heatmap (sigmoid) and box "
                "height/width in model-input pixels"
            ),
            phantom=_mammo_phantom,
            training=Training(
                n_train=400,
                steps=450,
                batch=24,
                lr=2e-3,
                n_val=60,
                n_test=60,
                crop=(128, 128),
                recalibrate=48,
            ),
            tolerance_mm=15.0,
            extra={
                "phantoms": "mammogram, L/R × CC/MLO, 288–416 px, masses 8–30 mm, "
                "calcification clusters in 20 % as distractors"
            },
        ),
    )
}
