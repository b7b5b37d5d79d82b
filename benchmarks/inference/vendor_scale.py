"""The vendor-scale workload: a DenseNet-121 with random weights standing for a registered
vendor's chest X-ray model, run through the same pipeline as the devices."""

from __future__ import annotations

import hashlib
from io import BytesIO
from pathlib import Path
from typing import Any, cast

import yaml

from benchmarks.environment import (
    DEVICES_DIR,
)
from benchmarks.errors import BenchmarkError
from models.manifest import DeviceManifest, ManifestError, load_manifest

# The reference devices are tiny (5–7 ms per image on CPU), so reading and decoding a
# 10 MB radiograph dominates their pipeline whatever it does. Registered vendors' chest X-ray
# models are DenseNet-121 / ResNet-50 class networks at 512² or more; this workload puts the
# same pipeline in front of such a network to show its overhead against a realistic model
# cost. Its weights are random: it is not a device and its findings mean nothing.

VENDOR_SCALE_ID = "bench-vendor-scale-cxr"
VENDOR_SCALE_WORKLOAD = "vendor-scale, random weights"
VENDOR_SCALE_SIZE = 512
VENDOR_SCALE_QUICK_SIZE = 256  # --quick only, and labelled so in the report
REFERENCE_CXR = DEVICES_DIR / "aigw-ref-cxr" / "manifest.yaml"


def vendor_scale_onnx(size: int, seed: int) -> bytes:
    """MONAI DenseNet-121 (2D, one channel in, one label out) with ``torch.manual_seed``
    weights, exported as the reference devices are (TorchScript exporter, opset 17, batch
    axis dynamic). Outputs ``probability`` [N, 1] (sigmoid of the global-average-pooled
    head) and ``heatmap`` [N, 1, size, size] (the head applied at every location — a class
    activation map — sigmoid, upsampled to the input): one pass through the features."""
    import onnx
    import torch
    import torch.nn.functional as F
    from monai.networks.nets.densenet import DenseNet121

    torch.manual_seed(seed)
    densenet = DenseNet121(spatial_dims=2, in_channels=1, out_channels=1)

    class WithHeatmap(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = densenet

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            features = F.relu(self.net.features(image))
            head = cast(torch.nn.Linear, self.net.class_layers.out)
            cam = F.conv2d(features, head.weight[:, :, None, None], head.bias)
            probability = torch.sigmoid(cam.mean(dim=(2, 3)))  # = the head on pooled features
            upsampled = F.interpolate(cam, size=image.shape[-2:], mode="bilinear")
            return probability, torch.sigmoid(upsampled)

    model = WithHeatmap().eval()
    buffer = BytesIO()
    names = ["image", "probability", "heatmap"]
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.zeros((2, 1, size, size)),),
            buffer,  # type: ignore[arg-type]  # torch accepts a binary stream here
            input_names=names[:1],
            output_names=names[1:],
            dynamic_axes={name: {0: "batch"} for name in names},
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    proto.doc_string = f"{VENDOR_SCALE_ID}: benchmark workload, random weights, not a device"
    serialised: bytes = proto.SerializeToString()
    return serialised


def vendor_scale_manifest(
    base: DeviceManifest, size: int, seed: int, sha256: str
) -> dict[str, Any]:
    """The chest X-ray reference device's manifest with this workload's identity, input
    size, model file and provenance: the same study types, acceptance and outputs, so the
    router and every pipeline stage treat it as they would a vendor's chest X-ray device."""
    raw = base.model_dump(mode="json")
    raw["input"]["size"] = [size, size]
    raw["onnx"] = {"file": "model.onnx", "sha256": sha256}
    raw["provenance"] = {
        "training_data": f"none: random weights (torch.manual_seed({seed})), never trained",
        "clinical_use": False,
        "notice_ru": "Случайные веса, без обучения: нагрузка для бенчмарка, не устройство. "
        "Не для клинического применения.",
        "notice_en": "Random weights, never trained: a benchmark workload, not a device. "
        "Not for clinical use.",
        "build": f"MONAI DenseNet121 (spatial_dims 2, in_channels 1, out_channels 1), "
        f"6.95 M parameters, random weights from torch.manual_seed({seed}); sigmoid "
        f"probability and a class-activation heatmap; input {size}×{size}; ONNX opset 17, "
        "TorchScript exporter; exported by benchmarks/inference/vendor_scale.py at benchmark time",
    }
    return {
        **raw,
        "id": VENDOR_SCALE_ID,
        "name": f"Benchmark workload: DenseNet-121 at {size}², random weights, not a device, "
        "no findings meaning anything",
        "name_ru": f"Нагрузка для бенчмарка: DenseNet-121, {size}², случайные веса, не "
        "устройство, находки ничего не значат",
        "vendor": "AIGW benchmarks (not a vendor)",
        "registration": None,
    }


def write_vendor_scale_device(folder: Path, size: int, seed: int) -> Path:
    """The workload's ``model.onnx`` and ``manifest.yaml`` in ``folder`` (a temporary
    folder of the run: never in the zoo, never committed); returns the manifest's path."""
    try:
        base = load_manifest(REFERENCE_CXR)
    except ManifestError as exc:
        raise BenchmarkError(f"the vendor-scale workload is built from {exc}") from exc
    data = vendor_scale_onnx(size, seed)
    manifest = vendor_scale_manifest(base, size, seed, hashlib.sha256(data).hexdigest())
    DeviceManifest.model_validate(manifest)  # refuse here rather than at registration
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(data)
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump(manifest, allow_unicode=True, sort_keys=False))
    return path
